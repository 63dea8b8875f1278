"""Backbones built through the layer registry, and ``convert`` for any torchvision-style model.

``build(config)`` reads the model part of a trial config:

==============  =======================================================================================
backbone        "simple" (2/4-layer CNN), "resnet" (CIFAR ResNet 20/32/44), "flexnet", "tcn" (1-D), or a name
                given to ``register`` (``available()``)
conv            a registry layer name (``nas_flex.layers.available()``); default "conv"
conv_hparams    dict of that layer's hyperparameters (papers' names); default {}
kernel_size     int, or one int per convolution in build order; for layers that take one (conv, envelope)
pooling         "max", "avg", "conv" (strided), "none", "safe" (N-Jet safe-subsampling); backbone default;
                or a list with one mode per pooling step (per stage)
width, depth    channels and depth (see each backbone for its meaning and default)
dropout, head   optional; see the backbone
in_channels, num_classes, input_size   from the dataset (run_trial fills them in)
==============  =======================================================================================
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from torch import nn

from nas_flex.errors import HyperparameterError, check_known
from nas_flex.layers import build as build_layer
from nas_flex.layers import check_hparams
from nas_flex.models.backbones import TCN, CIFARResNet, FlexNet, SimpleCNN
from nas_flex.models.common import POOLINGS, ConvFactory, check_pooling, make_pool, pooling_plan
from nas_flex.registry import Registry

B = TypeVar("B", bound=Callable[..., nn.Module])

__all__ = ["build", "convert", "register", "unregister", "available", "BACKBONES", "POOLINGS", "ConvFactory",
           "check_pooling", "make_pool", "pooling_plan"]

#: the backbone registry: name -> factory ``(conv, in_channels, num_classes, **options) -> nn.Module``
BACKBONES: Registry[Callable[..., nn.Module]] = Registry(
    "backbone", builtin={"simple": SimpleCNN, "resnet": CIFARResNet, "flexnet": FlexNet, "tcn": TCN})
#: config keys handed to a backbone factory when set (not None)
BACKBONE_OPTIONS = ("width", "depth", "dropout", "pooling", "head")


def register(name: str) -> Callable[[B], B]:
    """Decorator adding a backbone factory (a class or function) to the registry under ``name``.

    The factory is called as ``factory(conv, in_channels, num_classes, **options)``: ``conv`` is a ``ConvFactory``
    (``conv(c_in, c_out)`` builds each convolution from the trial's layer, ``conv.stem(c_in, c_out)`` the first
    one), ``options`` the config's ``width``, ``depth``, ``dropout``, ``pooling`` and ``head`` that are set, and
    ``input_size`` (H, W) if the factory takes it. Pooling steps come from ``make_pool(mode, channels, previous)``.

    Raises:
        NasFlexError: if ``name`` is taken by another backbone.

    Example:
        >>> from nas_flex.models import register
        >>> @register("tiny")  # doctest: +SKIP
        ... def tiny(conv, in_channels, num_classes, *, width=8, pooling="max"): ...
    """
    return BACKBONES.register(name)


def unregister(name: str) -> None:
    """Remove a backbone ``register`` added; built-ins stay (``NasFlexError``)."""
    BACKBONES.unregister(name)


def available() -> list[str]:
    """Names of every backbone, built-in and registered, sorted."""
    return BACKBONES.available()


def _options(factory: Callable[..., nn.Module], name: str, kwargs: dict[str, Any],
             input_size: tuple[int, ...] | None) -> dict[str, Any]:
    """The options ``factory`` is called with: ``kwargs`` (checked against its signature) and ``input_size`` if it
    takes one."""
    params = inspect.signature(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if not takes_any:
        check_known(kwargs, [k for k in params if k in BACKBONE_OPTIONS], f"option(s) of backbone {name!r}")
    if "input_size" in params or takes_any:
        kwargs = {**kwargs, "input_size": tuple(input_size[-2:]) if input_size is not None else None}
    return kwargs


def build(config: Mapping[str, Any], *, in_channels: int | None = None, num_classes: int | None = None,
          input_size: tuple[int, ...] | None = None) -> nn.Module:
    """Build the model a trial config describes (keys in the module docstring; others are ignored here).

    Example:
        >>> import torch
        >>> model = build({"backbone": "simple", "conv": "mixed", "depth": 2}, in_channels=1, num_classes=10)
        >>> model(torch.randn(2, 1, 16, 16)).shape
        torch.Size([2, 10])
    """
    backbone = config.get("backbone")
    factory_cls = BACKBONES.get(backbone)
    in_channels = in_channels if in_channels is not None else config.get("in_channels")
    num_classes = num_classes if num_classes is not None else config.get("num_classes")
    if in_channels is None or num_classes is None:
        raise HyperparameterError("models.build needs `in_channels` and `num_classes` (arguments or config keys)")
    conv = config.get("conv", "conv")
    conv_hparams = dict(config.get("conv_hparams") or {})
    kwargs = {k: config[k] for k in BACKBONE_OPTIONS if config.get(k) is not None}
    check_pooling(kwargs.get("pooling"))
    if factory_cls is TCN:
        kwargs.pop("pooling", None)
        kwargs.pop("head", None)
        if config.get("kernel_size") is not None:
            kwargs["kernel_size"] = config["kernel_size"]
        return TCN(conv, conv_hparams, in_channels, num_classes, **kwargs)
    size = input_size if input_size is not None else config.get("input_size")
    kwargs = _options(factory_cls, backbone, kwargs, size)
    factory = ConvFactory(conv, conv_hparams, config.get("kernel_size"))
    model = factory_cls(factory, in_channels, num_classes, **kwargs)
    if not isinstance(model, nn.Module):
        raise HyperparameterError(f"backbone {backbone!r} returned {type(model).__name__}, not an nn.Module")
    factory.finish()
    return model


def _same_padded(conv: nn.Conv2d) -> bool:
    kh, kw = conv.kernel_size
    return (
        conv.stride == (1, 1) and conv.dilation == (1, 1) and kh % 2 == 1 and kw % 2 == 1
        and (conv.padding == "same" or tuple(conv.padding) == (kh // 2, kw // 2))
        and conv.padding_mode == "zeros"
    )


def convert(model: nn.Module, to: str, **hparams: Any) -> list[dict[str, Any]]:
    """Swap, in place, every stride-1 'same' spatial ``nn.Conv2d`` of ``model`` for the registry layer ``to``.

    Strided convolutions stay as they are (as NIFF does: they downsample), and so do 1x1 convolutions (channel
    mixers, no spatial kernel), grouped or dilated ones and ones whose padding does not keep the size. For
    ``to="conv"`` the original kernel size is kept unless ``kernel_size`` is given; a layer that takes ``bias``
    gets the original's.

    Returns:
        One record per ``nn.Conv2d``: {"name", "action": "swapped" | "kept", "reason", "from", "to"}.

    Example:
        >>> import torchvision  # doctest: +SKIP
        >>> model = torchvision.models.resnet18(num_classes=10)  # doctest: +SKIP
        >>> report = convert(model, to="njet")  # doctest: +SKIP
    """
    valid = check_hparams(to, hparams)  # unknown layer names fail here, listing the valid ones
    records: list[dict[str, Any]] = []
    targets: list[tuple[nn.Module, str, str, nn.Conv2d]] = []
    for parent_name, parent in model.named_modules():
        for child_name, child in parent.named_children():
            if type(child) is not nn.Conv2d:
                continue
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            desc = f"Conv2d({child.in_channels}, {child.out_channels}, k={child.kernel_size}, s={child.stride})"
            reason = None
            if child.stride != (1, 1):
                reason = "strided (downsampling stays spatial)"
            elif child.kernel_size == (1, 1):
                reason = "1x1 (a channel mixer, no spatial kernel)"
            elif child.groups != 1:
                reason = f"grouped (groups={child.groups})"
            elif not _same_padded(child):
                reason = "padding does not keep the size"
            if reason:
                records.append({"name": name, "action": "kept", "reason": reason, "from": desc, "to": desc})
            else:
                targets.append((parent, child_name, name, child))
    for parent, child_name, name, child in targets:
        hp = dict(hparams)
        if "bias" in valid and "bias" not in hp:
            hp["bias"] = child.bias is not None
        if to == "conv" and "kernel_size" not in hp:
            hp["kernel_size"] = tuple(child.kernel_size)
        new = build_layer(to, child.in_channels, child.out_channels, **hp)
        new = new.to(device=child.weight.device, dtype=child.weight.dtype)
        setattr(parent, child_name, new)
        records.append({"name": name, "action": "swapped", "reason": "", "from": f"Conv2d k={child.kernel_size}",
                        "to": f"{type(new).__name__}"})
    records.sort(key=lambda r: r["name"])
    return records
