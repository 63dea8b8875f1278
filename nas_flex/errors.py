"""The one error hierarchy of nas_flex, and the shape-check helper every layer uses.

Torch-free on purpose: the leaderboard and the search-space code import these errors without pulling in torch.
"""

from __future__ import annotations

import difflib
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
    "ResourceError",
    "StorageError",
    "ExportError",
    "EquivalenceError",
    "DatasetNotFoundError",
    "DatasetError",
    "TrainableError",
    "QueryError",
    "StorageFullError",
    "UnsafeStorageError",
    "check_shape",
    "check_known",
    "did_you_mean",
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


class QueryError(LeaderboardSchemaError):
    """A leaderboard filter expression is not valid: bad syntax, a refused construct or an unknown column."""


class NonFiniteError(NasFlexError, FloatingPointError):
    """A NaN or inf appeared in a size parameter or a generated kernel."""


class ResourceError(NasFlexError, RuntimeError):
    """A trial asks for resources the cluster does not have (Ray would leave it pending forever)."""


class StorageError(NasFlexError, ValueError):
    """The ``storage`` folder cannot hold a leaderboard: a file, not writable, or holding unreadable files."""


class StorageFullError(StorageError, OSError):
    """The disk (or quota) of the storage is full; what was written before is kept, nothing half-written is left."""


class UnsafeStorageError(StorageError):
    """Something in the storage would make nas_flex write or delete outside it (a symlink, a forged trial id)."""


class ExportError(NasFlexError):
    """An architecture could not be exported, discretised or reloaded, or the export folder is in the way."""


class EquivalenceError(ExportError):
    """The deployable model's outputs differ from the trained model's beyond the tolerance."""


class DatasetNotFoundError(NasFlexError, FileNotFoundError):
    """A dataset's files are missing, incomplete or corrupted; the message names the path and how to get them."""


class TrainableError(NasFlexError, RuntimeError):
    """A user's training function raised, returned without reporting, or misused its context."""


class DatasetError(NasFlexError, ValueError):
    """A dataset's files are there but unusable (no images, one class, an unreadable file, mixed sizes, bad arrays);
    the message names the path."""


def did_you_mean(name: Any, valid: Iterable[Any]) -> str:
    """`` (did you mean 'x'?)`` with the closest valid name (case aside), or "" if none is close.

    The one "did you mean" of the package: every unknown-name error uses it.

    Example:
        >>> did_you_mean("flop", ["flops", "params"])
        " (did you mean 'flops'?)"
    """
    by_lower = {str(v).lower(): v for v in valid}
    close = difflib.get_close_matches(str(name).lower(), by_lower, n=1)
    return f" (did you mean {by_lower[close[0]]!r}?)" if close else ""


_did_you_mean = did_you_mean  # the name the registries used before it was public


def unknown_name(what: str, name: Any, valid: Iterable[str], *, error: type[NasFlexError] = UnknownNameError,
                 sort: bool = True) -> NasFlexError:
    """Build the error for an unknown ``name``, with the closest valid one and all the valid choices.

    Args:
        what: what the name is, e.g. ``"layer"`` or ``"sort column"``.
        name: the name given.
        valid: the accepted names.
        error: the error class to build (``UnknownNameError`` by default).
        sort: list the valid names sorted (else in the order given, e.g. a table's column order).

    Example:
        >>> print(unknown_name("layer", "flexconvv", ["conv", "flexconv"]))
        unknown layer 'flexconvv' (did you mean 'flexconv'?); expected one of: 'conv', 'flexconv'
    """
    valid = sorted(valid, key=repr) if sort else list(valid)
    choices = ", ".join(repr(v) for v in valid)
    return error(f"unknown {what} {name!r}{did_you_mean(name, valid)}; expected one of: {choices}")


def check_known(
    given: Iterable[str],
    valid: Iterable[str],
    what: str,
    *,
    error: type[NasFlexError] = HyperparameterError,
) -> None:
    """Raise ``error`` naming every entry of ``given`` that is not in ``valid`` (keyword arguments, options).

    The one check behind every "unknown hyperparameter" error: the layer registry, the model builders, the search
    space validation, the kernel nets and the datasets use it, so the message reads the same everywhere.

    Args:
        given: the names passed (e.g. the keys of ``conv_hparams``).
        valid: the accepted names, in the order to list them (e.g. a signature's order).
        what: what the names are, plural, e.g. ``"hyperparameter(s) of layer 'conv'"``.
        error: the error class to raise.

    Example:
        >>> check_known(["biass"], ["kernel_size", "bias"], "option(s)")
        Traceback (most recent call last):
        ...
        nas_flex.errors.HyperparameterError: unknown option(s): 'biass' (did you mean 'bias'?); valid: kernel_size, bias
    """
    valid = list(valid)
    unknown = sorted({str(g) for g in given} - set(valid))
    if unknown:
        hints = ", ".join(f"{u!r}{did_you_mean(u, valid)}" for u in unknown)
        raise error(f"unknown {what}: {hints}; valid: {', '.join(valid) or 'none'}")


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
