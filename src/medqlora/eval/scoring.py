"""Multiple-choice scoring by log-likelihood, with a paired bootstrap interval of the base-vs-adapter delta.

Each choice is scored by the summed log-probability of its tokens right after the Gemma 4 chat prompt (the
generation prompt the model was trained to answer after; thinking off), so scoring is deterministic.

An item's prompt runs once for all its choices: the prompt and then each choice are laid side by side in one row,
and the attention mask lets each choice see the prompt and itself only (`model.masks.shared_prompt_masks`; choices
share positions), which is the same computation as one sequence per choice. Items are sorted by length and packed
into rows of one width, a batch is a fixed number of rows filling a token budget (one shape for every batch, so
compiled layers compile once), and only the positions that predict a choice's tokens reach the 262k-vocabulary head.
Hand-written because transformers and lm-evaluation-harness run one padded sequence per (question, choice).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from tqdm.auto import tqdm

from medqlora.data.chat import generation_prompt
from medqlora.eval import BATCH_TOKENS
from medqlora.eval.items import Item
from medqlora.model.kv_shared import only_at
from medqlora.model.masks import shared_prompt_masks
from medqlora.model.parts import embedded_inputs, logits, ple_rows_for, text_model

"""Tokens per scoring forward, by default (`--batch-size`): E2B stays under 6 GiB with its inference weights."""
ROW_TOKENS = 1024
"""Width of a packed row, unless an item is longer (then the longest item, rounded up to 64)."""
LOGIT_CHUNK = 64
"""Positions projected onto the vocabulary at once (64 x 262k fp32 logits: 64 MiB, as much again for log-softmax)."""

BatchSize = int | Literal["auto"]


def prompt_ids(tokenizer, user: str, thinking: bool = False) -> list[int]:
    """Token ids of the chat prompt that asks `user` and opens the model's turn."""
    text = generation_prompt([{"role": "user", "content": user}], tokenizer, thinking)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@dataclass
class _Block:
    """One item laid out for a packed row: its prompt, then each choice, and where its scores go."""

    first_pair: int  # index of its first choice among all (item, choice) pairs
    prompt: list[int]
    choices: list[list[int]]

    @property
    def length(self) -> int:
        return len(self.prompt) + sum(map(len, self.choices))


@dataclass
class _Row:
    """Token columns of one packed row (plain lists, made into tensors per batch)."""

    ids: list[int] = field(default_factory=list)
    group: list[int] = field(default_factory=list)  # 0: filler; k: the row's k-th item
    branch: list[int] = field(default_factory=list)  # 0: prompt; c + 1: choice c
    position: list[int] = field(default_factory=list)
    scored: list[tuple[int, int, int]] = field(default_factory=list)  # (column predicting, target id, pair)

    def add(self, block: _Block) -> None:
        group, start = max(self.group, default=0) + 1, len(self.ids)
        p = len(block.prompt)
        self.ids += block.prompt
        self.group += [group] * p
        self.branch += [0] * p
        self.position += range(p)
        for c, choice in enumerate(block.choices):
            previous = start + p - 1  # the last prompt token predicts a choice's first token
            for offset, token in enumerate(choice):
                self.scored.append((previous, token, block.first_pair + c))
                previous = len(self.ids)
                self.ids.append(token)
                self.group.append(group)
                self.branch.append(c + 1)
                self.position.append(p + offset)


def _blocks(items: list[Item], tokenizer) -> list[_Block]:
    blocks, pair = [], 0
    for item in items:
        choices = [tokenizer(choice, add_special_tokens=False)["input_ids"] for choice in item.choices]
        blocks.append(_Block(pair, prompt_ids(tokenizer, item.user), choices))
        pair += len(choices)
    return blocks


def _pack(blocks: list[_Block], width: int) -> list[_Row]:
    """First-fit decreasing: longest items first, each into the first row with room."""
    rows: list[_Row] = []
    for block in sorted(blocks, key=lambda b: -b.length):
        row = next((r for r in rows if len(r.ids) + block.length <= width), None)
        if row is None:
            row = _Row()
            rows.append(row)
        row.add(block)
    return rows


def auto_batch_tokens(model) -> int:
    """A token budget from the GPU's free memory (a quarter of it for activations; 2,048 on the CPU)."""
    if not torch.cuda.is_available():
        return 2048
    config = text_model(model).config
    widest = config.intermediate_size * (2 if getattr(config, "use_double_wide_mlp", False) else 1)
    per_token = 2 * (3 * widest + 8 * config.hidden_size)  # bf16 bytes of a layer's largest live activations
    free, _ = torch.cuda.mem_get_info()
    return int(min(max(free // 4 // per_token, 1024), 65536))


def _read_columns(batch: list[_Row]) -> list[list[int]]:
    """Each row's columns that predict a choice token, in order (a row with none reads column 0)."""
    return [sorted({col for col, _, _ in row.scored}) or [0] for row in batch]


@torch.no_grad()
def _batch_logprobs(model, batch: list[_Row], width: int, pad: int, totals: torch.Tensor) -> None:
    """One forward over `batch` (rows of `width`): adds each scored token's log-probability to its pair's total."""
    text = text_model(model)
    device = totals.device
    columns = {
        name: torch.tensor([getattr(r, name) + [fill] * (width - len(r.ids)) for r in batch])
        for name, fill in (("ids", pad), ("group", 0), ("branch", 0), ("position", 0))
    }
    ids, positions = columns["ids"].to(device), columns["position"].to(device)
    masks = shared_prompt_masks(
        columns["group"].to(device), columns["branch"].to(device), positions, text.config.sliding_window
    )
    read = _read_columns(batch)
    keep = torch.tensor([cols + cols[-1:] * (max(map(len, read)) - len(cols)) for cols in read])  # padded, [rows, K]
    with only_at(text, keep.to(device)) as sliced:  # the KV-shared layers compute only the read columns
        hidden = text(
            **embedded_inputs(model, ids, ple_rows_for(model, columns["ids"], device)),
            attention_mask=masks,
            position_ids=positions,
        ).last_hidden_state
    # where each scored token's predicting state is in the output: its index among the kept columns when sliced
    at = [{col: k if sliced else col for k, col in enumerate(cols)} for cols in read]
    entries = [(r, at[r][col], target, pair) for r, row in enumerate(batch) for col, target, pair in row.scored]
    if not entries:  # every choice of these items is empty: log p = 0
        return
    scored = torch.tensor(entries).to(device)
    picked = hidden[scored[:, 0], scored[:, 1]]
    for part in range(0, len(scored), LOGIT_CHUNK):
        chunk = slice(part, part + LOGIT_CHUNK)
        logp = torch.log_softmax(logits(model, picked[chunk]), -1)
        totals.index_add_(0, scored[chunk, 3], logp.gather(-1, scored[chunk, 2, None]).squeeze(-1))


def choice_logprobs(
    model, tokenizer, items: list[Item], batch_tokens: BatchSize = BATCH_TOKENS, desc: str = "scoring"
) -> list[list[float]]:
    """log p(choice | prompt) for every choice of every item, with a progress bar over tokens (with an ETA)."""
    blocks = _blocks(items, tokenizer)
    width = max(ROW_TOKENS, -(-max((b.length for b in blocks), default=1) // 64) * 64)
    budget = auto_batch_tokens(model) if batch_tokens == "auto" else batch_tokens
    per_batch = max(1, budget // width)
    rows = _pack(blocks, width)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = text_model(model).embed_tokens.weight.device
    totals = torch.zeros(sum(len(b.choices) for b in blocks), dtype=torch.float32, device=device)
    with tqdm(total=sum(b.length for b in blocks), desc=desc, unit="tok", unit_scale=True) as bar:
        for start in range(0, len(rows), per_batch):
            batch = rows[start : start + per_batch]
            batch += [_Row() for _ in range(per_batch - len(batch))]  # filler rows: one shape for every batch
            _batch_logprobs(model, batch, width, pad, totals)
            bar.update(sum(len(r.ids) for r in batch))
    flat = totals.tolist()  # the one read-back of the whole benchmark
    return [flat[b.first_pair : b.first_pair + len(b.choices)] for b in blocks]


def bootstrap_delta_pp(
    base_correct: list[bool], adapter_correct: list[bool], resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """95% paired-bootstrap interval of (adapter - base) accuracy, in percentage points."""
    diff = torch.tensor(adapter_correct, dtype=torch.float64) - torch.tensor(base_correct, dtype=torch.float64)
    if diff.numel() == 0:
        return (0.0, 0.0)
    index = torch.randint(diff.numel(), (resamples, diff.numel()), generator=torch.Generator().manual_seed(seed))
    means = diff[index].mean(1) * 100
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return (low, high)


def predictions(logprobs: list[float], choices: tuple[str, ...]) -> tuple[int, int]:
    """(raw, normalised) choice: the highest summed log-probability, and the highest per character of the choice
    (lm-evaluation-harness's `acc_norm`), which a one-token answer cannot win by being short."""
    raw = max(range(len(logprobs)), key=logprobs.__getitem__)
    norm = max(range(len(logprobs)), key=lambda c: logprobs[c] / max(len(choices[c]), 1))
    return raw, norm


def accuracy(items: list[Item], scores: list[list[float]]) -> tuple[float, float]:
    """(raw, length-normalised) accuracy in percent of `scores` against the items' gold choices."""
    picks = [predictions(s, item.choices) for item, s in zip(items, scores, strict=True)]
    n = max(len(items), 1)
    raw = 100 * sum(r == item.gold for item, (r, _) in zip(items, picks)) / n
    return raw, 100 * sum(m == item.gold for item, (_, m) in zip(items, picks)) / n


DELTA_METRIC = "accuracy_norm"
"""The accuracy the delta and its interval are taken on (the card says so)."""


def summarise(
    name: str, items: list[Item], base: list[list[float]], tuned: list[list[float]]
) -> tuple[dict, list[dict]]:
    """Compare the base's and the adapter's choice scores on `items`.

    Returns a summary (raw and length-normalised accuracies; the delta on the normalised one, with its 95%
    interval, in percentage points) and one record per item."""
    records = []
    correct: dict[str, list[bool]] = {key: [] for key in ("base", "adapter", "base_norm", "adapter_norm")}
    for item, b, t in zip(items, base, tuned, strict=True):
        (b_raw, b_norm), (t_raw, t_norm) = predictions(b, item.choices), predictions(t, item.choices)
        for key, pick in (("base", b_raw), ("adapter", t_raw), ("base_norm", b_norm), ("adapter_norm", t_norm)):
            correct[key].append(pick == item.gold)
        records.append(
            {
                "benchmark": name,
                "id": item.id,
                "gold": item.choices[item.gold],
                "base_pred": item.choices[b_raw],
                "adapter_pred": item.choices[t_raw],
                "base_pred_norm": item.choices[b_norm],
                "adapter_pred_norm": item.choices[t_norm],
                "base_logprobs": b,
                "adapter_logprobs": t,
            }
        )
    n = max(len(items), 1)
    rate = {key: 100 * sum(values) / n for key, values in correct.items()}
    low, high = bootstrap_delta_pp(correct["base_norm"], correct["adapter_norm"])
    summary = {
        "benchmark": name,
        "items": len(items),
        "base_accuracy": rate["base"],
        "adapter_accuracy": rate["adapter"],
        "base_accuracy_norm": rate["base_norm"],
        "adapter_accuracy_norm": rate["adapter_norm"],
        "delta_metric": DELTA_METRIC,
        "delta_pp": rate["adapter_norm"] - rate["base_norm"],
        "delta_ci95_pp": [low, high],
    }
    return summary, records
