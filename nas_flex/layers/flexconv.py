"""FlexConv: a continuous kernel times a learnable Gaussian mask, cropped to the mask's support.

Romero, Bruintjes, Tomczak, Bekkers, Hoogendoorn, van Gemert, "FlexConv: Continuous Kernel Convolutions with
Differentiable Kernel Sizes", ICLR 2022. The kernel ``psi(x) = mask(x) * kernel_net(x)`` lives on relative positions
in [-1, 1]^D; the anisotropic Gaussian mask (learned centre and width per dimension) sets the kernel's size, and the
kernel is cropped to where the mask exceeds 0.1, so a small learned size costs a small convolution.

``FlexConv`` is the 2-D registry layer ("flexconv"); ``FlexConv1d`` is the causal sequence form (FlexTCN).
The ops live in ``nas_flex.functional.flexconv``, the mask and grid maths in ``nas_flex.kernels.masks``, the kernel
nets (MAGNet, MFN-Gabor, MFN-Fourier, SIREN) in ``nas_flex.layers.kernelnets``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from nas_flex.errors import HyperparameterError, NonFiniteError, ShapeError, check_shape, unknown_name
from nas_flex.functional.conv import conv2d_same
from nas_flex.functional.flexconv import alias_free_penalty, causal_conv1d, causal_flexconv_kernel, flexconv_kernel
from nas_flex.kernels.masks import (
    causal_crop_start,
    crop_sizes,
    gaussian_max_frequency,
    nyquist_frequency,
    odd_grid_size,
)
from nas_flex.layers.base import KernelLayer, SizeRecipe, check_finite, check_positive_int
from nas_flex.layers.kernelnets import KERNEL_NETS, KernelNet, build_kernel_net
from nas_flex.layers.registry import register

__all__ = ["FlexConv", "FlexConv1d", "SIGMA_MIN", "SIGMA_MAX", "DEFAULT_GRID", "SIGMA_CUT", "INIT_SPATIAL_FACTOR"]

#: the mask width is clamped to [SIGMA_MIN, SIGMA_MAX] (relative-position units) in forward, and projected there by
#: ``constrain_()``: positive and finite; below 1e-3 the mask is a single tap on any practical grid, above 10 it is
#: flat (>= 0.995) over [-1, 1]
SIGMA_MIN = 1e-3
SIGMA_MAX = 10.0
#: the grid assumed before the first forward (when no ``horizon`` is given): 33, the CIFAR-10 grid of the paper
DEFAULT_GRID = 33
#: standard deviations of a Gaussian's spectrum counted as its bandwidth in the frequency bounds (paper App. A.1)
SIGMA_CUT = 2.0
#: Gabor envelope centres start within +-1.667 mask sigmas of the mask centre (the authors' ``init_spatial_value``)
INIT_SPATIAL_FACTOR = 1.667


def _check_float(name: str, value: Any, low: float, high: float, *, open_low: bool = True, open_high: bool = True):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if open_low else value >= low) and (value < high if open_high else value <= high)
    if not ok:
        lo, hi = ("(" if open_low else "["), (")" if open_high else "]")
        raise HyperparameterError(
            f"`{name}` must be a finite number in {lo}{low}, {high}{hi}, but got {name}={value!r}"
        )
    return float(value)


class _FlexBase(KernelLayer):
    """What the 2-D and 1-D FlexConv share: hyperparameters, the kernel net, the mask and the regularizer."""

    dims: ClassVar[int] = 2
    #: the authors' code (rjbruin/flexconv, ``mask_params`` group) trains the mask centre and width at 0.1x the
    #: learning rate: their gradient is ~1e3 at initialisation, and at 1x the width collapses (measured here: a mask
    #: sigma reached 1e-3 and val_acc 0.10 on digits-multiscale). The paper's App. D.1 states the same factor.
    size_recipe: ClassVar[SizeRecipe] = SizeRecipe(
        source="Romero et al. 2022 App. D.1 / rjbruin/flexconv: mask parameters at 0.1x the learning rate",
        lr_factor=0.1,
    )

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_net: str,
        hidden_channels: int,
        num_layers: int,
        mask_mean_init: float,
        mask_sigma_init: float,
        mask_threshold: float,
        regularize: bool,
        regularize_mask: bool,
        regularization_weight: float,
        bias: bool,
        kernel_net_options: dict[str, Any] | None,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> None:
        super().__init__(in_channels, out_channels)
        if not isinstance(kernel_net, str) or kernel_net not in KERNEL_NETS:
            raise unknown_name("kernel_net", kernel_net, KERNEL_NETS)
        self.kernel_net_name = kernel_net
        self.hidden_channels = check_positive_int("hidden_channels", hidden_channels)
        self.num_layers = check_positive_int("num_layers", num_layers)
        self.mask_sigma_init = _check_float(
            "mask_sigma_init", mask_sigma_init, SIGMA_MIN, SIGMA_MAX, open_low=False, open_high=False
        )
        self.mask_mean_init = _check_float("mask_mean_init", mask_mean_init, -1.0, 1.0, open_low=False, open_high=False)
        self.mask_threshold = _check_float("mask_threshold", mask_threshold, 0.0, 1.0)
        for name, value in (("regularize", regularize), ("regularize_mask", regularize_mask), ("bias", bias)):
            if not isinstance(value, bool):
                raise HyperparameterError(f"`{name}` must be a bool, but got {name}={value!r}")
        self.regularize = regularize
        self.regularize_mask = regularize_mask
        self.regularization_weight = _check_float(
            "regularization_weight", regularization_weight, 0.0, math.inf, open_low=False
        )
        self.kernel_net_options = dict(kernel_net_options or {})
        self.kernel_net: KernelNet = self._make_kernel_net(out_channels * in_channels, device, dtype)
        factory = {"device": device, "dtype": dtype}
        self.mask_mean = nn.Parameter(torch.empty(self.dims, **factory))
        self.mask_sigma = nn.Parameter(torch.empty(self.dims, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def _make_kernel_net(self, out_features: int, device: Any, dtype: Any) -> KernelNet:
        """The kernel net, its sampling region initialised to where the initial mask is wide."""
        reserved = sorted(set(self.kernel_net_options) & {"init_region", "device", "dtype"})
        if reserved:
            raise HyperparameterError(
                f"`kernel_net_options` must not set {reserved}: the layer sets them (init_region from the mask "
                f"initialisation; device and dtype from its own arguments)"
            )
        spread = INIT_SPATIAL_FACTOR * self.mask_sigma_init
        init_region = (max(-1.0, self.mask_mean_init - spread), min(1.0, self.mask_mean_init + spread))
        return build_kernel_net(self.kernel_net_name, self.dims, out_features, self.hidden_channels, self.num_layers,
                                init_region=init_region, device=device, dtype=dtype, **self.kernel_net_options)

    def reset_parameters(self) -> None:
        """Mask centre ``mask_mean_init``, width ``mask_sigma_init``; zero bias; the kernel net's own init, with its
        output layer scaled by 1/sqrt(C_in) (the fan-in part of Chang et al. 2020's hypernetwork init), so the output
        variance does not grow with the input channels."""
        nn.init.constant_(self.mask_mean, self.mask_mean_init)
        nn.init.constant_(self.mask_sigma, self.mask_sigma_init)
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        self.kernel_net.reset_parameters()
        with torch.no_grad():
            gain = 1.0 / math.sqrt(self.in_channels)
            self.kernel_net.output_weight.mul_(gain)
            self.kernel_net.output_bias.mul_(gain)

    # ------------------------------------------------------------------------------------------------- mask
    def _host_mask(self) -> tuple[list[float], list[float]]:
        """(mean, sigma) as Python floats, sigma clamped; one device-to-host copy (the crop needs host values).

        Raises:
            NonFiniteError: naming the parameter, if the mask mean or sigma is NaN or inf.
        """
        if self.mask_sigma.is_meta:
            return [self.mask_mean_init] * self.dims, [self.mask_sigma_init] * self.dims
        values = torch.cat([self.mask_mean.detach(), self.mask_sigma.detach()]).tolist()
        if not all(math.isfinite(v) for v in values):
            where = type(self).__name__
            check_finite("mask_mean", self.mask_mean, where)
            check_finite("mask_sigma", self.mask_sigma, where)
            raise NonFiniteError(f"{where}: the mask parameters hold non-finite values")  # pragma: no cover
        mean, sigma = values[: self.dims], values[self.dims :]
        return mean, [min(max(s, SIGMA_MIN), SIGMA_MAX) for s in sigma]

    def _checked(self, weight: Tensor) -> Tensor:
        """``weight`` after checking it is finite (skipped on the meta device, where FLOPs are counted)."""
        if not weight.is_meta:
            # one reduction instead of isfinite's three passes: a NaN or inf anywhere makes the sum non-finite
            check_finite("kernel", weight.detach().sum(), type(self).__name__)
        return weight

    def _sigma(self) -> Tensor:
        """The mask width as used: clamped to [SIGMA_MIN, SIGMA_MAX]."""
        return self.mask_sigma.clamp(SIGMA_MIN, SIGMA_MAX)

    def size_parameters(self) -> Iterator[nn.Parameter]:
        """The mask centre and width (the paper trains them at 0.1x the learning rate)."""
        yield self.mask_mean
        yield self.mask_sigma

    def constrain_(self) -> None:
        """Project the mask width into [SIGMA_MIN, SIGMA_MAX] in place."""
        with torch.no_grad():
            self.mask_sigma.clamp_(SIGMA_MIN, SIGMA_MAX)

    def size_ranges(self) -> Iterator[tuple[nn.Parameter, float, float]]:
        """The mask width's clip [SIGMA_MIN, SIGMA_MAX] (relative-position units)."""
        yield (self.mask_sigma, SIGMA_MIN, SIGMA_MAX)

    # ---------------------------------------------------------------------------------------- regularizer
    def _grid(self) -> tuple[int, ...]:  # pragma: no cover - both subclasses override it
        raise NotImplementedError

    def regularization(self) -> Tensor:
        """The weighted alias-free penalty (paper Sec. 3.3, App. A.2, "together" form), on the grid of the last input.

        ``regularization_weight * sum_l relu(max_d(f_ld - nyq_d / F))^2`` over the kernel net's F filter layers,
        with f_ld the analytic frequency bound of layer l along axis d (``KernelNet.layer_max_frequencies``, sigma_cut
        2) and nyq_d = (k_d - 1) / 4 the Nyquist frequency of the k_d-sample grid. With ``regularize_mask`` the
        mask's term 2 / (2 pi sigma_d) is added, spread over the layers. Zero when ``regularize`` is off and for a
        kernel net without a frequency bound (SIREN).
        """
        ref = self.mask_sigma
        layer_freqs = self.kernel_net.layer_max_frequencies(SIGMA_CUT) if self.regularize else None
        if layer_freqs is None or self.regularization_weight == 0.0:
            return torch.zeros((), device=ref.device, dtype=ref.dtype)
        nyquist = torch.tensor([nyquist_frequency(k) for k in self._grid()], device=ref.device, dtype=ref.dtype)
        mask_freq = gaussian_max_frequency(1.0 / self._sigma(), SIGMA_CUT) if self.regularize_mask else None
        return self.regularization_weight * alias_free_penalty(layer_freqs, nyquist, mask_freq)

    # ------------------------------------------------------------------------------------------------ repr
    def _repr_common(self, size: str) -> str:
        mean, sigma = self._host_mask_or_nan()
        sig = "x".join(f"{s:.2g}" for s in sigma)
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={size} (learned, mask sigma={sig}"
        if any(m != self.mask_mean_init for m in mean):
            text += ", mean=" + "x".join(f"{m:.2g}" for m in mean)
        text += ")"
        defaults = {
            "kernel_net": ("magnet", self.kernel_net_name),
            "hidden_channels": (32, self.hidden_channels),
            "num_layers": (3, self.num_layers),
            "mask_sigma_init": (0.075, self.mask_sigma_init),
            "mask_threshold": (0.1, self.mask_threshold),
            "regularize": (False, self.regularize),
            "regularize_mask": (False, self.regularize_mask),
            "regularization_weight": (0.1, self.regularization_weight),
            "bias": (True, self.bias is not None),
        }
        for name, (default, value) in defaults.items():
            if value != default:
                text += f", {name}={value!r}"
        if self.kernel_net_options:
            text += f", kernel_net_options={self.kernel_net_options!r}"
        return text

    def _host_mask_or_nan(self) -> tuple[list[float], list[float]]:
        try:
            return self._host_mask()
        except NonFiniteError:
            return [math.nan] * self.dims, [math.nan] * self.dims


@register("flexconv")
class FlexConv(_FlexBase):
    """FlexConv (Romero, Bruintjes et al., ICLR 2022): a 2-D convolution whose kernel is a kernel net over relative
    positions in [-1, 1]^2 times a learnable anisotropic Gaussian mask, cropped where the mask exceeds 0.1.

    The kernel grid is as large as the input (odd: H if odd else H + 1, the same for W) unless ``horizon`` fixes it,
    and a new input size gives a new grid (the sampling rate follows the input). The mask
    ``exp(-0.5 ((y - mu_h) / sigma_h)^2 - 0.5 ((x - mu_w) / sigma_w)^2)`` is cropped symmetrically about the centre to
    the half-width ``|mu| + sigma * sqrt(-2 ln mask_threshold)`` per dimension (the authors' rule; on a 33-sample grid
    sigma 0.075 -> 5, 0.2 -> 13, 0.3 -> 21, >= 0.47 -> 33), never beyond the grid and at least 3 taps per side where
    the grid has them (a 1-tap crop of a centred mask passes no gradient to the mask, so it could never grow). Different
    sigmas give rectangular kernels. The kernel net runs only at the kept positions, once per forward for all channel
    pairs, and the convolution goes through ``conv2d_same`` (spatial or FFT, whichever is cheaper).

    Args:
        in_channels: C_in.
        out_channels: C_out.
        kernel_net: "magnet" (default), "mfn_gabor", "mfn_fourier" or "siren" (``nas_flex.layers.kernelnets``).
        hidden_channels: kernel-net width (paper: 32).
        num_layers: kernel-net depth (paper: 3, in the authors' convention: 3 multiplicative layers, 4 filters).
        horizon: fixed odd kernel grid (an int or (height, width)); default None: the grid follows the input.
        mask_sigma_init: initial mask width per dimension on [-1, 1] (the authors' code: 0.075, a 5x5 kernel on a
            33-sample grid; the paper's App. D.1 says variance 0.125, which would start at 25x25).
        mask_threshold: crop threshold in (0, 1) (paper: 0.1).
        regularize: add the alias-free penalty in ``regularization()``. Default off, as the authors train their
            CIFAR-10, MNIST and STL-10 results (rjbruin/flexconv's run commands); they turn it on for the
            cross-resolution experiments (train at 16 px, test at 32 px; paper Table 4). On for that use. At
            initialisation in nas_flex's 4-layer digits network the penalty is ~150 against a cross-entropy of 2.5,
            and with it on FlexConv reached 0.51-0.57 val_acc where it reaches 0.64-0.65 without it (6 epochs).
        regularize_mask: include the mask's frequency term in it (the paper's f+FlexConv; default off, the paper's
            choice: including it pushes masks to grow).
        regularization_weight: lambda of the penalty (paper: 0.1).
        bias: add a learnable bias (initialised at zero).
        kernel_net_options: extra keyword arguments for the kernel net (``input_scale``, ``alpha``, ``omega_0``...).
        device, dtype: for the parameters.

    ``size_parameters()`` are ``mask_mean`` and ``mask_sigma`` (shape (2,), (height, width) order); the paper trains
    them at 0.1x the learning rate. ``mask_sigma`` is clamped to [SIGMA_MIN, SIGMA_MAX] in forward.

    Shape:
        (N, C_in, H, W) -> (N, C_out, H, W)

    Example:
        >>> import torch
        >>> layer = FlexConv(3, 8, hidden_channels=8)
        >>> layer(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 8, 32, 32])
        >>> layer.effective_kernel_size  # 5x5 of the 33x33 grid at the initial sigma 0.075
        (5.0, 5.0)
    """

    dims: ClassVar[int] = 2
    example_hparams: ClassVar[dict[str, Any]] = {"hidden_channels": 8}
    size_parameter_names: ClassVar[tuple[str, ...]] = ("mask_sigma_h", "mask_sigma_w")

    @classmethod
    def sequence_layer(cls) -> type[KernelLayer]:
        """``FlexConv1d``: FlexTCN's causal 1-D FlexConv."""
        return FlexConv1d

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_net: str = "magnet",
        hidden_channels: int = 32,
        num_layers: int = 3,
        horizon: int | tuple[int, int] | None = None,
        mask_sigma_init: float = 0.075,
        mask_threshold: float = 0.1,
        regularize: bool = False,
        regularize_mask: bool = False,
        regularization_weight: float = 0.1,
        bias: bool = True,
        kernel_net_options: dict[str, Any] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.horizon = self._check_horizon(horizon)
        super().__init__(
            in_channels,
            out_channels,
            kernel_net=kernel_net,
            hidden_channels=hidden_channels,
            num_layers=num_layers,
            mask_mean_init=0.0,
            mask_sigma_init=mask_sigma_init,
            mask_threshold=mask_threshold,
            regularize=regularize,
            regularize_mask=regularize_mask,
            regularization_weight=regularization_weight,
            bias=bias,
            kernel_net_options=kernel_net_options,
            device=device,
            dtype=dtype,
        )

    @staticmethod
    def _check_horizon(horizon: Any) -> tuple[int, int] | None:
        if horizon is None:
            return None
        pair = (horizon, horizon) if isinstance(horizon, int) else horizon
        if (
            not isinstance(pair, (tuple, list))
            or len(pair) != 2
            or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0 for k in pair)
        ):
            raise HyperparameterError(
                f"`horizon` must be None, an odd positive int or a pair of them (a centred kernel grid), "
                f"but got {horizon=!r}"
            )
        return int(pair[0]), int(pair[1])

    # ------------------------------------------------------------------------------------------------- grid
    def grid_size(self, input_size: tuple[int, int] | None = None) -> tuple[int, int]:
        """The kernel grid (odd samples per dimension) for an input of ``input_size`` (H, W): ``horizon`` if set,
        else the odd cover of the input; for None, the last input seen, else ``DEFAULT_GRID``."""
        if self.horizon is not None:
            return self.horizon
        size = input_size if input_size is not None else self.last_input_size
        if size is None:
            return DEFAULT_GRID, DEFAULT_GRID
        return odd_grid_size(size[0]), odd_grid_size(size[1])

    def _grid(self) -> tuple[int, int]:
        return self.grid_size()

    def crop(self, grid: tuple[int, int] | None = None) -> tuple[int, int]:
        """Half-sizes (samples) of the current crop on ``grid`` (default: the current grid)."""
        mean, sigma = self._host_mask()
        return crop_sizes(mean, sigma, self.mask_threshold, grid or self.grid_size(), min_half=1)  # type: ignore[return-value]

    @property
    def effective_kernel_size(self) -> tuple[float, float]:
        """(height, width) in pixels: the cropped kernel on the grid of the last input (before any input: on the
        ``horizon`` grid, else on the DEFAULT_GRID x DEFAULT_GRID one). The full grid if the mask is non-finite."""
        grid = self.grid_size()
        try:
            hh, hw = self.crop(grid)
        except NonFiniteError:
            hh, hw = (grid[0] - 1) // 2, (grid[1] - 1) // 2
        return float(2 * hh + 1), float(2 * hw + 1)

    # ----------------------------------------------------------------------------------------------- kernel
    def kernel(self, input_size: tuple[int, int] | None = None) -> Tensor:
        """The masked, cropped kernel (C_out, C_in, kh, kw) for an input of ``input_size`` (default: the last seen).

        Raises:
            NonFiniteError: if a mask parameter or the generated kernel holds NaN or inf.
        """
        grid = self.grid_size(input_size)
        mean, sigma = self._host_mask()
        crop = crop_sizes(mean, sigma, self.mask_threshold, grid, min_half=1)
        weight = flexconv_kernel(
            self.kernel_net,
            self.mask_mean,
            self._sigma(),
            grid,
            (self.out_channels, self.in_channels),
            threshold=self.mask_threshold,
            crop=crop,
        )
        return self._checked(weight)

    def forward(self, x: Tensor) -> Tensor:
        h, w = self._check_input(x)
        return conv2d_same(x, self.kernel((h, w)), self.bias)

    def to_conv2d(self) -> nn.Conv2d:
        """An ``nn.Conv2d`` with the kernel for the last input size (padding (kh // 2, kw // 2)): same output."""
        with torch.no_grad():
            return self._as_conv2d(self.kernel())

    # ------------------------------------------------------------------------------------------------ records
    def size_record(self) -> dict[str, Any]:
        """The raw mask parameters: ``mask_mean_h``, ``mask_mean_w``, ``mask_sigma_h``, ``mask_sigma_w`` (floats)."""
        mean, sigma = self._raw_mask_floats()
        return {
            "mask_mean_h": mean[0],
            "mask_mean_w": mean[1],
            "mask_sigma_h": sigma[0],
            "mask_sigma_w": sigma[1],
        }

    def _raw_mask_floats(self) -> tuple[list[float], list[float]]:
        if self.mask_sigma.is_meta:
            return [self.mask_mean_init] * 2, [self.mask_sigma_init] * 2
        return (
            [float(v) for v in self.mask_mean.detach().double().cpu()],
            [float(v) for v in self.mask_sigma.detach().double().cpu()],
        )

    def extra_repr(self) -> str:
        kh, kw = self.effective_kernel_size
        text = self._repr_common(f"{int(kh)}x{int(kw)}")
        if self.horizon is not None:
            text += f", horizon={self.horizon}"
        return text


class FlexConv1d(_FlexBase):
    """Causal FlexConv for sequences and TCNs (FlexTCN, paper Sec. 4.2): (N, C_in, L) -> (N, C_out, L).

    The kernel grid holds L samples on [-1, 1] (or ``horizon``): position +1 is the present (lag 0), -1 the oldest
    lag L - 1. Output t sees inputs <= t only. The mask centre starts at the present (``mask_mean_init=1.0``, the
    authors' choice; -1.0 would start at the far past) and the kernel is cropped on the past side to the positions
    newer than ``mu - sigma * sqrt(-2 ln mask_threshold)``, at least 2 taps. Gabor kernel nets start their envelopes
    just before the present, within ``INIT_SPATIAL_FACTOR`` mask sigmas (as ccnn does for causal kernels).

    Args: as ``FlexConv``, plus ``mask_mean_init`` in [-1, 1]; ``horizon`` is a positive int (any parity).

    Not in the layer registry (the registry's contract is 2-D); it is a ``KernelLayer``, so ``learned_sizes`` lists
    it with height 1 and width the kernel length. ``to_conv1d()`` gives the equivalent plain module.

    Shape:
        (N, C_in, L) -> (N, C_out, L)

    Example:
        >>> import torch
        >>> layer = FlexConv1d(3, 8, hidden_channels=8)
        >>> layer(torch.randn(2, 3, 100)).shape
        torch.Size([2, 8, 100])
    """

    kind: ClassVar[str] = "flexconv1d"
    dims: ClassVar[int] = 1
    example_hparams: ClassVar[dict[str, Any]] = {"hidden_channels": 8}
    size_parameter_names: ClassVar[tuple[str, ...]] = ("mask_sigma",)
    spatial_dims: ClassVar[int] = 1

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_net: str = "magnet",
        hidden_channels: int = 32,
        num_layers: int = 3,
        horizon: int | None = None,
        mask_mean_init: float = 1.0,
        mask_sigma_init: float = 0.075,
        mask_threshold: float = 0.1,
        regularize: bool = False,
        regularize_mask: bool = False,
        regularization_weight: float = 0.1,
        bias: bool = True,
        kernel_net_options: dict[str, Any] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if horizon is not None and (isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1):
            raise HyperparameterError(f"`horizon` must be None or a positive int, but got {horizon=!r}")
        self.horizon = horizon
        super().__init__(
            in_channels,
            out_channels,
            kernel_net=kernel_net,
            hidden_channels=hidden_channels,
            num_layers=num_layers,
            mask_mean_init=mask_mean_init,
            mask_sigma_init=mask_sigma_init,
            mask_threshold=mask_threshold,
            regularize=regularize,
            regularize_mask=regularize_mask,
            regularization_weight=regularization_weight,
            bias=bias,
            kernel_net_options=kernel_net_options,
            device=device,
            dtype=dtype,
        )

    def grid_size(self, length: int | None = None) -> int:
        """Grid samples for a sequence of ``length``: ``horizon`` if set, else ``length`` (default: the last seen,
        else DEFAULT_GRID)."""
        if self.horizon is not None:
            return self.horizon
        if length is None:
            length = self.last_input_size[1] if self.last_input_size is not None else DEFAULT_GRID
        return length

    def _grid(self) -> tuple[int]:
        return (self.grid_size(),)

    def _check_sequence(self, x: Tensor) -> int:
        sizes = check_shape(x, ["N", "C", "L"], name=f"{type(self).__name__} input", known={"C": self.in_channels})
        if sizes["L"] < 1:
            raise ShapeError(f"{type(self).__name__} input must have L >= 1, but got shape {tuple(x.shape)}")
        self.last_input_size = (1, sizes["L"])
        return sizes["L"]

    def crop_start(self, grid: int | None = None) -> int:
        """First grid index the current causal crop keeps."""
        mean, sigma = self._host_mask()
        return causal_crop_start(mean[0], sigma[0], self.mask_threshold, grid or self.grid_size(), min_length=2)

    @property
    def effective_kernel_size(self) -> tuple[float, float]:
        """(1.0, length) in samples: the cropped causal kernel on the grid of the last input (before any input: on
        ``horizon``, else DEFAULT_GRID). The full grid if the mask is non-finite."""
        grid = self.grid_size()
        try:
            start = self.crop_start(grid)
        except NonFiniteError:
            start = 0
        return 1.0, float(grid - start)

    def kernel(self, length: int | None = None) -> Tensor:
        """The masked, cropped causal kernel (C_out, C_in, k); the last tap multiplies the present sample."""
        grid = self.grid_size(length)
        mean, sigma = self._host_mask()
        start = causal_crop_start(mean[0], sigma[0], self.mask_threshold, grid, min_length=2)
        weight = causal_flexconv_kernel(
            self.kernel_net,
            self.mask_mean,
            self._sigma(),
            grid,
            (self.out_channels, self.in_channels),
            threshold=self.mask_threshold,
            start=start,
        )
        return self._checked(weight)

    def forward(self, x: Tensor) -> Tensor:
        length = self._check_sequence(x)
        return causal_conv1d(x, self.kernel(length), self.bias)

    def to_conv2d(self) -> nn.Conv2d:
        raise NotImplementedError("FlexConv1d is a causal 1-D layer: use to_conv1d()")

    def to_conv1d(self) -> nn.Sequential:
        """``nn.Sequential(nn.ConstantPad1d((k - 1, 0), 0), nn.Conv1d(...))`` with the kernel for the last length:
        the same causal output."""
        with torch.no_grad():
            weight = self.kernel()
        k = weight.shape[-1]
        conv = nn.Conv1d(
            self.in_channels, self.out_channels, k, bias=self.bias is not None, device=weight.device, dtype=weight.dtype
        )
        with torch.no_grad():
            conv.weight.copy_(weight)
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return nn.Sequential(nn.ConstantPad1d((k - 1, 0), 0.0), conv)

    def size_record(self) -> dict[str, Any]:
        """The raw mask parameters: ``mask_mean`` and ``mask_sigma`` (floats)."""
        if self.mask_sigma.is_meta:
            return {"mask_mean": self.mask_mean_init, "mask_sigma": self.mask_sigma_init}
        return {"mask_mean": float(self.mask_mean.detach()[0]), "mask_sigma": float(self.mask_sigma.detach()[0])}

    def extra_repr(self) -> str:
        text = self._repr_common(str(int(self.effective_kernel_size[1])))
        if self.mask_mean_init != 1.0:
            text += f", mask_mean_init={self.mask_mean_init}"
        if self.horizon is not None:
            text += f", horizon={self.horizon}"
        return text
