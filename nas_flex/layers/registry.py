"""The layer registry: ``build(name, in_channels, out_channels, **hparams)``, ``available()``, ``register(name)``,
``unregister(name)``.

Built-in layers are listed by import path and imported on first use, so ``import nas_flex.layers`` stays cheap and a
layer's module is only loaded when a model asks for it (the same idea as Ray Tune's ``SEARCH_ALG_IMPORT``).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from torch import nn

from nas_flex.errors import NasFlexError, check_known, unknown_name

__all__ = ["register", "unregister", "build", "available", "get", "hparam_names", "check_hparams"]

T = TypeVar("T", bound=type[nn.Module])

# name -> "module:attribute". Order is the order `available()` lists them in after sorting; keep it short.
_BUILTIN: dict[str, str] = {
    "conv": "nas_flex.layers.conv:Conv",
    "mixed": "nas_flex.layers.mixed:MixedConv",
    "flexconv": "nas_flex.layers.flexconv:FlexConv",
    "njet": "nas_flex.layers.njet:NJetConv",
    "envelope": "nas_flex.layers.envelope:EnvelopeConv",
    "niff": "nas_flex.layers.niff:NIFFConv",
    "cfconv": "nas_flex.layers.cfconv:CFConv",
}
_REGISTERED: dict[str, type[nn.Module]] = {}


def register(name: str) -> Callable[[T], T]:
    """Class decorator adding a layer to the registry under ``name``.

    Raises:
        NasFlexError: if ``name`` is taken (a layer is never silently replaced).

    Example:
        >>> from nas_flex.layers import KernelLayer, register
        >>> @register("my_conv")  # doctest: +SKIP
        ... class MyConv(KernelLayer): ...
    """
    if not isinstance(name, str) or not name:
        raise NasFlexError(f"`name` must be a non-empty str, but got {name!r}")

    def decorator(cls: T) -> T:
        taken = _REGISTERED.get(name)
        builtin = _BUILTIN.get(name)
        own_builtin = builtin is not None and builtin == f"{cls.__module__}:{cls.__qualname__}"
        if (taken is not None and taken is not cls) or (builtin is not None and not own_builtin):
            raise NasFlexError(f"a layer named {name!r} is already registered; choose another name")
        cls.kind = name
        _REGISTERED[name] = cls
        return cls

    return decorator


def unregister(name: str) -> None:
    """Remove the layer ``register(name)`` added (e.g. a test's layer), so the name is free again.

    Raises:
        NasFlexError: for a built-in layer (they are part of the package and stay).
        UnknownNameError: if no layer was registered under ``name``, listing the ones that were.

    Example:
        >>> from nas_flex.layers import KernelLayer, register, unregister
        >>> @register("my_conv")  # doctest: +SKIP
        ... class MyConv(KernelLayer): ...
        >>> unregister("my_conv")  # doctest: +SKIP
    """
    if name in _BUILTIN:
        raise NasFlexError(f"{name!r} is a built-in layer and cannot be unregistered; only names given to register()")
    if name not in _REGISTERED:
        raise unknown_name("registered layer", name, sorted(set(_REGISTERED) - set(_BUILTIN)))
    del _REGISTERED[name]


def available() -> list[str]:
    """Names of every registered layer, built-in and user-registered, sorted."""
    return sorted(set(_BUILTIN) | set(_REGISTERED))


def get(name: str) -> type[nn.Module]:
    """The layer class registered under ``name`` (imports a built-in on first use)."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name not in _BUILTIN:
        raise unknown_name("layer", name, available())
    module, attr = _BUILTIN[name].split(":")
    cls = getattr(importlib.import_module(module), attr)
    _REGISTERED.setdefault(name, cls)
    return cls


def hparam_names(name: str) -> list[str]:
    """The keyword hyperparameters the layer ``name`` accepts (beyond in_channels, out_channels)."""
    params = inspect.signature(get(name).__init__).parameters
    return [p for p in params if p not in ("self", "in_channels", "out_channels")]


def check_hparams(name: str, hparams: Iterable[str], *, where: str = "") -> list[str]:
    """The one check of a layer's hyperparameter names: every name in ``hparams`` must be one the layer takes.

    Args:
        name: a layer name (an unknown one raises UnknownNameError, listing the valid ones).
        hparams: the names given (e.g. a config's ``conv_hparams``).
        where: where they were given, for the message (e.g. ``" in conv_hparams"``).

    Returns:
        The layer's hyperparameter names (``hparam_names(name)``).

    Raises:
        HyperparameterError: naming each unknown hyperparameter, with the closest valid one.
    """
    names = hparam_names(name)
    check_known(hparams, names, f"hyperparameter(s) of layer {name!r}{where}")
    return names


def build(name: str, in_channels: int, out_channels: int, **hparams: Any) -> nn.Module:
    """Build the layer ``name`` mapping ``in_channels`` to ``out_channels``.

    Args:
        name: a name from ``available()``.
        in_channels: C_in.
        out_channels: C_out.
        **hparams: the layer's hyperparameters (papers' names); unknown ones are rejected by name.

    Raises:
        UnknownNameError: an unknown layer name. HyperparameterError: an unknown hyperparameter (with the closest
            valid one), or, from the layer, a value out of range.

    Example:
        >>> from nas_flex.layers import build
        >>> layer = build("conv", 3, 8, kernel_size=5)
        >>> layer.effective_kernel_size
        (5.0, 5.0)
    """
    cls = get(name)
    check_hparams(name, hparams)
    return cls(in_channels, out_channels, **hparams)
