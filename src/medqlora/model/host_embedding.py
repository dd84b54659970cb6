"""The per-layer embedding table (PLE) in host memory instead of on the GPU.

On E2B the PLE table is 262,144 x 8,960 (2.35 B parameters, 4.4 GiB in bf16), frozen, and a step reads
only the rows of its own tokens. `HostEmbedding` keeps the table on the CPU and ships those rows: the
Lightning module gathers them for a batch before the batch is moved to the GPU, so the copy rides along with
the batch, and hands them to the text model as its `per_layer_inputs` (`parts.embedded_inputs`); a call of the
module itself (a user's forward through transformers) gathers synchronously.
Hand-written because neither transformers nor accelerate offers a frozen gather-only host embedding.

Several processes on one machine (DDP, FSDP) share one copy: `share_across_local_ranks` maps a single file into
each of them, so host memory for the table does not grow with the number of GPUs.
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

import torch
from torch import nn

from medqlora.io import atomic_path


class HostEmbedding(nn.Module):
    """Drop-in for Gemma 4's scaled `embed_tokens_per_layer` that keeps its table in host memory.

    The table is a plain attribute, not a parameter or buffer, so `module.to(cuda)` (as Lightning does)
    leaves it on the host; it is frozen and never saved in checkpoints or adapters.
    """

    def __init__(self, embedding: nn.Embedding, dtype: torch.dtype):
        super().__init__()
        self.table = embedding.weight.detach().to("cpu", dtype)
        # Release the source storage: loaders and hooks may keep the old module alive, and if it was ever
        # materialised on the GPU it would pin 4.4 GiB there (see docs/benchmarks.md).
        embedding.weight.data = torch.empty(0, dtype=self.table.dtype)
        self.embedding_dim = self.table.shape[1]
        self.scale = float(getattr(embedding, "scalar_embed_scale", 1.0))
        self._scale_on: dict[tuple, torch.Tensor] = {}  # the scale as a tensor per (device, dtype), made once
        # two pinned buffers, alternated: page-locking 70 MB every step is slow, and the batch gathered
        # into one buffer may still be copying to the GPU while the next batch is gathered
        self._pinned: list[torch.Tensor | None] = [None, None]
        self._turn = 0

    def _buffer(self, rows: int) -> torch.Tensor:
        if not torch.cuda.is_available():
            return torch.empty((rows, self.embedding_dim), dtype=self.table.dtype)
        self._turn ^= 1
        buffer = self._pinned[self._turn]
        if buffer is None or buffer.shape[0] < rows:
            buffer = torch.empty((rows, self.embedding_dim), dtype=self.table.dtype, pin_memory=True)
            self._pinned[self._turn] = buffer
        return buffer[:rows]

    def gather(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Rows of the table for `input_ids` (CPU tensor), in pinned memory when CUDA is present."""
        ids = input_ids.reshape(-1).cpu()
        out = self._buffer(ids.numel())
        torch.index_select(self.table, 0, ids, out=out)
        return out.view(*input_ids.shape, self.embedding_dim)

    def write_table(self, path: Path) -> None:
        """Write the table's bytes to `path` (atomically), for `map_table`."""
        with atomic_path(path) as tmp:
            self.table.contiguous().view(torch.uint8).numpy().tofile(tmp)

    def map_table(self, path: Path) -> None:
        """Serve the table from `path` instead of this process's own copy: a private read-only mapping, whose pages
        the page cache shares with every other process that maps the same file."""
        shape, dtype = self.table.shape, self.table.dtype
        self.table = torch.from_file(str(path), shared=False, size=self.table.numel(), dtype=dtype).view(shape)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Scaled embedding rows on the ids' device, as `Gemma4TextScaledWordEmbedding` returns them."""
        return self.scaled(self.gather(input_ids).to(input_ids.device, non_blocking=True))

    def scaled(self, rows: torch.Tensor) -> torch.Tensor:
        """Gathered rows (`gather`, on any device) times the embedding's scale, as `forward` returns them."""
        key = (rows.device, rows.dtype)
        if key not in self._scale_on:  # not per call: a host-to-GPU copy inside a CUDA graph capture is an error
            self._scale_on[key] = torch.tensor(self.scale, dtype=rows.dtype, device=rows.device)
        return rows * self._scale_on[key]


def share_across_local_ranks(embedding: HostEmbedding, strategy, local_rank: int) -> Path:
    """One host copy of the table per machine: local rank 0 writes it to a file in the temp directory, every rank
    maps that file, and the file is unlinked once all have (the mappings stay valid; nothing is left behind).

    Collective: call on every rank. Returns the file's (now removed) path."""
    path = Path(tempfile.gettempdir()) / f"medqlora-ple-{strategy.broadcast(uuid.uuid4().hex)}.bin"
    if local_rank == 0:
        embedding.write_table(path)
    strategy.barrier()
    embedding.map_table(path)
    strategy.barrier()
    if local_rank == 0:
        path.unlink(missing_ok=True)  # a temp directory shared between machines: another node's rank 0 was first
    return path
