"""The kernel mass ratio of Grabinski et al., "As large as it gets: studying infinitely large convolutions via neural
implicit frequency filters" (TMLR 2024, Sec. 5), and the effective kernel size it implies.

The kernel mass ratio of a spatial kernel k for a window side s is the share of its absolute mass
sum |k| that lies inside the centred s x s window. The paper plots it against s to show how large learned kernels
really are; nas_flex also reads a size off it: the smallest centred window holding 90 % of the mass.

Centre convention (the same for every kernel, so ratios are comparable across layers):
    * A *centred* kernel (spatial layers: odd kh x kw, tap (0, 0) at index (kh // 2, kw // 2)) is used as is.
    * A *circular* kernel (frequency layers: input-sized, tap (0, 0) at index (0, 0), negative offsets wrapped to
      the end, as ``irfft2`` returns it) is first rolled by ``torch.fft.fftshift``, which puts offset 0 at index
      (H // 2, W // 2): pass ``circular=True``.
    * The window of side s along an axis of length n centred at c = n // 2 covers indices
      c - s // 2 ... c - s // 2 + s - 1: symmetric for odd s; for even s it takes the extra row on the negative
      side (which is how fftshift places the unpaired offset -n / 2 of an even axis). Sides larger than the
      kernel are clipped to it, so s >= max(H, W) gives ratio 1.

Two sizes are read off it. ``effective_size_from_mass``: the smallest odd centred window holding the fraction, an
integer that jumps by whole taps (for heavy-tailed kernels by several: 1 -> 3 -> 7 -> 11 px as the centre tap's share
goes 1.0 -> 0.81 -> 0.69 -> 0.59). ``continuous_size_from_mass``: the same rule with the window's side continuous
(the mass inside grows linearly across each ring of taps), so a small change of the kernel gives a small change of
the size: what the frequency layers report.

The authors' notebook slices ``[c - i : c + i]``, i.e. even windows of side 2i labelled 2i + 1 (and a first window
that is empty); the windows here are the s x s ones their figure's axis names.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from nas_flex.errors import ShapeError

__all__ = ["kernel_mass_ratio", "effective_size_from_mass", "continuous_size_from_mass", "centred_window"]


def centred_window(n: int, side: int) -> tuple[int, int]:
    """[start, stop) of the centred window of ``side`` on an axis of length ``n`` (centre n // 2, clipped)."""
    side = min(max(int(side), 0), n)
    start = n // 2 - side // 2
    return start, start + side


def _prepare(kernel: Tensor, circular: bool) -> Tensor:
    if not isinstance(kernel, Tensor) or kernel.dim() < 2:
        raise ShapeError(f"`kernel` must be a tensor (..., H, W) with at least 2 dims, but got {_describe(kernel)}")
    k = kernel.detach()
    if k.is_complex():
        raise ValueError("`kernel` must be a real spatial kernel; for a spectrum take torch.fft.irfft2 first")
    if circular:
        k = torch.fft.fftshift(k, dim=(-2, -1))
    return k.abs().to(torch.float64)


def _describe(x: object) -> str:
    return f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__


def kernel_mass_ratio(kernel: Tensor, sizes: Iterable[int], *, circular: bool = False) -> Tensor:
    """Share of each 2-D kernel's absolute mass inside centred s x s windows, for each s in ``sizes``.

    Args:
        kernel: real (..., H, W); every leading index is a separate kernel (e.g. (C_out, C_in, H, W)).
        sizes: positive window sides s (odd ones are symmetric; see the module docstring for even ones).
        circular: True for input-sized circular kernels with offset 0 at index (0, 0) (``spatial_kernel()`` of the
            frequency layers): they are fftshifted first. False for centred kernels (``to_conv2d().weight``).

    Returns:
        float64 tensor (..., len(sizes)) in [0, 1]. A kernel with no mass at all gets 1 for every s.

    Example:
        >>> k = torch.zeros(5, 5); k[2, 2] = 3.0; k[0, 2] = 1.0
        >>> kernel_mass_ratio(k, [1, 3, 5]).tolist()
        [0.75, 0.75, 1.0]
    """
    sizes = list(sizes)
    if not sizes or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
        raise ValueError(f"`sizes` must be a non-empty list of positive ints, but got {sizes=}")
    k = _prepare(kernel, circular)
    h, w = k.shape[-2:]
    total = k.sum(dim=(-2, -1))
    ratios = []
    for s in sizes:
        r0, r1 = centred_window(h, s)
        c0, c1 = centred_window(w, s)
        inside = k[..., r0:r1, c0:c1].sum(dim=(-2, -1))
        ratios.append(torch.where(total > 0, inside / total.clamp_min(1e-300), torch.ones_like(total)))
    return torch.stack(ratios, dim=-1)


def _smallest_side(marginal: Tensor, fraction: float) -> int:
    """Smallest odd centred side (or the full length) whose window holds ``fraction`` of a 1-D mass profile."""
    n = marginal.numel()
    total = float(marginal.sum())
    if total <= 0:
        return 1
    csum = torch.cat([marginal.new_zeros(1), marginal.cumsum(0)])
    sides = list(range(1, n + 1, 2)) + ([n] if n % 2 == 0 else [])
    starts = torch.tensor([n // 2 - s // 2 for s in sides])
    stops = starts + torch.tensor(sides)
    inside = csum[stops] - csum[starts]
    # relative slack: a window holding exactly the fraction counts despite rounding in the sums
    ok = (inside >= fraction * total * (1 - 1e-12)).nonzero()
    return sides[int(ok[0])] if len(ok) else n


def effective_size_from_mass(kernel: Tensor, fraction: float = 0.9, *, circular: bool = False) -> tuple[int, int]:
    """Per dimension, the side of the smallest centred window that holds ``fraction`` of the absolute mass.

    The mass is pooled over every leading index (all channel pairs of a layer), and each dimension is measured on
    its marginal (mass summed over the other one), so an elongated kernel gets an elongated size. Candidate sides
    are the odd ones 1, 3, 5, ... up to the axis length, plus the full length when it is even.

    Args:
        kernel: real (..., H, W).
        fraction: share of the mass the window must hold, in (0, 1]. The NIFF analysis and nas_flex use 0.9.
        circular: as in ``kernel_mass_ratio`` (True for input-sized circular kernels).

    Returns:
        (height, width) in pixels, ints in [1, H] and [1, W]. A kernel with no mass gives (1, 1).

    Example:
        >>> k = torch.zeros(9, 9); k[3:6, 2:7] = 1.0
        >>> effective_size_from_mass(k)
        (3, 5)
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f"`0 < fraction <= 1` must hold, but got {fraction=}")
    k = _prepare(kernel, circular)
    k = k.reshape(-1, *k.shape[-2:]).sum(0).cpu()  # (..., H, W) -> (H, W): pooled over channels
    return _smallest_side(k.sum(1), fraction), _smallest_side(k.sum(0), fraction)


def _continuous_side(marginal: Tensor, fraction: float) -> float:
    """The centred window side (continuous, in pixels) holding ``fraction`` of a 1-D mass profile.

    The mass inside a window of odd side 2j + 1 is the mass within j taps of the centre; between two odd sides it
    grows linearly (the next ring of taps enters the window gradually). The side where it reaches the fraction is
    read off that piecewise-linear curve, floored at 1 (a single tap) and capped at the axis length.
    """
    n = marginal.numel()
    total = float(marginal.sum())
    if total <= 0:
        return 1.0
    centre = n // 2
    dist = (torch.arange(n) - centre).abs()
    rings = torch.zeros(int(dist.max()) + 1, dtype=marginal.dtype).index_add_(0, dist, marginal)
    inside = torch.cat([rings.new_zeros(1), rings.cumsum(0)])  # mass within j taps, for sides 0, 1, 3, 5, ...
    sides = torch.cat([rings.new_zeros(1), torch.arange(1, 2 * rings.numel(), 2, dtype=marginal.dtype)])
    target = fraction * total
    # relative slack: a window holding exactly the fraction counts despite rounding in the sums
    i = int((inside >= target * (1 - 1e-12)).nonzero()[0])
    if i == 0:
        return 1.0
    lo, hi = float(inside[i - 1]), float(inside[i])
    t = min(max((target - lo) / (hi - lo), 0.0), 1.0)
    side = float(sides[i - 1]) + t * float(sides[i] - sides[i - 1])
    return min(max(side, 1.0), float(n))


def continuous_size_from_mass(kernel: Tensor, fraction: float = 0.9, *,
                              circular: bool = False) -> tuple[float, float]:
    """Per dimension, the continuous side of the centred window holding ``fraction`` of the absolute mass.

    As ``effective_size_from_mass`` (mass pooled over leading indices, each dimension on its marginal), but the
    window grows continuously: its side interpolates linearly between the odd sides 2j + 1 whose windows bracket
    the fraction (the mass inside grows linearly across each ring of taps). It equals the integer size where a
    window holds exactly the fraction, is continuous in the kernel, floored at 1 and capped at the axis length.

    Args:
        kernel: real (..., H, W).
        fraction: share of the mass the window must hold, in (0, 1].
        circular: as in ``kernel_mass_ratio``.

    Returns:
        (height, width) in pixels, floats in [1, H] and [1, W].

    Example:
        >>> k = torch.zeros(9, 9); k[4, 4] = 0.8; k[4, 3] = k[4, 5] = 0.1
        >>> continuous_size_from_mass(k)  # 80 % in the centre tap, 90 % half-way through the next ring
        (1.0, 2.0)
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f"`0 < fraction <= 1` must hold, but got {fraction=}")
    k = _prepare(kernel, circular)
    k = k.reshape(-1, *k.shape[-2:]).sum(0).cpu()
    return _continuous_side(k.sum(1), fraction), _continuous_side(k.sum(0), fraction)
