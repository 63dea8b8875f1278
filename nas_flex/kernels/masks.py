"""FlexConv's Gaussian mask, its crop, and the relative-position grids it lives on (pure functions, torch only).

Romero, Bruintjes et al., "FlexConv: Continuous Kernel Convolutions with Differentiable Kernel Sizes", ICLR 2022,
Sec. 3.1 (the anisotropic Gaussian mask), Fig. 7 / App. A (dynamic cropping at the mask threshold, the frequency
content of a Gaussian and the Nyquist frequency of a kernel grid).

Conventions used throughout nas_flex:

* A kernel grid of ``k`` samples covers relative positions ``linspace(-1, 1, k)`` per dimension, so the sample
  spacing is ``2 / (k - 1)``. A one-sample grid is the single position 0.
* A centred grid has an odd number of samples (``odd_grid_size``), so it has a centre tap and a centred 'same'
  convolution needs no half-pixel shift.
* Frequencies are in cycles per unit of relative position (the paper's "Hz" on the [-1, 1] domain).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "odd_grid_size",
    "grid_spacing",
    "relative_positions",
    "relative_grid",
    "centred_positions",
    "gaussian_1d",
    "gaussian_mask",
    "gaussian_mask_at",
    "threshold_radius",
    "mask_half_width",
    "crop_half_size",
    "crop_sizes",
    "causal_crop_start",
    "gaussian_max_frequency",
    "nyquist_frequency",
]


def odd_grid_size(size: int) -> int:
    """The odd grid that covers ``size`` samples: ``size`` if odd, else ``size + 1`` (the paper's App. A.2).

    Example:
        >>> odd_grid_size(32), odd_grid_size(33)
        (33, 33)
    """
    if size < 1:
        raise ValueError(f"`size >= 1` must hold, but got {size=}")
    return size if size % 2 == 1 else size + 1


def grid_spacing(grid_size: int) -> float:
    """Distance between neighbouring samples of a ``grid_size``-sample grid on [-1, 1]: ``2 / (grid_size - 1)``.

    A one-sample grid has no spacing; 2.0 is returned so that every non-zero half-width crops to the single centre.
    """
    if grid_size < 1:
        raise ValueError(f"`grid_size >= 1` must hold, but got {grid_size=}")
    return 2.0 / (grid_size - 1) if grid_size > 1 else 2.0


def relative_positions(
    grid_size: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    """The ``grid_size`` relative positions ``linspace(-1, 1, grid_size)``; ``[0.]`` for a one-sample grid.

    Example:
        >>> relative_positions(5)
        tensor([-1.0000, -0.5000,  0.0000,  0.5000,  1.0000])
    """
    if grid_size == 1:
        return torch.zeros(1, device=device, dtype=dtype)
    return torch.linspace(-1.0, 1.0, grid_size, device=device, dtype=dtype)


def relative_grid(
    sizes: Sequence[int], *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    """The full relative-position grid for a kernel of ``sizes`` samples, one coordinate column per dimension.

    Args:
        sizes: samples per dimension, e.g. ``(kh, kw)``; usually odd (``odd_grid_size``).

    Returns:
        ``(*sizes, D)`` tensor; ``grid[..., d]`` is the position along dimension ``d`` (so ``[..., 0]`` is the row /
        height coordinate of a 2-D grid).

    Example:
        >>> relative_grid((3, 5)).shape
        torch.Size([3, 5, 2])
    """
    axes = [relative_positions(int(s), device=device, dtype=dtype) for s in sizes]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


def centred_positions(
    half: int, spacing: float, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    """The ``2 * half + 1`` grid positions ``spacing * (-half, ..., half)``: the centre crop of a grid.

    Computed directly rather than sliced out of the full grid, so a small crop of a large grid costs a small tensor.
    """
    return torch.arange(-half, half + 1, device=device, dtype=dtype) * spacing


def gaussian_1d(positions: Tensor, mean: Tensor | float, sigma: Tensor | float) -> Tensor:
    """``exp(-0.5 * ((positions - mean) / sigma) ** 2)``: one factor of the mask (paper Eq. 1)."""
    return torch.exp(-0.5 * ((positions - mean) / sigma) ** 2)


def gaussian_mask(positions: Sequence[Tensor], mean: Tensor, sigma: Tensor) -> Tensor:
    """The anisotropic Gaussian mask ``prod_d exp(-0.5 ((x_d - mean_d) / sigma_d)^2)`` on a separable grid.

    Args:
        positions: one 1-D tensor of positions per dimension (D of them), e.g. from ``centred_positions``.
        mean: (D,) mask centres.
        sigma: (D,) mask widths (> 0), in relative-position units.

    Returns:
        ``(len(positions[0]), ..., len(positions[D-1]))``: the outer product of the per-dimension factors,
        differentiable in ``mean`` and ``sigma``.

    Example:
        >>> m = gaussian_mask([torch.linspace(-1, 1, 5)] * 2, torch.zeros(2), torch.tensor([0.5, 1.0]))
        >>> m.shape, float(m[2, 2])
        (torch.Size([5, 5]), 1.0)
    """
    if len(positions) != mean.shape[-1] or len(positions) != sigma.shape[-1]:
        raise ValueError(
            f"gaussian_mask: got {len(positions)} position axes but mean {tuple(mean.shape)} and "
            f"sigma {tuple(sigma.shape)}; give one mean and one sigma per axis"
        )
    out: Tensor | None = None
    for d, pos in enumerate(positions):
        factor = gaussian_1d(pos, mean[d], sigma[d])
        # (k_0, ..., k_{d-1}) x (k_d,) -> (k_0, ..., k_d)
        out = factor if out is None else out.unsqueeze(-1) * factor
    assert out is not None
    return out


def gaussian_mask_at(positions: Tensor, mean: Tensor, sigma: Tensor) -> Tensor:
    """The anisotropic Gaussian mask at arbitrary positions: ``exp(-0.5 sum_d ((x_d - mean_d) / sigma_d)^2)``.

    Args:
        positions: (P, D).
        mean, sigma: (D,).

    Returns:
        (P,), differentiable in ``mean`` and ``sigma``; equal to ``gaussian_mask`` on a separable grid, flattened.
    """
    return torch.exp(-0.5 * ((positions - mean) / sigma).square().sum(-1))


def threshold_radius(threshold: float) -> float:
    """How many sigmas from its centre a Gaussian falls to ``threshold``: ``sqrt(-2 ln threshold)`` (2.146 at 0.1)."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"`0 < threshold < 1` must hold, but got {threshold=}")
    return math.sqrt(-2.0 * math.log(threshold))


def mask_half_width(mean: float, sigma: float, threshold: float) -> float:
    """Half-width, in relative-position units, of the centred window that holds every position where the mask factor
    exceeds ``threshold``: ``|mean| + sigma * sqrt(-2 ln threshold)`` (the authors' "max absolute root")."""
    return abs(mean) + sigma * threshold_radius(threshold)


def crop_half_size(half_width: float, grid_size: int, *, min_half: int = 0) -> int:
    """Half-size in samples of the centred crop of a ``grid_size`` grid that keeps the positions ``|x| < half_width``.

    The crop is symmetric about the centre, so the cropped side ``2 * half + 1`` stays odd. It never exceeds the
    grid, and is at least ``min_half`` (where the grid allows).

    Example:
        >>> [2 * crop_half_size(2.146 * s, 33) + 1 for s in (0.075, 0.2, 0.3, 0.47)]
        [5, 13, 21, 33]
    """
    full = (grid_size - 1) // 2
    if grid_size <= 1 or not math.isfinite(half_width):
        return full
    ratio = half_width / grid_spacing(grid_size)
    # positions j * spacing with j * spacing < half_width, strictly: j <= ceil(ratio) - 1
    half = math.ceil(ratio) - 1 if ratio < full + 1 else full
    return int(min(max(half, min_half, 0), full))


def crop_sizes(
    mean: Sequence[float], sigma: Sequence[float], threshold: float, grid_sizes: Sequence[int], *, min_half: int = 0
) -> tuple[int, ...]:
    """Half-sizes (samples) of the centred crop of a grid, one per dimension, for a mask with ``mean`` and ``sigma``.

    Example:
        >>> crop_sizes([0.0, 0.0], [0.075, 0.3], 0.1, [33, 33])
        (2, 10)
    """
    return tuple(
        crop_half_size(mask_half_width(m, s, threshold), k, min_half=min_half)
        for m, s, k in zip(mean, sigma, grid_sizes)
    )


def causal_crop_start(mean: float, sigma: float, threshold: float, grid_size: int, *, min_length: int = 1) -> int:
    """First index kept by the causal crop of a ``grid_size`` grid on [-1, 1] whose last sample is the present.

    Keeps the positions ``x > mean - sigma * sqrt(-2 ln threshold)`` (older ones have a mask below ``threshold``) up
    to the last sample, and at least ``min_length`` samples where the grid allows.

    Example:
        >>> causal_crop_start(1.0, 0.075, 0.1, 33)  # keeps the 3 newest samples
        30
    """
    if grid_size <= 1:
        return 0
    root = mean - sigma * threshold_radius(threshold)
    spacing = grid_spacing(grid_size)
    # position of index i is -1 + i * spacing; keep i with -1 + i * spacing > root, strictly
    ratio = (root + 1.0) / spacing
    if not math.isfinite(ratio) or ratio < 0:
        start = 0
    else:
        start = math.floor(ratio) + 1
    return int(min(max(start, 0), grid_size - min(max(min_length, 1), grid_size)))


def gaussian_max_frequency(gamma: Tensor, sigma_cut: float = 2.0) -> Tensor:
    """Highest frequency a Gaussian envelope ``exp(-0.5 (gamma x)^2)`` adds, cut at ``sigma_cut`` standard deviations
    of its spectrum: ``sigma_cut * gamma / (2 pi)`` (paper App. A.1, Eq. 13). For a mask of width sigma use
    ``gamma = 1 / sigma``."""
    return gamma.abs() * (sigma_cut / (2.0 * math.pi))


def nyquist_frequency(grid_size: int) -> float:
    """Nyquist frequency of a ``grid_size`` grid on [-1, 1]: half the sampling rate ``(k - 1) / 2``, i.e.
    ``(k - 1) / 4`` (paper App. A.2, Eq. 24). Zero for a one-sample grid."""
    return (grid_size - 1) / 4.0
