"""Measured compute: forward FLOPs with FFTs counted, and parameter counts.

torch's ``FlopCounterMode`` counts matmuls and convolutions but treats FFTs as free, which would make every
frequency-domain layer (and the FFT path of a large-kernel conv) look like it costs nothing. ``count_flops`` adds a
formula for the three aten FFT ops, about 5 N log2 N real flops per complex FFT of N points (half that for a
real-input or real-output transform), so every FFT anywhere in the model is counted wherever it is called from.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["FlopCount", "count_flops", "count_parameters", "FFT_OPS", "AllocatedBytes", "allocated_bytes"]

aten = torch.ops.aten


def _points(shape: Sequence[int], dim: Sequence[int]) -> tuple[int, int]:
    """(transform length N, number of transforms) for an FFT over ``dim`` of a tensor of ``shape``."""
    n = math.prod(int(shape[d]) for d in dim)
    batch = math.prod(int(s) for s in shape) // max(n, 1)
    return n, batch


def _complex_fft_flops(n: int) -> float:
    return 5.0 * n * math.log2(n) if n > 1 else 0.0


def _r2c_flops(self_shape, dim, normalization, onesided, out_shape=None) -> int:
    n, batch = _points(self_shape, dim)
    return int(0.5 * batch * _complex_fft_flops(n))  # real input: half a complex FFT


def _c2r_flops(self_shape, dim, normalization, last_dim_size, out_shape=None) -> int:
    n, batch = _points(out_shape, dim)  # the real output has the full length
    return int(0.5 * batch * _complex_fft_flops(n))


def _c2c_flops(self_shape, dim, normalization, forward, out_shape=None) -> int:
    n, batch = _points(self_shape, dim)
    return int(batch * _complex_fft_flops(n))


FFT_OPS = {
    aten._fft_r2c: _r2c_flops,
    aten._fft_c2r: _c2r_flops,
    aten._fft_c2c: _c2c_flops,
}


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one forward pass (multiply and add counted separately, as FlopCounterMode does).

    Attributes:
        total: all counted flops, FFTs included.
        fft: the share spent in FFTs.
        by_op: flops per aten op name.
        batch_size: the batch the forward ran on; ``per_sample`` divides by it.
    """

    total: int
    fft: int
    by_op: dict[str, int] = field(default_factory=dict)
    batch_size: int = 1

    @property
    def per_sample(self) -> float:
        return self.total / max(self.batch_size, 1)


def count_flops(model: nn.Module, inputs: torch.Tensor | tuple[Any, ...]) -> FlopCount:
    """Count the forward FLOPs of ``model(*inputs)``, FFTs included, without recording gradients.

    Example:
        >>> import torch
        >>> from nas_flex.functional import fft_conv2d
        >>> class F(torch.nn.Module):
        ...     def forward(self, x):
        ...         return fft_conv2d(x, torch.ones(1, 1, 5, 5))
        >>> count_flops(F(), torch.randn(1, 1, 8, 8)).fft > 0
        True
    """
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    counter = FlopCounterMode(display=False, custom_mapping=FFT_OPS)
    with torch.no_grad(), counter:
        model(*args)
    by_op = {str(op): int(v) for op, v in counter.get_flop_counts().get("Global", {}).items()}
    fft = sum(v for op, v in by_op.items() if "_fft_" in op)
    batch = int(args[0].shape[0]) if args and hasattr(args[0], "shape") and args[0].dim() > 0 else 1
    return FlopCount(total=int(counter.get_total_flops()), fft=fft, by_op=by_op, batch_size=batch)


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


class AllocatedBytes(TorchDispatchMode):
    """Sums the bytes of every new storage an aten op returns while active, forward and backward: what a step
    allocates, on any device. Views and in-place results share an input's storage and are not counted."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.total += t.untyped_storage().nbytes()
        return out


def allocated_bytes(step: Callable[[], Any]) -> int:
    """Bytes of the new storages ``step()`` allocates (see ``AllocatedBytes``)."""
    with AllocatedBytes() as counter:
        step()
    return counter.total
