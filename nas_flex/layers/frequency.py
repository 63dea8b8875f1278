"""What the frequency-domain layers (NIFF, CF-Conv) share: an MLP pair for the real and imaginary parts of a
filter, its variance-preserving initialisation, and the base class of a circular, input-sized kernel whose size is
read off its mass.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from nas_flex.errors import HyperparameterError, unknown_name
from nas_flex.functional.niff import ACTIVATIONS, twin_mlp
from nas_flex.kernels.mass import continuous_size_from_mass, effective_size_from_mass, kernel_mass_ratio
from nas_flex.layers.base import KernelLayer

__all__ = ["FrequencyKernelLayer", "TwinMLP", "he_init_", "size_repr", "DEFAULT_GRID", "MASS_FRACTION"]

# The grid sizes refer to before the first forward (spatial_kernel, effective_kernel_size): a CIFAR feature map.
DEFAULT_GRID = (32, 32)
# effective_kernel_size: the side of the centred window holding this share of the kernel's absolute mass
MASS_FRACTION = 0.9


def he_init_(weights: Sequence[Tensor], biases: Sequence[Tensor]) -> None:
    """Variance-preserving initialisation of a ReLU MLP (He et al. 2015, fan-in), in place.

    Layers followed by a ReLU get U(+-sqrt(6 / fan_in)) (variance 2 / fan_in: the ReLU halves the second moment,
    this doubles it back), the last (linear) layer U(+-sqrt(3 / fan_in)) (variance 1 / fan_in), biases 0. Then
    every layer passes on the input-dependent spread instead of shrinking it: with nn.Linear's default
    (variance 1 / (3 fan_in)) each ReLU layer keeps about 1/6 of the second moment and the biases take over, so a
    10-layer MLP is constant up to 1e-4 of its mean. With coordinates in [-1, 1] the output's variance is then
    about that of U[-1, 1]. The fan-in is the last axis of each weight (out, in).
    """
    with torch.no_grad():
        for index, (w, b) in enumerate(zip(weights, biases)):
            gain = 1.0 if index == len(weights) - 1 else 2.0
            bound = math.sqrt(3.0 * gain / w.shape[-1])
            w.uniform_(-bound, bound)
            b.zero_()


class TwinMLP(nn.Module):
    """Two MLPs of one shape, for the real and the imaginary part of a filter, evaluated as one batched op.

    Args:
        in_features: coordinates per position.
        hidden: hidden widths.
        out_features: outputs per position (per part).
        activation: "relu" or "silu".
        init: "torch": nn.Linear's default (that of a 1x1 nn.Conv2d; the NIFF authors' model constructors
            re-initialise their MLP's 1x1 convolutions Kaiming-normal instead); "he": variance-preserving
            (``he_init_``), for deep ReLU MLPs (CF-Conv's ten layers).

    Shape:
        (P, in_features) -> (2, P, out_features): index 0 real, 1 imaginary.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        activation: str,
        *,
        init: str = "torch",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise unknown_name("activation", activation, ACTIVATIONS)
        if init not in ("torch", "he"):
            raise HyperparameterError(f"`init` must be 'torch' or 'he', but got {init=!r}")
        self.activation = activation
        self.init = init
        widths = [in_features, *hidden, out_features]
        factory = {"device": device, "dtype": dtype}
        self.weights = nn.ParameterList(
            [nn.Parameter(torch.empty(2, o, i, **factory)) for i, o in zip(widths[:-1], widths[1:])]
        )
        self.biases = nn.ParameterList([nn.Parameter(torch.empty(2, o, **factory)) for o in widths[1:]])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.init == "he":
            he_init_(list(self.weights), list(self.biases))
            return
        # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases
        for w, b in zip(self.weights, self.biases):
            bound = 1 / math.sqrt(w.shape[-1])
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)

    def forward(self, coords: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        dtype = dtype or coords.dtype
        return twin_mlp(
            coords.to(dtype), [w.to(dtype) for w in self.weights], [b.to(dtype) for b in self.biases], self.activation
        )

    def extra_repr(self) -> str:
        widths = [self.weights[0].shape[-1], *(w.shape[1] for w in self.weights)]
        return f"{' -> '.join(map(str, widths))}, activation={self.activation}, x2 (real, imaginary)"


class FrequencyKernelLayer(KernelLayer):
    """What NIFF and CF-Conv share: a circular, input-sized kernel given by ``frequency_kernel(size)``
    (complex (C_out, C_in, H, W // 2 + 1)), its spatial form, and its size read off the kernel's mass."""

    domain: ClassVar[str] = "frequency"
    size_parameter_names: ClassVar[tuple[str, ...]] = ("mass_height", "mass_width")

    def frequency_kernel(self, size: tuple[int, int] | None = None) -> Tensor:
        raise NotImplementedError

    def spatial_kernel(self) -> Tensor:
        """The equivalent circular spatial kernel (C_out, C_in, H, W) for the last input size (detached).

        ``forward(x)`` equals the circular *convolution* of x with it: y[o] = sum_i k[o, i] (*) x[i], tap (0, 0) at
        index (0, 0) and negative offsets wrapped to the end (``torch.fft.fftshift`` centres it). Before the first
        forward it is the kernel for ``DEFAULT_GRID``.
        """
        h, w = self.last_input_size or DEFAULT_GRID
        with torch.no_grad():
            return torch.fft.irfft2(self.frequency_kernel((h, w)), s=(h, w))

    # --------------------------------------------------------------------------------------------------- size
    @property
    def effective_kernel_size(self) -> tuple[float, float]:
        """(height, width) in pixels of the last input's grid (``DEFAULT_GRID`` before the first forward): per
        dimension, the side of the centred window holding 90 % of the spatial kernel's absolute mass, with the side
        continuous (``nas_flex.kernels.mass.continuous_size_from_mass``), so it moves smoothly with the kernel;
        ``size_record`` adds the integer window (the smallest odd one holding 90 %)."""
        return continuous_size_from_mass(self.spatial_kernel(), MASS_FRACTION, circular=True)

    def size_parameters(self) -> Iterator[nn.Parameter]:
        """None: the kernel is as large as the input; its effective size is learned through all MLP weights."""
        return iter(())

    def _mass_record(self) -> dict[str, Any]:
        """The grid, the integer 90 %-mass window and the share of the kernel's absolute mass in the central 3x3, for
        size_record."""
        h, w = self.last_input_size or DEFAULT_GRID
        kernel = self.spatial_kernel()
        ratio3 = kernel_mass_ratio(kernel, [3], circular=True).mean()
        wh, ww = effective_size_from_mass(kernel, MASS_FRACTION, circular=True)
        return {"grid_height": h, "grid_width": w, "window_height": wh, "window_width": ww,
                "mass_in_3x3": float(ratio3)}


def size_repr(layer: KernelLayer) -> str:
    """``kernel_size=5x3 (learned, 90% mass on a 12x10 grid)`` for the frequency layers' extra_repr."""
    grid = layer.last_input_size
    where = f"on a {grid[0]}x{grid[1]} grid" if grid else f"on the default {DEFAULT_GRID[0]}x{DEFAULT_GRID[1]} grid"
    if any(p.device.type == "meta" for p in layer.parameters()):
        return f"kernel_size=? (learned, 90% mass; meta device) {where}"
    h, w = layer.effective_kernel_size
    return f"kernel_size={h:.1f}x{w:.1f} (learned, 90% mass {where})"
