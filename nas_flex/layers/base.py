"""The layer contract every registry layer implements (docs/layers.md, "The layer contract").

A registry layer maps ``(N, C_in, H, W) -> (N, C_out, H, W)`` with stride 1 and 'same' output size for any H, W,
and reports the size it has learned. ``KernelLayer`` holds what all of them share: the channel bookkeeping, the
input check, the last grid size seen, and defaults for the parts of the contract a method may not need.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from nas_flex.errors import HyperparameterError, NonFiniteError, ShapeError, check_shape

__all__ = ["KernelLayer", "SizeRecipe", "check_positive_int", "check_finite", "clamp_straight_through", "conv_init_"]

# a signature that never repeats: a layer whose size cannot be read is counted every time
_RECOUNT = itertools.count()


def check_positive_int(name: str, value: Any) -> int:
    """Return ``value`` as an int if it is a positive integer, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HyperparameterError(f"`{name}` must be a positive int, but got {name}={value!r}")
    return value


def check_finite(name: str, tensor: Tensor, where: str) -> Tensor:
    """Raise ``NonFiniteError`` naming the tensor and the layer if ``tensor`` holds a NaN or inf.

    Called where a size parameter or a generated kernel is made, so a NaN is reported where it arises, not ten
    layers later. Skipped while tracing/compiling (data-dependent control flow).
    """
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return tensor
    if not bool(torch.isfinite(tensor).all()):
        raise NonFiniteError(
            f"{where}: `{name}` holds non-finite values (NaN or inf); the size parameters were "
            f"probably driven there by a too-large learning rate. Lower the learning rate or size_lr_factor."
        )
    return tensor


def clamp_straight_through(x: Tensor, lo: float, hi: float) -> Tensor:
    """``x.clamp(lo, hi)`` in value, identity in gradient (a projection's gradient, taken at the projected point).

    Plain clamp has zero gradient on and beyond a bound, so a parameter initialised or clipped onto a bound would
    never move again. The value is exact (no ``x + (c - x)`` cancellation); ``x`` must be finite.
    """
    return x.clamp(lo, hi).detach() + (x - x.detach())


def conv_init_(weight: Tensor, bias: Tensor | None) -> None:
    """``nn.Conv2d``'s initialisation, in place: Kaiming-uniform weights (a = sqrt(5)) and biases
    U(+-1 / sqrt(fan_in)), fan_in = ``weight[0].numel()`` (C_in times the taps or basis functions per filter).

    The spatial layers start where the ``nn.Conv2d`` people compare against starts.
    """
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        bound = 1 / math.sqrt(weight[0].numel())
        nn.init.uniform_(bias, -bound, bound)


@dataclass(frozen=True)
class SizeRecipe:
    """How a layer's size parameters are trained: the method's own recipe, from its paper or its authors' code.

    ``nas_flex.train.make_optimizer`` reads it. With ``optimizer="shared"`` the size parameters are a group of the
    weights' optimizer at ``lr x lr_factor``, on the weights' warm-up + cosine schedule; with ``optimizer="adam"``
    they get their own Adam with a fixed ``lr`` (DARTS's architecture optimizer). A trial config's
    ``size_lr_factor`` overrides every layer's recipe with ``shared`` at that factor.

    Attributes:
        source: where the recipe comes from (paper section or code), shown in the leaderboard's ``size_recipes``.
        optimizer: "shared" or "adam".
        lr_factor: shared: the size parameters' learning rate as a multiple of the weights'.
        lr: adam: the learning rate (constant).
        betas: adam: Adam's betas.
        weight_decay: L2 on the size parameters (0 unless the method's recipe says otherwise).
        schedule: shared: "weights" (the weights' warm-up + cosine multiplier) or "constant" (``lr x lr_factor``
            at every step, so a short run's decay does not stop the size half-way).
    """

    source: str
    optimizer: str = "shared"
    lr_factor: float = 1.0
    lr: float | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    schedule: str = "weights"

    def __post_init__(self) -> None:
        if self.optimizer not in ("shared", "adam"):
            raise HyperparameterError(f"SizeRecipe `optimizer` must be 'shared' or 'adam', but got {self.optimizer!r}")
        if self.schedule not in ("weights", "constant"):
            raise HyperparameterError(
                f"SizeRecipe `schedule` must be 'weights' or 'constant', but got {self.schedule!r}")
        if self.optimizer == "adam" and not (self.lr is not None and self.lr > 0):
            raise HyperparameterError(f"SizeRecipe with its own Adam needs `lr > 0`, but got lr={self.lr!r}")
        if not (self.lr_factor >= 0 and self.weight_decay >= 0):
            raise HyperparameterError(
                f"SizeRecipe needs `lr_factor >= 0` and `weight_decay >= 0`, but got lr_factor={self.lr_factor}, "
                f"weight_decay={self.weight_decay}"
            )

    def describe(self) -> dict[str, Any]:
        """The recipe as a plain dict (what the leaderboard records)."""
        out: dict[str, Any] = {"optimizer": self.optimizer, "source": self.source}
        if self.optimizer == "shared":
            out["lr_factor"] = self.lr_factor
            if self.schedule != "weights":
                out["size_schedule"] = self.schedule
        else:
            out.update(lr=self.lr, betas=list(self.betas))
        out["weight_decay"] = self.weight_decay
        return out


class KernelLayer(nn.Module):
    """Base class of the registry layers.

    Subclasses set the class attributes, call ``super().__init__(in_channels, out_channels)``, call
    ``self._check_input(x)`` first thing in ``forward``, and implement ``effective_kernel_size`` and, as applies,
    ``size_parameters``, ``regularization``, ``to_conv2d`` / ``spatial_kernel``, ``size_record`` and
    ``constrain_``.

    Every hook the rest of nas_flex reads from a layer is declared here with its default, so a new layer is one
    class: the backbones (``spatial_stem``, ``sequence_layer``), training (``size_parameters``, ``size_recipe``,
    ``regularization``, ``constrain_``, ``size_ranges``), the leaderboard (``size_record`` and ``size_summary``: what
    ``nas_flex.learned_sizes`` writes into each trial's row), and export (``to_conv2d``, ``frequency_kernel``,
    ``to_conv1d``, by ``domain`` and ``spatial_dims``).

    Class attributes:
        kind: the registry name ("flexconv", ...); set by ``register``.
        learns_size: False only for fixed-size layers (the ``conv`` baseline): they get no learned-sizes row, and
            reports treat a method whose trials have none as a grid method.
        domain: "spatial" (has ``to_conv2d``) or "frequency" (has ``frequency_kernel`` and ``spatial_kernel`` of
            the input's size).
        spatial_dims: 2 for (N, C, H, W) layers; 1 for a sequence layer (N, C, L), exported by ``to_conv1d``.
        size_parameter_names: the raw size parameters (keys of ``size_record``) that sum the layer's size up, the
            headline one first (N-Jet's ``sigma``, FlexConv's ``mask_sigma_h``); the leaderboard's size summary
            reports the first one a record holds.
        spatial_stem: None, or the kernel size of a plain ``conv`` that backbones build as their first
            convolution instead of this layer (NIFF: its papers' networks keep the stem spatial).
        example_hparams: a small, fast instance's hyperparameters, used by the demo and the contract tests.
        size_recipe: how ``size_parameters()`` are trained (``SizeRecipe``); each method sets its paper's.
    """

    kind: ClassVar[str] = ""
    learns_size: ClassVar[bool] = True
    domain: ClassVar[str] = "spatial"
    spatial_dims: ClassVar[int] = 2
    size_parameter_names: ClassVar[tuple[str, ...]] = ()
    spatial_stem: ClassVar[int | None] = None
    example_hparams: ClassVar[dict[str, Any]] = {}
    size_recipe: ClassVar[SizeRecipe] = SizeRecipe(source="default: the weights' optimizer and learning rate")

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.out_channels = check_positive_int("out_channels", out_channels)
        # the (H, W) of the last input; sizes in pixels refer to this grid. Not a buffer: it is not state.
        self.last_input_size: tuple[int, int] | None = None

    # ----------------------------------------------------------------------------------------------- input checks
    def _check_input(self, x: Tensor, *, max_kernel: tuple[int, int] | None = None) -> tuple[int, int]:
        """Check ``x`` is (N, C_in, H, W) and, if given, that a fixed kernel fits in the input; remember (H, W)."""
        sizes = check_shape(x, ["N", "C", "H", "W"], name=f"{type(self).__name__} input", known={"C": self.in_channels})
        h, w = sizes["H"], sizes["W"]
        if h < 1 or w < 1:
            raise ShapeError(f"{type(self).__name__} input must have H >= 1 and W >= 1, but got shape {tuple(x.shape)}")
        if max_kernel is not None and (max_kernel[0] > h or max_kernel[1] > w):
            raise ShapeError(
                f"{type(self).__name__}: kernel {max_kernel[0]}x{max_kernel[1]} is larger than the "
                f"{h}x{w} input; use kernels of at most {min(h, w)} px here (fewer poolings before this layer) or a "
                f"larger input"
            )
        self.last_input_size = (h, w)
        return h, w

    # --------------------------------------------------------------------------------------------------- contract
    @property
    def effective_kernel_size(self) -> tuple[float, float]:
        """(height, width) of the kernel in pixels of the grid the layer last saw (floats)."""
        raise NotImplementedError

    def size_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters that set the kernel size (trained with their own learning rate). None by default."""
        return iter(())

    def regularization(self) -> Tensor:
        """Scalar regularization term to add to the loss; 0 where the method has none."""
        p = next(self.parameters(), None)
        return torch.zeros((), device=p.device if p is not None else None, dtype=p.dtype if p is not None else None)

    def constrain_(self) -> None:
        """Project the size parameters back into their valid range in place (call after each optimizer step).

        ``forward`` clamps them anyway, so skipping this never gives an invalid kernel; projecting keeps a
        parameter that ran past a bound from sitting there with zero gradient.
        """

    def cost_signature(self) -> Hashable:
        """What this layer's forward cost depends on besides its input's shape; a trial counts the model's FLOPs
        again only when some layer's signature changes (``nas_flex.train.metering.FlopMeter``).

        Default: nothing for a frequency-domain layer (its cost is set by the input grid), else the effective
        kernel size rounded to whole pixels, which a learned-size spatial layer changes when its kernel grows or
        shrinks by a pixel. A layer whose cost follows something else (a learned number of taps, a path chosen by
        a parameter) overrides this; a signature that changes more often than the cost only costs a recount.
        """
        if self.domain == "frequency":
            return None
        try:
            return tuple(round(float(v)) for v in self.effective_kernel_size)
        except (NotImplementedError, TypeError, ValueError, OverflowError):  # no size, or a non-finite one
            return ("uncached", id(self), next(_RECOUNT))

    def size_ranges(self) -> Iterator[tuple[nn.Parameter, float, float]]:
        """``(parameter, low, high)`` for each size parameter that the layer's own clip holds in [low, high] (in
        the parameter's own unit, as ``constrain_`` and the forward apply it). None by default.

        A size parameter that ends on ``low`` or ``high`` was stopped by the layer's range, not placed there by the
        data: ``nas_flex.train.bounds`` marks its layer "range".
        """
        return iter(())

    def size_record(self) -> dict[str, Any]:
        """The raw size parameters as plain Python values, for ``nas_flex.learned_sizes``."""
        return {}

    def size_summary(self) -> dict[str, Any]:
        """The facts about this layer's size a leaderboard row keeps beside ``size_record``: ``size_parameter`` (the
        first of ``size_parameter_names`` the record holds, or None) and ``learns_size``."""
        record = self.size_record()
        headline = next((k for k in self.size_parameter_names if k in record), None)
        return {"size_parameter": headline, "learns_size": self.learns_size}

    @classmethod
    def sequence_layer(cls) -> type[KernelLayer] | None:
        """The 1-D form of this layer that a sequence backbone (TCN) builds with the same hyperparameters, or None
        (the fixed-size ``conv`` gets a causal ``nn.Conv1d``; other layers without a 1-D form are refused)."""
        return None

    def to_conv2d(self) -> nn.Conv2d:
        """An ``nn.Conv2d`` with the same output as this layer in eval mode (spatial layers)."""
        raise NotImplementedError(f"{type(self).__name__} is a frequency-domain layer: use spatial_kernel()")

    def spatial_kernel(self) -> Tensor:
        """The spatial kernel (C_out, C_in, kh, kw) the layer applies (frequency layers: circular, input-sized)."""
        return self.to_conv2d().weight.detach()

    def frequency_kernel(self, size: tuple[int, int] | None = None) -> Tensor:
        """Frequency layers: the complex (C_out, C_in, H, W // 2 + 1) spectrum the layer multiplies an input of
        ``size`` (default: the last one seen) by; export freezes it."""
        raise NotImplementedError(f"{type(self).__name__} is a spatial layer: use to_conv2d()")

    def to_conv1d(self) -> nn.Module:
        """Sequence layers (``spatial_dims == 1``): a plain module with the same output in eval mode."""
        raise NotImplementedError(f"{type(self).__name__} is a 2-D layer: use to_conv2d()")

    # ---------------------------------------------------------------------------------------------------- helpers
    def _as_conv2d(self, weight: Tensor) -> nn.Conv2d:
        """An ``nn.Conv2d`` running ``weight`` (odd sides, 'same' padding) with this layer's bias, for to_conv2d."""
        kh, kw = weight.shape[-2:]
        bias = getattr(self, "bias", None)
        conv = nn.Conv2d(
            self.in_channels, self.out_channels, (kh, kw), padding=(kh // 2, kw // 2), bias=bias is not None,
            device=weight.device, dtype=weight.dtype,
        )
        with torch.no_grad():
            conv.weight.copy_(weight)
            if bias is not None:
                conv.bias.copy_(bias)
        return conv

    def _size_repr(self) -> str:
        """``kernel_size=7x5 (learned, ...)`` for extra_repr; subclasses add their raw size parameters."""
        h, w = self.effective_kernel_size
        return f"kernel_size={_fmt(h)}x{_fmt(w)} (learned)"

    def _grid_note(self) -> str:
        if self.last_input_size is None:
            return ""
        return f", on a {self.last_input_size[0]}x{self.last_input_size[1]} grid"


def _fmt(v: float) -> str:
    if math.isfinite(v) and float(v).is_integer():
        return str(int(v))
    return f"{v:.2f}"
