"""The data card: what the mix did, per source and stage, as JSON (for scripts) and Markdown (for people)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medqlora.data.collate import LengthGroupedBatchSampler, PackingBatchSampler
from medqlora.data.location import column
from medqlora.io import atomic_write_text
from medqlora.runs import DATA_CARD

RECIPE_TARGET = {"train": 47_189, "val": 2_483}  # the model card's split sizes
RECIPE_SOURCES = {"medqa": ("medqa_options", 16_000), "o1": ("reasoning", 14_000), "alpacare": ("instruction", 17_000)}
"""The recipe's mix (configs/gemma4-e2b-medical.yaml; tests/test_cli.py checks they agree): names, formats, targets."""


def trains_recipe_sources(sources) -> bool:
    """Whether a run's sources are the recipe's three (from the hub or local copies), by name, format and target:
    only then does the data card compare with the model card's split sizes."""
    return {s.name: (s.format, s.target) for s in sources} == RECIPE_SOURCES


def padding_ratio(lengths: list[int], batches: list[list[int]], packed: bool, pack_tokens: int) -> float:
    """Share of the tensor slots that hold no token: padding (padded) or unused budget (packed)."""
    used = sum(lengths)
    slots = sum(pack_tokens if packed else max(lengths[i] for i in b) * len(b) for b in batches)
    return 0.0 if not slots else round(1 - used / slots, 4)


@dataclass
class DataCard:
    """Counts per source at each stage, token lengths, supervised share, padding, licences, seed and notices."""

    content: dict

    @classmethod
    def from_run(cls, dm, stats: dict[str, dict]) -> DataCard:
        """Summarise a built MedicalMixDataModule: its splits, settings and what the mix did to each source
        (`stats`: available, removed by reason, usable, target, train, val, upsampled)."""
        train_sources = np.array(column(dm.train_set, "source") or [""])
        lengths = np.array(column(dm.train_set, "length"))
        supervised = np.array(column(dm.train_set, "supervised"))
        val_sources = column(dm.val_set, "source")
        test_sources = column(dm.test_set, "source") if dm.test_fraction else []
        sources = {}
        for name, s in stats.items():
            mine = train_sources[: len(lengths)] == name
            own = lengths[mine] if mine.any() else np.array([0])
            sources[name] = {
                **{k: v for k, v in s.items() if k not in ("train", "val", "test")},
                "drawn": {split: s[split] for split in ("train", "val", *(("test",) if dm.test_fraction else ()))},
                "train_rows": int(mine.sum()),  # samples trained and validated on: a trained turn each
                "val_rows": val_sources.count(name),
                **({"test_rows": test_sources.count(name)} if dm.test_fraction else {}),
                "token_length_percentiles": {f"p{p}": int(np.percentile(own, p)) for p in (5, 50, 95, 100)},
                "supervised_token_share": round(int(supervised[mine].sum()) / max(1, int(own.sum())), 4),
            }
        lengths = lengths.tolist()
        padded = LengthGroupedBatchSampler(lengths, dm.micro_batch_size, dm.seed, True, False).plan()
        grouped = LengthGroupedBatchSampler(lengths, dm.micro_batch_size, dm.seed, True, True).plan()
        packs = PackingBatchSampler(lengths, dm.pack_tokens, dm.seed, True).packs()
        totals = {"train": len(dm.train_set), "val": len(dm.val_set)}
        if dm.test_fraction:
            totals["test"] = len(dm.test_set)
        recipe = trains_recipe_sources(dm.sources)
        content = {
            "seed": dm.seed,
            "max_length": dm.max_length,
            "reasoning": dm.reasoning,
            "sample_policy": dm.sample_policy,
            "val_fraction": dm.val_fraction,
            "tokenizer": dm.tokenizer_name,
            "totals": totals,
            "recipe_sources": recipe,
            **(
                {"recipe_target": RECIPE_TARGET, "recipe_gap": {k: totals[k] - RECIPE_TARGET[k] for k in totals}}
                if recipe
                else {}
            ),
            "padding_ratio": {
                "padded": padding_ratio(lengths, padded, False, 0),
                "padded_grouped_by_length": padding_ratio(lengths, grouped, False, 0),
                f"packed_{dm.pack_tokens}": padding_ratio(lengths, packs, True, dm.pack_tokens),
            },
            "layout": "packed" if dm.packing else "padded",
            "sources": sources,
        }
        return cls({**content, "notices": notices(content)})

    def markdown(self) -> str:
        """Human-readable card."""
        c = self.content
        lines = [
            "# Data card",
            "",
            f"Seed {c['seed']}, max length {c['max_length']}, reasoning "
            f"`{c['reasoning']}`, sample policy `{c['sample_policy']}`, validation {c['val_fraction']:.0%} "
            "per source.",
            "",
            f"Rows: {c['totals']['train']} train / {c['totals']['val']} validation"
            + (f" / {c['totals']['test']} test" if "test" in c["totals"] else "")
            + (
                f"; the model card's recipe: {c['recipe_target']['train']} / {c['recipe_target']['val']} "
                f"(difference {c['recipe_gap']['train']:+d} / {c['recipe_gap']['val']:+d})."
                if c.get("recipe_sources")
                else "."
            ),
            "",
            "Every filter runs before sampling: `usable` rows are what is left of `available` after the removals, and "
            "`target` training rows are drawn from them.",
            "",
            "| source | location | licence | available | removed | usable | target | train rows | val rows | "
            "upsampled | p50 / p95 tokens | supervised share |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, s in c["sources"].items():
            removed_text = ", ".join(f"{k} {v}" for k, v in s["removed"].items()) or "none"
            cut = s.get("cut_at_turn") or {}
            if cut.get("rows"):
                removed_text += f"; cut at a turn boundary: {cut['rows']} ({cut['turns']} turns left out)"
            drawn = s["drawn"]
            train, val = s["train_rows"], s["val_rows"]
            if (train, val) != (drawn["train"], drawn["val"]):  # several trained turns a conversation
                train, val = f"{train} ({drawn['train']} conv.)", f"{val} ({drawn['val']} conv.)"
            p = s["token_length_percentiles"]
            lines.append(
                f"| {name} | `{s['location']}` | {s['license']} | {s['available']} | {removed_text} | {s['usable']} | "
                f"{s['target']} | {train} | {val} | {s['upsampled']} | "
                f"{p['p50']} / {p['p95']} | {s['supervised_token_share']:.1%} |"
            )
        within = {name: s["rows_within"] for name, s in c["sources"].items() if s.get("rows_within")}
        if within:
            lines += [
                "",
                "Rows each `data.max_length` keeps whole (longest trained turn, before dedupe; `rows_within`):",
                "",
            ]
            lines += [f"- {name}: " + " · ".join(f"{n}: {k}" for n, k in w.items()) for name, w in within.items()]
        lines += ["", "Padding ratio (share of tensor slots holding no token):", ""]
        lines += [f"- {k}: {v:.1%}" for k, v in c["padding_ratio"].items()]
        if c["notices"]:
            lines += ["", "Notices (also printed when the data was prepared):", ""]
            lines += [f"- {notice}" for notice in c["notices"]]
        return "\n".join(lines) + "\n"

    def write(self, directory: Path) -> None:
        """Write data_card.json and data_card.md into `directory` (atomically)."""
        atomic_write_text(directory / f"{DATA_CARD}.json", json.dumps(self.content, indent=2))
        atomic_write_text(directory / f"{DATA_CARD}.md", self.markdown())


FIXES = {
    "too_long": "raise data.max_length (now {max_length}) or set data.truncation: truncate",
    "no_supervised_tokens": "raise data.max_length (now {max_length}): the prompt fills it",
    "duplicate": "remove the repeated rows, or check the source's `columns:` map (rows that read one empty or "
    "repeated column look identical)",
    "eval_contamination": "it overlaps an evaluation set (data.decontaminate)",
    "bad_options": "check that `input` holds 'Q: question {{options}}'",
}
DEFAULT_FIX = "check the source's `columns:` map and its rows"
NO_VALIDATION = "training runs without validation (no val/loss, no adapter-best/, checkpoints keep the last step only)"


def notices(content: dict) -> list[str]:
    """One line each for what a user would want to know before training on this data: a source that loses more
    than half its rows to one reason (deduplication included), a source with no validation row, and a mix with no
    validation rows at all; each names the source or setting, the count and the fix."""
    lines, fraction = [], content["val_fraction"]
    for name, s in content["sources"].items():
        for reason, count in s["removed"].items():
            if count > s["available"] / 2:
                fix = FIXES.get(reason, DEFAULT_FIX).format(max_length=content["max_length"])
                lines.append(
                    f"source {name!r}: {count} of {s['available']} rows ({count / s['available']:.0%}) removed as "
                    f"{reason}; {fix}"
                )
        if fraction > 0 and s["usable"] and not s["val_rows"] and content["totals"]["val"]:
            lines.append(
                f"source {name!r}: no validation row (data.val_fraction={fraction} of its {s['usable']} usable "
                "rows rounds to 0), so its rows are never validated; raise data.val_fraction or give it more rows"
            )
    if not content["totals"]["val"]:
        usable = sum(s["usable"] for s in content["sources"].values())
        why = (
            "data.val_fraction is 0"
            if fraction == 0
            else f"data.val_fraction={fraction} of {usable} usable rows rounds to 0 in every source"
        )
        lines.append(f"no validation rows: {why}, so {NO_VALIDATION}; set data.val_fraction (recipe: 0.05) to validate")
    return lines


def no_training_rows(content: dict, required: dict[str, bool]) -> list[str]:
    """An error for each required source left with no training row, with the reasons it lost its rows."""
    errors = []
    for name, s in content["sources"].items():
        if s["train_rows"] == 0 and required.get(name, True):
            own = [n.split(": ", 1)[1] for n in content["notices"] if n.startswith(f"source {name!r}: ")]
            why = "; ".join(own) if own else "no row survived"
            errors.append(
                f"source {name!r} has no training row left ({why}). Fix it, or set `required: false` on "
                "the source to train without it"
            )
    return errors
