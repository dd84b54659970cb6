"""The data card: what the mix did, per source and stage, as JSON (for scripts) and Markdown (for people)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medqlora.data.chat import IGNORE_INDEX
from medqlora.data.collate import LengthGroupedBatchSampler, PackingBatchSampler
from medqlora.io import atomic_write_text
from medqlora.runs import DATA_CARD

RECIPE_TARGET = {"train": 47_189, "val": 2_483}  # the model card's split sizes


def padding_ratio(lengths: list[int], batches: list[list[int]], packed: bool, pack_tokens: int) -> float:
    """Share of the tensor slots that hold no token: padding (padded) or unused budget (packed)."""
    used = sum(lengths)
    slots = sum(pack_tokens if packed else max(lengths[i] for i in b) * len(b) for b in batches)
    return 0.0 if not slots else round(1 - used / slots, 4)


@dataclass
class DataCard:
    """Counts per source at each stage, token lengths, supervised share, padding, licences and seed."""

    content: dict

    @classmethod
    def from_run(cls, dm, mix, train_drops: dict, val_drops: dict) -> DataCard:
        """Summarise a built MedicalMixDataModule (its splits, settings and the mix statistics)."""
        sources = {}
        val_sources = dm.val_set["source"]
        for name, stats in mix.stats.items():
            rows = dm.train_set.filter(lambda r, n=name: r["source"] == n)
            lengths = np.array(rows["length"] or [0])
            supervised = sum(sum(1 for t in labels if t != IGNORE_INDEX) for labels in rows["labels"])
            drawn = {"drawn_train": stats["train"], "drawn_val": stats["val"]}  # before tokenising
            sources[name] = {
                **{k: v for k, v in stats.items() if k not in ("train", "val")},
                **drawn,
                "removed_after_tokenising": {"train": train_drops.get(name, {}), "val": val_drops.get(name, {})},
                "train_rows": len(rows),
                "val_rows": val_sources.count(name),  # what is trained and validated on
                "token_length_percentiles": {f"p{p}": int(np.percentile(lengths, p)) for p in (5, 50, 95, 100)},
                "supervised_token_share": round(supervised / max(1, int(lengths.sum())), 4),
            }
        lengths = dm.train_set["length"]
        padded = LengthGroupedBatchSampler(lengths, dm.micro_batch_size, dm.seed, True, False).plan()
        grouped = LengthGroupedBatchSampler(lengths, dm.micro_batch_size, dm.seed, True, True).plan()
        packs = PackingBatchSampler(lengths, dm.pack_tokens, dm.seed, True).packs()
        totals = {"train": len(dm.train_set), "val": len(dm.val_set)}
        return cls(
            {
                "seed": dm.seed,
                "max_length": dm.max_length,
                "reasoning": dm.reasoning,
                "sample_policy": dm.sample_policy,
                "val_fraction": dm.val_fraction,
                "tokenizer": dm.tokenizer_name,
                "totals": totals,
                "recipe_target": RECIPE_TARGET,
                "recipe_gap": {k: totals[k] - RECIPE_TARGET[k] for k in totals},
                "padding_ratio": {
                    "padded": padding_ratio(lengths, padded, False, 0),
                    "padded_grouped_by_length": padding_ratio(lengths, grouped, False, 0),
                    f"packed_{dm.pack_tokens}": padding_ratio(lengths, packs, True, dm.pack_tokens),
                },
                "layout": "packed" if dm.packing else "padded",
                "sources": sources,
            }
        )

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
            f"Rows: {c['totals']['train']} train / {c['totals']['val']} validation; the model card's "
            f"recipe: {c['recipe_target']['train']} / {c['recipe_target']['val']} "
            f"(difference {c['recipe_gap']['train']:+d} / {c['recipe_gap']['val']:+d}).",
            "",
            "| source | location | licence | loaded | removed | target | train rows | val rows | "
            "upsampled | p50 / p95 tokens | supervised share |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, s in c["sources"].items():
            removed = {**s["removed"], **{f"{k} (tokens)": v for k, v in tokenising_drops(s).items()}}
            removed_text = ", ".join(f"{k} {v}" for k, v in removed.items()) or "none"
            p = s["token_length_percentiles"]
            lines.append(
                f"| {name} | `{s['location']}` | {s['license']} | {s['loaded']} | {removed_text} | "
                f"{s['target']} | {s['train_rows']} | {s['val_rows']} | {s['upsampled']} | "
                f"{p['p50']} / {p['p95']} | {s['supervised_token_share']:.1%} |"
            )
        lines += ["", "Padding ratio (share of tensor slots holding no token):", ""]
        lines += [f"- {k}: {v:.1%}" for k, v in c["padding_ratio"].items()]
        return "\n".join(lines) + "\n"

    def write(self, directory: Path) -> None:
        """Write data_card.json and data_card.md into `directory` (atomically)."""
        atomic_write_text(directory / f"{DATA_CARD}.json", json.dumps(self.content, indent=2))
        atomic_write_text(directory / f"{DATA_CARD}.md", self.markdown())


def tokenising_drops(source: dict) -> dict[str, int]:
    """A source's rows removed after tokenising, by reason, train and validation together."""
    after = source["removed_after_tokenising"]
    return {k: after["train"].get(k, 0) + after["val"].get(k, 0) for k in {**after["train"], **after["val"]}}


FIXES = {
    "too_long": "raise data.max_length (now {max_length}) or set data.truncation: truncate",
    "no_supervised_tokens": "raise data.max_length (now {max_length}): the prompt fills it",
    "duplicate": "the source repeats its own rows or another source's",
    "eval_contamination": "it overlaps an evaluation set (data.decontaminate)",
    "bad_options": "check that `input` holds 'Q: question {options}'",
}
DEFAULT_FIX = "check the source's `columns:` map and its rows"


def source_losses(content: dict, required: dict[str, bool]) -> tuple[list[str], list[str]]:
    """(warnings, errors) from a data card: a warning for each source that loses more than half of the rows
    entering a stage (converting and cleaning; tokenising) to one reason; an error for each required source
    left with no training row."""
    warnings, errors = [], []
    for name, s in content["sources"].items():
        stages = [(s["loaded"], s["removed"]), (s["drawn_train"] + s["drawn_val"], tokenising_drops(s))]
        own = []
        for entering, reasons in stages:
            for reason, count in reasons.items():
                if entering and count > entering / 2:
                    fix = FIXES.get(reason, DEFAULT_FIX).format(max_length=content["max_length"])
                    own.append(f"{count} of {entering} rows ({count / entering:.0%}) removed as {reason}; {fix}")
        warnings += [f"source {name!r}: {text}" for text in own]
        if s["train_rows"] == 0 and required.get(name, True):
            why = "; ".join(own) if own else "no row survived"
            errors.append(
                f"source {name!r} has no training row left ({why}). Fix it, or set `required: false` on "
                "the source to train without it"
            )
    return warnings, errors
