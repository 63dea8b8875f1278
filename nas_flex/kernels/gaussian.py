"""Gaussian derivatives in Hermite form and the N-Jet basis built from them (pure functions, torch only).

Pintea, Tomen, Goes, Loog, van Gemert, "Resolution learning in deep convolutional networks using scale-space
theory", IEEE TIP 2021 (arXiv:2106.03412, Sec. 3). The 1-D Gaussian derivative of order m is (Eq. 2)

    G^m(x; s) = (-1 / (s sqrt 2))^m  H_m(x / (s sqrt 2))  G(x; s),

with the physicists' Hermite polynomials H_0 = 1, H_1 = 2x, H_m = 2x H_{m-1} - 2(m-1) H_{m-2}. The 2-D basis is
G^{i,j}(y, x) = G^i(y) G^j(x) for 0 <= i + j <= N (Eq. 3), each multiplied by s^(i+j) so that all orders have
comparable magnitude (Sec. 3.3, "scale-invariant basis normalization").

Sampling on the integer pixel grid: the Gaussian factor is normalised to sum to 1 over the (truncated) grid, per
axis, exactly as ``scipy.ndimage.gaussian_filter`` and the authors' code do; the order-0 basis function is then a
blur that keeps the mean of the signal whatever the truncation, and every basis function equals
``scipy.ndimage.gaussian_filter(impulse, s, order=(i, j)) * s**(i + j)`` to machine precision.
"""

from __future__ import annotations

import array
import functools
import math
import numbers
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from nas_flex.errors import HyperparameterError

__all__ = [
    "hermite",
    "hermite_polynomials",
    "gaussian",
    "gaussian_derivative",
    "basis_orders",
    "num_basis",
    "gaussian_derivative_basis",
    "njet_kernel_size",
]

# 2 * ceil(k * sigma) + 1 is discontinuous at integer k * sigma. A sigma meant to be exact (1.5, stored in float32 as
# exp(log 1.5) = 1.5000001) must not jump to the next size, so k * sigma is first shrunk by this relative tolerance.
_SIZE_RTOL = 1e-5


def _check_order(order: object) -> int:
    if isinstance(order, bool) or not isinstance(order, int) or order < 0:
        raise HyperparameterError(f"`order` must be an int >= 0 (the highest derivative order), but got {order=!r}")
    return order


def _check_positive_real(name: str, value: object) -> float:
    """``value`` as a float if it is a finite real number > 0 (not a bool, not a string), else raise naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise HyperparameterError(f"`{name}` must be a finite real number > 0, but got {name}={value!r}")
    return float(value)


def hermite(x: Tensor, m: int) -> Tensor:
    """The physicists' Hermite polynomial H_m evaluated at ``x`` (three-term recurrence, any shape).

    Example:
        >>> import torch
        >>> hermite(torch.tensor([0.5, 1.0]), 3)  # 8 x^3 - 12 x
        tensor([-5., -4.])
    """
    return hermite_polynomials(x, _check_order(m))[m]


def hermite_polynomials(x: Tensor, order: int) -> Tensor:
    """H_0(x), ..., H_order(x) stacked: shape (order + 1, *x.shape)."""
    order = _check_order(order)
    polys = [torch.ones_like(x)]
    if order >= 1:
        polys.append(2 * x)
    for m in range(2, order + 1):
        polys.append(2 * x * polys[m - 1] - 2 * (m - 1) * polys[m - 2])
    return torch.stack(polys)


def gaussian(x: Tensor, sigma: float | Tensor) -> Tensor:
    """The continuous 1-D Gaussian density G(x; sigma) = exp(-x^2 / (2 sigma^2)) / (sigma sqrt(2 pi))."""
    return torch.exp(-(x * x) / (2 * sigma * sigma)) / (sigma * math.sqrt(2 * math.pi))


def gaussian_derivative(x: Tensor, sigma: float | Tensor, m: int) -> Tensor:
    """The continuous m-th derivative of G(x; sigma) in x, by the Hermite form (the paper's Eq. 2).

    No s^m normalisation and no discrete renormalisation: this is the analytic function, for references and plots.

    Example:
        >>> import torch
        >>> x = torch.linspace(-3, 3, 7, dtype=torch.float64)
        >>> bool(torch.allclose(gaussian_derivative(x, 1.0, 1), -x * gaussian(x, 1.0)))
        True
    """
    c = sigma * math.sqrt(2)
    return (-1 / c) ** _check_order(m) * hermite(x / c, m) * gaussian(x, sigma)


def basis_orders(order: int) -> list[tuple[int, int]]:
    """The (i, j) derivative orders of the basis functions, in basis order: by total order, then i descending.

    ``i`` is the derivative order along the first spatial axis (H, rows), ``j`` along the second (W, columns):
    ``[(0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2), ...]``.
    """
    order = _check_order(order)
    return [(i, total - i) for total in range(order + 1) for i in range(total, -1, -1)]


def num_basis(order: int) -> int:
    """How many basis functions the N-Jet of ``order`` has: (order + 1)(order + 2) / 2 (order 2: 6, order 3: 10)."""
    order = _check_order(order)
    return (order + 1) * (order + 2) // 2


def _tables_1d(sigma: float, order: int, size: int) -> tuple[list[list[float]], list[list[float]]]:
    """s^m G^m on the centred grid of ``size`` points (Gaussian factor summing to 1) and its derivative in s.

    Returns (values, d_values / ds) as (order + 1) lists of ``size`` floats. With t = x / (s sqrt 2):

        d_m = (-1 / sqrt 2)^m H_m(t) g,   g = exp(-t^2) / sum exp(-t^2)

    (s^m (-1 / (s sqrt 2))^m = (-1 / sqrt 2)^m: the scale normalisation leaves a constant per order), and
    dt/ds = -t / s,  dH_m/dt = 2 m H_{m-1},  dg/ds = (2 / s) g (t^2 - sum g t^2).

    Plain float64 Python on purpose: sigma is a known scalar (the kernel's shape already needs it on the host) and
    the tables are tiny, so this costs a few microseconds where ~40 tensor ops would cost ~100 (op dispatch).
    """
    half = size // 2
    inv = 1 / (sigma * math.sqrt(2))
    ts = [(k - half) * inv for k in range(size)]
    e = [math.exp(-t * t) for t in ts]  # underflows to 0.0 far out, never overflows
    z = math.fsum(e)  # >= 1: the centre term is exp(0)
    g = [v / z for v in e]
    mean_t2 = math.fsum(gk * t * t for gk, t in zip(g, ts))
    consts = [(-1 / math.sqrt(2)) ** m for m in range(order + 1)]
    values = [[0.0] * size for _ in range(order + 1)]
    d_ds = [[0.0] * size for _ in range(order + 1)]
    for k, (t, gk) in enumerate(zip(ts, g)):
        h = [1.0, 2 * t]  # Hermite recurrence at t
        for m in range(2, order + 1):
            h.append(2 * t * h[m - 1] - 2 * (m - 1) * h[m - 2])
        dg = (2 / sigma) * gk * (t * t - mean_t2)
        dt = -t / sigma
        for m in range(order + 1):
            dh = 2 * m * h[m - 1] if m else 0.0
            values[m][k] = consts[m] * h[m] * gk
            d_ds[m][k] = consts[m] * (dh * dt * gk + h[m] * dg)
    return values, d_ds


@functools.lru_cache(maxsize=64)
def _pair_index(order: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    pairs = basis_orders(order)
    return tuple(i for i, _ in pairs), tuple(j for _, j in pairs)


def _basis_and_derivative(
    s: float, order: int, kh: int, kw: int, dtype: torch.dtype, device: torch.device, *, derivative: bool = True
) -> tuple[Tensor, Tensor | None]:
    """The basis (B, kh, kw) at scale ``s`` and, if asked, its derivative in s; plain tensors, no autograd.

    The building block of the autograd functions here and in ``nas_flex.functional.njet``: one host-to-device copy
    of the 1-D tables, then outer products. d basis / ds = d(vh (x) vw) = dh (x) vw + vh (x) dw.
    """
    rows, cols = _pair_index(order)
    vh, dh = _tables_1d(s, order, kh)
    vw, dw = (vh, dh) if kw == kh else _tables_1d(s, order, kw)
    buf = array.array("d")  # [values, d/ds] of the factor along H (B x kh each), then along W (B x kw each)
    for table, index in ((vh, rows), (dh, rows), (vw, cols), (dw, cols)):
        for b in index:
            buf.extend(table[b])
    flat = torch.frombuffer(buf, dtype=torch.float64).to(dtype=dtype, device=device, copy=True)
    b = len(rows)
    th = flat[: 2 * b * kh].view(2, b, kh)
    tw = flat[2 * b * kh :].view(2, b, kw)
    basis = th[0][:, :, None] * tw[0][:, None, :]  # (B, kh, 1) * (B, 1, kw) -> (B, kh, kw)
    if not derivative:
        return basis, None
    return basis, th[1][:, :, None] * tw[0][:, None, :] + th[0][:, :, None] * tw[1][:, None, :]


class _GaussianBasis(torch.autograd.Function):
    """The basis as one autograd node with an analytic derivative in sigma.

    Built from tensor ops, the basis would cost ~40 tiny ops forward and as many autograd nodes backward, whose
    dispatch overhead would dominate a small N-Jet layer's time (the target: at most 1.1x a plain conv).
    """

    @staticmethod
    def forward(ctx: Any, sigma: Tensor, s: float, order: int, kh: int, kw: int) -> Tensor:  # type: ignore[override]
        basis, d_basis = _basis_and_derivative(
            s, order, kh, kw, sigma.dtype, sigma.device, derivative=ctx.needs_input_grad[0]
        )
        ctx.save_for_backward(d_basis)
        ctx.sigma_shape = sigma.shape
        return basis

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None, None, None]:  # type: ignore[override]
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        (d_basis,) = ctx.saved_tensors
        g_sigma = torch.dot(grad.reshape(-1).to(d_basis.dtype), d_basis.reshape(-1))
        return g_sigma.reshape(ctx.sigma_shape), None, None, None, None


def _basis(sigma: Tensor, order: int, kh: int, kw: int, value: float | None = None) -> Tensor:
    """The unchecked basis (B, kh, kw) for a one-element positive ``sigma``; differentiable in it once.

    ``value`` is ``float(sigma)`` when the caller already has it (saves a device sync).
    """
    s = float(sigma.detach().reshape(())) if value is None else value
    return _GaussianBasis.apply(sigma, s, order, kh, kw)


def gaussian_derivative_basis(
    sigma: float | Tensor,
    order: int,
    size: int | tuple[int, int],
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """The N-Jet basis {s^(i+j) G^{i,j}(y, x; s) : 0 <= i + j <= order} sampled on a centred odd grid.

    Args:
        sigma: the scale s > 0 in pixels; a float or a 0-dim tensor (gradients flow to it).
        order: the highest total derivative order N >= 0.
        size: odd side of the grid, or (height, width) of odd sides (the grid may be rectangular when the N-Jet
            kernel is capped at a non-square input).
        dtype, device: for a float ``sigma`` only (a tensor ``sigma`` sets them); default: torch's defaults.

    Returns:
        (B, height, width) with B = (order + 1)(order + 2) / 2, in the order of ``basis_orders(order)``:
        entry b = (i, j) is differentiated i times along the height axis and j times along the width axis. The
        Gaussian factor of each axis sums to 1 over the grid, so entry 0 is a normalised (truncated) Gaussian.
        Tap (h, w) holds the function at offset (h - height // 2, w - width // 2) from the centre; used by
        cross-correlation (``F.conv2d``), as in the authors' code, odd orders come out with the opposite sign of
        d^m/dx^m (f * G), which the learned coefficients absorb.

    Raises:
        HyperparameterError: for sigma <= 0 or not finite, order < 0, or an even / non-positive size.

    Example:
        >>> basis = gaussian_derivative_basis(1.0, 3, 5)
        >>> basis.shape
        torch.Size([10, 5, 5])
        >>> round(float(basis[0].sum()), 6)
        1.0
    """
    order = _check_order(order)
    pair = (size, size) if isinstance(size, int) else tuple(size) if isinstance(size, (tuple, list)) else None
    if (
        pair is None
        or len(pair) != 2
        or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0 for k in pair)
    ):
        raise HyperparameterError(f"`size` must be an odd positive int or a pair of them, but got {size=!r}")
    if isinstance(sigma, Tensor):
        if sigma.numel() != 1:
            raise HyperparameterError(
                f"`sigma` must be a scalar (one scale per layer), but got shape {tuple(sigma.shape)}"
            )
        value = _check_positive_real("sigma", sigma.detach().reshape(()).item())
        s = sigma
    else:
        value = _check_positive_real("sigma", sigma)
        s = torch.tensor(value, dtype=dtype or torch.get_default_dtype(), device=device)
    return _basis(s, order, pair[0], pair[1], value)


def njet_kernel_size(sigma: float | Tensor, extent: float) -> int:
    """The N-Jet filter side for scale ``sigma`` and extent k: 2 * ceil(k * sigma) + 1 (the paper, Sec. 3.3).

    The paper's formula, not the authors' code's 2 * ceil(k * sigma + 0.5) + 1 (one pixel more on each side at
    most sigmas: 7x7 instead of 5x5 at sigma = 1, k = 2). ``k * sigma`` is shrunk by a relative 1e-5 before the
    ceiling so a float-rounded exact value (1.5 stored as 1.5000001) keeps its size; the side is at least 3 (the
    ceiling of a positive number is >= 1).

    Example:
        >>> njet_kernel_size(1.0, 2), njet_kernel_size(1.5, 2), njet_kernel_size(1.6, 2)
        (5, 7, 9)
    """
    s = _check_positive_real("sigma", sigma.detach().reshape(()).item() if isinstance(sigma, Tensor) else sigma)
    k = _check_positive_real("extent", extent)
    return 2 * max(1, math.ceil(k * s * (1 - _SIZE_RTOL))) + 1
