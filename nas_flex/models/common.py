"""What every backbone shares: building its convolutions through the registry, and its pooling steps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from nas_flex.errors import HyperparameterError, unknown_name
from nas_flex.layers import build as build_layer
from nas_flex.layers import check_hparams
from nas_flex.layers import get as get_layer
from nas_flex.layers.pooling import POOLING_MODES, Pool2d

__all__ = ["ConvFactory", "make_pool", "pooling_plan", "check_pooling", "POOLINGS"]

POOLINGS = (*POOLING_MODES, "safe")  # "safe": N-Jet's safe-subsampling, reading sigma of the N-Jet layer before it


class ConvFactory:
    """Builds a backbone's convolutions, in order, from a trial config's ``conv``, ``conv_hparams`` and
    ``kernel_size``.

    ``kernel_size`` goes to layers that take one (``conv``, ``envelope``); it may be an int (every layer) or a list
    with one entry per convolution in build order (what ``discretise`` writes); its length is checked by
    ``finish()``.
    """

    def __init__(self, conv: str, conv_hparams: Mapping[str, Any] | None = None,
                 kernel_size: int | Sequence[int] | None = None) -> None:
        self.conv = conv
        self.hparams = dict(conv_hparams or {})
        # an unknown layer raises UnknownNameError, listing the valid ones
        names = check_hparams(conv, self.hparams, where=" in conv_hparams")
        self.takes_kernel_size = "kernel_size" in names and "kernel_size" not in self.hparams
        self.kernel_size = kernel_size
        self.built: list[nn.Module] = []

    def __call__(self, in_channels: int, out_channels: int) -> nn.Module:
        hp = dict(self.hparams)
        if self.takes_kernel_size and self.kernel_size is not None:
            if isinstance(self.kernel_size, (list, tuple)):
                i = len(self.built)
                if i >= len(self.kernel_size):
                    raise HyperparameterError(
                        f"`kernel_size` lists {len(self.kernel_size)} sizes, but the backbone has more convolutions"
                    )
                hp["kernel_size"] = self.kernel_size[i]
            else:
                hp["kernel_size"] = self.kernel_size
        layer = build_layer(self.conv, in_channels, out_channels, **hp)
        self.built.append(layer)
        return layer

    def stem(self, in_channels: int, out_channels: int) -> nn.Module:
        """The backbone's first convolution (the one reading the input).

        The layer's own, unless its class names a ``spatial_stem`` kernel size (NIFF: the papers' networks keep
        their first convolution spatial); then a plain ``conv`` of that size, which learns no size and takes no
        ``kernel_size`` entry.
        """
        side = get_layer(self.conv).spatial_stem
        if side is None:
            return self(in_channels, out_channels)
        return build_layer("conv", in_channels, out_channels, kernel_size=side)

    def finish(self) -> None:
        if isinstance(self.kernel_size, (list, tuple)) and self.takes_kernel_size:
            if len(self.kernel_size) != len(self.built):
                raise HyperparameterError(
                    f"`kernel_size` lists {len(self.kernel_size)} sizes but the backbone has {len(self.built)} "
                    "convolutions; give one per convolution or a single int"
                )


def check_pooling(pooling: str | Sequence[str] | None) -> list[str]:
    """The one check of pooling names: a config's ``pooling`` (None, one mode, or one per step) must name modes of
    ``POOLINGS``; returns the modes given (none for None).

    Raises:
        UnknownNameError: an unknown mode, with the closest valid one.
    """
    modes = [] if pooling is None else [pooling] if isinstance(pooling, str) else list(pooling)
    for mode in modes:
        if mode not in POOLINGS:
            raise unknown_name("pooling", mode, POOLINGS)
    return modes


def pooling_plan(pooling: str | Sequence[str], steps: int, backbone: str) -> list[str]:
    """One pooling mode per pooling step of a backbone: a single mode for every step, or a list, one per step.

    Raises:
        HyperparameterError: a list of the wrong length; UnknownNameError: an unknown mode.
    """
    modes = check_pooling(pooling)
    modes = modes * steps if isinstance(pooling, str) else modes
    if len(modes) != steps:
        raise HyperparameterError(
            f"`pooling` lists {len(modes)} modes, but backbone {backbone!r} has {steps} pooling step(s) here; "
            "give one mode per step or a single mode"
        )
    return modes


def make_pool(mode: str, channels: int, previous: nn.Module | None = None) -> nn.Module:
    """The pooling step between stages: max, avg, conv (strided), none, or safe (N-Jet safe-subsampling).

    Args:
        mode: one of ``POOLINGS``.
        channels: the channel count in and out (strided conv).
        previous: the convolution right before this step ("safe" reads its sigma; it must be an N-Jet layer).
    """
    check_pooling(mode)
    if mode == "safe":
        if previous is None or getattr(previous, "kind", None) != "njet":
            raise HyperparameterError(
                "pooling='safe' (N-Jet safe-subsampling) reads the sigma of the N-Jet layer before it: use it "
                f"with conv='njet', not conv={getattr(previous, 'kind', type(previous).__name__)!r}"
            )
        from nas_flex.layers.njet import SafeSubsample2d

        return SafeSubsample2d(previous)
    return Pool2d(mode, channels)
