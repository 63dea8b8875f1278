"""A user's own data on disk: ``imagefolder`` (images in class subfolders, torchvision's ``ImageFolder`` layout)
and ``npz`` (NumPy arrays).

``imagefolder``: ``data_root`` is a folder whose subfolders are the classes (sorted names; images found at any depth
below each, with torchvision's extensions), or one holding ``train/`` and ``val/`` in that layout (the validation
classes must be among the training ones). Without ``val/`` (``train/`` alone, or the class folders themselves), a
seeded, stratified ``val_fraction`` of the images is held out. Images are read with PIL and held in memory as
uint8; ``grayscale`` None keeps one channel when every image is single-channel and reads RGB otherwise (True /
False force it); ``image_size`` resizes every image to a square of that side (bilinear, antialiased), and without
it all images must have the same size.

``npz``: ``data_root`` is a ``.npz`` file with ``x`` (N, C, H, W) or (N, H, W), ``y`` (N,) integer labels
0..K-1, and optionally ``x_val`` and ``y_val`` (else a seeded ``val_fraction`` split). uint8 pixels are scaled to
[0, 1]; float inputs are taken as they are. Loaded with ``allow_pickle=False``: nothing in the file is executed.

A test split (``test_fraction`` set; none otherwise): ``imagefolder`` reads ``test/`` (beside ``train/``) when there is
one, ``npz`` the arrays ``x_test`` / ``y_test``; else a seeded, stratified ``test_fraction`` of the training images is
carved off first, before any validation split. Its classes must be among the training ones.

With ``normalize`` (default) inputs are standardised with the training split's per-channel mean and std. Every
problem with the files (a missing path, no images, one class, an unreadable image, mixed sizes without
``image_size``, bad arrays) is a one-line ``DatasetError`` / ``DatasetNotFoundError`` naming the path, raised while
the dataset is built, which a search does in its driver before any trial starts.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from nas_flex.data.base import (
    DatasetError,
    DatasetNotFoundError,
    DatasetSplits,
    check_fraction,
    check_test_fraction,
)

__all__ = ["IMG_EXTENSIONS", "build_imagefolder", "build_npz", "clear_cache"]

#: torchvision's ``ImageFolder`` extensions (compared lower-case)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_GRAY_MODES = {"1", "L", "I", "I;16", "F"}


# ---------------------------------------------------------------------------------------------------- imagefolder
def _root_dir(name: str, root: Any) -> Path:
    if root is None:
        raise DatasetNotFoundError(f"dataset {name!r} needs `data_root`: a folder of class subfolders (or with train/ "
                                   "and val/ inside)")
    path = Path(root).expanduser()
    if not path.exists():
        raise DatasetNotFoundError(f"dataset {name!r}: data_root {str(path)!r} does not exist")
    if not path.is_dir():
        raise DatasetNotFoundError(f"dataset {name!r}: data_root {str(path)!r} is not a folder")
    return path


def _scan(folder: Path, classes: list[str] | None = None) -> tuple[list[str], list[tuple[Path, int]]]:
    """(class names, [(image path, label)]) of a folder of class subfolders; ``classes`` fixes the label order."""
    found = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    names = classes if classes is not None else found
    index = {c: i for i, c in enumerate(names)}
    samples: list[tuple[Path, int]] = []
    for cls in found:
        if cls not in index:
            raise DatasetError(f"imagefolder: class folder {str(folder / cls)!r} is not a class of the training "
                               f"folder (classes: {', '.join(names)})")
        for dirpath, dirnames, filenames in os.walk(folder / cls, followlinks=False):
            dirnames.sort()
            for fname in sorted(filenames):
                if fname.lower().endswith(IMG_EXTENSIONS) and not fname.startswith("."):
                    samples.append((Path(dirpath) / fname, index[cls]))
    if not samples:
        raise DatasetError(f"imagefolder: no images ({', '.join(IMG_EXTENSIONS)}) in class subfolders of "
                           f"{str(folder)!r}")
    return names, samples


def _open(path: Path) -> Any:
    from PIL import Image

    try:
        img = Image.open(path)
        img.load()
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetError(f"imagefolder: cannot read image {str(path)!r} ({type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else 'unreadable'})") from None
    return img


def _pixels(samples: list[tuple[Path, int]], image_size: int | None, grayscale: bool | None, where: Path):
    """uint8 (N, C, H, W) pixels and int64 labels of ``samples``, all converted to one mode and size."""
    import numpy as np
    import torch
    from PIL import Image

    images = [_open(p) for p, _ in samples]
    gray = all(im.mode in _GRAY_MODES for im in images) if grayscale is None else grayscale
    if image_size is None:
        first = images[0].size
        for img, (path, _) in zip(images, samples):
            if img.size != first:
                raise DatasetError(
                    f"imagefolder: images in {str(where)!r} have different sizes ({first[0]}x{first[1]} in "
                    f"{samples[0][0].name}, {img.size[0]}x{img.size[1]} in {path.name}); pass image_size to resize them"
                )
    arrays = []
    for img in images:
        img = img.convert("L" if gray else "RGB")
        if image_size is not None and img.size != (image_size, image_size):
            img = img.resize((image_size, image_size), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
        arrays.append(arr[None] if gray else arr.transpose(2, 0, 1))
    x = torch.from_numpy(np.stack(arrays))
    y = torch.tensor([label for _, label in samples], dtype=torch.long)
    return x, y


def _signature(folder: Path) -> tuple:
    """Paths, sizes and modification times of the folder's files: the cache key changes when the files do."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames.sort()
        for f in sorted(filenames):
            st = (Path(dirpath) / f).stat()
            out.append((dirpath, f, st.st_size, st.st_mtime_ns))
    return tuple(out)


@functools.lru_cache(maxsize=2)
def _read_folder(root: Path, image_size: int | None, grayscale: bool | None, signature: tuple,
                 with_test: bool = False) -> tuple:
    """(classes, train x, train y, val x or None, val y or None[, test x or None, test y or None]) of an image
    folder; the test pair only ``with_test`` (read from ``test/`` beside ``train/`` when there is one)."""
    train_dir, val_dir = root / "train", root / "val"
    if train_dir.is_dir() and val_dir.is_dir():
        classes, train = _scan(train_dir)
        _, val = _scan(val_dir, classes)
        _check_classes(classes, train, train_dir)
        tx, ty = _pixels(train, image_size, grayscale, root)
        vx, vy = _other_split(val_dir, classes, tx, train_dir, image_size, grayscale)
        out = (tuple(classes), tx, ty, vx, vy)
    else:
        folder = train_dir if train_dir.is_dir() else root  # train/ alone: its images, split
        classes, samples = _scan(folder)
        _check_classes(classes, samples, folder)
        x, y = _pixels(samples, image_size, grayscale, folder)
        out = (tuple(classes), x, y, None, None)
    if not with_test:
        return out
    test_dir = root / "test"
    if train_dir.is_dir() and test_dir.is_dir():
        return (*out, *_other_split(test_dir, list(out[0]), out[1], train_dir, image_size, grayscale))
    return (*out, None, None)


def _other_split(folder: Path, classes: list[str], tx: Any, train_dir: Path, image_size: int | None,
                 grayscale: bool | None) -> tuple[Any, Any]:
    """Pixels and labels of ``val/`` or ``test/``: the training classes, channels and image size."""
    _, samples = _scan(folder, classes)
    x, y = _pixels(samples, image_size, gray_of(tx) if grayscale is None else grayscale, folder)
    if x.shape[1:] != tx.shape[1:]:
        raise DatasetError(f"imagefolder: images in {str(folder)!r} are {tuple(x.shape[2:])} but those in "
                           f"{str(train_dir)!r} are {tuple(tx.shape[2:])}; pass image_size to resize them")
    return x, y


def gray_of(x: Any) -> bool:
    """Whether (N, C, H, W) pixels have one channel."""
    return int(x.shape[1]) == 1


def _check_classes(classes: list[str], samples: list[tuple[Path, int]], folder: Path) -> None:
    used = sorted({classes[label] for _, label in samples})
    if len(used) < 2:
        raise DatasetError(f"imagefolder: {str(folder)!r} has images of one class only ({', '.join(used)}); a "
                           "classifier needs at least 2 class subfolders with images")


def build_imagefolder(name: str, *, root: Any, image_size: int | None, seed: int, download: bool,
                      val_fraction: float, grayscale: bool | None, normalize: bool,
                      test_fraction: float | None = None, **_: Any) -> DatasetSplits:
    """Images in class subfolders of ``root`` (or of its ``train/`` and ``val/``, and ``test/``), read with PIL."""
    val_fraction = check_fraction(val_fraction, key="val_fraction", name=name)
    test_fraction = check_test_fraction(test_fraction, name=name)
    _check_flag(grayscale, "grayscale", name, none_ok=True)
    _check_flag(normalize, "normalize", name)
    path = _root_dir(name, root).resolve()
    if test_fraction is None:  # exactly as before test splits existed
        classes, x, y, vx, vy = _read_folder(path, image_size, grayscale, _signature(path))
        test = None
    else:
        classes, x, y, vx, vy, *test = _read_folder(path, image_size, grayscale, _signature(path), True)
    options = {"val_fraction": val_fraction, "grayscale": grayscale, "normalize": normalize}
    return _splits(name, classes, x, y, vx, vy, seed=seed, val_fraction=val_fraction, normalize=normalize,
                   options=_with_test(options, test_fraction), test=test, test_fraction=test_fraction)


def _with_test(options: dict[str, Any], test_fraction: float | None) -> dict[str, Any]:
    """The options as used: ``test_fraction`` only when a test split was asked for."""
    return options if test_fraction is None else {**options, "test_fraction": test_fraction}


def _check_flag(value: Any, key: str, name: str, *, none_ok: bool = False) -> None:
    from nas_flex.errors import HyperparameterError

    if not (isinstance(value, bool) or (none_ok and value is None)):
        expected = "None, True or False" if none_ok else "True or False"
        raise HyperparameterError(f"`{key}` must be {expected}, but got {key}={value!r} for dataset {name!r}")


# ------------------------------------------------------------------------------------------------------- splits
def _hold_out(x: Any, y: Any, fraction: float, generator: Any, what: str) -> tuple[Any, Any, Any, Any]:
    """(rest x, rest y, held-out x, held-out y): a seeded, stratified ``fraction`` of each class held out."""
    import torch

    from nas_flex.data.tensors import stratified_split

    rest, held = (torch.from_numpy(i) for i in stratified_split(y.numpy(), fraction, generator))
    if not len(held) or not len(rest):
        raise DatasetError(f"{what}={fraction} of {len(y)} images leaves an empty split; use a fraction that keeps "
                           "at least one image on each side")
    return x[rest], y[rest], x[held], y[held]


def _splits(name: str, classes: tuple[str, ...], x: Any, y: Any, vx: Any, vy: Any, *, seed: int, val_fraction: float,
            normalize: bool, options: dict[str, Any], test: Any = None,
            test_fraction: float | None = None) -> DatasetSplits:
    """Train / val (/ test) ``DatasetSplits`` of pixels in [0, 255] (uint8, kept so in memory and made float per
    batch) or [0, 1] (float); a seeded, stratified split when there is no val, and likewise a test split carved off
    first when ``test_fraction`` is set and ``test`` (the given test pixels and labels) is (None, None)."""
    import torch

    from nas_flex.data.tensors import ArrayDataset, ByteImageDataset, rng, stratified_split
    from nas_flex.data.tensors import normalize as standardise

    tx, ty = test if test else (None, None)
    if test_fraction is not None and tx is None:  # its own stream, before the validation split
        x, y, tx, ty = _hold_out(x, y, test_fraction, rng(seed, 2), f"dataset {name!r}: test_fraction")
    if vx is None:
        tr, va = stratified_split(y.numpy(), val_fraction, rng(seed, 0))
        tr, va = torch.from_numpy(tr), torch.from_numpy(va)
        vx, vy, x, y = x[va], y[va], x[tr], y[tr]
    parts = [(x, y), (vx, vy)] + ([(tx, ty)] if tx is not None else [])
    if len({t.dtype for t, _ in parts}) > 1:  # e.g. uint8 x, float x_val: all as floats in [0, 1]
        parts = [(t.float().div_(255.0) if t.dtype == torch.uint8 else t.float(), lab) for t, lab in parts]
    x = parts[0][0]
    c = int(x.shape[1])
    mean, std = _channel_stats(x) if normalize else ((0.0,) * c, (1.0,) * c)
    datasets: list[Any] = []
    for i, (inputs, labels) in enumerate(parts):
        # a seeded order mixing the classes: a train_subset / val_subset prefix holds every class
        order = torch.from_numpy(rng(seed, 1, i).permutation(len(labels)))
        if inputs.dtype == torch.uint8:
            datasets.append(ByteImageDataset(inputs[order], labels[order].clone(), mean, std))
        else:
            datasets.append(ArrayDataset(standardise(inputs[order].float(), mean, std), labels[order].clone()))
    return DatasetSplits(name=name, kind="image", train=datasets[0], val=datasets[1], num_classes=len(classes),
                         input_shape=tuple(int(s) for s in x.shape[1:]), classes=tuple(classes), mean=mean, std=std,
                         options=options, test=datasets[2] if len(datasets) > 2 else None)


def _channel_stats(x: Any, chunk: int = 1024) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of (N, C, H, W) inputs (uint8 scaled to [0, 1]), in chunks (no float copy of all);
    a channel with no spread gets std 1."""
    import torch

    total = torch.zeros(x.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, len(x), chunk):
        part = x[start:start + chunk].double()
        part = part / 255.0 if x.dtype == torch.uint8 else part
        total += part.sum((0, 2, 3))
        squares += part.pow(2).sum((0, 2, 3))
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / n
    var = ((squares - n * mean**2) / max(n - 1, 1)).clamp_min(0.0)
    std = var.sqrt()
    return (tuple(round(float(v), 6) for v in mean),
            tuple(round(float(v), 6) if v > 1e-12 else 1.0 for v in std))


# ------------------------------------------------------------------------------------------------------------ npz
def _npz_arrays(path: Path) -> dict[str, Any]:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in ("x", "y", "x_val", "y_val", "x_test", "y_test") if k in f.files}
    except (OSError, ValueError, EOFError) as err:
        raise DatasetError(f"npz: cannot read {str(path)!r} as a .npz file of plain arrays ({type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else 'unreadable'})") from None


def _npz_images(arr: Any, key: str, path: Path, image_size: int | None) -> Any:
    """(N, C, H, W) float or uint8 tensor from an (N, C, H, W) or (N, H, W) array."""
    import numpy as np
    import torch

    from nas_flex.data.tensors import resize

    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4 or not (np.issubdtype(arr.dtype, np.number) and not np.iscomplexobj(arr)) or len(arr) == 0:
        raise DatasetError(f"npz: array {key!r} in {str(path)!r} must be a non-empty real (N, C, H, W) or (N, H, W) "
                           f"array, but has shape {arr.shape} and dtype {arr.dtype}")
    t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.dtype != torch.uint8:
        t = t.float()
        if not bool(torch.isfinite(t).all()):
            raise DatasetError(f"npz: array {key!r} in {str(path)!r} holds NaN or inf")
    if image_size is not None:
        t = resize(t.float() if t.dtype != torch.uint8 else t.float().div_(255.0), image_size)
    return t


def _npz_labels(arr: Any, key: str, path: Path, n: int) -> Any:
    import numpy as np
    import torch

    if arr.ndim != 1 or len(arr) != n or not np.issubdtype(arr.dtype, np.integer) or (n and arr.min() < 0):
        raise DatasetError(f"npz: {key!r} in {str(path)!r} must be {n} integer labels >= 0 (one per input), but has "
                           f"shape {arr.shape} and dtype {arr.dtype}")
    return torch.from_numpy(arr.astype(np.int64))


def _npz_pair(arrays: dict[str, Any], split: str, path: Path, image_size: int | None, x: Any) -> tuple[Any, Any]:
    """The inputs and labels ``x_<split>``, ``y_<split>`` (shaped like ``x``), or (None, None) when absent."""
    xk, yk = f"x_{split}", f"y_{split}"
    if (xk in arrays) != (yk in arrays):
        raise DatasetError(f"npz: {str(path)!r} has only one of {xk!r} and {yk!r}; give both or neither")
    if xk not in arrays:
        return None, None
    ox = _npz_images(arrays[xk], xk, path, image_size)
    oy = _npz_labels(arrays[yk], yk, path, len(ox))
    if ox.shape[1:] != x.shape[1:]:
        raise DatasetError(f"npz: {xk!r} in {str(path)!r} has inputs of shape {tuple(ox.shape[1:])}, 'x' of "
                           f"{tuple(x.shape[1:])}")
    return ox, oy


@functools.lru_cache(maxsize=2)
def _read_npz(path: Path, image_size: int | None, signature: tuple, with_test: bool = False) -> tuple:
    """(classes, x, y, val x or None, val y or None[, test x or None, test y or None]); the test pair (the arrays
    ``x_test`` / ``y_test``) only ``with_test``."""
    arrays = _npz_arrays(path)
    for key in ("x", "y"):
        if key not in arrays:
            raise DatasetError(f"npz: {str(path)!r} has no array {key!r} (arrays: {', '.join(arrays) or 'none'})")
    x = _npz_images(arrays["x"], "x", path, image_size)
    y = _npz_labels(arrays["y"], "y", path, len(x))
    vx, vy = _npz_pair(arrays, "val", path, image_size, x)
    tx, ty = _npz_pair(arrays, "test", path, image_size, x) if with_test else (None, None)
    num_classes = int(max(int(y.max()), int(vy.max()) if vy is not None else 0)) + 1
    if len(set(y.tolist())) < 2:
        raise DatasetError(f"npz: 'y' in {str(path)!r} holds one class only; a classifier needs at least 2")
    if ty is not None and int(ty.max()) >= num_classes:
        raise DatasetError(f"npz: 'y_test' in {str(path)!r} holds label {int(ty.max())}, which no training or "
                           f"validation example has (labels 0..{num_classes - 1})")
    out = (tuple(str(i) for i in range(num_classes)), x, y, vx, vy)
    return (*out, tx, ty) if with_test else out


def build_npz(name: str, *, root: Any, image_size: int | None, seed: int, download: bool, val_fraction: float,
              normalize: bool, test_fraction: float | None = None, **_: Any) -> DatasetSplits:
    """Arrays ``x``, ``y`` (and optionally ``x_val``, ``y_val``, and ``x_test``, ``y_test``) of the ``.npz`` file
    ``root``."""
    val_fraction = check_fraction(val_fraction, key="val_fraction", name=name)
    test_fraction = check_test_fraction(test_fraction, name=name)
    _check_flag(normalize, "normalize", name)
    if root is None:
        raise DatasetNotFoundError(f"dataset {name!r} needs `data_root`: the path of a .npz file")
    path = Path(root).expanduser().resolve()
    if not path.is_file():
        raise DatasetNotFoundError(f"dataset {name!r}: data_root {str(path)!r} is not a file")
    st = path.stat()
    test = None
    if test_fraction is None:  # exactly as before test splits existed
        classes, x, y, vx, vy = _read_npz(path, image_size, (st.st_size, st.st_mtime_ns))
    else:
        classes, x, y, vx, vy, *test = _read_npz(path, image_size, (st.st_size, st.st_mtime_ns), True)
    return _splits(name, classes, x, y, vx, vy, seed=seed, val_fraction=val_fraction, normalize=normalize,
                   options=_with_test({"val_fraction": val_fraction, "normalize": normalize}, test_fraction),
                   test=test, test_fraction=test_fraction)


def clear_cache() -> None:
    """Forget the folders and files read so far."""
    _read_folder.cache_clear()
    _read_npz.cache_clear()
