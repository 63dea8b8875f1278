"""The pooling choices a grid search places between stages (N-Jet's safe-subsampling is in ``nas_flex.layers.njet``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nas_flex.errors import HyperparameterError, unknown_name
from nas_flex.layers.base import check_positive_int

__all__ = ["Pool2d", "POOLING_MODES"]

POOLING_MODES = ("max", "avg", "conv", "none")


class Pool2d(nn.Module):
    """The downsampling step a grid search places between stages: max, avg, strided conv, or none.

    Args:
        mode: "max" / "avg" (kernel ``factor``, stride ``factor``), "conv" (a ``factor`` x ``factor`` convolution
            with stride ``factor``, needs ``channels``), or "none" (identity: the layers keep full resolution,
            as in FlexNet). N-Jet's safe-subsampling is ``nas_flex.layers.njet.SafeSubsample2d``.
        channels: channels in and out; required for "conv".
        factor: the downsampling factor (>= 1).

    Shape:
        (N, C, H, W) -> (N, C, ceil(H / factor), ceil(W / factor)), or unchanged for "none". Odd sides round up
        (ceil_mode), so no row or column of the input is dropped.
    """

    def __init__(
        self,
        mode: str,
        channels: int | None = None,
        *,
        factor: int = 2,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if mode not in POOLING_MODES:
            raise unknown_name("pooling mode", mode, POOLING_MODES)
        self.mode = mode
        self.factor = check_positive_int("factor", factor)
        self.channels = channels
        if mode == "conv":
            if channels is None:
                raise HyperparameterError("Pool2d(mode='conv') needs `channels` (the channel count in and out)")
            check_positive_int("channels", channels)
            self.op: nn.Module = nn.Conv2d(channels, channels, factor, stride=factor, device=device, dtype=dtype)
        elif mode == "max":
            self.op = nn.MaxPool2d(factor, stride=factor, ceil_mode=True)
        elif mode == "avg":
            self.op = nn.AvgPool2d(factor, stride=factor, ceil_mode=True, count_include_pad=False)
        else:
            self.op = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "conv":
            # pad bottom/right so odd sides round up like the pooling modes do
            h, w = x.shape[-2:]
            ph, pw = (-h) % self.factor, (-w) % self.factor
            if ph or pw:
                x = nn.functional.pad(x, (0, pw, 0, ph))
        return self.op(x)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}" + (f", factor={self.factor}" if self.factor != 2 else "")
