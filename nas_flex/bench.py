"""Side-by-side timing for the demo and the benchmarks in experiments/.

Candidates run interleaved, round after round, and are compared by their medians, so background load on a shared
machine hits all of them alike. Report ratios, not seconds. On a loaded CPU, ``clock="cpu"`` (process CPU time) with
one torch thread measures the work itself, which wall time on a busy machine does not.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def fwd_bwd(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
    """A closure running forward and backward of ``fn`` (sum of outputs as the loss)."""

    def step() -> None:
        fn().sum().backward()

    return step


def compare(candidates: dict[str, Callable[[], None]], *, rounds: int = 7, warmup: int = 2, min_time: float = 0.05,
            device: str = "cpu", clock: str = "wall") -> dict[str, float]:
    """Median seconds per call of each candidate, measured interleaved.

    Args:
        clock: "wall" (time.perf_counter) or "cpu" (time.process_time: CPU seconds of this process, all threads).
    """
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    if clock not in ("wall", "cpu"):
        raise ValueError(f"`clock` must be 'wall' or 'cpu', but got {clock!r}")
    if clock == "cpu" and device.startswith("cuda"):
        raise ValueError("clock='cpu' measures host CPU time; use clock='wall' on CUDA")
    now = time.perf_counter if clock == "wall" else time.process_time
    reps = {}
    for name, fn in candidates.items():
        for _ in range(warmup):
            fn()
        sync()
        t0 = now()
        fn()
        sync()
        once = now() - t0
        reps[name] = max(1, int(min_time / max(once, 1e-6)))
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    for r in range(rounds):
        # rotate the order every round, and give each candidate one untimed call first: a candidate that frees
        # large buffers (an FFT) otherwise makes the next one pay the allocator's page faults
        for name in names[r % len(names):] + names[: r % len(names)]:
            fn = candidates[name]
            fn()
            sync()
            t0 = now()
            for _ in range(reps[name]):
                fn()
            sync()
            samples[name].append((now() - t0) / reps[name])
    return {name: statistics.median(v) for name, v in samples.items()}
