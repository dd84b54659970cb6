"""Batches: which rows go together (batch samplers) and how they become tensors (collators).

Two layouts, both deterministic for a seed and an epoch:
- padded: `micro_batch_size` rows padded to the longest, optionally grouped by length;
- packed: `micro_batch_size` packed rows of `pack_tokens` tokens each (default = max length), samples
  concatenated with position ids restarting at every sample. transformers reads restarting position ids
  as packed sequences and masks attention across them (`masking_utils.find_packed_sequence_indices`).
  Rows of the recipe's shape (2 x 2048) hold several samples each instead of one plus padding.
Written by hand because neither Lightning nor datasets packs with per-sample position ids.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from medqlora.data.chat import IGNORE_INDEX

LOOKAHEAD = 256  # rows sorted together when forming length groups or packs: shuffle vs. fill trade-off


class _EpochBatchSampler(Sampler[list[int]]):
    """Shared shape: a seeded plan of batches per epoch, sharded round-robin across ranks."""

    def __init__(self, lengths: Sequence[int], seed: int, shuffle: bool, rank: int = 0, world_size: int = 1):
        self.lengths, self.seed, self.shuffle = list(lengths), seed, shuffle
        self.rank, self.world_size, self.epoch = rank, world_size, 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at each epoch so the order changes between epochs but not between runs."""
        self.epoch = epoch

    def resume(self, epoch: int, batches_done: int) -> None:
        """The next iteration starts at batch `batches_done` of `epoch` (a resumed run: no batch twice)."""
        self.epoch, self._skip = epoch, batches_done

    def plan(self) -> list[list[int]]:
        """All batches of this epoch, before sharding."""
        raise NotImplementedError

    def _order(self) -> list[int]:
        order = list(range(len(self.lengths)))
        if self.shuffle:
            random.Random(f"{self.seed}:{self.epoch}").shuffle(order)
        return order

    def _shard(self, batches: list[list[int]]) -> list[list[int]]:
        if self.shuffle:
            random.Random(f"{self.seed}:{self.epoch}:batches").shuffle(batches)
        usable = len(batches) - len(batches) % self.world_size if self.world_size > 1 else len(batches)
        return batches[self.rank : usable : self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        skip, self._skip = self._skip, 0
        return iter(self._shard(self.plan())[skip:])

    def __len__(self) -> int:
        return len(self._shard(self.plan()))


class LengthGroupedBatchSampler(_EpochBatchSampler):
    """Fixed-size batches; with `group_by_length`, rows of similar length share a batch (less padding)."""

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        group_by_length: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__(lengths, seed, shuffle, rank, world_size)
        self.batch_size, self.group_by_length = batch_size, group_by_length

    def plan(self) -> list[list[int]]:
        order = self._order()
        if self.group_by_length:
            chunk = LOOKAHEAD * self.batch_size
            order = [
                i
                for s in range(0, len(order), chunk)
                for i in sorted(order[s : s + chunk], key=lambda i: -self.lengths[i])
            ]
        return [order[s : s + self.batch_size] for s in range(0, len(order), self.batch_size)]


class PackingBatchSampler(_EpochBatchSampler):
    """Packs rows into rows of at most `pack_tokens` tokens (first-fit decreasing within a window) and
    yields `rows_per_batch` packs per micro-batch, as (row index, slot) pairs: the slot is the packed row
    of the micro-batch that the row goes into (read with `PackedRows`)."""

    def __init__(
        self,
        lengths: Sequence[int],
        pack_tokens: int,
        seed: int,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        rows_per_batch: int = 1,
    ):
        super().__init__(lengths, seed, shuffle, rank, world_size)
        self.pack_tokens, self.rows_per_batch = pack_tokens, rows_per_batch  # rows fit: check_lengths

    def packs(self) -> list[list[int]]:
        """This epoch's packs (lists of row indices), in training order."""
        order, packs = self._order(), []
        for s in range(0, len(order), LOOKAHEAD):
            window: list[tuple[int, list[int]]] = []  # (tokens used, rows)
            for i in sorted(order[s : s + LOOKAHEAD], key=lambda i: -self.lengths[i]):
                slot = next((w for w in window if w[0] + self.lengths[i] <= self.pack_tokens), None)
                if slot is None:
                    window.append((self.lengths[i], [i]))
                else:
                    window[window.index(slot)] = (slot[0] + self.lengths[i], slot[1] + [i])
            packs.extend(rows for _, rows in window)
        if self.shuffle:
            random.Random(f"{self.seed}:{self.epoch}:packs").shuffle(packs)
        return packs

    def plan(self) -> list[list[tuple[int, int]]]:
        packs, k = self.packs(), self.rows_per_batch
        return [
            [(i, slot) for slot, pack in enumerate(packs[s : s + k]) for i in pack] for s in range(0, len(packs), k)
        ]

    def most_samples(self) -> int:
        """The most samples a micro-batch of this epoch's plan holds, each packed row's filler segment counted."""
        return max((len(batch) for batch in self.plan()), default=0) + self.rows_per_batch


class PackedRows(Dataset):
    """A split addressed by (row index, slot) pairs, so the collator knows which packed row each row joins."""

    def __init__(self, rows):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, slot = key
        return {**self.rows[index], "slot": slot}


def pad_collate(rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row: input_ids, attention_mask, labels (-100 on padding)."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[b, :n], labels[b, :n], mask[b, :n] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, **_row_ids(rows)}


def _row_ids(rows: list[dict]) -> dict[str, list[str]]:
    """Which source rows a batch holds (`row_ids`), when the rows carry ids: errors can then name them."""
    return {"row_ids": [r["row_id"] for r in rows]} if rows and "row_id" in rows[0] else {}


def sample_bounds(position_ids: torch.Tensor, slots: int | None = None) -> torch.Tensor:
    """Cumulative starts (int32, [slots + 1]) of the samples of packed rows [batch, T], flattened row after row.

    A sample starts at each row's start and wherever a position does not follow on from the one before (the rule of
    `model.masks.sample_ids`). With `slots`, the bounds are padded with empty samples to that many (or to the count,
    when the rows hold more), so micro-batches keep one shape. Reads the positions on the host: call it on host
    tensors. This is the batch's `cu_seq_lens`, what variable-length attention reads (model/attention.py)."""
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    first = starts.flatten().nonzero().flatten().to(torch.int32)
    total = position_ids.numel()
    bounds = torch.full((max(len(first), slots or 0) + 1,), total, dtype=torch.int32)
    bounds[: len(first)] = first
    return bounds


def _packed_row(rows: list[dict], width: int | None, pad_id: int) -> tuple[torch.Tensor, ...]:
    ids = [t for r in rows for t in r["input_ids"]]
    labels = [t for r in rows for t in r["labels"]]
    positions = [p for r in rows for p in range(len(r["input_ids"]))]
    filler = (width or len(ids)) - len(ids)  # a segment of its own: it attends only to itself
    ids, labels, positions = ids + [pad_id] * filler, labels + [IGNORE_INDEX] * filler, positions + list(range(filler))
    ids_t, labels_t, pos_t = (torch.tensor(x, dtype=torch.long) for x in (ids, labels, positions))
    labels_t[pos_t == 0] = IGNORE_INDEX  # a sample's first token is never predicted from the previous one
    return ids_t, pos_t, labels_t


def pack_collate(
    rows: list[dict],
    width: int | None = None,
    pad_id: int = 0,
    packed_rows: int | None = None,
    sample_slots: int | None = None,
) -> dict[str, torch.Tensor]:
    """Concatenate rows into packed rows (one per `slot`, default all in one); position ids restart at 0
    for every sample. With `width`, each packed row is filled to exactly `width` tokens by a separate
    filler segment, and with `packed_rows` a micro-batch with fewer packs (an epoch's last) gets rows of filler
    alone, so every micro-batch has one shape: compiled layers then never recompile (a new batch size costs
    ~50 s of compilation on E2B) and attention kernels keep their plans. `cu_seq_lens` has `sample_slots` samples
    (unused ones empty) for the same reason."""
    slots: dict[int, list[dict]] = {}
    for r in rows:
        slots.setdefault(r.get("slot", 0), []).append(r)
    packed = [_packed_row(group, width, pad_id) for _, group in sorted(slots.items())]
    if width is None and len(packed) > 1:
        raise ValueError("several packed rows need a width to stack them; pass width=pack_tokens")
    if width is not None and packed_rows is not None:
        packed += [_packed_row([], width, pad_id) for _ in range(packed_rows - len(packed))]
    ids, positions, labels = (torch.stack(parts) for parts in zip(*packed))
    bounds = sample_bounds(positions, sample_slots)
    return {"input_ids": ids, "position_ids": positions, "labels": labels, "cu_seq_lens": bounds, **_row_ids(rows)}


class Collator:
    """Picklable collate function for DataLoader workers: padded, or `packed_rows` packed rows of `pack_tokens`
    holding `sample_slots` samples (`PackingBatchSampler.most_samples`)."""

    def __init__(
        self,
        packed: bool,
        pad_id: int,
        pack_tokens: int | None = None,
        packed_rows: int | None = None,
        sample_slots: int | None = None,
    ):
        self.packed, self.pad_id, self.pack_tokens, self.packed_rows = packed, pad_id, pack_tokens, packed_rows
        self.sample_slots = sample_slots

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        if self.packed:
            return pack_collate(rows, self.pack_tokens, self.pad_id, self.packed_rows, self.sample_slots)
        return pad_collate(rows, self.pad_id)


class ResumableDataLoader(DataLoader):
    """A DataLoader that Lightning saves and restores, so a resumed run continues at the next unseen batch.

    `batches_done` reports how many batches of the current epoch the loop has trained on; the batch sampler's
    plan is a pure function of seed and epoch, so that count is the whole state.
    """

    def __init__(self, *args, batches_done: Callable[[], int], **kwargs):
        super().__init__(*args, **kwargs)
        self.batches_done = batches_done

    def state_dict(self) -> dict:
        """Epoch and batches trained so far in it."""
        return {"epoch": self.batch_sampler.epoch, "batches_done": self.batches_done()}

    def load_state_dict(self, state_dict: dict) -> None:
        """Skip what the interrupted run already trained on."""
        self.batch_sampler.resume(state_dict["epoch"], state_dict["batches_done"])
