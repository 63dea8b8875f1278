"""The layer registry: ``build(name, in_channels, out_channels, **hparams)``, ``available()``, ``register(name)``,
``unregister(name)``.

The built-in layers register themselves with the same decorator a user's layer uses; their modules are imported the
first time a name is looked up, so ``import nas_flex.layers`` stays cheap. The rules (a taken name raises, an unknown
one lists what exists, built-ins stay) are ``nas_flex.registry.Registry``'s, shared with backbones and datasets.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from torch import nn

from nas_flex.errors import NasFlexError, check_known
from nas_flex.registry import Registry

__all__ = ["register", "unregister", "build", "available", "get", "hparam_names", "check_hparams", "LAYERS"]

T = TypeVar("T", bound=type[nn.Module])

# the modules defining the built-in layers; each registers its layer with ``@register`` (the one source of their
# names), and they are imported the first time a name is looked up
_BUILTIN_MODULES = (
    "nas_flex.layers.conv", "nas_flex.layers.mixed", "nas_flex.layers.flexconv", "nas_flex.layers.njet",
    "nas_flex.layers.envelope", "nas_flex.layers.niff", "nas_flex.layers.cfconv",
)
LAYERS: Registry[type[nn.Module]] = Registry("layer", builtin_modules=_BUILTIN_MODULES)


def register(name: str) -> Callable[[T], T]:
    """Class decorator adding a layer to the registry under ``name`` (and setting its ``kind`` to ``name``).

    Registering the same class again under the same name is a no-op.

    Raises:
        NasFlexError: if ``name`` is taken by another layer (a layer is never silently replaced).

    Example:
        >>> from nas_flex.layers import KernelLayer, register
        >>> @register("my_conv")  # doctest: +SKIP
        ... class MyConv(KernelLayer): ...
    """
    if not isinstance(name, str) or not name:
        raise NasFlexError(f"`name` must be a non-empty str, but got {name!r}")

    def decorator(cls: T) -> T:
        own = cls.__dict__.get("kind")
        if own and own != name and own in LAYERS and LAYERS.get(own) is cls:
            raise NasFlexError(f"{cls.__name__} is registered as {own!r}; to register it under {name!r} too, "
                               f"register a subclass (class Mine({cls.__name__}): ...)")
        LAYERS.add(name, cls)
        cls.kind = name
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
    LAYERS.unregister(name)


def available() -> list[str]:
    """Names of every registered layer, built-in and user-registered, sorted."""
    return LAYERS.available()


def get(name: str) -> type[nn.Module]:
    """The layer class registered under ``name`` (imports the built-in layers on first use)."""
    return LAYERS.get(name)


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
