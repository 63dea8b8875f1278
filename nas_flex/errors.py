"""The one error hierarchy of nas_flex, and the shape-check helper every layer uses.

Torch-free on purpose: the leaderboard and the search-space code import these errors without pulling in torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "NasFlexError",
    "ShapeError",
    "SearchSpaceError",
    "UnknownNameError",
    "LeaderboardSchemaError",
    "CorruptLeaderboardError",
    "HyperparameterError",
    "NonFiniteError",
    "check_shape",
    "unknown_name",
]


class NasFlexError(Exception):
    """Base class of every error nas_flex raises on purpose."""


class ShapeError(NasFlexError, ValueError):
    """A tensor's shape does not fit what the layer or op was built for."""


class HyperparameterError(NasFlexError, ValueError):
    """A constructor argument or hyperparameter is out of its valid range."""


class SearchSpaceError(NasFlexError, ValueError):
    """A search space is invalid or returned an invalid trial config."""


class UnknownNameError(NasFlexError, ValueError):
    """A name (layer, kernel net, dataset, ...) is not one of the known ones."""


class LeaderboardSchemaError(NasFlexError, ValueError):
    """A leaderboard file does not have the columns or schema version expected."""


class CorruptLeaderboardError(LeaderboardSchemaError):
    """Files of a leaderboard are not readable Parquet (truncated, empty, overwritten); the message names them all."""


class NonFiniteError(NasFlexError, FloatingPointError):
    """A NaN or inf appeared in a size parameter or a generated kernel."""


def unknown_name(what: str, name: Any, valid: Iterable[str]) -> UnknownNameError:
    """Build the error for an unknown ``name``, listing the valid choices."""
    choices = ", ".join(sorted(repr(v) for v in valid))
    return UnknownNameError(f"unknown {what} {name!r}; expected one of: {choices}")


def check_shape(
    x: Any,
    dims: Sequence[str],
    *,
    name: str = "input",
    known: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Check that ``x`` has one axis per entry of ``dims`` and that named axes have the expected sizes.

    Args:
        x: a tensor (anything with ``.shape``).
        dims: axis names, e.g. ``["N", "C", "H", "W"]``.
        name: what ``x`` is called in the error message.
        known: expected sizes for some axes, e.g. ``{"C": in_channels}``.

    Returns:
        The axis sizes by name.

    Raises:
        ShapeError: with the expected and the actual shape.

    Example:
        >>> import torch
        >>> check_shape(torch.zeros(2, 3, 8, 8), ["N", "C", "H", "W"], known={"C": 3})
        {'N': 2, 'C': 3, 'H': 8, 'W': 8}
    """
    shape = tuple(getattr(x, "shape", ()))
    expected = "(" + ", ".join(dims) + ")"
    if len(shape) != len(dims):
        raise ShapeError(f"{name} must have shape {expected} ({len(dims)} dims), but got shape {shape}")
    sizes = dict(zip(dims, (int(s) for s in shape)))
    for axis, want in (known or {}).items():
        if sizes[axis] != want:
            raise ShapeError(
                f"{name} must have {axis}={want} in shape {expected}, but got shape {shape} ({axis}={sizes[axis]})"
            )
    return sizes
