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

``imagefolder`` (a folder of class subfolders, or with ``train/`` and ``val/`` inside) and ``npz`` (arrays ``x``,
``y``, optional ``x_val``, ``y_val``) read a user's own data from ``root`` (``nas_flex.data.files``). ``register``
adds a dataset of one's own (``available()`` lists them all).

``test_fraction`` asks for a third, held-out test split (``DatasetSplits.test``) that a trial scores once after its
last epoch and no search selects on: the digits datasets carve it from the 1797 digits before the train / validation
split (stratified, its own random stream; the synthetic ones paste only test digits into it); ``textures`` crops it
from cells of each photograph set aside for it; ``imagefolder`` reads
a ``test/`` folder or holds out that fraction of the images, ``npz`` reads ``x_test`` / ``y_test`` or holds out that
fraction; a torchvision dataset's official test split is the test split, which needs ``val_fraction`` (validation then
comes from the training split). Without it every split is exactly what it was.

``import nas_flex.data`` is light: torch, torchvision, scikit-learn and scikit-image load when a dataset is built.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from nas_flex.data.base import (
    DatasetError,
    DatasetNotFoundError,
    DatasetSplits,
    check_image_size,
    check_test_fraction,
)
from nas_flex.errors import HyperparameterError, NasFlexError, check_known
from nas_flex.registry import Registry

__all__ = ["get_dataset", "dataset_from_config", "available", "available_datasets", "describe_dataset", "clear_cache",
           "register", "unregister", "DatasetEntry", "DatasetSplits", "DatasetNotFoundError", "DatasetError"]

_DIGITS_SPLIT = {"val_fraction": 0.2}
_MULTISCALE = {"scales": (1.0, 3.0), "val_scales": None, "copies": 1, **_DIGITS_SPLIT}
_TORCHVISION = {"val_fraction": None}

_FILES = {"val_fraction": 0.2, "grayscale": None, "normalize": True}


@dataclass(frozen=True)
class DatasetEntry:
    """A dataset in the registry.

    Attributes:
        builder: ``builder(name, *, root, image_size, seed, download, **options) -> DatasetSplits``, or the
            "module:function" path of a built-in one (imported when the dataset is built).
        options: the dataset's own options and their defaults (other option names are refused).
        description: one line for ``describe_dataset``.
    """

    builder: Callable[..., DatasetSplits] | str
    options: Mapping[str, Any]
    description: str

    def resolve(self) -> Callable[..., DatasetSplits]:
        """The builder function (imports a built-in's module)."""
        if callable(self.builder):
            return self.builder
        module, attr = self.builder.split(":")
        return getattr(importlib.import_module(module), attr)


# name -> ("module:builder", the dataset's own options and their defaults, one line for `describe_dataset`)
_BUILTIN: dict[str, tuple[str, dict[str, Any], str]] = {
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
    "imagefolder": ("nas_flex.data.files:build_imagefolder", dict(_FILES),
                    "images in class subfolders of data_root (or its train/ and val/), read with PIL"),
    "npz": ("nas_flex.data.files:build_npz", {"val_fraction": 0.2, "normalize": True},
            "arrays x, y (optional x_val, y_val) of the .npz file data_root"),
}
DATASETS: Registry[DatasetEntry] = Registry(
    "dataset", builtin={k: DatasetEntry(*v) for k, v in _BUILTIN.items()}, normalize=str.lower)


def register(name: str, *, options: Mapping[str, Any] | None = None,
             description: str = "") -> Callable[[Callable[..., DatasetSplits]], Callable[..., DatasetSplits]]:
    """Decorator adding a dataset builder to the registry under ``name`` (case-insensitive).

    The builder is called as ``builder(name, *, root, image_size, seed, download, **options)`` (``root`` is the
    config's ``data_root``, ``options`` its ``data_options`` over the defaults given here) and returns a
    ``DatasetSplits``. The same builder registered again under its name is a no-op; another one raises.

    Example:
        >>> from nas_flex.data import register
        >>> @register("noise", options={"n": 64})  # doctest: +SKIP
        ... def noise(name, *, root, image_size, seed, download, n): ...
    """
    if not isinstance(name, str) or not name:
        raise NasFlexError(f"a dataset name must be a non-empty str, but got {name!r}")

    def decorator(builder: Callable[..., DatasetSplits]) -> Callable[..., DatasetSplits]:
        if not callable(builder):
            raise NasFlexError(f"dataset {name!r}: register() decorates a builder function, not {builder!r}")
        key = name.lower()
        entry = DatasetEntry(builder, dict(options or {}), description or (builder.__doc__ or "").strip()
                             .split("\n")[0])
        old = DATASETS.user_entries().get(key)
        if old is None or old.builder is not builder:
            DATASETS.add(name, entry)
        return builder

    return decorator


def unregister(name: str) -> None:
    """Remove a dataset ``register`` added; built-ins stay (``NasFlexError``)."""
    DATASETS.unregister(name)


def available() -> list[str]:
    """Names ``get_dataset`` accepts, built-in and registered, sorted."""
    return DATASETS.available()

# modules whose in-memory caches `clear_cache` empties (only if already imported)
_CACHED_MODULES = ("nas_flex.data.digits", "nas_flex.data.textures", "nas_flex.data.vision", "nas_flex.data.files")


def available_datasets() -> list[str]:
    """Names ``get_dataset`` accepts, sorted (the same as ``available()``)."""
    return DATASETS.available()


def describe_dataset(name: str) -> dict[str, Any]:
    """One line about the dataset ``name`` and its options with their defaults.

    Example:
        >>> describe_dataset("digits")["options"]
        {'val_fraction': 0.2}
    """
    key = DATASETS.canonical(name)
    entry = DATASETS.get(key)
    return {"name": key, "description": entry.description, "options": dict(entry.options)}


def clear_cache() -> None:
    """Drop the datasets kept in memory (the next ``get_dataset`` call builds or reads them again)."""
    for module in _CACHED_MODULES:
        if module in sys.modules:
            sys.modules[module].clear_cache()


def get_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    *,
    seed: int = 0,
    download: bool = False,
    test_fraction: float | None = None,
    **options: Any,
) -> DatasetSplits:
    """The train and validation (and, with ``test_fraction``, test) splits of a dataset, with its input shape and
    class count.

    Args:
        name: one of ``available_datasets()`` (case-insensitive).
        root: the folder of a torchvision dataset, in torchvision's layout (``<root>/cifar-10-batches-py/``,
            ``<root>/MNIST/raw/``, ``<root>/train_32x32.mat``, ...), of an ``imagefolder``, or the ``.npz`` file.
            Ignored by the generated datasets.
        image_size: resize images to ``image_size x image_size`` (the canvas side for ``digits-multiscale``; the
            upsampled side, flattened, for ``digits-seq``). None: the dataset's default.
        seed: sets the train / validation split and every random draw of the built-in datasets. The same seed gives
            identical splits and samples.
        download: let torchvision download a missing dataset into ``root``. Never implicit.
        test_fraction: None (no test split: the splits are exactly as without it), or a fraction in (0, 1) held
            out as ``DatasetSplits.test`` (see the module docstring for how each dataset makes it). A dataset whose
            builder has no ``test_fraction`` parameter refuses it.
        **options: the dataset's own options (``describe_dataset(name)["options"]``), e.g. ``scales=(1, 2)`` for
            ``digits-multiscale`` or ``val_fraction=0.1`` to validate a torchvision dataset on a held-out part of its
            training split instead of its test split.

    Returns:
        A ``DatasetSplits`` whose ``train`` and ``val`` (and ``test``, None without ``test_fraction``) yield
        ``(float32 tensor of input_shape, int label)``.

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
    key = DATASETS.canonical(name)
    entry = DATASETS.get(key)
    defaults = entry.options
    size = check_image_size(image_size, name=key)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise HyperparameterError(f"`seed` must be an int >= 0, but got seed={seed!r}")
    if not isinstance(download, bool):
        raise HyperparameterError(f"`download` must be a bool, but got download={download!r}")
    check_known(options, defaults, f"option(s) of dataset {key!r}")
    resolved: dict[str, Any] = {**defaults, **options}
    builder = entry.resolve()
    if check_test_fraction(test_fraction, name=key) is not None:
        _check_takes_test_split(key, builder)
        resolved["test_fraction"] = float(test_fraction)
    return builder(key, root=root, image_size=size, seed=seed, download=download, **resolved)


def _check_takes_test_split(name: str, builder: Callable[..., DatasetSplits]) -> None:
    """A test split is asked for: the builder must say it makes one (a ``test_fraction`` parameter)."""
    try:
        takes = "test_fraction" in inspect.signature(builder).parameters
    except (TypeError, ValueError):
        takes = False
    if not takes:
        raise HyperparameterError(
            f"dataset {name!r} makes no test split (its builder has no `test_fraction` parameter), but got "
            f"test_fraction; leave test_fraction unset, or use a dataset that makes one")


def dataset_from_config(config: Mapping[str, Any]) -> DatasetSplits:
    """The splits a resolved trial config names.

    ``get_dataset`` with the config's ``dataset``, ``data_root``, ``image_size``, ``seed``, ``download``,
    ``test_fraction`` and ``data_options`` (``nas_flex.train.config.resolve_config`` fills them in).
    """
    return get_dataset(config["dataset"], root=config["data_root"], image_size=config["image_size"],
                       seed=config["seed"], download=config["download"], test_fraction=config.get("test_fraction"),
                       **config["data_options"])
