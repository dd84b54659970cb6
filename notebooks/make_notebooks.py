"""Writes the notebooks from the cell sources below (outputs stripped). Run: python notebooks/make_notebooks.py"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

SETUP = """import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tiny default needs no network
REPO = Path(os.environ.get("MEDQLORA_REPO", ".."))  # this notebook lives in notebooks/"""

QUICKSTART = [
    new_markdown_cell(
        "# medqlora quickstart\n\nBuild the tiny default (a random Gemma 4 with every E2B feature at toy "
        "size), look at what the model is trained on, train a few dozen steps with the real `Trainer`, "
        "`QLoRAModule` and `MedicalMixDataModule`, plot the run, and generate with the adapter. "
        "Runs on a laptop CPU in about a minute; the last cell shows the same thing on a GPU with the "
        "real recipe."
    ),
    new_code_cell(SETUP),
    new_markdown_cell(
        "## The data\n\nThe data module mixes the three sources (here: the small sample files "
        "shipped with medqlora), renders each row with the tokenizer's own Gemma 4 chat template and "
        "writes a data card."
    ),
    new_code_cell("""from medqlora.data.datamodule import MedicalMixDataModule

data = MedicalMixDataModule(tokenizer="tiny", max_length=256, micro_batch_size=2, seed=42)
data.prepare_data()
print(data.card.markdown())"""),
    new_markdown_cell(
        "Each row is the inference prompt the template renders, then the answer and `<turn|>`. "
        "Only the part in «guillemets» is supervised; a reasoning row carries its chain of thought "
        "in Gemma 4's thought channel."
    ),
    new_code_cell("""from medqlora.data.chat import show_supervision

for source in ("medqa", "o1"):
    row = data.train_set.filter(lambda r, s=source: r["source"] == s)[0]
    print(f"--- {source} ---")
    print(show_supervision(data.tokenizer, row["input_ids"], row["labels"]))"""),
    new_markdown_cell(
        "### Your own data: multi-turn chat\n\nA `chat` source reads a `messages` column (any number of "
        "system, user and assistant turns; ShareGPT's `conversations`/`from`/`value` map in one YAML entry). Every "
        "assistant turn is trained, each as its own sample: the template's own prompt for the conversation so far, "
        "then that turn and `<turn|>` (Gemma 4's template renders earlier turns without their thought channel, so "
        "one sequence could not hold every turn as inference sees it). Here a two-turn dialogue: two samples, the "
        "supervised part of each in «guillemets»."
    ),
    new_code_cell("""from medqlora.data.chat import encode_many
from medqlora.data.sources import SourceSpec, to_conversation

dialogue = {"messages": [
    {"role": "user", "content": "A 45-year-old man has a hot swollen first toe joint. What is it?"},
    {"role": "assistant", "content": "Most likely acute gout."},
    {"role": "user", "content": "And the first-line treatment?"},
    {"role": "assistant", "content": "Colchicine.", "reasoning": "A flare, no kidney disease: colchicine or an NSAID."},
]}
spec = SourceSpec(name="mine", format="chat", hub_id="you/your-dialogues")
conversation = to_conversation(dialogue, spec, reasoning="thinking")
(encoded,) = encode_many([conversation], data.tokenizer, max_length=512)
for number, sample in enumerate(encoded.samples, 1):
    print(f"--- sample {number} of {len(encoded.samples)} ---")
    print(show_supervision(data.tokenizer, sample.input_ids, sample.labels))"""),
    new_markdown_cell("## Train\n\nThe same objects the CLI builds from `configs/tiny.yaml`."),
    new_code_cell("""import lightning as L
from lightning.pytorch.loggers import CSVLogger

from medqlora.callbacks.accumulation import GradientAccumulation
from medqlora.callbacks.adapter import AdapterExport
from medqlora.callbacks.curves import TrainingCurves
from medqlora.callbacks.memory import PeakMemory
from medqlora.callbacks.schedule import CosineWarmup
from medqlora.model.module import QLoRAModule

L.seed_everything(0)
module = QLoRAModule("tiny", lr=5e-3)
trainer = L.Trainer(
    accelerator="cpu", precision="bf16-mixed", max_steps=24, log_every_n_steps=1, val_check_interval=16,
    num_sanity_val_steps=0, enable_model_summary=False, logger=CSVLogger("runs", name="quickstart"),
    callbacks=[GradientAccumulation(2), CosineWarmup(0.1), PeakMemory(), AdapterExport(), TrainingCurves()],
)
trainer.fit(module, datamodule=data)
run_dir = Path(trainer.log_dir)"""),
    new_markdown_cell("## Plot the run from its logs"),
    new_code_cell("""import matplotlib.pyplot as plt

from medqlora.runs import read_metrics

metrics = read_metrics(run_dir / "metrics.csv")
fig, axes = plt.subplots(1, 3, figsize=(14, 3))
for ax, column in zip(axes, ["train/loss", "lr", "mem/rss_gib"]):
    steps, values = zip(*metrics[column])
    ax.plot(steps, values)
    ax.set_title(column)
    ax.set_xlabel("optimizer step")
print("validation:", metrics["val/loss"], metrics["val/acc"])"""),
    new_markdown_cell(
        "## Generate with the adapter\n\nWhat `medqlora generate` does, in code: the 4-bit base "
        "loaded as in training, the adapter on top, greedy answers in Gemma 4's chat format. (On a GPU "
        "the adapter also loads with the model card's own snippet: "
        "`PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), ADAPTER)`.)"
    ),
    new_code_cell("""from medqlora.eval.generate import generate
from medqlora.model.adapter import load_adapted

model, tokenizer = load_adapted(run_dir / "adapter")
print(generate(model, tokenizer, ["Name the first-line treatment for gout."], max_new_tokens=24))"""),
    new_markdown_cell(
        "## The same cells, the real recipe\n\nOn a GPU with hub access (and Gemma 4's licence "
        "accepted), the same objects train the model card's recipe: swap the model name, take the "
        "recipe's sources, and use the GPU. `medqlora fit --config configs/gemma4-e2b-medical.yaml` "
        "does exactly this."
    ),
    new_code_cell("""RUN_REAL_RECIPE = False  # set True on a GPU machine with hub access
if RUN_REAL_RECIPE:
    import yaml

    from medqlora.data.sources import SourceSpec

    recipe = yaml.safe_load((REPO / "configs" / "gemma4-e2b-medical.yaml").read_text())
    data = MedicalMixDataModule(tokenizer="google/gemma-4-E2B-it", max_length=2048, micro_batch_size=2,
                                sample_policy="upsample", sources=[SourceSpec(**s) for s in recipe["data"]["sources"]])
    module = QLoRAModule("google/gemma-4-E2B-it", lr=2e-4)
    trainer = L.Trainer(accelerator="gpu", precision="bf16-mixed", max_epochs=1, logger=CSVLogger("runs", name="e2b"),
                        callbacks=[GradientAccumulation(8), CosineWarmup(0.05), PeakMemory(), AdapterExport(),
                                   TrainingCurves()])
    trainer.fit(module, datamodule=data)"""),
]

CUSTOM_CALLBACK = [
    new_markdown_cell(
        "# A callback of your own\n\nWrite a small callback here, train with it beside medqlora's "
        "built-in ones, then wire the very same class from YAML (`trainer.callbacks` with "
        "`class_path`)."
    ),
    new_code_cell(SETUP),
    new_markdown_cell(
        "This one samples an answer from the model every `every_n_steps` optimizer steps, so you "
        "can watch it learn. The hooks a callback usually needs: `on_train_batch_end` (after each "
        "micro-batch; skip the ones inside an accumulation window), `on_validation_end`, "
        "`on_fit_end`."
    ),
    new_code_cell('''import torch
from lightning.pytorch.callbacks import Callback

from medqlora.callbacks.steps import optimizer_step_done


class SampleGenerations(Callback):
    """Greedy-decode `prompt` every `every_n_steps` optimizer steps and keep (step, text)."""

    def __init__(self, prompt: str = "Name the first-line treatment for gout.", every_n_steps: int = 4,
                 max_new_tokens: int = 16):
        self.prompt, self.every_n_steps, self.max_new_tokens = prompt, every_n_steps, max_new_tokens
        self.samples: list[tuple[int, str]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if not optimizer_step_done(trainer) or step % self.every_n_steps:
            return
        tokenizer = trainer.datamodule.tokenizer
        inputs = tokenizer.apply_chat_template([{"role": "user", "content": self.prompt}], add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True).to(pl_module.device)
        pl_module.model.eval()
        with torch.no_grad():
            out = pl_module.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        pl_module.model.train()
        self.samples.append((step, tokenizer.decode(out[0, inputs["input_ids"].shape[1]:])))'''),
    new_markdown_cell("## Beside the built-in callbacks"),
    new_code_cell("""import lightning as L

from medqlora.callbacks.accumulation import GradientAccumulation
from medqlora.callbacks.memory import PeakMemory
from medqlora.callbacks.schedule import CosineWarmup
from medqlora.data.datamodule import MedicalMixDataModule
from medqlora.model.module import QLoRAModule

L.seed_everything(0)
sampler = SampleGenerations(every_n_steps=4)
trainer = L.Trainer(accelerator="cpu", precision="bf16-mixed", max_steps=12, logger=False, enable_checkpointing=False,
                    limit_val_batches=0, enable_model_summary=False,
                    callbacks=[GradientAccumulation(2), CosineWarmup(0.1), PeakMemory(), sampler])
trainer.fit(QLoRAModule("tiny", lr=5e-3), datamodule=MedicalMixDataModule(tokenizer="tiny", max_length=256))
assert [step for step, _ in sampler.samples] == [4, 8, 12]
for step, text in sampler.samples:
    print(step, repr(text))"""),
    new_markdown_cell(
        "## The same callback from YAML\n\nAny importable class works under `trainer.callbacks`; "
        "in a package it would be `mypackage.callbacks.SampleGenerations`. Here the notebook's own "
        "module is `__main__`. A second `--config` overrides the first, so list the built-ins too."
    ),
    new_code_cell('''import tempfile

from medqlora.cli import run

extra = Path(tempfile.mkdtemp()) / "with-sampler.yaml"
extra.write_text("""
trainer:
  max_steps: 8
  logger: false
  enable_checkpointing: false
  limit_val_batches: 0
  callbacks:
    - class_path: medqlora.callbacks.accumulation.GradientAccumulation
      init_args: {accumulate: 2}
    - class_path: medqlora.callbacks.schedule.CosineWarmup
      init_args: {warmup_ratio: 0.1}
    - class_path: __main__.SampleGenerations
      init_args: {every_n_steps: 4, prompt: "What confirms hypothyroidism?"}
""")
cli = run(["fit", "--config", str(REPO / "configs" / "tiny.yaml"), "--config", str(extra)])
wired = next(c for c in cli.trainer.callbacks if isinstance(c, SampleGenerations))
assert wired.samples, "the YAML-wired callback did not run"
print(wired.samples)'''),
]


NOTEBOOKS = {"quickstart.ipynb": QUICKSTART, "custom_callback.ipynb": CUSTOM_CALLBACK}


def write(directory: Path = Path(__file__).parent) -> None:
    """Write every notebook into `directory`."""
    for name, cells in NOTEBOOKS.items():
        nb = new_notebook(
            cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
        )
        nbformat.write(nb, directory / name)


if __name__ == "__main__":
    write()
