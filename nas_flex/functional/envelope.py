"""The adaptive Gaussian-envelope convolution (ACONV) as a stateless op.

Tek, Cam, Karli, "Adaptive convolution kernel for artificial neural networks", J. Vis. Commun. Image Represent. 2021
(arXiv:2009.06385):
O = X cross-correlated with (W o U), U a per-filter Gaussian envelope on the n x n base grid, normalised so its
mean squared coefficient is 1 (``nas_flex.kernels.envelope.gaussian_envelope``).
"""

from __future__ import annotations

from torch import Tensor

from nas_flex.errors import ShapeError
from nas_flex.functional.conv import conv2d_same
from nas_flex.kernels.envelope import gaussian_envelope

__all__ = ["envelope_conv2d", "envelope_weight"]


def envelope_weight(weight: Tensor, sigma: Tensor) -> Tensor:
    """The product kernel W o U: (C_out, C_in, n, n).

    Args:
        weight: (C_out, C_in, n, n), n odd.
        sigma: (C_out,) apertures in grid units (one per output filter), or one value for all; > 0.
    """
    if weight.dim() != 4 or weight.shape[-1] != weight.shape[-2] or weight.shape[-1] % 2 == 0:
        raise ShapeError(
            f"envelope_weight: `weight` must have shape (C_out, C_in, n, n) with n odd, but got {tuple(weight.shape)}"
        )
    c_out, n = weight.shape[0], weight.shape[-1]
    if sigma.numel() not in (1, c_out):
        raise ShapeError(
            f"envelope_weight: `sigma` must hold one aperture per output filter ({c_out}) or one for all, "
            f"but got shape {tuple(sigma.shape)}"
        )
    u = gaussian_envelope(sigma.reshape(-1).to(weight.dtype), n)  # (C_out or 1, n, n)
    return weight * u[:, None]  # (C_out, C_in, n, n); the envelope is shared over the input channels


def envelope_conv2d(x: Tensor, weight: Tensor, sigma: Tensor, bias: Tensor | None = None) -> Tensor:
    """'Same' stride-1 convolution with the enveloped kernel W o U(sigma), run by ``conv2d_same``.

    Args:
        x: input (N, C_in, H, W).
        weight: (C_out, C_in, n, n), n odd.
        sigma: (C_out,) apertures sigma_u > 0 in grid units (1 / n is one pixel), or one value for all.
        bias: (C_out,) or None.

    Shape:
        (N, C_in, H, W) -> (N, C_out, H, W)

    Example:
        >>> import torch
        >>> x, w = torch.randn(2, 3, 16, 16), torch.randn(4, 3, 7, 7)
        >>> envelope_conv2d(x, w, torch.linspace(0.1, 0.5, 4)).shape
        torch.Size([2, 4, 16, 16])
    """
    if x.dim() != 4:
        raise ShapeError(f"envelope_conv2d: `x` must have shape (N, C_in, H, W), but got shape {tuple(x.shape)}")
    return conv2d_same(x, envelope_weight(weight, sigma), bias)
