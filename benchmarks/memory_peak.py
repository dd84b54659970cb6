"""Where the CUDA memory peak of a recorded region goes, from a `torch.cuda.memory._snapshot()`.

Replays the allocator's trace, finds the moment of the highest live total, and lists the largest live
allocations at that moment with the innermost frames of our code and the libraries that made them.
"""

from __future__ import annotations

KEEP = ("medqlora", "transformers", "peft", "bitsandbytes", "torch/utils/checkpoint", "torch/nn/functional")


def _where(frames: list[dict]) -> str:
    picked = [
        f"{f['filename'].rsplit('/site-packages/', 1)[-1]}:{f['line']} {f['name']}"
        for f in frames
        if any(k in f["filename"] for k in KEEP)
    ]
    return " <- ".join(picked[:3]) or frames[0]["name"]


def peak_report(snapshot: dict, top: int = 15) -> dict:
    """{'base_gib', 'peak_gib', 'top': [(gib, where)]}: memory live before the region, its peak, and who holds it."""
    traces = snapshot["device_traces"][0]
    base = sum(b["size"] for seg in snapshot["segments"] for b in seg["blocks"] if b["state"] == "active_allocated")
    live: dict[int, tuple[int, str]] = {}
    current = best = 0
    best_live: dict[int, tuple[int, str]] = {}
    for event in traces:
        if event["action"] == "alloc":
            frames = event.get("frames") or []
            where = _where(frames) if frames else f"{event['size'] / 2**20:.1f} MiB blocks"
            live[event["addr"]] = (event["size"], where)
            current += event["size"]
            if current > best:
                best, best_live = current, dict(live)
        elif event["action"] == "free_completed" and event["addr"] in live:
            current -= live.pop(event["addr"])[0]
    groups: dict[str, int] = {}
    for size, where in best_live.values():
        groups[where] = groups.get(where, 0) + size
    ranked = sorted(groups.items(), key=lambda kv: -kv[1])[:top]
    return {
        "live_at_end_gib": base / 2**30,
        "recorded_peak_above_start_gib": best / 2**30,
        "top": [(round(size / 2**30, 3), where) for where, size in ranked],
    }
