"""``cifar10``, ``cifar100``, ``mnist``, ``fashionmnist`` and ``svhn`` read from ``root`` by the real torchvision
dataset classes, in torchvision's folder layout:

==================  ===========================================================================================
``cifar10``         ``<root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``
``cifar100``        ``<root>/cifar-100-python/{train, test, meta}``
``mnist``           ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (``.gz`` alone is fine too)
``fashionmnist``    ``<root>/FashionMNIST/raw/`` (the same four files)
``svhn``            ``<root>/train_32x32.mat``, ``<root>/test_32x32.mat`` (torchvision keeps SVHN in root itself)
==================  ===========================================================================================

The files are checked for before torch or torchvision is imported, so a missing dataset fails at once, naming the
path expected and where to get it. Nothing is downloaded unless ``download=True``. torchvision then verifies the md5
checksums of the CIFAR and SVHN files and parses them; a failed check is reported as a ``DatasetNotFoundError``.

Validation is the official test split, or with ``val_fraction`` a seeded, stratified part of the training split (the
test split is then left untouched, e.g. for a final evaluation after a search). ``test_fraction`` (any value in
(0, 1): the official split's size is fixed) makes that official test split ``DatasetSplits.test``; it needs
``val_fraction``, since validation cannot then be the test split. Pixels are scaled to [0, 1] and
normalised with each dataset's usual per-channel training-set mean and std; ``image_size`` resizes (bilinear,
antialiased) on the fly. The uint8 pixels stay in memory (the last two datasets read are cached).
"""

from __future__ import annotations

import functools
import gzip
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas_flex.data.base import DatasetNotFoundError, DatasetSplits, check_fraction, check_test_fraction
from nas_flex.errors import HyperparameterError, NasFlexError
from nas_flex.storage.atomic import write_atomic

__all__ = ["build_torchvision", "expected_files", "clear_cache"]

_IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class _Spec:
    title: str
    tv_class: str  # the torchvision.datasets class
    files: tuple[str, ...]  # relative to root: what must be there
    source: str  # where to get the files by hand
    place: str  # where to put them
    layout: str  # how the torchvision class stores pixels: "NHWC" (numpy), "NHW" (torch), "NCHW" (numpy)
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


_SPECS: dict[str, _Spec] = {
    "cifar10": _Spec(
        "CIFAR-10", "CIFAR10",
        tuple(f"cifar-10-batches-py/{f}" for f in (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
                                                   "batches.meta")),
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "extract it into root (it unpacks to "
        "cifar-10-batches-py/)", "NHWC", 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": _Spec(
        "CIFAR-100", "CIFAR100", tuple(f"cifar-100-python/{f}" for f in ("train", "test", "meta")),
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "extract it into root (it unpacks to "
        "cifar-100-python/)", "NHWC", 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "mnist": _Spec(
        "MNIST", "MNIST", tuple(f"MNIST/raw/{f}" for f in _IDX),
        "https://ossci-datasets.s3.amazonaws.com/mnist/ (the four *-ubyte.gz files)",
        "put them, gzipped or not, into <root>/MNIST/raw/", "NHW", 10, (0.1307,), (0.3081,)),
    "fashionmnist": _Spec(
        "Fashion-MNIST", "FashionMNIST", tuple(f"FashionMNIST/raw/{f}" for f in _IDX),
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/ (the four *-ubyte.gz files)",
        "put them, gzipped or not, into <root>/FashionMNIST/raw/", "NHW", 10, (0.2860,), (0.3530,)),
    "svhn": _Spec(
        "SVHN", "SVHN", ("train_32x32.mat", "test_32x32.mat"),
        "http://ufldl.stanford.edu/housenumbers/ (train_32x32.mat and test_32x32.mat)",
        "put both files into root itself (torchvision's layout)", "NCHW", 10,
        (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}


def expected_files(name: str, root: str | os.PathLike[str]) -> list[Path]:
    """The files torchvision reads for dataset ``name`` under ``root``."""
    return [Path(root).expanduser() / f for f in _SPECS[name].files]


def _legacy_mnist(root: Path, spec: _Spec) -> bool:
    # torchvision still reads the processed/{training,test}.pt of old MNIST downloads
    processed = root / spec.tv_class / "processed"
    return spec.layout == "NHW" and all((processed / f).is_file() for f in ("training.pt", "test.pt"))


def _check_files(name: str, root: Any, download: bool) -> Path:
    """The resolved root; raises DatasetNotFoundError (naming the path and how to get it) when files are missing."""
    spec = _SPECS[name]
    how = f"pass download=True to download it, or get it from {spec.source} and {spec.place}"
    if root is None:
        raise DatasetNotFoundError(
            f"{spec.title} is read from disk and needs `root`, the folder that holds (or will hold) "
            f"{spec.files[0].split('/')[0]}; e.g. get_dataset({name!r}, root='~/data', download=True), or get it "
            f"from {spec.source} and {spec.place}"
        )
    path = Path(root).expanduser()
    if download:
        return path
    if not path.is_dir():
        raise DatasetNotFoundError(
            f"{spec.title} not found: root {path} is not a folder (expected {path / spec.files[0]}); {how}"
        )
    if _legacy_mnist(path, spec):
        return path
    missing = [path / f for f in spec.files
               if not (path / f).is_file() and not (spec.layout == "NHW" and (path / f"{f}.gz").is_file())]
    if missing:
        more = f" and {len(missing) - 1} more file(s)" if len(missing) > 1 else ""
        raise DatasetNotFoundError(f"{spec.title} not found under {path} (expected {missing[0]}{more}); {how}")
    return path


def _gunzip_idx(root: Path, spec: _Spec) -> None:
    """Unpack ``<file>.gz`` where only the gzipped idx file is there, as torchvision's own download step does."""
    for rel in spec.files:
        target = root / rel
        packed = target.with_name(target.name + ".gz")
        if target.is_file() or not packed.is_file():
            continue
        def unpack(tmp: Path, packed: Path = packed) -> None:
            with open(tmp, "wb") as out, gzip.open(packed, "rb") as src:
                shutil.copyfileobj(src, out)

        write_atomic(target, unpack, sync=False)  # a crash never leaves half a file under the real name


def _signature(root: Path, spec: _Spec) -> tuple[tuple[str, int, int], ...]:
    """Sizes and modification times of the files: the cache key changes when the files do."""
    legacy = [root / spec.tv_class / "processed" / f for f in ("training.pt", "test.pt")]
    paths = [root / f for f in spec.files] + legacy
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths if p.is_file())


def _read(name: str, root: Path, download: bool):
    """(train images, train labels, test images, test labels, class names) via the torchvision class."""
    spec = _SPECS[name]
    try:
        import numpy as np
        import torch
        import torchvision.datasets
    except ImportError as err:
        raise NasFlexError(f"dataset {name!r} needs torchvision: pip install 'nas_flex[data]' ({err})") from err
    cls = getattr(torchvision.datasets, spec.tv_class)
    out: list[Any] = []
    for split in ("train", "test"):
        kwargs = {"split": split} if spec.tv_class == "SVHN" else {"train": split == "train"}
        try:
            ds = cls(str(root), download=download, **kwargs)
        except RuntimeError as err:
            if download:
                raise DatasetNotFoundError(f"downloading {spec.title} into {root} failed ({err}); get it from "
                                           f"{spec.source} and {spec.place}") from err
            raise DatasetNotFoundError(
                f"{spec.title} under {root} failed torchvision's check ({err}): the files are there but do not match "
                f"the official md5 checksums (a partial or corrupted download?); delete them and pass download=True, "
                f"or get them again from {spec.source}"
            ) from err
        except OSError as err:  # urllib errors are OSErrors
            raise DatasetNotFoundError(f"{spec.title}: reading or downloading into {root} failed ({err}); get it "
                                       f"from {spec.source} and {spec.place}") from err
        data = ds.data if isinstance(ds.data, torch.Tensor) else torch.from_numpy(ds.data)
        if spec.layout == "NHWC":
            data = data.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W), a view
        elif spec.layout == "NHW":
            data = data.unsqueeze(1)  # (N, H, W) -> (N, 1, H, W)
        labels = getattr(ds, "targets", None)
        labels = getattr(ds, "labels", None) if labels is None else labels
        out += [data, torch.as_tensor(np.asarray(labels), dtype=torch.long)]
    classes = tuple(getattr(ds, "classes", None) or (str(c) for c in range(spec.num_classes)))
    return (*out, classes)


@functools.lru_cache(maxsize=2)
def _read_cached(name: str, root: Path, signature: tuple) -> tuple:
    return _read(name, root, download=False)


def build_torchvision(name: str, *, root: Any, image_size: int | None, seed: int, download: bool,
                      val_fraction: float | None, test_fraction: float | None = None, **_: Any) -> DatasetSplits:
    """A torchvision dataset's train split, and its test split (or a held-out ``val_fraction`` of train) as val;
    with ``test_fraction`` (which needs ``val_fraction``) the official test split is the test split."""
    spec = _SPECS[name]
    if val_fraction is not None:
        val_fraction = check_fraction(val_fraction, key="val_fraction", name=name)
    if check_test_fraction(test_fraction, name=name) is not None and val_fraction is None:
        raise HyperparameterError(
            f"dataset {name!r}: `test_fraction` makes the official test split the test split, so validation must come "
            f"from the training split: set data_options val_fraction (e.g. 0.1) too, or leave test_fraction unset")
    path = _check_files(name, root, download)  # before anything heavy
    if download:
        train_x, train_y, test_x, test_y, classes = _read(name, path, download=True)
    else:
        if spec.layout == "NHW":
            _gunzip_idx(path, spec)
        train_x, train_y, test_x, test_y, classes = _read_cached(name, path, _signature(path, spec))

    import torch

    from nas_flex.data.tensors import ByteImageDataset, rng, stratified_split

    test = None
    if test_fraction is not None:  # the official test split, untouched by the validation split
        test = ByteImageDataset(test_x, test_y, spec.mean, spec.std, image_size)
    if val_fraction is not None:
        tr, va = stratified_split(train_y.numpy(), val_fraction, rng(seed, 0))
        tr, va = torch.from_numpy(tr), torch.from_numpy(va)
        test_x, test_y, train_x, train_y = train_x[va], train_y[va], train_x[tr], train_y[tr]
    train = ByteImageDataset(train_x, train_y, spec.mean, spec.std, image_size)
    val = ByteImageDataset(test_x, test_y, spec.mean, spec.std, image_size)
    c, h, w = train_x.shape[1:]
    shape = (c, image_size, image_size) if image_size else (c, h, w)
    return DatasetSplits(name=name, kind="image", train=train, val=val, num_classes=spec.num_classes,
                         input_shape=shape, classes=classes, mean=spec.mean, std=spec.std,
                         options={"val_fraction": val_fraction, **({} if test is None else {"test_fraction":
                                                                                            test_fraction})},
                         test=test)


def clear_cache() -> None:
    """Forget the datasets read so far."""
    _read_cached.cache_clear()
