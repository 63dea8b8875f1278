"""Side-by-side timing for the demo and the benchmarks in experiments/.

Candidates run interleaved, round after round, and are compared by their medians, so background load on a shared
machine hits all of them alike. Report ratios, not seconds.
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
            device: str = "cpu") -> dict[str, float]:
    """Median seconds per call of each candidate, measured interleaved."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    reps = {}
    for name, fn in candidates.items():
        for _ in range(warmup):
            fn()
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        once = time.perf_counter() - t0
        reps[name] = max(1, int(min_time / max(once, 1e-6)))
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            sync()
            t0 = time.perf_counter()
            for _ in range(reps[name]):
                fn()
            sync()
            samples[name].append((time.perf_counter() - t0) / reps[name])
    return {name: statistics.median(v) for name, v in samples.items()}
