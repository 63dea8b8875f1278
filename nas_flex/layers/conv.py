"""The discrete baseline: a plain convolution of a fixed, searched-over kernel size."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from nas_flex.errors import HyperparameterError
from nas_flex.functional.conv import conv2d_same
from nas_flex.layers.base import KernelLayer, conv_init_

# Pool2d and POOLING_MODES moved to nas_flex.layers.pooling; imported here so their public path keeps working
from nas_flex.layers.pooling import POOLING_MODES, Pool2d
from nas_flex.layers.registry import register

__all__ = ["Conv", "Pool2d", "POOLING_MODES", "check_kernel_size"]


def check_kernel_size(name: str, value: Any) -> tuple[int, int]:
    """An odd kernel side (or (h, w) pair of odd sides) as a pair; raise naming ``name`` otherwise."""
    pair = (value, value) if isinstance(value, int) else tuple(value) if isinstance(value, (tuple, list)) else None
    if (
        pair is None
        or len(pair) != 2
        or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0 for k in pair)
    ):
        raise HyperparameterError(
            f"`{name}` must be an odd positive int or a pair of them (a centred 'same' kernel), "
            f"but got {name}={value!r}"
        )
    return pair  # type: ignore[return-value]


@register("conv")
class Conv(KernelLayer):
    """A plain 'same' convolution with a fixed kernel size: the discrete grid's baseline.

    The kernel runs spatially or by FFT, whichever ``conv2d_same`` measures as cheaper for its size.

    Args:
        in_channels: C_in.
        out_channels: C_out.
        kernel_size: odd side, or (height, width) of odd sides. Default 3.
        bias: add a learnable bias.

    Shape:
        (N, C_in, H, W) -> (N, C_out, H, W); the kernel must fit in the input (kernel_size <= H, W).

    Example:
        >>> import torch
        >>> layer = Conv(3, 8, kernel_size=5)
        >>> layer(torch.randn(2, 3, 16, 16)).shape
        torch.Size([2, 8, 16, 16])
    """

    learns_size: ClassVar[bool] = False
    example_hparams: ClassVar[dict[str, Any]] = {"kernel_size": 3}

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        *,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels)
        self.kernel_size = check_kernel_size("kernel_size", kernel_size)
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        conv_init_(self.weight, self.bias)  # nn.Conv2d's, so the baseline is exactly the layer people compare against

    @property
    def effective_kernel_size(self) -> tuple[float, float]:
        """(height, width) in pixels: the fixed kernel size."""
        return float(self.kernel_size[0]), float(self.kernel_size[1])

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x, max_kernel=self.kernel_size)
        return conv2d_same(x, self.weight, self.bias)

    def to_conv2d(self) -> nn.Conv2d:
        return self._as_conv2d(self.weight.detach())

    def extra_repr(self) -> str:
        kh, kw = self.kernel_size
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={kh if kh == kw else (kh, kw)}"
        return s + ("" if self.bias is not None else ", bias=False")
