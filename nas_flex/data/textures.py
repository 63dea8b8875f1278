"""``textures``: crops of three texture photographs shipped with scikit-image (``skimage.data.brick()``, ``grass()``,
``gravel()``; 512x512 grayscale each, no download), one class each.

No leakage between splits: each photograph is cut into a grid of square cells whose side is the largest crop
(``ceil(image_size * max(zooms))``); a seeded ``val_fraction`` of each photograph's cells (at least one) is kept
for validation and the rest for training, and every crop lies inside one cell. So no pixel of a photograph is seen
by both splits (``meta["box"]`` records each crop's top, left and side in the photograph's pixels).

With ``test_fraction`` a seeded ``test_fraction`` of each photograph's cells (at least one) is set aside first for a
test split of ``val_per_class`` crops per class, and the validation cells are drawn from the rest; without it the
splits are exactly what they were before test splits existed.

A crop of side ``round(image_size * zoom)`` (zoom drawn from ``zooms``) is resized to ``image_size`` (bilinear,
antialiased), then standardised on its own to zero mean and unit std, so that the photographs' different brightness
and contrast do not give the class away: what is left to learn is texture, whose scale the zooms vary.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from nas_flex.data.base import DatasetSplits, check_count, check_fraction, check_test_fraction
from nas_flex.data.tensors import ArrayDataset, as_meta, resize, rng
from nas_flex.errors import HyperparameterError

__all__ = ["build_textures", "load_textures", "cell_grid", "CLASSES", "DEFAULT_SIZE", "clear_cache"]

CLASSES = ("brick", "grass", "gravel")
DEFAULT_SIZE = 32
_CELLS, _TRAIN_DRAW, _VAL_DRAW, _TEST_DRAW = 0, 1, 2, 3


@functools.lru_cache(maxsize=1)
def load_textures() -> tuple[np.ndarray, ...]:
    """The three photographs, float32 (H, W) in [0, 1], in ``CLASSES`` order."""
    import skimage.data

    return tuple(getattr(skimage.data, name)().astype(np.float32) / 255.0 for name in CLASSES)


def cell_grid(shape: tuple[int, int], cell: int) -> list[tuple[int, int]]:
    """Top-left corners of the ``cell`` x ``cell`` cells that tile an image of ``shape`` from its top-left."""
    return [(r * cell, c * cell) for r in range(shape[0] // cell) for c in range(shape[1] // cell)]


def _crops(image: np.ndarray, cells: list[tuple[int, int]], cell: int, n: int, size: int,
           zooms: tuple[float, ...], generator: np.random.Generator) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """``n`` crops from the given cells: (n, 1, size, size) standardised, the boxes (n, 3) and the zooms (n,)."""
    which = generator.integers(0, len(cells), size=n)
    zoom = np.asarray(zooms)[generator.integers(0, len(zooms), size=n)]
    sides = np.rint(size * zoom).astype(np.int64)
    offsets = generator.integers(0, cell - sides[:, None] + 1, size=(n, 2))  # inside the cell
    corners = np.asarray(cells)[which] + offsets  # (n, 2): top, left in the photograph
    out = torch.empty(n, 1, size, size)
    for side in np.unique(sides):
        idx = np.flatnonzero(sides == side)
        patches = np.stack([image[t : t + side, l : l + side] for t, l in corners[idx]])  # (k, side, side)
        out[idx] = resize(torch.from_numpy(patches)[:, None], size)  # (k, side, side) -> (k, 1, size, size)
    flat = out.flatten(1)  # standardise each crop on its own
    out = ((flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True).clamp_min(1e-6)).view_as(out)
    return out, np.concatenate([corners, sides[:, None]], 1), zoom


def _cell_split(order: np.ndarray, val_fraction: float, test_fraction: float | None) -> list[np.ndarray]:
    """[train, val(, test)] cell indices: ``order``'s last ``test_fraction`` (at least one) for test, then its first
    ``val_fraction`` of the rest (at least one) for validation; at least one cell is left for training."""
    parts = []
    if test_fraction is not None:
        n_test = max(1, round(len(order) * test_fraction))
        order, parts = order[: len(order) - n_test], [order[len(order) - n_test:]]
    n_val = min(len(order) - 1, max(1, round(len(order) * val_fraction)))
    return [order[n_val:], order[:n_val], *parts]


@functools.lru_cache(maxsize=8)
def _texture_arrays(size: int, seed: int, zooms: tuple[float, ...], n_train: int, n_val: int, val_fraction: float,
                    test_fraction: float | None = None):
    cell = math.ceil(size * max(zooms))
    splits: list[list[Any]] = [[], []] if test_fraction is None else [[], [], []]
    draws = ((n_train, _TRAIN_DRAW), (n_val, _VAL_DRAW), (n_val, _TEST_DRAW))
    for label, image in enumerate(load_textures()):
        cells = cell_grid(image.shape, cell)
        order = rng(seed, _CELLS, label).permutation(len(cells))
        chosen_cells = [[cells[i] for i in part] for part in _cell_split(order, val_fraction, test_fraction)]
        for part, chosen, (n, stream) in zip(splits, chosen_cells, draws):
            x, boxes, zoom = _crops(image, chosen, cell, n, size, zooms, rng(seed, stream, label))
            part.append((x, np.full(n, label), boxes, zoom))
    out = []
    for part in splits:
        # one entry per class, interleaved (brick, grass, gravel, brick, ...) so that any prefix of a split, such
        # as a trial's val_subset, is balanced
        xs, ys, boxes, zoom = zip(*part)
        x = torch.stack(xs, 1).flatten(0, 1)  # K x (n, 1, S, S) -> (n, K, 1, S, S) -> (n * K, 1, S, S)
        y, boxes, zoom = (np.stack(v, 1).reshape(len(x), *np.shape(v[0])[1:]) for v in (ys, boxes, zoom))
        out.append((x, torch.from_numpy(y.astype(np.int64)), {"box": as_meta(boxes), "zoom": as_meta(zoom)}))
    return out


def build_textures(name: str, *, image_size: int | None, seed: int, zooms: Sequence[float], train_per_class: int,
                   val_per_class: int, val_fraction: float, test_fraction: float | None = None,
                   **_: Any) -> DatasetSplits:
    """``textures``: ``train_per_class`` and ``val_per_class`` crops of each photograph, (1, image_size, image_size),
    image_size 32 by default, zooms 1, 1.5, 2 and 3 (a crop of ``image_size * zoom`` photograph pixels); with
    ``test_fraction`` also ``val_per_class`` test crops from cells of their own."""
    ok = (isinstance(zooms, Sequence) and not isinstance(zooms, str) and len(zooms) > 0
          and all(isinstance(z, (int, float)) and not isinstance(z, bool) and z > 0 for z in zooms))
    if not ok:
        raise HyperparameterError(f"`zooms` must be a non-empty sequence of numbers > 0, but got zooms={zooms!r}")
    zooms = tuple(float(z) for z in zooms)
    n_train = check_count(train_per_class, key="train_per_class", name=name)
    n_val = check_count(val_per_class, key="val_per_class", name=name)
    val_fraction = check_fraction(val_fraction, key="val_fraction", name=name)
    test_fraction = check_test_fraction(test_fraction, name=name)
    size = image_size or DEFAULT_SIZE
    cell = math.ceil(size * max(zooms))
    smallest = min(img.shape[0] for img in load_textures())
    if len(cell_grid((smallest, smallest), cell)) < 2:  # a square grid of 2 or more cells has 4: room for a test split
        raise HyperparameterError(
            f"`image_size * max(zooms) <= {smallest // 2}` must hold (the photographs are {smallest} px: at least "
            f"two disjoint cells are needed, one for each split), but got image_size={size} and zooms={zooms}"
        )
    (xt, yt, mt), (xv, yv, mv), *test = _texture_arrays(size, seed, zooms, n_train, n_val, val_fraction, test_fraction)
    options = {"zooms": list(zooms), "train_per_class": n_train, "val_per_class": n_val, "val_fraction": val_fraction}
    if test_fraction is not None:
        options["test_fraction"] = test_fraction
    return DatasetSplits(name=name, kind="image", train=ArrayDataset(xt, yt, **mt), val=ArrayDataset(xv, yv, **mv),
                         num_classes=len(CLASSES), input_shape=(1, size, size), classes=CLASSES, mean=None, std=None,
                         options=options, test=ArrayDataset(test[0][0], test[0][1], **test[0][2]) if test else None)


def clear_cache() -> None:
    """Forget the crops built so far (the photographs too)."""
    _texture_arrays.cache_clear()
    load_textures.cache_clear()
