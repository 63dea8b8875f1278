"""Measured compute: forward FLOPs with FFTs counted, and parameter counts.

torch's ``FlopCounterMode`` counts matmuls and convolutions but treats FFTs as free, which would make every
frequency-domain layer (and the FFT path of a large-kernel conv) look like it costs nothing. ``count_flops`` adds a
formula for the three aten FFT ops, about 5 N log2 N real flops per complex FFT of N points (half that for a
real-input or real-output transform), so every FFT anywhere in the model is counted wherever it is called from.
"""

from __future__ import annotations

import math
import re
import resource
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["FlopCount", "count_flops", "count_parameters", "FFT_OPS", "AllocatedBytes", "allocated_bytes",
           "FlopMeter", "kernel_signature", "reset_peak_memory", "peak_memory"]

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


# ------------------------------------------------------------------------------------------ FLOPs, counted once
def kernel_signature(model: nn.Module) -> tuple[Any, ...]:
    """What a model's forward cost can depend on besides its input: each ``KernelLayer``'s ``cost_signature()``
    (its kernel size in whole pixels for a spatial layer, nothing for a frequency layer) and the grid it last saw.
    Ordinary modules (BatchNorm, pooling, linear) cost the same on the same input whatever their weights."""
    from nas_flex.layers.base import KernelLayer

    return tuple((name, type(layer).__name__, layer.cost_signature(), layer.last_input_size)
                 for name, layer in model.named_modules() if isinstance(layer, KernelLayer))


class FlopMeter:
    """``count_flops`` of one model on one input, counted again only when ``kernel_signature`` changes.

    A trial records the model's FLOPs after every epoch because learned sizes change the cost; a fixed-size model's
    cost cannot change, and a learned-size model's changes only when a kernel's size does. The meter remembers the
    last count with the signature it was made under and returns it while the signature is unchanged, so the records
    hold the same values as counting every time.

    Example:
        >>> meter = FlopMeter(torch.nn.Conv2d(1, 2, 3), torch.randn(1, 1, 8, 8))
        >>> meter().total == meter().total, meter.counts
        (True, 1)
    """

    def __init__(self, model: nn.Module, sample: torch.Tensor) -> None:
        self.model, self.sample = model, sample
        self.counts = 0  # how many times the model was actually counted
        self._last: tuple[tuple[Any, ...], FlopCount] | None = None

    def __call__(self) -> FlopCount:
        """The model's FLOPs on the sample, in eval mode (the model's mode is restored)."""
        signature = kernel_signature(self.model)
        if self._last is not None and self._last[0] == signature:
            return self._last[1]
        was_training = self.model.training
        self.model.eval()
        try:
            flops = count_flops(self.model, self.sample)
        finally:
            self.model.train(was_training)
        self.counts += 1
        # the count runs a forward, which may update what the signature reads (the grid a layer last saw)
        self._last = (kernel_signature(self.model), flops)
        return flops


# --------------------------------------------------------------------------------------------- peak memory
_PROC_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


def _vm_hwm() -> int | None:
    """This process's resident-set high-water mark in bytes (Linux ``VmHWM``), or None where unavailable."""
    try:
        with open(_PROC_STATUS) as f:
            found = re.search(r"^VmHWM:\s+(\d+) kB", f.read(), re.MULTILINE)
    except OSError:
        return None
    return int(found.group(1)) * 1024 if found else None


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory measurement for a trial: CUDA's allocator peak, and on Linux the process's resident
    high-water mark (writing 5 to ``/proc/self/clear_refs``), so a worker process that runs several trials one
    after another reports each trial's own peak, not the largest of all its trials."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
    except OSError:  # not Linux, or not allowed: the peak is then the process's since it started
        pass


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(peak bytes, kind): CUDA's peak allocated memory ("cuda_max_allocated"), else the process's peak resident
    set since ``reset_peak_memory`` ("process_max_rss"; since the process started where it cannot be reset)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    hwm = _vm_hwm()
    if hwm is not None:
        return hwm, "process_max_rss"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "process_max_rss"
