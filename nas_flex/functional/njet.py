"""The N-Jet convolution and safe-subsampling as stateless ops.

Pintea et al., "Resolution learning in deep convolutional networks using scale-space theory", IEEE TIP 2021
(arXiv:2106.03412): a filter is a learned combination of scale-normalised Gaussian derivatives of one learned scale
sigma (Eq. 5), of side 2 * ceil(k * sigma) + 1 (Sec. 3.3); safe-subsampling shrinks a feature map of side s to
s * (1/2)^(sigma / r) (Sec. 4.1).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from nas_flex.errors import HyperparameterError, ShapeError, unknown_name
from nas_flex.functional.conv import conv2d_same
from nas_flex.kernels.gaussian import (  # the private helpers skip checks done once here (with one host sync)
    _basis_and_derivative,
    _check_order,
    _check_positive_real,
    njet_kernel_size,
    num_basis,
)

__all__ = [
    "njet_conv2d",
    "njet_weight",
    "njet_kernel_shape",
    "safe_subsample2d",
    "safe_subsample_size",
    "SUBSAMPLE_MODES",
]

SUBSAMPLE_MODES = ("bilinear", "nearest", "area")


def _covering_odd(n: int) -> int:
    """The odd side covering an input side n: n if odd, else n + 1 (the largest kernel an N-Jet uses on it)."""
    return n if n % 2 else n + 1


def njet_kernel_shape(
    sigma: float | Tensor, extent: float, input_size: tuple[int, int] | None = None
) -> tuple[int, int]:
    """(kh, kw) of the N-Jet kernel: 2 * ceil(extent * sigma) + 1 per side, capped at the odd side covering the input.

    The cap (H if H is odd, else H + 1; likewise W) is the largest kernel that still has every tap land on the
    input somewhere in a 'same' convolution; beyond it the taps only ever meet zero padding.
    """
    k = njet_kernel_size(sigma, extent)
    if input_size is None:
        return k, k
    return min(k, _covering_odd(int(input_size[0]))), min(k, _covering_odd(int(input_size[1])))


def _check_njet_args(alphas: Tensor, sigma: Tensor, order: int, extent: float, op: str) -> tuple[int, float]:
    order = _check_order(order)
    _check_positive_real("extent", extent)
    if not isinstance(sigma, Tensor) or sigma.numel() != 1:
        raise HyperparameterError(f"{op}: `sigma` must be a tensor holding one scale > 0, but got {sigma!r}")
    s = sigma.detach().reshape(()).item()  # one host sync: the kernel's shape depends on sigma
    if not (math.isfinite(s) and s > 0):
        raise HyperparameterError(f"{op}: `sigma > 0` (finite) must hold, but got sigma={s!r}")
    b = num_basis(order)
    if alphas.dim() != 3 or alphas.shape[-1] != b:
        raise ShapeError(
            f"{op}: `alphas` must have shape (C_out, C_in, {b}) for order={order} ({b} basis functions), "
            f"but got shape {tuple(alphas.shape)}"
        )
    return order, s


def njet_weight(
    alphas: Tensor,
    sigma: Tensor,
    *,
    order: int,
    extent: float,
    input_size: tuple[int, int] | None = None,
) -> Tensor:
    """The dense N-Jet kernel sum_b alphas[..., b] * basis_b(sigma): (C_out, C_in, kh, kw).

    Args:
        alphas: (C_out, C_in, B) basis coefficients, B = (order + 1)(order + 2) / 2, in ``basis_orders`` order.
        sigma: 0-dim (or one-element) tensor, the scale in pixels; differentiable.
        order: highest derivative order of the basis.
        extent: k in the side 2 * ceil(k * sigma) + 1.
        input_size: (H, W) of the input it will run on, to cap the side (see ``njet_kernel_shape``); None: no cap.
    """
    order, s = _check_njet_args(alphas, sigma, order, extent, "njet_weight")
    kh, kw = njet_kernel_shape(s, extent, input_size)
    return _NJetWeight.apply(alphas, sigma, s, order, kh, kw)


class _NJetWeight(torch.autograd.Function):
    """sum_b alphas[..., b] basis_b(sigma) as one autograd node (the per-forward overhead of a small N-Jet layer
    is op dispatch, not arithmetic: this keeps it to a handful of ops each way).

    Forward: W = A @ basis, A = alphas as (C_out * C_in, B), basis as (B, kh * kw). Backward: dL/dA = G @ basis^T and
    dL/dsigma = <A^T G, d basis / d sigma>, G = dL/dW as (C_out * C_in, kh * kw). Differentiable once.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, alphas: Tensor, sigma: Tensor, s: float, order: int, kh: int, kw: int
    ) -> Tensor:
        c_out, c_in, b = alphas.shape
        basis, d_basis = _basis_and_derivative(
            s, order, kh, kw, alphas.dtype, alphas.device, derivative=ctx.needs_input_grad[1]
        )
        ctx.save_for_backward(alphas, basis, d_basis)
        ctx.sigma_meta = (sigma.shape, sigma.dtype)
        # (C_out * C_in, B) @ (B, kh * kw) -> (C_out, C_in, kh, kw)
        return (alphas.reshape(c_out * c_in, b) @ basis.reshape(b, kh * kw)).reshape(c_out, c_in, kh, kw)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        alphas, basis, d_basis = ctx.saved_tensors
        c_out, c_in, b = alphas.shape
        # under autocast the output (and so grad) may be half precision: work in the parameters' dtype
        g = grad.reshape(c_out * c_in, -1).to(basis.dtype)  # (C_out * C_in, kh * kw)
        g_alphas = g_sigma = None
        if ctx.needs_input_grad[0]:
            g_alphas = (g @ basis.reshape(b, -1).T).reshape(alphas.shape)  # (C_out * C_in, B)
        if ctx.needs_input_grad[1]:
            g_basis = alphas.reshape(c_out * c_in, b).T @ g  # (B, kh * kw)
            shape, dtype = ctx.sigma_meta
            g_sigma = torch.dot(g_basis.reshape(-1), d_basis.reshape(-1)).reshape(shape).to(dtype)
        return g_alphas, g_sigma, None, None, None, None


def njet_conv2d(
    x: Tensor,
    alphas: Tensor,
    sigma: Tensor,
    bias: Tensor | None = None,
    *,
    order: int,
    extent: float,
) -> Tensor:
    """'Same' stride-1 N-Jet convolution: the kernel is built from ``alphas`` and ``sigma``, then ``conv2d_same``.

    The kernel side is 2 * ceil(extent * sigma) + 1, capped per axis at the odd side covering the input (H if odd,
    else H + 1), so a large sigma on a small feature map never builds a kernel larger than the map.

    Args:
        x: input (N, C_in, H, W).
        alphas: (C_out, C_in, B) coefficients of the B = (order + 1)(order + 2) / 2 basis functions.
        sigma: the scale in pixels, a tensor with one value > 0 (gradients flow to it).
        bias: (C_out,) or None.
        order: highest derivative order N of the basis.
        extent: k, the filter's half-side in units of sigma.

    Shape:
        (N, C_in, H, W) -> (N, C_out, H, W)

    Example:
        >>> import torch
        >>> x, alphas = torch.randn(2, 3, 16, 16), torch.randn(4, 3, 6)
        >>> njet_conv2d(x, alphas, torch.tensor(1.0), order=2, extent=2).shape
        torch.Size([2, 4, 16, 16])
    """
    if x.dim() != 4:
        raise ShapeError(f"njet_conv2d: `x` must have shape (N, C_in, H, W), but got shape {tuple(x.shape)}")
    weight = njet_weight(alphas, sigma, order=order, extent=extent, input_size=(x.shape[-2], x.shape[-1]))
    return conv2d_same(x, weight, bias)


def safe_subsample_size(size: int, sigma: float, r: float = 4.0) -> int:
    """The paper's safe-subsampled side: round(size * (1/2)^(sigma / r)), at least 1 and at most ``size``.

    Rounding is to the nearest integer (halves up), so a small sigma leaves the map alone instead of shaving a
    pixel off at every layer as truncation would.

    Example:
        >>> safe_subsample_size(32, 4.0), safe_subsample_size(32, 1.0), safe_subsample_size(32, 100.0)
        (16, 27, 1)
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise HyperparameterError(f"`size` must be a positive int, but got {size=!r}")
    s = _check_positive_real("sigma", sigma)
    r = _check_positive_real("r", r)
    return max(1, min(size, math.floor(size * 0.5 ** (s / r) + 0.5)))


def safe_subsample2d(x: Tensor, sigma: float, *, r: float = 4.0, mode: str = "bilinear") -> Tensor:
    """Resample ``x`` to the safe-subsampled size of its H and W (``safe_subsample_size``).

    The input is expected to be blurred at scale ``sigma`` already (it comes out of an N-Jet layer of that scale):
    that blur is the anti-aliasing filter, so the resampling itself is plain interpolation, not antialiased.
    Differentiable in ``x``; not in ``sigma`` (the output size is an integer).

    Args:
        x: (N, C, H, W).
        sigma: the scale (pixels) of the layer that produced ``x``.
        r: the safe-subsampling hyperparameter: the map halves when sigma = r.
        mode: "bilinear" (default; sample positions stay exact at non-integer factors), "nearest" (the authors'
            code) or "area".

    Shape:
        (N, C, H, W) -> (N, C, H', W'), H' = round(H * 2^(-sigma / r)) >= 1, likewise W'.
    """
    if mode not in SUBSAMPLE_MODES:
        raise unknown_name("safe-subsampling mode", mode, SUBSAMPLE_MODES)
    if x.dim() != 4:
        raise ShapeError(f"safe_subsample2d: `x` must have shape (N, C, H, W), but got shape {tuple(x.shape)}")
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if h < 1 or w < 1:
        raise ShapeError(f"safe_subsample2d: `x` must have H >= 1 and W >= 1, but got shape {tuple(x.shape)}")
    size = (safe_subsample_size(h, sigma, r), safe_subsample_size(w, sigma, r))
    if size == (h, w):
        return x
    if x.shape[0] == 0:
        return x.new_empty(*x.shape[:2], *size)
    if mode == "bilinear":
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
    return F.interpolate(x, size=size, mode=mode)
