"""NIFF: neural implicit frequency filters.

Grabinski, Keuper, Keuper, "As large as it gets: studying infinitely large convolutions via neural implicit frequency
filters", TMLR 2024. A small MLP over the grid of frequency coordinates (the paper's stacked 1x1 convolutions over a
2-channel coordinate map) predicts each filter's spectrum, real and imaginary parts by separate MLPs; the input is
transformed with the real FFT, multiplied, and transformed back: a circular convolution with a kernel as large as the
input, for the cost of the FFTs.

nas_flex's version against the authors' code (GeJulia/NIFF): frequencies are normalised to [-1, 1] (1 = Nyquist)
instead of integer indices, so the same continuous filter is resampled for any input size; the grid is built for
each input (any H, W, non-square included) on the input's device; rfft2 / irfft2 with an explicitly Hermitian
spectrum instead of fft2 + fftshift + taking the real part.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from nas_flex.errors import HyperparameterError
from nas_flex.functional.niff import circular_conv2d_rfft, compute_dtype, separable_circular_conv2d_rfft
from nas_flex.kernels.frequency import full_grid, hermitian_part_rfft
from nas_flex.layers.base import check_finite

# TwinMLP, he_init_, DEFAULT_GRID and MASS_FRACTION moved to nas_flex.layers.frequency; imported here so their public
# path through this module keeps working
from nas_flex.layers.frequency import (
    DEFAULT_GRID,
    MASS_FRACTION,
    FrequencyKernelLayer,
    TwinMLP,
    he_init_,
    size_repr,
)
from nas_flex.layers.registry import register

__all__ = ["NIFFConv", "TwinMLP", "he_init_", "NIFF_MLPS", "NIFF_MODES", "DEFAULT_GRID", "MASS_FRACTION"]

# preset -> (hidden widths, activation); the output width is the number of filters
NIFF_MLPS: dict[str, tuple[tuple[int, ...], str]] = {
    "small": ((32,), "relu"),  # the paper's CIFAR-10 NIFF: 2 -> 32 -> C, ReLU
    "large": ((16, 128, 32), "silu"),  # the paper's ImageNet NIFF for large models: 2 -> 16 -> 128 -> 32 -> C, SiLU
    "light": ((8, 4), "silu"),  # the paper's lightweight NIFF (MobileNet-v2, DenseNet-121): 2 -> 8 -> 4 -> C, SiLU
}
NIFF_MODES = ("separable", "full")


@register("niff")
class NIFFConv(FrequencyKernelLayer):
    """Circular convolution with filters learned in the frequency domain by an implicit MLP (NIFF).

    An MLP maps each normalised frequency (f_y, f_x) of the input's rfft2 grid to filter values, real and imaginary
    parts by separate MLPs. ``mode="separable"`` (the paper's default): the MLP gives one filter per input channel
    (a depthwise convolution), then a 1x1 channel mix (a real C_out x C_in matrix, no bias, as in the authors' code)
    is applied in the frequency domain, and one inverse FFT returns to the spatial domain. ``mode="full"``: the MLP
    gives C_out x C_in filters and the channels are summed per frequency (scaled by 1 / sqrt(C_in), the fan-in, so
    the output variance does not grow with C_in).

    The filter is built as the authors build it: the MLP is evaluated over the full frequency plane
    (``nas_flex.kernels.frequency.full_grid``) and its Hermitian part (M(f) + conj(M(-f))) / 2 is the spectrum
    (``hermitian_part_rfft``; what their ``ifft2(...).real`` applies), kept on the rfft layout, so the layer is
    exactly a circular convolution with the real kernel ``spatial_kernel()``. A new input size resamples the
    continuous filter: frequencies are normalised (1 = Nyquist), so a filter keeps its extent in pixels.

    **Stem.** The paper's networks keep their first convolution spatial (the authors' ResNet: a 7x7 ``nn.Conv2d``;
    NIFF replaces the stride-1 convolutions after it). On a 1-channel input the separable form is degenerate: its
    C_out kernels are one depthwise filter times a scalar each (measured: mean |cos| 1.00 between them). So
    ``mode="separable"`` with ``in_channels=1`` raises; use ``mode="full"`` there, or a spatial stem before the
    layer, which the backbones build (``spatial_stem``: the kernel size of the plain convolution they put first).

    **Training recipe.** Trained with the trial's optimizer (nas_flex's Adam by default), not the authors' CIFAR-10
    recipe (Grabinski et al., App. I: SGD momentum 0.9, lr 0.02, cosine, weight decay 2e-3, label smoothing 0.1,
    150 epochs of batch 256): at the main job's 450 steps it left this layer 26 points lower, underfitting, while a
    7x7 convolution was unaffected (``python -m experiments.niff_recipe``; docs/reproductions.md).

    The kernel is as large as the input; there is no explicit size parameter (``size_parameters()`` yields nothing).
    ``effective_kernel_size`` is, per dimension, the side of the centred window holding 90 % of the spatial
    kernel's absolute mass (the paper's kernel mass ratio), continuous in the kernel
    (``nas_flex.kernels.mass.continuous_size_from_mass``), on the last input's grid, or on the 32 x 32
    ``DEFAULT_GRID`` before the first forward; ``size_record`` adds the integer window (``window_height``,
    ``window_width``).

    Args:
        in_channels: C_in.
        out_channels: C_out.
        mode: "separable" (depthwise filters + 1x1 mix) or "full" (C_out x C_in filters).
        mlp: the paper's MLP sizes: "small" (CIFAR: 2 -> 32 -> C, ReLU), "large" (ImageNet: 2 -> 16 -> 128 -> 32 -> C,
            SiLU) or "light" (2 -> 8 -> 4 -> C, SiLU, the authors' lightweight one).
        bias: add a learnable bias per output channel (spatial domain; nn.Conv2d's default; not in the paper).

    Shape:
        (N, C_in, H, W) -> (N, C_out, H, W), any H, W.

    Example:
        >>> import torch
        >>> layer = NIFFConv(3, 8)
        >>> layer(torch.randn(2, 3, 16, 12)).shape
        torch.Size([2, 8, 16, 12])
        >>> layer.spatial_kernel().shape
        torch.Size([8, 3, 16, 12])
    """

    domain: ClassVar[str] = "frequency"
    example_hparams: ClassVar[dict[str, Any]] = {"mode": "separable", "mlp": "small"}
    #: the kernel size of the plain convolution a backbone puts first (the authors' ResNet stem: 7x7)
    spatial_stem: ClassVar[int | None] = 7

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        mode: str = "separable",
        mlp: str = "small",
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels)
        if mode not in NIFF_MODES:
            raise HyperparameterError(f"`mode` must be one of {list(NIFF_MODES)}, but got {mode=!r}")
        if mlp not in NIFF_MLPS:
            raise HyperparameterError(f"`mlp` must be one of {list(NIFF_MLPS)}, but got {mlp=!r}")
        if not isinstance(bias, bool):
            raise HyperparameterError(f"`bias` must be a bool, but got {bias=!r}")
        if mode == "separable" and in_channels == 1:
            raise HyperparameterError(
                "NIFF mode='separable' on in_channels=1 learns one filter (every output kernel is a multiple of it); "
                "use mode='full' for this layer, or put a spatial stem before it (the backbones do: "
                "NIFFConv.spatial_stem)"
            )
        self.mode = mode
        self.mlp = mlp
        hidden, activation = NIFF_MLPS[mlp]
        filters = in_channels if mode == "separable" else out_channels * in_channels
        factory = {"device": device, "dtype": dtype}
        self.filter_mlp = TwinMLP(2, hidden, filters, activation, **factory)
        separable = mode == "separable"
        self.pointwise = nn.Parameter(torch.empty(out_channels, in_channels, **factory)) if separable else None
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.filter_mlp.reset_parameters()
        bound = 1 / math.sqrt(self.in_channels)
        if self.pointwise is not None:
            nn.init.uniform_(self.pointwise, -bound, bound)  # nn.Linear's / a 1x1 nn.Conv2d's default
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    # ------------------------------------------------------------------------------------------------ filters
    def _param_dtype(self) -> torch.dtype:
        return compute_dtype(self.filter_mlp.weights[0].dtype)

    def filters(self, size: tuple[int, int] | None = None) -> Tensor:
        """The MLP's Hermitian filter spectra on the rfft2 grid of an H x W input.

        Args:
            size: (H, W); default the last input's size (``DEFAULT_GRID`` before the first forward).

        Returns:
            complex (C_in, H, W // 2 + 1) for ``mode="separable"`` (the depthwise filters), complex
            (C_out, C_in, H, W // 2 + 1) for ``mode="full"`` (including the 1 / sqrt(C_in) scale).
        """
        h, w = size or self.last_input_size or DEFAULT_GRID
        dtype = self._param_dtype()
        device = self.filter_mlp.weights[0].device
        with torch.autocast(device_type=device.type, enabled=False):
            # the authors' construction: the MLP over the full frequency plane, then its Hermitian part (what their
            # ifft2(...).real applies), kept on the rfft layout
            grid = full_grid(h, w, device=device, dtype=dtype)  # (2, H, W)
            out = self.filter_mlp(grid.reshape(2, h * w).T, dtype)  # (H*W, 2) -> (2, H*W, C)
            spec = torch.complex(out[0], out[1]).reshape(h, w, -1)  # (H*W, C) -> (H, W, C)
            spec = hermitian_part_rfft(spec, w, dims=(0, 1))  # -> (H, Wf, C)
            wf = spec.shape[1]
            if self.mode == "full":
                # (H, Wf, C_out*C_in) -> (H, Wf, C_out, C_in) -> (C_out, C_in, H, Wf), a view: the conv's batched
                # matmul reads the (H, Wf, C_in, C_out) order from it without a copy
                spec = (spec / math.sqrt(self.in_channels)).reshape(h, wf, self.out_channels, self.in_channels)
                spec = spec.permute(2, 3, 0, 1)
            else:
                spec = spec.permute(2, 0, 1)  # (H, Wf, C_in) -> (C_in, H, Wf)
        return check_finite("filters", spec, type(self).__name__)

    def frequency_kernel(self, size: tuple[int, int] | None = None) -> Tensor:
        """The complete filter bank as spectra: complex (C_out, C_in, H, W // 2 + 1), Hermitian, rfft2 layout.

        For ``mode="separable"`` this is the composition ``pointwise[o, i] * depthwise[i]``.
        """
        spec = self.filters(size)
        if self.mode == "separable":
            spec = self.pointwise.to(spec.real.dtype)[:, :, None, None] * spec[None]  # (C_out, C_in, H, Wf)
        return spec

    def size_record(self) -> dict[str, Any]:
        return {"mode": self.mode, **self._mass_record()}

    # ------------------------------------------------------------------------------------------------ forward
    def forward(self, x: Tensor) -> Tensor:
        h, w = self._check_input(x)
        spec = self.filters((h, w))
        if self.mode == "separable":
            return separable_circular_conv2d_rfft(x, spec, self.pointwise, self.bias)
        return circular_conv2d_rfft(x, spec, self.bias)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, {size_repr(self)}"
        if self.mode != "separable":
            s += f", mode={self.mode!r}"
        if self.mlp != "small":
            s += f", mlp={self.mlp!r}"
        return s + ("" if self.bias is not None else ", bias=False")

