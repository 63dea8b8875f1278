"""FlexConv as stateless ops: the masked, cropped kernel, the 'same' and causal convolutions, the alias-free penalty.

Romero, Bruintjes et al., "FlexConv: Continuous Kernel Convolutions with Differentiable Kernel Sizes", ICLR 2022.
A FlexConv kernel is ``psi(x) = mask(x) * kernel_net(x)`` on relative positions in [-1, 1]^D, with an anisotropic
Gaussian mask (Sec. 3.1). Only the positions where the mask exceeds the threshold are kept (dynamic cropping,
Fig. 7), and the kernel net is evaluated at those positions only, once for all (C_out, C_in) channel pairs.
The layers in ``nas_flex.layers.flexconv`` are thin wrappers around these ops.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from nas_flex.errors import ShapeError
from nas_flex.functional.conv import Method, conv2d_same
from nas_flex.kernels.masks import (
    causal_crop_start,
    centred_positions,
    crop_sizes,
    gaussian_1d,
    gaussian_mask_at,
    grid_spacing,
    odd_grid_size,
)

__all__ = [
    "flexconv_kernel",
    "flex_conv2d",
    "causal_flexconv_kernel",
    "causal_conv1d",
    "alias_free_penalty",
]

#: a kernel net: positions (P, D) and an optional per-position scale (P,) -> values (P, C_out * C_in)
KernelFn = Callable[..., Tensor]


def flexconv_kernel(
    kernel_net: KernelFn,
    mean: Tensor,
    sigma: Tensor,
    grid_size: Sequence[int],
    channels: tuple[int, int],
    *,
    threshold: float = 0.1,
    crop: Sequence[int] | None = None,
    min_half: int = 1,
) -> Tensor:
    """The masked kernel of a centred FlexConv, cropped to where the mask exceeds ``threshold``.

    Args:
        kernel_net: maps positions (P, D) and a per-position scale (P,) to values (P, C_out * C_in) (a
            ``nas_flex.layers.kernelnets.KernelNet``); value ``o * C_in + i`` is the (o, i) kernel entry.
        mean: (D,) mask centres; sigma: (D,) mask widths (> 0), both in relative-position units.
        grid_size: the full grid, odd samples per dimension (the relative positions ``linspace(-1, 1, k)``).
        channels: (C_out, C_in).
        threshold: mask value below which positions are cropped away.
        crop: half-sizes (samples) of the crop per dimension if already known (``crop_sizes``); computed from
            ``mean`` and ``sigma`` otherwise (one device-to-host copy).
        min_half: smallest half-size of the crop where the grid allows (1: at least 3 taps per side, so a
            centred mask always receives a gradient).

    Returns:
        (C_out, C_in, 2 * crop[0] + 1, ..., 2 * crop[D-1] + 1), differentiable in the kernel net's parameters,
        ``mean`` and ``sigma`` (the crop itself is piecewise constant).

    Example:
        >>> from nas_flex.layers.kernelnets import MAGNet
        >>> net = MAGNet(2, 4 * 3, hidden_channels=8)
        >>> w = flexconv_kernel(net, torch.zeros(2), torch.tensor([0.075, 0.3]), (33, 33), (4, 3))
        >>> w.shape
        torch.Size([4, 3, 5, 21])
    """
    d = len(grid_size)
    if mean.shape != (d,) or sigma.shape != (d,):
        raise ShapeError(
            f"flexconv_kernel: `mean` and `sigma` must have shape ({d},) for a {d}-D grid, "
            f"but got {tuple(mean.shape)} and {tuple(sigma.shape)}"
        )
    if any(k % 2 == 0 or k < 1 for k in grid_size):
        raise ShapeError(f"flexconv_kernel: `grid_size` must be odd per dimension (a centred grid), got {grid_size}")
    if crop is None:
        m, s = torch.stack([mean.detach(), sigma.detach()]).double().cpu().tolist()
        crop = crop_sizes(m, s, threshold, grid_size, min_half=min_half)
    factory = {"device": sigma.device, "dtype": sigma.dtype}
    with _full_precision(sigma):
        axes = [centred_positions(int(n), grid_spacing(int(k)), **factory) for n, k in zip(crop, grid_size)]
        positions = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, d)  # (P, D), row-major
        mask = gaussian_mask_at(positions, mean, sigma)  # (P,)
        values = kernel_net(positions, mask)  # (P, C_out * C_in): a view of a contiguous (C_out * C_in, P)
    sizes = [2 * int(n) + 1 for n in crop]
    return values.t().reshape(channels[0], channels[1], *sizes)  # (C_out, C_in, *kernel): no copy


def _full_precision(like: Tensor) -> contextlib.AbstractContextManager:
    """Kernel generation runs at the parameters' precision, outside autocast: sine arguments reach ~100 rad, where
    half precision would lose the phase. The convolution itself may still autocast."""
    if like.device.type in ("cpu", "cuda", "xpu", "mps"):
        return torch.autocast(device_type=like.device.type, enabled=False)
    return contextlib.nullcontext()


def flex_conv2d(
    x: Tensor,
    kernel_net: KernelFn,
    mean: Tensor,
    sigma: Tensor,
    bias: Tensor | None = None,
    *,
    grid_size: tuple[int, int] | None = None,
    threshold: float = 0.1,
    min_half: int = 1,
    method: Method = "auto",
) -> Tensor:
    """2-D FlexConv: 'same', stride-1 cross-correlation with the cropped, masked kernel (``conv2d_same``).

    Args:
        x: (N, C_in, H, W).
        kernel_net, mean, sigma, threshold, min_half: as in ``flexconv_kernel``.
        bias: (C_out,) or None.
        grid_size: the full kernel grid; default: as large as the input, odd (H if odd else H + 1, same for W).
        method: "auto", "spatial" or "fft" (``conv2d_same``).

    Shape:
        (N, C_in, H, W) -> (N, C_out, H, W)
    """
    if x.dim() != 4:
        raise ShapeError(f"flex_conv2d: `x` must have shape (N, C_in, H, W), but got shape {tuple(x.shape)}")
    if grid_size is None:
        grid_size = (odd_grid_size(x.shape[-2]), odd_grid_size(x.shape[-1]))
    out_features = getattr(kernel_net, "out_features", None)
    c_in = x.shape[1]
    c_out = out_features // c_in if out_features is not None else (bias.shape[0] if bias is not None else None)
    if c_out is None:
        raise ShapeError("flex_conv2d: cannot infer C_out; pass a KernelNet (with out_features) or a bias")
    weight = flexconv_kernel(
        kernel_net, mean, sigma, grid_size, (c_out, c_in), threshold=threshold, min_half=min_half
    )
    return conv2d_same(x, weight, bias, method=method)


def causal_flexconv_kernel(
    kernel_net: KernelFn,
    mean: Tensor,
    sigma: Tensor,
    length: int,
    channels: tuple[int, int],
    *,
    threshold: float = 0.1,
    start: int | None = None,
    min_length: int = 2,
) -> Tensor:
    """The masked kernel of a causal (sequence) FlexConv, cropped on the past side.

    The grid holds ``length`` samples on [-1, 1]; the last sample (position +1) is the present (lag 0), the first
    (position -1) the oldest lag. The crop keeps every position newer than ``mean - sigma * sqrt(-2 ln threshold)``
    (at least ``min_length`` samples), always including the present.

    Args:
        kernel_net: maps positions (P, 1) and a scale (P,) to values (P, C_out * C_in).
        mean, sigma: (1,) mask centre and width.
        length: grid samples (any parity).
        channels: (C_out, C_in).
        start: first kept grid index, if already known (``causal_crop_start``).

    Returns:
        (C_out, C_in, k), the last tap multiplying the present sample.
    """
    if mean.shape != (1,) or sigma.shape != (1,):
        raise ShapeError(
            f"causal_flexconv_kernel: `mean` and `sigma` must have shape (1,), "
            f"but got {tuple(mean.shape)} and {tuple(sigma.shape)}"
        )
    if start is None:
        m, s = torch.cat([mean.detach(), sigma.detach()]).double().cpu().tolist()
        start = causal_crop_start(m, s, threshold, length, min_length=min_length)
    factory = {"device": sigma.device, "dtype": sigma.dtype}
    if length == 1:
        positions = torch.ones(1, **factory)  # the present only
    else:
        # grid index i sits at -1 + i * spacing; counted back from the present (+1) so the last tap is exactly +1
        lags = torch.arange(length - 1 - start, -1, -1, **factory)  # oldest kept lag ... 0
        positions = 1.0 - lags * grid_spacing(length)
    with _full_precision(sigma):
        mask = gaussian_1d(positions, mean[0], sigma[0])  # (k,)
        values = kernel_net(positions.unsqueeze(1), mask)  # (k, C_out * C_in)
    return values.t().reshape(channels[0], channels[1], positions.shape[0])


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, *, method: Method = "auto") -> Tensor:
    """Causal cross-correlation ``y[t] = sum_m weight[..., m] x[t - (k - 1) + m] (+ bias)``: output t sees x[<= t].

    Runs through ``conv2d_same`` (so long kernels go by FFT): an even kernel gets a zero oldest tap, the input is
    left-padded by ``(k - 1) / 2`` and the first L outputs of the centred convolution are the causal ones.

    Shape:
        x (N, C_in, L), weight (C_out, C_in, k) -> (N, C_out, L)
    """
    if x.dim() != 3 or weight.dim() != 3:
        raise ShapeError(
            f"causal_conv1d: `x` must be (N, C_in, L) and `weight` (C_out, C_in, k), "
            f"but got {tuple(x.shape)} and {tuple(weight.shape)}"
        )
    length = x.shape[-1]
    if weight.shape[-1] % 2 == 0:
        weight = F.pad(weight, (1, 0))  # a zero tap for the oldest lag keeps the kernel odd
    half = (weight.shape[-1] - 1) // 2
    x2 = F.pad(x, (half, 0)).unsqueeze(2)  # (N, C_in, L) -> (N, C_in, 1, L + half)
    y = conv2d_same(x2, weight.unsqueeze(2), bias, method=method)  # (N, C_out, 1, L + half)
    return y[:, :, 0, :length]


def alias_free_penalty(layer_freqs: Tensor, nyquist: Tensor, mask_freq: Tensor | None = None) -> Tensor:
    """The alias-free regularizer, "together" form (FlexConv App. A.2, Eq. 26-27), unweighted.

    Each of the F filter layers may use 1/F of the Nyquist frequency; the mask's frequency term, if given, is
    spread evenly over the layers. Per layer the worst axis counts:
    ``sum_l relu(max_d(f_ld + m_d / F - nyq_d / F))^2``.

    Args:
        layer_freqs: (F, D) per-layer, per-axis frequency bounds (``KernelNet.layer_max_frequencies``).
        nyquist: (D,) Nyquist frequency of the kernel grid per axis (``nyquist_frequency``).
        mask_freq: (D,) the mask's frequency per axis (``gaussian_max_frequency(1 / sigma)``), or None to
            regularise the kernel net only (the paper's default).

    Returns:
        Scalar tensor >= 0.
    """
    n_layers = layer_freqs.shape[0]
    f = layer_freqs if mask_freq is None else layer_freqs + mask_freq / n_layers
    excess = (f - nyquist / n_layers).amax(dim=-1)  # (F,): the worst axis of each layer
    return torch.relu(excess).square().sum()
