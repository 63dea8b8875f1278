"""The normalised Gaussian envelope of the adaptive convolution kernel ACONV (pure functions, torch only).

Tek, Cam, Karli, "Adaptive convolution kernel for artificial neural networks", J. Vis. Commun. Image Represent. 2021
(arXiv:2009.06385, Sec. 3.2-3.3). A filter's weights W (n x n) are multiplied by an envelope
U = s exp(-||g - mu||^2 / (2 sigma_u^2)) on the n x n base grid: g are the normalised grid coordinates
(k / n, l / n), mu the grid centre (fixed), and the scale s makes sum_{k,l} u_{k,l}^2 = n^2 (Eq. 21). Then the
mean squared coefficient is 1 and, by Theorem 3.1, MVar[W o U] = MVar[W] for every aperture sigma_u: changing the
envelope does not change the output variance.

Units: sigma_u is in units of the base grid side n (one pixel is 1 / n); sigma_u * n is the aperture in pixels.
The paper's coordinates k / n are used (spacing 1 / n), centred exactly on the middle pixel; the authors' Keras
code spaces the grid 1 / (n - 1) instead, which makes its sigma n / (n - 1) times larger for the same envelope.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from nas_flex.errors import HyperparameterError

__all__ = ["envelope_grid", "gaussian_envelope", "envelope_side", "envelope_mass_side", "ENVELOPE_THRESHOLD"]

#: Envelope level (relative to its peak) that ``envelope_side`` measures the extent at: the FlexConv mask-crop
#: threshold, so the envelope and FlexConv layers report sizes by the same rule.
ENVELOPE_THRESHOLD = 0.1


def _check_n(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or n % 2 == 0:
        raise HyperparameterError(f"`n` (the base grid side) must be an odd positive int, but got {n=!r}")
    return n


def envelope_grid(n: int, *, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> Tensor:
    """The normalised 1-D coordinates of the n-point base grid relative to its centre: (k - (n - 1) / 2) / n.

    Example:
        >>> envelope_grid(5)
        tensor([-0.4000, -0.2000,  0.0000,  0.2000,  0.4000])
    """
    n = _check_n(n)
    return (torch.arange(n, dtype=dtype or torch.get_default_dtype(), device=device) - (n - 1) / 2) / n


def gaussian_envelope(sigma: Tensor, n: int) -> Tensor:
    """Per-aperture Gaussian envelopes on the n x n base grid, each scaled so its mean squared coefficient is 1.

    Args:
        sigma: apertures sigma_u > 0 in grid units (1 / n is one pixel), any shape S, typically (C_out,).
            Differentiable. Values are used as given (the layer clips them to [1 / n, n]).
        n: odd base grid side.

    Returns:
        (*S, n, n): exp(-||g||^2 / (2 sigma_u^2)) * n / ||exp(...)||_2, so sum u^2 = n^2. The centre coefficient is
        the largest; the normaliser never divides by zero (the centre term is exp(0) = 1).

    Example:
        >>> import torch
        >>> u = gaussian_envelope(torch.tensor([0.2, 1.0]), 7)
        >>> u.shape, [round(float(v), 6) for v in u.pow(2).mean(dim=(-2, -1))]
        (torch.Size([2, 7, 7]), [1.0, 1.0])
    """
    n = _check_n(n)
    if not isinstance(sigma, Tensor):
        raise HyperparameterError(f"`sigma` must be a tensor of apertures, but got {type(sigma).__name__}")
    g = envelope_grid(n, dtype=sigma.dtype, device=sigma.device)
    r2 = g[:, None] ** 2 + g[None, :] ** 2  # (n, n) squared distance to the centre
    s2 = (2 * sigma * sigma)[..., None, None]  # (*S, 1, 1)
    u = torch.exp(-r2 / s2)  # (*S, n, n)
    # scale to sum u^2 = n^2 (Eq. 21): mean squared coefficient 1 (Theorem 3.1)
    return u * (n / u.pow(2).sum(dim=(-2, -1), keepdim=True).sqrt())


def envelope_side(sigma: Tensor, n: int, threshold: float = ENVELOPE_THRESHOLD) -> Tensor:
    """Side in pixels of the region where the envelope is above ``threshold`` times its peak, capped at n.

    The envelope exceeds t * peak within a radius sigma_u * sqrt(2 ln(1 / t)) of the centre, i.e.
    sigma_u * n * sqrt(2 ln(1 / t)) pixels (2.146 sigma_px at t = 0.1); the side is twice that plus the centre
    pixel, a continuous measure that is 1 for a vanishing aperture and n once the envelope covers the grid.

    Args:
        sigma: apertures in grid units, any shape.
        n: odd base grid side (the cap).
        threshold: level in (0, 1) relative to the peak.
    """
    n = _check_n(n)
    if not 0 < threshold < 1:
        raise HyperparameterError(f"`0 < threshold < 1` must hold, but got {threshold=!r}")
    half = sigma * n * math.sqrt(2 * math.log(1 / threshold))
    return (2 * half + 1).clamp(max=n)


def envelope_mass_side(sigma: Tensor, n: int, fraction: float = 0.9) -> Tensor:
    """Per aperture, the continuous side in pixels of the centred window holding ``fraction`` of the envelope's
    mass on the n x n grid (``nas_flex.kernels.mass.continuous_size_from_mass``, the frequency layers' rule).

    Unlike ``envelope_side`` it does not saturate at n while the envelope flattens: a flat envelope gives
    ``fraction * n``, and the side keeps moving with sigma up to there.

    Args:
        sigma: apertures in grid units, shape (F,) (or any, flattened).
        n: odd base grid side.
        fraction: share of the mass, in (0, 1].

    Returns:
        float64 (F,), in [1, n].
    """
    from nas_flex.kernels.mass import continuous_size_from_mass

    u = gaussian_envelope(sigma.detach().double().reshape(-1), n)  # (F, n, n)
    return torch.tensor([continuous_size_from_mass(e, fraction)[0] for e in u], dtype=torch.float64)
