"""Greedy decoding with a static KV cache, a decode step replayed as one CUDA graph on the GPU.

transformers' `generate` runs each new token through Python: thousands of kernel launches and the host deciding
between them, 12.6 tokens/s at batch 1 on E2B. Here the prompt runs once (prefill), then every new token is one
replay of a graph captured on the first decode step: the cache is allocated up front (every slot a row may reach),
and the step's inputs (token, PLE rows, slot) sit in fixed buffers that the host refills between replays. The host
reads each step's tokens, which it needs anyway to gather the PLE rows from host memory and to stop rows that ended.
On the CPU the same step runs eagerly.

Rows are left-padded to the longest prompt; row r's tokens start at slot `first_slot[r]`, its positions count from
there, and the masks (`model.masks.cache_masks`) hide the padding, so each row decodes as it would alone.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from medqlora.compat import cache_kwarg
from medqlora.model.masks import cache_masks
from medqlora.model.parts import embedded_inputs, logits, ple_rows_for, text_model

SLOT_ROUNDING = 64  # cache lengths rounded up: fewer distinct graph shapes, aligned attention


class StaticCache:
    """Keys and values of every layer that computes its own, for `batch` rows of `length` slots.

    The text model calls `update` once per such layer (KV-shared layers read the K/V the model hands on); it writes
    at `write_slots` and returns the whole buffers, whose unwritten slots the masks hide. Duck-types the one method
    of transformers' `Cache` that Gemma 4 calls when positions and masks are given."""

    def __init__(self, batch: int, length: int, write_slots: torch.Tensor):
        self.batch, self.length, self.write_slots = batch, length, write_slots
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Write this step's K/V [batch, heads, T, dim] at `write_slots`; return the layer's full K/V."""
        if layer_idx not in self.keys:
            shape = (self.batch, key.shape[1], self.length, key.shape[3])
            self.keys[layer_idx] = key.new_zeros(shape)
            self.values[layer_idx] = value.new_zeros((*shape[:3], value.shape[3]))
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        keys.index_copy_(2, self.write_slots, key)
        values.index_copy_(2, self.write_slots, value)
        return keys, values


class CudaStepGraph:
    """A step function captured once as a CUDA graph and replayed.

    `capture` runs the step for real first (on a side stream, as CUDA graphs need a warm-up), so its output is that
    step's result, then records it; capturing runs no kernel, so what the step writes is written once."""

    def __init__(self):
        self.graph = torch.cuda.CUDAGraph()

    def capture(self, step: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The step's output buffer, holding the warm-up's result; every `replay` rewrites it."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            warm = step()
        torch.cuda.current_stream().wait_stream(stream)
        with torch.cuda.graph(self.graph):
            out = step()
        return out.copy_(warm)

    def replay(self) -> None:
        """Run the captured step again on whatever its input buffers hold now."""
        self.graph.replay()


class GreedyDecoder:
    """Greedy continuations of token-id prompts, stopping each row at any of `stop_ids`.

    graph: replay the decode step as a graph (default: when the model is on a GPU). `make_graph` builds the graph
    (default `CudaStepGraph`); tests inject one that records capture and replay and runs the step eagerly."""

    def __init__(self, model, stop_ids: set[int], pad_id: int = 0, graph: bool | None = None, make_graph=None):
        self.model, self.stop_ids, self.pad_id = model, set(stop_ids), pad_id
        self.text = text_model(model)
        self.device = self.text.embed_tokens.weight.device
        self.use_graph = self.device.type == "cuda" if graph is None else graph
        self.make_graph = make_graph or CudaStepGraph
        self.window = self.text.config.sliding_window
        self.cache_key = cache_kwarg(self.text)

    def _forward(self, ids, ple_rows, slots, first_slot, cache) -> torch.Tensor:
        """Next-token argmax at the last of `slots` for every row."""
        positions = (slots[None, :] - first_slot[:, None]).clamp(min=0)
        cache.write_slots = slots
        hidden = self.text(
            **embedded_inputs(self.model, ids, ple_rows),
            attention_mask=cache_masks(slots, first_slot, cache.length, self.window),
            position_ids=positions,
            **{self.cache_key: cache},
        ).last_hidden_state
        return logits(self.model, hidden[:, -1]).argmax(-1)

    @torch.no_grad()
    def __call__(self, prompts: list[list[int]], max_new_tokens: int, desc: str = "generating") -> list[list[int]]:
        """Each prompt's greedy continuation: up to `max_new_tokens` ids, ending at (and without) a stop id."""
        batch, width = len(prompts), max(map(len, prompts))
        length = -(-(width + max_new_tokens) // SLOT_ROUNDING) * SLOT_ROUNDING
        device = self.device
        host_ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts])
        first_slot = torch.tensor([width - len(p) for p in prompts], device=device)
        slots = torch.arange(width, device=device)
        cache = StaticCache(batch, length, slots)
        token = self._forward(host_ids.to(device), ple_rows_for(self.model, host_ids, device), slots, first_slot, cache)
        # the decode step's fixed inputs: the host refills them, the graph (or the eager step) reads them
        step_ids = torch.zeros((batch, 1), dtype=torch.long, device=device)
        step_rows = ple_rows_for(self.model, torch.zeros((batch, 1), dtype=torch.long), device)
        step_slot = torch.full((1,), width, device=device)

        def step() -> torch.Tensor:
            return self._forward(step_ids, step_rows, step_slot, first_slot, cache)

        out: list[list[int]] = [[] for _ in prompts]
        running = [True] * batch
        graph = output = None
        with tqdm(total=max_new_tokens, desc=desc, unit="step") as bar:
            for n in range(max_new_tokens):
                chosen = token.tolist()  # the one read-back a step: stops and the next PLE rows need the ids
                for r, t in enumerate(chosen):
                    running[r] = running[r] and t not in self.stop_ids
                    if running[r]:
                        out[r].append(t)
                bar.update()
                if not any(running) or n == max_new_tokens - 1:
                    break
                step_ids.copy_(token[:, None])
                if step_rows is not None:
                    step_rows.copy_(ple_rows_for(self.model, torch.tensor(chosen)[:, None], device))
                step_slot.fill_(width + n)
                if not self.use_graph:
                    token = step()
                elif graph is None:
                    graph = self.make_graph()
                    output = graph.capture(step)
                    token = output.clone()
                else:
                    graph.replay()
                    token = output.clone()
        return out
