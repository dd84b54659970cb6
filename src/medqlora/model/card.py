"""The adapter's model card (README.md), written from what the run measured: nothing in it is typed by hand.

Reads the run directory: `config.yaml` (the resolved config LightningCLI saved), `data_card.json`, `memory.json`
(peak VRAM, wall time, device), `metrics.csv` (eval loss and accuracy) and, once `medqlora eval` has run,
`eval-<adapter>/eval.json` (benchmarks and key points, base vs adapter).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from medqlora.io import atomic_write_text
from medqlora.runs import CONFIG_FILE, DATA_CARD, MEMORY_FILE, METRICS_FILE, PROGRESS_FILE, eval_dir, read_metrics

LIMITATIONS = """## Intended use and limitations

For research on medical question answering and clinical reasoning with small models: benchmarking, studying
what fine-tuning on medical instruction data changes, and as a starting point for further supervised work.
It is not a medical device and must not be used for diagnosis, treatment or triage, nor to give advice to
patients. Its answers can be fluent and wrong; the benchmarks above measure multiple-choice recognition and
key-point coverage, not clinical safety. {data} The key-point score counts whether expected terms appear, not
whether the answer is correct or safe."""
RECIPE_DATA = """The training mix is English, drawn from exam questions (MedQA), synthetic reasoning traces
(medical-o1-reasoning-SFT) and instruction data (AlpaCare), so it inherits their biases, their coverage gaps and
their licences (AlpaCare is CC BY-NC 4.0: no commercial use)."""


def limitations(data: dict) -> str:
    """The card's intended-use section, naming the data this run actually trained on."""
    if data.get("recipe_sources"):
        return LIMITATIONS.format(data=RECIPE_DATA)
    sources = data.get("sources") or {}
    named = "; ".join(f"{name} (`{s.get('location')}`, licence {s.get('license')})" for name, s in sources.items())
    return LIMITATIONS.format(
        data=f"It was trained on {named or 'the data in the table above'}, so it inherits that data's biases, "
        "coverage gaps and licences: check them before any use."
    )


def _read(path: Path, loader):
    return loader(path.read_text()) if path.is_file() else None


def _final_metrics(path: Path) -> dict[str, float]:
    """The last logged value of each val/ and train/ metric in metrics.csv."""
    series = read_metrics(path) if path.is_file() else {}
    return {key: values[-1][1] for key, values in series.items() if key.startswith(("val/", "train/"))}


def duration(seconds: float) -> str:
    """'14 s', '3 min 20 s', '2 h 05 min': readable at any length."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def progress_line(state: dict | None) -> str | None:
    """What the card says of how far training was when this adapter was written (None: not recorded)."""
    if not state:
        return None
    step, total = state.get("step"), state.get("total_steps")
    if state.get("kind") == "best":
        return f"This is the adapter with the lowest validation loss, from optimizer step {step} of {total}."
    if step is not None and total is not None and step < total:
        return (
            f"**Training did not finish**: this adapter was written at optimizer step {step} of {total} "
            "(the run was interrupted or stopped early). Resume it with `medqlora fit ... --ckpt_path "
            "<run>/checkpoints/interrupted.ckpt` (or `last.ckpt`)."
        )
    return f"Written at the end of training, after all {total} optimizer steps."


def _callback_args(config: dict, name: str) -> dict:
    for callback in config.get("trainer", {}).get("callbacks") or []:
        if isinstance(callback, dict) and callback.get("class_path", "").endswith(name):
            return callback.get("init_args") or {}
    return {}


def render(run_dir: Path, adapter_dir: Path) -> str:
    """The card's Markdown."""
    config = _read(run_dir / CONFIG_FILE, yaml.safe_load) or {}
    data = _read(run_dir / f"{DATA_CARD}.json", json.loads) or {}
    memory = _read(run_dir / MEMORY_FILE, json.loads) or {}
    results = _read(eval_dir(run_dir / adapter_dir.name) / "eval.json", json.loads)
    metrics = _final_metrics(run_dir / METRICS_FILE)
    adapter_config = _read(adapter_dir / "adapter_config.json", json.loads) or {}
    state = _read(adapter_dir / PROGRESS_FILE, json.loads)
    model, data_cfg, trainer = config.get("model", {}), config.get("data", {}), config.get("trainer", {})
    quant = model.get("quantization") or {}
    lora = model.get("lora") or {  # not set: read from the adapter (model.init_adapter)
        "r": adapter_config.get("r"),
        "alpha": adapter_config.get("lora_alpha"),
        "dropout": adapter_config.get("lora_dropout"),
        "targets": re.findall(r"[a-z]+_proj", str(adapter_config.get("target_modules"))),
    }
    base = adapter_config.get("base_model_name_or_path", model.get("name_or_path"))
    out = [
        f"# {model.get('name_or_path')} + medqlora LoRA adapter",
        "",
        f"A LoRA adapter for `{model.get('name_or_path')}`, trained by medqlora on "
        + (
            "the recipe's medical mix."
            if data.get("recipe_sources")
            else f"{', '.join(data.get('sources') or {}) or 'its own data'}."
        ),
        "",
        *([line, ""] if (line := progress_line(state)) else []),
        "## Base model and adapter",
        "",
        f"- base: `{model.get('name_or_path')}`, {quant.get('quant_type')} 4-bit "
        f"(double quant {quant.get('double_quant')}, compute {quant.get('compute_dtype')})",
        f"- LoRA: r={lora.get('r')}, alpha={lora.get('alpha')}, dropout={lora.get('dropout')} on "
        f"{', '.join(lora.get('targets', []))} of every language-model layer",
        *(
            [
                f"- continued from the adapter `{model['init_adapter']}`: its weights were the starting point; "
                "the optimizer and learning-rate schedule started fresh"
            ]
            if model.get("init_adapter")
            else []
        ),
        "",
    ]
    out += ["## Data", "", "| source | location | licence | train rows | val rows |", "|---|---|---|---|---|"]
    for name, source in (data.get("sources") or {}).items():
        out.append(
            f"| {name} | {source.get('location')} | {source.get('license')} | {source.get('train_rows')} "
            f"| {source.get('val_rows')} |"
        )
    totals = data.get("totals", {})
    out += [
        "",
        f"Total: {totals.get('train')} training and {totals.get('val')} validation rows, max length "
        f"{data.get('max_length')}, reasoning `{data.get('reasoning')}`, {data.get('layout')} batches.",
        "",
    ]
    accumulate = _callback_args(config, "GradientAccumulation").get("accumulate")
    warmup = _callback_args(config, "CosineWarmup").get("warmup_ratio")
    out += [
        "## Training",
        "",
        "| hyperparameter | value |",
        "|---|---|",
        f"| optimizer | {model.get('optimizer')} |",
        f"| learning rate | {model.get('lr')} |",
        f"| schedule | cosine, warmup ratio {warmup} |",
        f"| micro-batch x accumulation | {data_cfg.get('micro_batch_size')} x {accumulate} "
        f"(packing {data_cfg.get('packing')}) |",
        f"| epochs / max steps | {trainer.get('max_epochs')} / {trainer.get('max_steps')} |",
        f"| precision | {trainer.get('precision')} |",
        f"| seed | {config.get('seed_everything')} |",
        "",
        f"Hardware: {memory.get('device_name', memory.get('device'))}; peak memory "
        f"{memory.get('peak_gib', float('nan')):.2f} GiB; wall time {duration(memory.get('wall_time_s', 0))}.",
        "",
    ]
    if "val/loss" in metrics:
        out += [
            f"Validation: eval loss {metrics['val/loss']:.4f}, next-token accuracy on assistant tokens "
            f"{100 * metrics.get('val/acc', float('nan')):.2f}%.",
            "",
        ]
    if results:
        out += [
            "## Benchmarks (base vs adapter, same harness and load)",
            "",
            "| benchmark | prompt | items | base % (norm) | adapter % (norm) | delta pp (norm) | 95% CI pp |",
            "|---|---|---|---|---|---|---|",
        ]
        for b in results["benchmarks"]:
            low, high = b["delta_ci95_pp"]
            where = ", ".join(str(x) for x in (b["source"], b["split"]) if x)
            rows = f"first {b['items']}" if b.get("limit") else b["items"]
            base_acc = f"{b['base_accuracy']:.1f} ({b['base_accuracy_norm']:.1f})"
            tuned_acc = f"{b['adapter_accuracy']:.1f} ({b['adapter_accuracy_norm']:.1f})"
            out.append(
                f"| {b['benchmark']} ({where}) | {b.get('prompt', '')} | {rows} | {base_acc} | {tuned_acc} "
                f"| {b['delta_pp']:+.1f} | [{low:+.1f}, {high:+.1f}] |"
            )
        out += [
            "",
            "Each option is scored by its log-likelihood after the Gemma 4 chat prompt (thinking off): the "
            "first accuracy takes the highest sum, the one in brackets (norm) the highest per character of the "
            "option (lm-evaluation-harness's acc_norm). The delta and its interval use the normalised accuracy. "
            "Prompt `training`: MedQA asked exactly as the training rows render it, scored on how the trained "
            "answer (`X: option`) opens (`A:` to `D:`); `letter`: asked for the letter and scored on A-D.",
            "",
        ]
        kp = results.get("keypoints")
        if kp:
            out += ["## Clinical key points (hit rate %)", "", "| discipline | base | adapter |", "|---|---|---|"]
            for name, value in kp["adapter"]["disciplines"].items():
                out.append(f"| {name} | {kp['base']['disciplines'][name]:.1f} | {value:.1f} |")
            out += [f"| **average** | {kp['base']['average']:.1f} | {kp['adapter']['average']:.1f} |", ""]
    out += [
        limitations(data),
        "",
        "## Use",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM",
        "",
        f"base = AutoModelForCausalLM.from_pretrained({base!r})",
        "model = PeftModel.from_pretrained(base, ADAPTER_DIR)",
        "```",
        "",
    ]
    return "\n".join(out)


def write_model_card(run_dir: str | Path, adapter_dir: str | Path | None = None) -> Path:
    """Write `<adapter>/README.md` from the run's files (adapter_dir defaults to `<run_dir>/adapter`)."""
    run, adapter = Path(run_dir), Path(adapter_dir) if adapter_dir else Path(run_dir) / "adapter"
    path = adapter / "README.md"
    atomic_write_text(path, render(run, adapter))
    return path
