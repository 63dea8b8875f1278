"""What every dataset builder returns, the dataset error, and the argument checks shared by the builders.

Torch-free on purpose: ``import nas_flex.data`` loads only this and the registry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nas_flex.errors import DatasetError, DatasetNotFoundError, HyperparameterError

if TYPE_CHECKING:
    from torch.utils.data import Dataset

__all__ = ["DatasetSplits", "DatasetNotFoundError", "DatasetError", "MIN_IMAGE_SIZE", "check_image_size",
           "check_fraction", "check_range", "check_count", "check_test_fraction"]

# below this a 3x3 convolution and one pooling step leave nothing to learn from
MIN_IMAGE_SIZE = 4


@dataclass(frozen=True)
class DatasetSplits:
    """A dataset's train, validation and (optional) test splits and what a model needs to know about them.

    Every split is a ``torch.utils.data.Dataset`` of ``(input, label)``: ``input`` a float32 tensor of shape
    ``input_shape``, normalised with the training split's statistics; ``label`` a Python int in ``[0, num_classes)``.
    ``test`` is None unless a test split was asked for (``test_fraction``): it is for scoring a finished trial once,
    never for selecting one.
    """

    name: str  # the registry name (``available_datasets()``)
    kind: str  # "image": inputs (C, H, W); "sequence": inputs (C, L)
    train: Dataset
    val: Dataset
    num_classes: int
    input_shape: tuple[int, ...]  # (C, H, W) or (C, L)
    classes: tuple[str, ...]  # class names; classes[label]
    # normalisation applied to pixels in [0, 1]: x = (p - mean) / std per channel; None where each sample is
    # standardised on its own (textures)
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    options: Mapping[str, Any]  # the dataset's own options as used, defaults filled in (JSON-safe)
    test: Dataset | None = None  # the held-out test split (``test_fraction``); None: none asked for


def check_image_size(image_size: Any, *, name: str) -> int | None:
    """``image_size`` is None (the dataset's default) or an int >= MIN_IMAGE_SIZE."""
    if image_size is None:
        return None
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE:
        raise HyperparameterError(
            f"`image_size` must be None (the dataset's default) or an int >= {MIN_IMAGE_SIZE} (the side in pixels), "
            f"but got image_size={image_size!r} for dataset {name!r}"
        )
    return int(image_size)


def check_fraction(value: Any, *, key: str, name: str) -> float:
    """A fraction strictly between 0 and 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise HyperparameterError(f"`0 < {key} < 1` must hold, but got {key}={value!r} for dataset {name!r}")
    return float(value)


def check_test_fraction(value: Any, *, name: str) -> float | None:
    """``test_fraction``: None (no test split) or a fraction strictly between 0 and 1."""
    return None if value is None else check_fraction(value, key="test_fraction", name=name)


def check_count(value: Any, *, key: str, name: str, minimum: int = 1) -> int:
    """An int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise HyperparameterError(f"`{key}` must be an int >= {minimum}, but got {key}={value!r} for dataset {name!r}")
    return int(value)


def check_range(value: Any, *, key: str, name: str) -> tuple[float, float]:
    """A pair ``(lo, hi)`` with ``0 < lo <= hi``."""
    ok = (isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))
    if not ok or not 0 < value[0] <= value[1]:
        raise HyperparameterError(f"`{key}` must be a pair (lo, hi) with 0 < lo <= hi, but got {key}={value!r} "
                                  f"for dataset {name!r}")
    return float(value[0]), float(value[1])
