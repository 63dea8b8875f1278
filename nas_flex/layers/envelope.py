"""The adaptive Gaussian-envelope convolution, ACONV: per-filter apertures that grow or shrink on a fixed base grid.

Tek, Cam, Karli, "Adaptive convolution kernel for artificial neural networks", J. Vis. Commun. Image Represent. 2021
(arXiv:2009.06385). The
kernel is W o U: U is a Gaussian envelope centred on the n x n base grid (centre fixed, not learned), one aperture
sigma_u per output filter, on the normalised coordinates (k / n, l / n), scaled so that its mean squared coefficient
is 1 (Eq. 21), which keeps the output variance independent of the aperture (Theorem 3.1). Apertures start linearly
spaced in [0.1, 0.5] over the filters and are clipped to [1 / n, n] after every update (Sec. 4.2, Algorithm 1).

Decisions (the paper vs the authors' Keras code, AdaptiveCNN):
    * coordinates spaced 1 / n as the paper writes (the code: 1 / (n - 1)), centred on the middle pixel;
    * the code's hidden step that rescales every output sample to the input sample's standard deviation is not in
      the paper and is off by default (``rescale_output``): it is a data-dependent normalisation, not part of the
      kernel, so with it the layer is no longer a convolution (no ``to_conv2d``), it costs ~30 % of the layer's
      time, and the envelope normalisation already keeps the output variance in place; a BatchNorm after the layer
      (as in the paper's networks) does the rest. Turn it on only to reproduce the code.
    * the clip is a projection: the forward clamps the apertures to [1 / n, n] with the gradient passed straight
      through, so an aperture sitting on a bound (e.g. the 0.1 of the default range, clipped to 1 / 7) still gets
      a gradient and can move back in; ``constrain_()`` is the paper's after-update clip.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from nas_flex.errors import HyperparameterError, NasFlexError, NonFiniteError
from nas_flex.functional.envelope import envelope_conv2d, envelope_weight
from nas_flex.kernels.envelope import envelope_mass_side, envelope_side
from nas_flex.layers.base import KernelLayer, SizeRecipe, _fmt, check_finite, clamp_straight_through, conv_init_
from nas_flex.layers.registry import register

__all__ = ["EnvelopeConv"]


def _aperture_init(sigma_init: Any, out_channels: int) -> list[float]:
    """Initial apertures: a scalar for all filters, or (low, high) spread linearly over the filters."""
    def real(v: Any) -> float | None:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v <= 0:
            return None
        return float(v)

    msg = (
        "`sigma_init` must be an aperture > 0 (grid units, 1 / kernel_size is one pixel) or a (low, high) pair "
        f"with 0 < low <= high, spread linearly over the filters, but got {sigma_init=!r}"
    )
    if isinstance(sigma_init, (tuple, list)):
        if len(sigma_init) != 2:
            raise HyperparameterError(msg)
        low, high = real(sigma_init[0]), real(sigma_init[1])
        if low is None or high is None or low > high:
            raise HyperparameterError(msg)
        if out_channels == 1:
            return [low]
        return [low + (high - low) * q / (out_channels - 1) for q in range(out_channels)]
    value = real(sigma_init)
    if value is None:
        raise HyperparameterError(msg)
    return [value] * out_channels


@register("envelope")
class EnvelopeConv(KernelLayer):
    """Adaptive Gaussian-envelope convolution (ACONV): W o U(sigma_u) on an n x n base grid, sigma_u per filter.

    Args:
        in_channels: C_in.
        out_channels: C_out.
        kernel_size: n, the odd side of the base grid (the largest kernel). Default 7.
        sigma_init: initial apertures in grid units (sigma_u * n is the aperture in pixels): one value for all
            filters, or (low, high) spread linearly over the filters. Default (0.1, 0.5), the paper's. Values are
            clipped to [1 / n, n] like every later update (with n = 7 the first filters start at 1 / 7).
        bias: add a learnable bias.
        rescale_output: rescale each output sample to its input sample's standard deviation, as the authors' code
            silently does (not in the paper; off by default, see the module docstring). With it, ``to_conv2d``
            raises.

    Parameters:
        weight: (C_out, C_in, n, n), ``nn.Conv2d``'s initialisation: with the envelope's mean squared coefficient 1
            the product kernel has the same variance as a plain conv's at every aperture.
        sigma: (C_out,) apertures; the ``size_parameters()``. The paper trains them with the weights' optimizer
            and no weight decay; clip them with ``constrain_()`` after every step.

    ``effective_kernel_size`` is the mean over the filters of the side of the centred window holding 90 % of the
    envelope's mass (``nas_flex.kernels.envelope.envelope_mass_side``, continuous; the frequency layers' rule): it
    keeps moving with sigma, where the side above 0.1 of the peak (``envelope_side``, FlexConv's crop rule, kept
    in ``size_record`` as ``side_at_0.1``) sits at n for most apertures.

    Shape:
        (N, C_in, H, W) -> (N, C_out, H, W); the base grid must fit in the input (n <= H, W).

    Example:
        >>> import torch
        >>> layer = EnvelopeConv(3, 8, 7)
        >>> layer(torch.randn(2, 3, 16, 16)).shape
        torch.Size([2, 8, 16, 16])
        >>> [round(s, 3) for s in layer.sigma.tolist()[:3]]
        [0.143, 0.157, 0.214]
    """

    example_hparams: ClassVar[dict[str, Any]] = {"kernel_size": 3, "sigma_init": (0.4, 0.8)}
    size_parameter_names: ClassVar[tuple[str, ...]] = ("sigma", "sigma_min", "sigma_max")
    #: Tek et al. (ACONV, Sec. 3): the apertures are ordinary trainable weights of the network, updated by the same
    #: optimizer at the same learning rate and clipped to [1/n, n] after every update (``constrain_``).
    size_recipe: ClassVar[SizeRecipe] = SizeRecipe(
        source="Tek et al. (ACONV): apertures trained with the network's optimizer and learning rate"
    )

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 7,
        *,
        sigma_init: float | tuple[float, float] = (0.1, 0.5),
        bias: bool = True,
        rescale_output: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels)
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise HyperparameterError(
                f"`kernel_size` (the base grid side n) must be an odd int >= 1, but got {kernel_size=!r}"
            )
        self.kernel_size = kernel_size
        self.sigma_init = tuple(sigma_init) if isinstance(sigma_init, (tuple, list)) else sigma_init
        self._sigma_init_values = _aperture_init(sigma_init, out_channels)
        self.rescale_output = bool(rescale_output)
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size, **factory))
        self.sigma = nn.Parameter(torch.empty(out_channels, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    @property
    def sigma_bounds(self) -> tuple[float, float]:
        """[1 / n, n]: the paper's clip range for the apertures (grid units)."""
        return 1 / self.kernel_size, float(self.kernel_size)

    def reset_parameters(self) -> None:
        conv_init_(self.weight, self.bias)
        lo, hi = self.sigma_bounds
        with torch.no_grad():
            init = torch.tensor(self._sigma_init_values, dtype=torch.float64).clamp(lo, hi)
            self.sigma.copy_(init.to(self.sigma.dtype))

    # ------------------------------------------------------------------------------------------------- size
    def apertures(self) -> Tensor:
        """The apertures the forward uses: ``sigma`` clipped to [1 / n, n] (gradient passed straight through)."""
        check_finite("sigma", self.sigma, type(self).__name__)
        return clamp_straight_through(self.sigma, *self.sigma_bounds)

    def _aperture_values(self) -> Tensor:
        """Detached float64 apertures on the CPU (the initial ones on the meta device, which holds no values)."""
        if self.sigma.is_meta:
            values = torch.tensor(self._sigma_init_values, dtype=torch.float64)
        else:
            values = check_finite("sigma", self.sigma, type(self).__name__).detach().double().cpu()
        return values.clamp(*self.sigma_bounds)

    @property
    def effective_kernel_size(self) -> tuple[float, float]:
        """(height, width) in pixels: the mean over filters of the side of the centred window holding 90 % of the
        envelope's mass (``envelope_mass_side``, continuous, the frequency layers' rule). The side above 0.1 of
        the peak reaches n once sigma_px > (n - 1) / 4.3 (most of the paper's init range), and then stops moving;
        ``size_record`` keeps it as ``side_at_0.1``."""
        side = float(envelope_mass_side(self._aperture_values(), self.kernel_size).mean())
        return side, side

    def size_parameters(self) -> Iterator[nn.Parameter]:
        yield self.sigma

    def constrain_(self) -> None:
        with torch.no_grad():
            self.sigma.clamp_(*self.sigma_bounds)

    def size_ranges(self) -> Iterator[tuple[nn.Parameter, float, float]]:
        """The apertures' clip [1 / n, n] (grid units): an aperture on it is held there by the clip."""
        yield (self.sigma, *self.sigma_bounds)

    def size_record(self) -> dict[str, Any]:
        """sigma / sigma_min / sigma_max: mean, min, max aperture in grid units (the raw parameter, clipped to
        [1 / n, n]); sigma_px: the mean aperture in pixels (sigma * n); n: the base grid side."""
        s = self._aperture_values()
        return {
            "sigma": float(s.mean()),  # grid units, mean over the filters
            "sigma_min": float(s.min()),
            "sigma_max": float(s.max()),
            "sigma_px": float(s.mean()) * self.kernel_size,  # the mean aperture in pixels
            "n": self.kernel_size,
            "side_at_0.1": float(envelope_side(s, self.kernel_size).mean()),  # saturates at n
        }

    # ----------------------------------------------------------------------------------------------- forward
    def forward(self, x: Tensor) -> Tensor:
        n = self.kernel_size
        self._check_input(x, max_kernel=(n, n))
        y = envelope_conv2d(x, self.weight, self.apertures(), self.bias)
        if self.rescale_output:
            # the authors' code: every output sample gets its input sample's standard deviation (over C, H, W)
            dims = (1, 2, 3)
            x_std = x.std(dim=dims, keepdim=True, unbiased=False)
            y = y * x_std / (y.var(dim=dims, keepdim=True, unbiased=False) + 1e-5).sqrt()
        return y

    def to_conv2d(self) -> nn.Conv2d:
        if self.rescale_output:
            raise NasFlexError(
                "EnvelopeConv(rescale_output=True) rescales each sample by a data-dependent factor, which no "
                "nn.Conv2d can represent; build the layer with rescale_output=False to export it as a convolution"
            )
        with torch.no_grad():
            return self._as_conv2d(envelope_weight(self.weight, self.apertures()))

    def extra_repr(self) -> str:
        try:
            side = self.effective_kernel_size[0]
            rec = self.size_record()
        except NonFiniteError:  # printing a model that just diverged must still work
            n = self.kernel_size
            return f"{self.in_channels}, {self.out_channels}, kernel_size=? (learned, sigma=nan, base grid {n})"
        spread = "" if self.out_channels == 1 else f" mean of {self.out_channels}"
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={_fmt(side)} "
            f"(learned, sigma={rec['sigma_px']:.2f} px{spread}, base grid {self.kernel_size})"
        )
        if self.bias is None:
            s += ", bias=False"
        return s + (", rescale_output=True" if self.rescale_output else "")
