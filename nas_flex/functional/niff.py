"""Stateless ops of NIFF (Grabinski et al., "As large as it gets: studying infinitely large convolutions via neural
implicit frequency filters", TMLR 2024): the implicit filter MLP and circular convolution with filters given in the
real-FFT layout.

Filters are complex (..., H, W // 2 + 1) tensors on the ``torch.fft.rfft2`` layout of an H x W input (see
``nas_flex.kernels.frequency``). Multiplying spectra is a *circular* convolution: with k = irfft2(K),

    y[n, o, p] = sum_i sum_q k[o, i, q] x[n, i, (p - q) mod (H, W)]

(a convolution, not a cross-correlation: tap q = (0, 0) sits at index (0, 0) of k). Every transform goes through
``torch.fft`` (rfft2 / irfft2), so an FFT-aware flop counter sees it. Under autocast, and for half-precision inputs,
the transforms and products run in float32 (cuFFT's half precision takes only power-of-two sizes) and the result is
cast back to the input's dtype.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from nas_flex.errors import ShapeError
from nas_flex.kernels.frequency import rfft_shape

__all__ = ["ACTIVATIONS", "twin_mlp", "circular_conv2d_rfft", "separable_circular_conv2d_rfft", "compute_dtype"]

ACTIVATIONS = {"relu": F.relu, "silu": F.silu}


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The real dtype the FFT path computes in for inputs of ``dtype``: float32 for half precisions."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def twin_mlp(coords: Tensor, weights: list[Tensor], biases: list[Tensor], activation: str) -> Tensor:
    """Two MLPs of the same shape (real and imaginary part) evaluated at the same coordinates, batched.

    Equivalent to the paper's stacked 1x1 convolutions over a coordinate map, written as one batched matmul per
    layer over the flattened positions.

    Args:
        coords: (P, D) positions (normalised coordinates).
        weights: per layer (2, out, in); index 0 the real-part MLP, 1 the imaginary-part MLP.
        biases: per layer (2, out).
        activation: "relu" or "silu", applied between layers (not after the last).

    Returns:
        (2, P, out_last).
    """
    act = ACTIVATIONS[activation]
    h = coords
    for layer, (w, b) in enumerate(zip(weights, biases)):
        if layer:
            h = act(h)
        # (P, in) or (2, P, in) @ (2, in, out) + (2, 1, out) -> (2, P, out)
        h = torch.matmul(h, w.transpose(1, 2)) + b.unsqueeze(1)
    return h


class _Relayout(torch.autograd.Function):
    """``x.permute(dims).contiguous()`` whose gradient is made contiguous too.

    The channel mix is a batched matmul over frequencies; reaching its (H*Wf, N, C) layout from the FFT's
    (N, C, H, Wf) is a permute, and a plain permute hands the matmul (and, in backward, its gradient) a batch stride
    of 1, which sends CPU ``bmm`` into a per-matrix loop (~10x slower at 128 x 128). One explicit copy each way
    avoids it.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, dims: tuple[int, ...]) -> Tensor:
        ctx.inverse = tuple(sorted(range(len(dims)), key=dims.__getitem__))
        return x.permute(dims).contiguous()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad.permute(ctx.inverse).contiguous(), None


def _check(x: Tensor, kernel: Tensor, c_in: int, freq_shape: tuple[int, int], op: str) -> tuple[int, int]:
    if x.dim() != 4:
        raise ShapeError(f"{op}: `x` must have shape (N, C_in, H, W), but got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if not kernel.is_complex() or freq_shape != rfft_shape(h, w):
        raise ShapeError(
            f"{op}: the kernel must be complex with the rfft2 layout's {h} x {w // 2 + 1} frequencies for a {h}x{w} "
            f"input, but got {'complex' if kernel.is_complex() else kernel.dtype} shape {tuple(kernel.shape)}"
        )
    if c_in != x.shape[1]:
        raise ShapeError(f"{op}: the kernel expects C_in={c_in} but `x` has C_in={x.shape[1]} (shape {tuple(x.shape)})")
    return h, w


def _finish(y: Tensor, bias: Tensor | None, out_dtype: torch.dtype) -> Tensor:
    if bias is not None:
        y = y + bias.to(y.dtype).view(1, -1, 1, 1)
    return y.to(out_dtype)


def _complex_dtype(real: torch.dtype) -> torch.dtype:
    """The complex dtype a frequency-domain product runs in for a real compute dtype."""
    return torch.complex128 if real == torch.float64 else torch.complex64


def circular_conv2d_rfft(x: Tensor, kernel: Tensor, bias: Tensor | None = None, *, layout: str = "oihw") -> Tensor:
    """Circular convolution of ``x`` with C_out x C_in filters given as rfft2-layout spectra.

    Per frequency the channels are mixed as one batched complex matmul: G_o = sum_i F_i K_{o,i}.

    Args:
        x: (N, C_in, H, W), real.
        kernel: complex (C_out, C_in, H, W // 2 + 1), or (H, W // 2 + 1, C_in, C_out) with ``layout="hwio"`` (the
            batched matmul's own layout: no copy when contiguous).
        bias: (C_out,) or None, added in the spatial domain.
        layout: "oihw" or "hwio", the kernel's axis order.

    Shape:
        (N, C_in, H, W) -> (N, C_out, H, W)

    Example:
        >>> x = torch.randn(2, 3, 8, 6)
        >>> k = torch.zeros(4, 3, 8, 4, dtype=torch.complex64); k[:, 0] = 1  # every output copies channel 0
        >>> torch.allclose(circular_conv2d_rfft(x, k)[:, 1], x[:, 0], atol=1e-5)
        True
    """
    if layout not in ("oihw", "hwio") or kernel.dim() != 4:
        raise ShapeError(f"circular_conv2d_rfft: `kernel` must be 4-D in layout 'oihw' or 'hwio', but got "
                         f"{layout=!r}, shape {tuple(kernel.shape)}")
    if layout == "oihw":
        kernel = kernel.permute(2, 3, 1, 0)  # (C_out, C_in, H, Wf) -> (H, Wf, C_in, C_out)
    fh, fw, c_in, c_out = kernel.shape
    h, w = _check(x, kernel, c_in, (fh, fw), "circular_conv2d_rfft")
    n = x.shape[0]
    out_dtype = x.dtype
    if n == 0:  # MKL's FFT rejects empty batches
        return x.new_zeros(0, c_out, h, w)
    x = x.to(compute_dtype(x.dtype))
    with torch.autocast(device_type=x.device.type, enabled=False):
        kernel = kernel.to(_complex_dtype(x.dtype))
        xf = torch.fft.rfft2(x, s=(h, w))  # (N, C_in, H, Wf)
        xm = _Relayout.apply(xf, (2, 3, 0, 1)).reshape(fh * fw, n, c_in)  # (N, C_in, H, Wf) -> (H*Wf, N, C_in)
        km = kernel.reshape(fh * fw, c_in, c_out)  # (H, Wf, C_in, C_out) -> (H*Wf, C_in, C_out)
        yf = torch.bmm(xm, km).reshape(fh, fw, n, c_out)  # (H*Wf, N, C_out) -> (H, Wf, N, C_out)
        yf = _Relayout.apply(yf, (2, 3, 0, 1))  # -> (N, C_out, H, Wf)
        y = torch.fft.irfft2(yf, s=(h, w))
        return _finish(y, bias, out_dtype)


def separable_circular_conv2d_rfft(
    x: Tensor, depthwise: Tensor, pointwise: Tensor, bias: Tensor | None = None
) -> Tensor:
    """NIFF's separable form: a depthwise circular filter per input channel, then a 1x1 channel mix, both applied
    in the frequency domain, with one forward and one inverse FFT.

    The composed C_out x C_in filter is ``pointwise[o, i] * depthwise[i]``; the op never forms it.

    Args:
        x: (N, C_in, H, W), real.
        depthwise: complex (C_in, H, W // 2 + 1).
        pointwise: real (C_out, C_in) (a 1x1 convolution; real weights commute with the FFT).
        bias: (C_out,) or None, added in the spatial domain.

    Shape:
        (N, C_in, H, W) -> (N, C_out, H, W)
    """
    if depthwise.dim() != 3:
        raise ShapeError(f"separable_circular_conv2d_rfft: `depthwise` must be (C_in, H, W // 2 + 1), but got shape "
                         f"{tuple(depthwise.shape)}")
    h, w = _check(x, depthwise, depthwise.shape[0], tuple(depthwise.shape[1:]), "separable_circular_conv2d_rfft")
    if pointwise.dim() != 2 or pointwise.shape[1] != x.shape[1]:
        raise ShapeError(
            f"separable_circular_conv2d_rfft: `pointwise` must have shape (C_out, {x.shape[1]}), "
            f"but got shape {tuple(pointwise.shape)}"
        )
    n, c_in = x.shape[:2]
    c_out = pointwise.shape[0]
    out_dtype = x.dtype
    if n == 0:  # MKL's FFT rejects empty batches
        return x.new_zeros(0, c_out, h, w)
    x = x.to(compute_dtype(x.dtype))
    with torch.autocast(device_type=x.device.type, enabled=False):
        depthwise = depthwise.to(_complex_dtype(x.dtype))
        xf = torch.fft.rfft2(x, s=(h, w)) * depthwise  # (N, C_in, H, Wf)
        fh, fw = xf.shape[-2:]
        # the 1x1 mix on real and imaginary parts at once: (C_out, C_in) @ (N, C_in, H*Wf*2) -> (N, C_out, H*Wf*2)
        yr = torch.matmul(pointwise.to(x.dtype), torch.view_as_real(xf).reshape(n, c_in, fh * fw * 2))
        yf = torch.view_as_complex(yr.reshape(n, c_out, fh, fw, 2))
        y = torch.fft.irfft2(yf, s=(h, w))
        return _finish(y, bias, out_dtype)

