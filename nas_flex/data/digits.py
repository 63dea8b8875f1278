"""Built-in datasets made from scikit-learn's 8x8 digits (``sklearn.datasets.load_digits``: 1797 images, 10 classes,
shipped with scikit-learn, so no download): ``digits``, ``digits-multiscale`` / ``digits-scaleshift`` and
``digits-seq`` / ``digits-seq-permuted``.

All of them split the 1797 digits the same way for a given seed (stratified, ``val_fraction`` of each class to
validation), so no digit is in both splits, and pixels (0..16 in scikit-learn) are scaled to [0, 1] and then
normalised with the mean and std of the training split.

With ``test_fraction`` a stratified test set (``test_fraction`` of each class) is carved from the 1797 digits first,
with its own random stream, and the rest is split into train and validation as above (``val_fraction`` of what is
left); the synthetic datasets paste only test digits into the test split (at the validation scales), so no digit is
in two splits. Without it (None) every split is exactly what it was before test splits existed.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nas_flex.data.base import DatasetSplits, check_count, check_fraction, check_range, check_test_fraction
from nas_flex.data.tensors import ArrayDataset, as_meta, channel_stats, normalize, resize, rng, stratified_split
from nas_flex.errors import HyperparameterError

__all__ = ["build_digits", "build_multiscale", "build_sequence", "load_digits", "digit_split", "digit_indices",
           "sequence_permutation", "NATIVE_SIZE", "DEFAULT_SIZE", "DEFAULT_CANVAS", "clear_cache"]

NATIVE_SIZE = 8  # side of a scikit-learn digit; digits-multiscale scales are multiples of it
DEFAULT_SIZE = 16  # digits: 2x upsampled, cheap enough for searches on a CPU
DEFAULT_CANVAS = 32  # digits-multiscale
CLASSES = tuple(str(d) for d in range(10))

# independent random streams under one seed
_SPLIT, _TRAIN_DRAW, _VAL_DRAW, _PERMUTATION, _TEST_SPLIT, _TEST_DRAW = 0, 1, 2, 3, 4, 5


@functools.lru_cache(maxsize=1)
def load_digits() -> tuple[torch.Tensor, np.ndarray]:
    """All 1797 digits as float32 (N, 1, 8, 8) in [0, 1] and their labels (N,) int64.

    Reads the file ``sklearn.datasets.load_digits`` reads (``sklearn/datasets/data/digits.csv.gz``: 64 pixels and
    the label per row) the way it does, without importing scikit-learn, which takes seconds; falls back to
    ``load_digits`` if the file has moved. A test checks both give the same arrays.
    """
    spec = importlib.util.find_spec("sklearn")  # finds the package without running its __init__
    path = Path(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz") if spec else None
    if path is not None and path.is_file():
        table = np.loadtxt(path, delimiter=",")  # (1797, 65)
        pixels, labels = table[:, :-1].reshape(-1, 8, 8), table[:, -1]  # (N, 64) -> (N, 8, 8)
    else:
        from sklearn.datasets import load_digits as sk_load_digits

        bunch = sk_load_digits()
        pixels, labels = bunch.images, bunch.target
    images = torch.from_numpy((pixels / 16.0).astype(np.float32))[:, None]  # (N, 8, 8) -> (N, 1, 8, 8)
    return images, labels.astype(np.int64)


@functools.lru_cache(maxsize=16)
def digit_split(seed: int, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices into ``load_digits()`` of the train and validation digits (disjoint, stratified, sorted)."""
    _, labels = load_digits()
    return stratified_split(labels, val_fraction, rng(seed, _SPLIT))


@functools.lru_cache(maxsize=16)
def digit_indices(seed: int, val_fraction: float, test_fraction: float | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Indices into ``load_digits()`` of the train, validation and test digits (disjoint, stratified, sorted).

    ``test_fraction`` None: no test digits (None) and train / validation exactly as ``digit_split``. Otherwise the
    test digits are drawn first (stream ``_TEST_SPLIT``), and ``digit_split``'s stream splits the rest.
    """
    if test_fraction is None:
        return (*digit_split(seed, val_fraction), None)
    _, labels = load_digits()
    rest, test = stratified_split(labels, test_fraction, rng(seed, _TEST_SPLIT))
    train, val = stratified_split(labels[rest], val_fraction, rng(seed, _SPLIT))  # positions in `rest`, sorted
    return rest[train], rest[val], test


def sequence_permutation(length: int, permutation_seed: int) -> torch.Tensor:
    """The fixed permutation of ``digits-seq-permuted``: output position i holds input position ``perm[i]``."""
    return torch.from_numpy(rng(permutation_seed, _PERMUTATION).permutation(length))


def _splits(name: str, kind: str, train: ArrayDataset, val: ArrayDataset, mean: tuple[float, ...],
            std: tuple[float, ...], options: dict[str, Any], test: ArrayDataset | None = None) -> DatasetSplits:
    return DatasetSplits(name=name, kind=kind, train=train, val=val, num_classes=10,
                         input_shape=tuple(train.inputs.shape[1:]), classes=CLASSES, mean=mean, std=std,
                         options=options, test=test)


@functools.lru_cache(maxsize=16)
def _digit_arrays(size: int, seed: int, val_fraction: float, test_fraction: float | None = None):
    """(train, val, test or None) as (inputs, labels, digit indices) each, and the training mean and std."""
    images, labels = load_digits()
    tr, va, te = digit_indices(seed, val_fraction, test_fraction)
    x = resize(images, size)  # (N, 1, 8, 8) -> (N, 1, size, size)
    mean, std = channel_stats(x[tr])
    x = normalize(x, mean, std)
    y = torch.from_numpy(labels)
    test = None if te is None else (x[te], y[te], te)
    return (x[tr], y[tr], tr), (x[va], y[va], va), test, mean, std


def _options(val_fraction: float, test_fraction: float | None) -> dict[str, Any]:
    """The split options as used: ``test_fraction`` only when a test split was made (so the rest stay as before)."""
    return {"val_fraction": val_fraction, **({} if test_fraction is None else {"test_fraction": test_fraction})}


def build_digits(name: str, *, image_size: int | None, seed: int, val_fraction: float,
                 test_fraction: float | None = None, **_: Any) -> DatasetSplits:
    """``digits``: the 8x8 digits upsampled (bilinear) to ``image_size`` (default 16)."""
    val_fraction = check_fraction(val_fraction, key="val_fraction", name=name)
    test_fraction = check_test_fraction(test_fraction, name=name)
    size = image_size or DEFAULT_SIZE
    *parts, mean, std = _digit_arrays(size, seed, val_fraction, test_fraction)
    train, val, test = (None if p is None else ArrayDataset(p[0], p[1], source_index=torch.from_numpy(p[2]))
                        for p in parts)
    return _splits(name, "image", train, val, mean, std, _options(val_fraction, test_fraction), test)


def build_sequence(name: str, *, image_size: int | None, seed: int, val_fraction: float,
                   permutation_seed: int | None = None, test_fraction: float | None = None,
                   **_: Any) -> DatasetSplits:
    """``digits-seq``: each digit's pixels in row-major order, (1, 64) at the native 8x8 or (1, image_size**2).

    ``digits-seq-permuted``: the same sequences with one fixed permutation of the positions,
    ``sequence_permutation(L, permutation_seed)`` (exposed as ``.permutation`` on both splits). The permutation
    depends on ``permutation_seed`` only, not on ``seed``, so every trial sees the same task.
    """
    val_fraction = check_fraction(val_fraction, key="val_fraction", name=name)
    test_fraction = check_test_fraction(test_fraction, name=name)
    size = image_size or NATIVE_SIZE
    *parts, mean, std = _digit_arrays(size, seed, val_fraction, test_fraction)
    options: dict[str, Any] = {"val_fraction": val_fraction}
    perm = None
    if name == "digits-seq-permuted":
        permutation_seed = check_count(permutation_seed, key="permutation_seed", name=name, minimum=0)
        perm = sequence_permutation(size * size, permutation_seed)
        options["permutation_seed"] = permutation_seed
    options.update(_options(val_fraction, test_fraction))
    splits = []
    for part in parts:
        if part is None:
            splits.append(None)
            continue
        x = part[0].flatten(2)  # (N, 1, H, W) -> (N, 1, H * W)
        ds = ArrayDataset(x if perm is None else x[..., perm], part[1], source_index=torch.from_numpy(part[2]))
        ds.permutation = perm
        splits.append(ds)
    return _splits(name, "sequence", splits[0], splits[1], mean, std, options, splits[2])


def _draw_placements(n: int, scales: tuple[float, float], canvas: int, generator: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Side (px) and top-left corner of each pasted digit: scale log-uniform in ``scales``, position uniform."""
    lo, hi = scales
    scale = np.exp(generator.uniform(math.log(lo), math.log(hi), size=n))
    sides = np.maximum(2, np.rint(NATIVE_SIZE * scale)).astype(np.int64)
    corners = generator.integers(0, canvas - sides + 1, size=(2, n)).T  # (n, 2): top, left
    return sides, corners[:, 0], corners[:, 1]


def _paste(digits: torch.Tensor, sides: np.ndarray, tops: np.ndarray, lefts: np.ndarray, canvas: int) -> torch.Tensor:
    """(n, 1, 8, 8) digits in [0, 1] -> (n, 1, canvas, canvas), each resized to its side and pasted on black."""
    out = torch.zeros(len(digits), 1, canvas, canvas)
    for side in np.unique(sides):
        idx = np.flatnonzero(sides == side)
        patches = resize(digits[idx], int(side)).clamp_(0.0, 1.0)  # (k, 1, side, side)
        for patch, i in zip(patches, idx):
            out[i, :, tops[i] : tops[i] + side, lefts[i] : lefts[i] + side] = patch
    return out


@functools.lru_cache(maxsize=8)
def _multiscale_arrays(canvas: int, seed: int, val_fraction: float, scales: tuple[float, float],
                       val_scales: tuple[float, float], copies: int, test_fraction: float | None = None):
    """[train, val(, test)] as (inputs, labels, meta) each, and the training mean and std."""
    images, labels = load_digits()
    tr, va, te = digit_indices(seed, val_fraction, test_fraction)
    draws = [(tr, _TRAIN_DRAW, scales), (va, _VAL_DRAW, val_scales)]
    if te is not None:  # scored where validation selects: at the validation scales
        draws.append((te, _TEST_DRAW, val_scales))
    parts = []
    for indices, rng_stream, rng_scales in draws:
        source = np.tile(indices, copies)
        sides, tops, lefts = _draw_placements(len(source), rng_scales, canvas, rng(seed, rng_stream))
        x = _paste(images[source], sides, tops, lefts, canvas)
        meta = {"source_index": as_meta(source), "scale": as_meta(sides / NATIVE_SIZE),
                "box": as_meta(np.stack([tops, lefts, sides], 1))}
        parts.append((x, torch.from_numpy(labels[source]), meta))
    mean, std = channel_stats(parts[0][0])  # training statistics for both splits, also under a scale shift
    return [(normalize(x, mean, std), y, meta) for x, y, meta in parts], mean, std


def build_multiscale(name: str, *, image_size: int | None, seed: int, scales: Any, val_scales: Any, copies: int,
                     val_fraction: float, test_fraction: float | None = None, **_: Any) -> DatasetSplits:
    """``digits-multiscale``: each digit resized to ``8 * s`` px (s log-uniform in ``scales``; sides rounded to whole
    pixels, at least 2) and pasted at a uniformly random position on a black ``image_size`` canvas (default 32).

    ``val_scales`` (default: ``scales``) sets the validation scales, for a scale-shift test; ``digits-scaleshift``
    is this with ``scales=(1, 1.5)``, ``val_scales=(2, 3)``. ``copies`` pastes every digit that many times (each at
    its own scale and position). Each split's ``meta`` holds ``scale`` (side / 8), ``box`` (top, left, side) and
    ``source_index`` per sample. A test split (``test_fraction``) is pasted from the test digits at ``val_scales``.
    """
    val_fraction = check_fraction(val_fraction, key="val_fraction", name=name)
    test_fraction = check_test_fraction(test_fraction, name=name)
    scales = check_range(scales, key="scales", name=name)
    val_scales = scales if val_scales is None else check_range(val_scales, key="val_scales", name=name)
    copies = check_count(copies, key="copies", name=name)
    canvas = image_size or DEFAULT_CANVAS
    largest = round(NATIVE_SIZE * max(scales[1], val_scales[1]))
    if largest > canvas:
        raise HyperparameterError(
            f"`8 * max scale <= image_size` must hold (a digit must fit on the canvas), but got scales={scales}, "
            f"val_scales={val_scales} (largest side {largest} px) and image_size={canvas}; lower the scales or raise "
            f"image_size to at least {largest}"
        )
    parts, mean, std = _multiscale_arrays(canvas, seed, val_fraction, scales, val_scales, copies, test_fraction)
    train, val, *test = (ArrayDataset(x, y, **meta) for x, y, meta in parts)
    options = {"scales": list(scales), "val_scales": list(val_scales), "copies": copies,
               **_options(val_fraction, test_fraction)}
    return _splits(name, "image", train, val, mean, std, options, test[0] if test else None)


def clear_cache() -> None:
    """Forget the arrays built so far."""
    for cached in (load_digits, digit_split, digit_indices, _digit_arrays, _multiscale_arrays):
        cached.cache_clear()
