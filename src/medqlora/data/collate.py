"""Batches: which rows go together (batch samplers) and how they become tensors (collators).

Two layouts, both deterministic for a seed and an epoch:
- padded: `micro_batch_size` rows padded to the longest, optionally grouped by length;
- packed: rows concatenated into one padding-free row of at most `pack_tokens` tokens, with position
  ids restarting at every sample. transformers reads restarting position ids as packed sequences and
  masks attention across them (`masking_utils.find_packed_sequence_indices`).
Written by hand because neither Lightning nor datasets packs with per-sample position ids.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from medqlora.data.chat import IGNORE_INDEX

LOOKAHEAD = 256  # rows sorted together when forming length groups or packs: shuffle vs. fill trade-off


class _EpochBatchSampler(Sampler[list[int]]):
    """Shared shape: a seeded plan of batches per epoch, sharded round-robin across ranks."""

    def __init__(self, lengths: Sequence[int], seed: int, shuffle: bool, rank: int = 0, world_size: int = 1):
        self.lengths, self.seed, self.shuffle = list(lengths), seed, shuffle
        self.rank, self.world_size, self.epoch = rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at each epoch so the order changes between epochs but not between runs."""
        self.epoch = epoch

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
        return batches[self.rank:usable:self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._shard(self.plan()))

    def __len__(self) -> int:
        return len(self._shard(self.plan()))


class LengthGroupedBatchSampler(_EpochBatchSampler):
    """Fixed-size batches; with `group_by_length`, rows of similar length share a batch (less padding)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, shuffle: bool = True,
                 group_by_length: bool = False, rank: int = 0, world_size: int = 1):
        super().__init__(lengths, seed, shuffle, rank, world_size)
        self.batch_size, self.group_by_length = batch_size, group_by_length

    def plan(self) -> list[list[int]]:
        order = self._order()
        if self.group_by_length:
            chunk = LOOKAHEAD * self.batch_size
            order = [i for s in range(0, len(order), chunk)
                     for i in sorted(order[s:s + chunk], key=lambda i: -self.lengths[i])]
        return [order[s:s + self.batch_size] for s in range(0, len(order), self.batch_size)]


class PackingBatchSampler(_EpochBatchSampler):
    """Groups rows into packs of at most `pack_tokens` tokens (first-fit decreasing within a window)."""

    def __init__(self, lengths: Sequence[int], pack_tokens: int, seed: int, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1):
        super().__init__(lengths, seed, shuffle, rank, world_size)
        too_long = max(self.lengths, default=0)
        if too_long > pack_tokens:
            raise ValueError(f"data.pack_tokens={pack_tokens} is smaller than a {too_long}-token row; "
                             "set pack_tokens >= max_length")
        self.pack_tokens = pack_tokens

    def plan(self) -> list[list[int]]:
        order, packs = self._order(), []
        for s in range(0, len(order), LOOKAHEAD):
            window: list[tuple[int, list[int]]] = []  # (tokens used, rows)
            for i in sorted(order[s:s + LOOKAHEAD], key=lambda i: -self.lengths[i]):
                slot = next((w for w in window if w[0] + self.lengths[i] <= self.pack_tokens), None)
                if slot is None:
                    window.append((self.lengths[i], [i]))
                else:
                    window[window.index(slot)] = (slot[0] + self.lengths[i], slot[1] + [i])
            packs.extend(rows for _, rows in window)
        return packs


def pad_collate(rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row: input_ids, attention_mask, labels (-100 on padding)."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[b, :n], labels[b, :n], mask[b, :n] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pack_collate(rows: list[dict]) -> dict[str, torch.Tensor]:
    """Concatenate rows into one padding-free row; position ids restart at 0 for every sample."""
    ids = torch.tensor([t for r in rows for t in r["input_ids"]], dtype=torch.long)
    labels = torch.tensor([t for r in rows for t in r["labels"]], dtype=torch.long)
    positions = torch.cat([torch.arange(len(r["input_ids"])) for r in rows])
    labels[positions == 0] = IGNORE_INDEX  # a sample's first token is never predicted from the previous one
    return {"input_ids": ids[None], "position_ids": positions[None], "labels": labels[None]}


class Collator:
    """Picklable collate function for DataLoader workers: padded or packed layout."""

    def __init__(self, packed: bool, pad_id: int):
        self.packed, self.pad_id = packed, pad_id

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        return pack_collate(rows) if self.packed else pad_collate(rows, self.pad_id)
