"""Longest expected trials first: a grid's points are handed to Ray in descending order of their expected training
time, so the last trials to start are short ones and no core sits idle while one long trial finishes alone.

The estimate is relative and comes from the config alone (no model is built): the layer kind's cost per epoch
relative to a 7x7 convolution (from the per-trial seconds of the main job on a 2-core CPU: CF-Conv's per-pair MLPs
about 4x, the mixed {3,5,7} kernel and FlexConv's kernel net about 2x, N-Jet about 1.8x, NIFF 1.5x, the envelope
1.2x; a plain convolution scales with its kernel area), times epochs and training examples.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["expected_cost", "longest_first", "KIND_COST"]

#: training time per epoch relative to a 7x7 convolution layer of the same backbone (unknown kinds: 1.5)
KIND_COST: dict[str, float] = {"cfconv": 4.0, "mixed": 2.0, "flexconv": 2.0, "njet": 1.8, "niff": 1.5,
                               "envelope": 1.2}


def expected_cost(config: Mapping[str, Any]) -> float:
    """A relative estimate of a trial's training time from its config (larger: longer)."""
    kind = str(config.get("conv", "conv"))
    if kind == "conv":
        k = config.get("kernel_size") or 3
        k = max(k) if isinstance(k, (list, tuple)) else k
        per_epoch = 0.3 + 0.7 * (float(k) / 7.0) ** 2  # data loading and the rest of the step do not shrink with k
    else:
        per_epoch = KIND_COST.get(kind, 1.5)
    examples = config.get("train_subset") or 1
    return per_epoch * float(config.get("epochs") or 1) * float(examples)


def longest_first(params: list[dict[str, Any]], configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The sampler params of a grid's points, longest expected trial first (ties keep the grid's order)."""
    order = sorted(range(len(params)), key=lambda i: -expected_cost(configs[i]))
    return [params[i] for i in order]
