"""Datasets behind one call: ``get_dataset(name, root=None, image_size=None, *, seed=0, download=False, **options)``.

Built-in datasets need no files and no network; they are generated from ``seed``, cached in memory, and built in
well under a second:

=====================  ==============================================================================================
``digits``             scikit-learn's 1797 8x8 digits, 10 classes, upsampled to ``image_size`` (default 16)
``digits-multiscale``  the digits pasted at random scales and positions on a canvas (default 32x32): the best kernel
                       size depends on the object's scale (the N-Jet paper's point). ``scales=(lo, hi)``.
``digits-scaleshift``  the same with train scales (1, 1.5) and validation scales (2, 3): does a size learned at one
                       scale carry over to another?
``digits-seq``         the digits as pixel sequences (1, 64) (or (1, image_size**2), upsampled)
``digits-seq-permuted``  the same with one fixed permutation of the positions (``permutation_seed``)
``textures``           crops of scikit-image's brick, grass and gravel photographs at several zooms, 3 classes,
                       grayscale 32x32; train and validation crops come from disjoint cells of each photograph
=====================  ==============================================================================================

``cifar10``, ``cifar100``, ``mnist``, ``fashionmnist`` and ``svhn`` are read from ``root`` by the torchvision dataset
classes, in torchvision's own folder layout; they are downloaded only with ``download=True``.

``import nas_flex.data`` is light: torch, torchvision, scikit-learn and scikit-image load when a dataset is built.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping
from typing import Any

from nas_flex.data.base import DatasetNotFoundError, DatasetSplits, check_image_size
from nas_flex.errors import HyperparameterError, check_known, unknown_name

__all__ = ["get_dataset", "dataset_from_config", "available_datasets", "describe_dataset", "clear_cache",
           "DatasetSplits", "DatasetNotFoundError"]

_DIGITS_SPLIT = {"val_fraction": 0.2}
_MULTISCALE = {"scales": (1.0, 3.0), "val_scales": None, "copies": 1, **_DIGITS_SPLIT}
_TORCHVISION = {"val_fraction": None}

# name -> ("module:builder", the dataset's own options and their defaults, one line for `describe_dataset`)
_DATASETS: dict[str, tuple[str, dict[str, Any], str]] = {
    "digits": ("nas_flex.data.digits:build_digits", dict(_DIGITS_SPLIT),
               "scikit-learn 8x8 digits upsampled to image_size (default 16); 10 classes; stratified split"),
    "digits-multiscale": ("nas_flex.data.digits:build_multiscale", dict(_MULTISCALE),
                          "digits at random scales (x 8 px) and positions on an image_size canvas (default 32)"),
    "digits-scaleshift": ("nas_flex.data.digits:build_multiscale", {**_MULTISCALE, "scales": (1.0, 1.5),
                                                                    "val_scales": (2.0, 3.0)},
                          "digits-multiscale trained at scales 1-1.5 (8-12 px), validated at 2-3 (16-24 px)"),
    "digits-seq": ("nas_flex.data.digits:build_sequence", dict(_DIGITS_SPLIT),
                   "digits as pixel sequences (1, 64), or (1, image_size**2) upsampled; same split as digits"),
    "digits-seq-permuted": ("nas_flex.data.digits:build_sequence", {**_DIGITS_SPLIT, "permutation_seed": 0},
                            "digits-seq with one fixed permutation of the positions (permutation_seed)"),
    "textures": ("nas_flex.data.textures:build_textures",
                 {"zooms": (1.0, 1.5, 2.0, 3.0), "train_per_class": 256, "val_per_class": 64, "val_fraction": 0.2},
                 "crops of scikit-image brick / grass / gravel at several zooms; 3 classes; disjoint regions"),
    "cifar10": ("nas_flex.data.vision:build_torchvision", dict(_TORCHVISION), "CIFAR-10 from root (torchvision)"),
    "cifar100": ("nas_flex.data.vision:build_torchvision", dict(_TORCHVISION), "CIFAR-100 from root (torchvision)"),
    "mnist": ("nas_flex.data.vision:build_torchvision", dict(_TORCHVISION), "MNIST from root (torchvision)"),
    "fashionmnist": ("nas_flex.data.vision:build_torchvision", dict(_TORCHVISION),
                     "Fashion-MNIST from root (torchvision)"),
    "svhn": ("nas_flex.data.vision:build_torchvision", dict(_TORCHVISION), "SVHN from root (torchvision)"),
}

# modules whose in-memory caches `clear_cache` empties (only if already imported)
_CACHED_MODULES = ("nas_flex.data.digits", "nas_flex.data.textures", "nas_flex.data.vision")


def available_datasets() -> list[str]:
    """Names ``get_dataset`` accepts, sorted."""
    return sorted(_DATASETS)


def describe_dataset(name: str) -> dict[str, Any]:
    """One line about the dataset ``name`` and its options with their defaults.

    Example:
        >>> describe_dataset("digits")["options"]
        {'val_fraction': 0.2}
    """
    _, defaults, text = _DATASETS[_canonical(name)]
    return {"name": _canonical(name), "description": text, "options": dict(defaults)}


def clear_cache() -> None:
    """Drop the datasets kept in memory (the next ``get_dataset`` call builds or reads them again)."""
    for module in _CACHED_MODULES:
        if module in sys.modules:
            sys.modules[module].clear_cache()


def _canonical(name: Any) -> str:
    key = name.lower() if isinstance(name, str) else name
    if key in _DATASETS:
        return key
    raise unknown_name("dataset", name, _DATASETS)


def get_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    *,
    seed: int = 0,
    download: bool = False,
    **options: Any,
) -> DatasetSplits:
    """The train and validation splits of a dataset, with its input shape and class count.

    Args:
        name: one of ``available_datasets()`` (case-insensitive).
        root: the folder of a torchvision dataset, in torchvision's layout (``<root>/cifar-10-batches-py/``,
            ``<root>/MNIST/raw/``, ``<root>/train_32x32.mat``, ...). Ignored by the built-in datasets.
        image_size: resize images to ``image_size x image_size`` (the canvas side for ``digits-multiscale``; the
            upsampled side, flattened, for ``digits-seq``). None: the dataset's default.
        seed: sets the train / validation split and every random draw of the built-in datasets. The same seed gives
            identical splits and samples.
        download: let torchvision download a missing dataset into ``root``. Never implicit.
        **options: the dataset's own options (``describe_dataset(name)["options"]``), e.g. ``scales=(1, 2)`` for
            ``digits-multiscale`` or ``val_fraction=0.1`` to validate a torchvision dataset on a held-out part of its
            training split instead of its test split.

    Returns:
        A ``DatasetSplits`` whose ``train`` and ``val`` yield ``(float32 tensor of input_shape, int label)``.

    Raises:
        UnknownNameError: for an unknown dataset name (lists the valid ones).
        HyperparameterError: for a bad ``image_size``, ``seed`` or option.
        DatasetNotFoundError: (a ``FileNotFoundError``) when a torchvision dataset's files are missing or corrupted;
            the message names the expected path and how to get the files. Raised before anything heavy is loaded.

    Example:
        >>> splits = get_dataset("digits", seed=0)
        >>> splits.input_shape, splits.num_classes, len(splits.train), len(splits.val)
        ((1, 16, 16), 10, 1438, 359)
        >>> x, y = splits.train[0]
    """
    key = _canonical(name)
    target, defaults, _ = _DATASETS[key]
    size = check_image_size(image_size, name=key)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise HyperparameterError(f"`seed` must be an int >= 0, but got seed={seed!r}")
    if not isinstance(download, bool):
        raise HyperparameterError(f"`download` must be a bool, but got download={download!r}")
    check_known(options, defaults, f"option(s) of dataset {key!r}")
    resolved: Mapping[str, Any] = {**defaults, **options}
    module, attr = target.split(":")
    build = getattr(importlib.import_module(module), attr)
    return build(key, root=root, image_size=size, seed=seed, download=download, **resolved)


def dataset_from_config(config: Mapping[str, Any]) -> DatasetSplits:
    """The splits a resolved trial config names.

    ``get_dataset`` with the config's ``dataset``, ``data_root``, ``image_size``, ``seed``, ``download`` and
    ``data_options`` (``nas_flex.train.config.resolve_config`` fills them in).
    """
    return get_dataset(config["dataset"], root=config["data_root"], image_size=config["image_size"],
                       seed=config["seed"], download=config["download"], **config["data_options"])
