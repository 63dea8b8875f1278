"""nas_flex.data: the built-in datasets (shapes, determinism, no leakage, what each one promises) and the torchvision
datasets read back from tiny files written here in their real on-disk formats."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import nas_flex.data as data
from nas_flex.data import DatasetNotFoundError, get_dataset
from nas_flex.data.digits import load_digits
from nas_flex.data.vision import expected_files
from nas_flex.errors import HyperparameterError, NasFlexError, UnknownNameError

ROOT = Path(__file__).resolve().parents[1]

# name -> (input_shape, num_classes, len(train), len(val)) with the defaults
BUILTIN = {
    "digits": ((1, 16, 16), 10, 1438, 359),
    "digits-multiscale": ((1, 32, 32), 10, 1438, 359),
    "digits-scaleshift": ((1, 32, 32), 10, 1438, 359),
    "digits-seq": ((1, 64), 10, 1438, 359),
    "digits-seq-permuted": ((1, 64), 10, 1438, 359),
    "textures": ((1, 32, 32), 3, 768, 192),
}
TORCHVISION = ["cifar10", "cifar100", "mnist", "fashionmnist", "svhn"]
FILES = ["imagefolder", "npz"]  # a user's data on disk (tests/test_data_files.py)


def _stack(split) -> tuple[torch.Tensor, list]:
    items = [split[i] for i in range(len(split))]
    return torch.stack([x for x, _ in items]), [y for _, y in items]


def _pixels(x: torch.Tensor, splits) -> torch.Tensor:
    """Undo the normalisation: (N, C, ...) -> pixels in [0, 1]."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return x * torch.tensor(splits.std).view(shape) + torch.tensor(splits.mean).view(shape)


# ----------------------------------------------------------------------------------------------- the registry


def test_import_is_light():
    code = ("import sys, nas_flex.data as d; d.available_datasets(); d.describe_dataset('textures'); "
            "print(' '.join(sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert not {"torch", "numpy", "torchvision", "sklearn", "skimage"} & set(out.stdout.split())


def test_available_datasets():
    assert data.available_datasets() == data.available() == sorted([*BUILTIN, *TORCHVISION, *FILES])
    assert data.describe_dataset("digits-multiscale")["options"]["scales"] == (1.0, 3.0)


# ----------------------------------------------------------------------------------------------- built-in datasets


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_contract(name):
    shape, num_classes, n_train, n_val = BUILTIN[name]
    s = get_dataset(name)
    assert (s.name, s.input_shape, s.num_classes, len(s.train), len(s.val)) == (name, shape, num_classes, n_train,
                                                                                  n_val)
    assert s.kind == ("sequence" if len(shape) == 2 else "image")
    assert len(s.classes) == num_classes
    json.dumps(dict(s.options))  # the leaderboard can store them
    for split in (s.train, s.val):
        x, y = _stack(split)
        assert x.dtype == torch.float32 and tuple(x.shape[1:]) == shape and torch.isfinite(x).all()
        assert all(type(label) is int for label in y)
        assert set(y) == set(range(num_classes))  # every class in both splits
        # and in a short prefix: run_trial's train_subset / val_subset may take the first examples
        assert set(y[: 5 * num_classes]) == set(range(num_classes))
    x, _ = _stack(s.train)
    if s.mean is None:  # textures: each crop standardised on its own
        assert torch.allclose(x.flatten(1).mean(1), torch.zeros(len(x)), atol=1e-4)
        assert torch.allclose(x.flatten(1).std(1), torch.ones(len(x)), atol=1e-3)
    else:  # normalised with the training split's statistics
        assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-3
    xb, yb = next(iter(DataLoader(s.train, batch_size=5, shuffle=False)))  # the batched fetch path
    assert xb.shape == (5, *shape) and yb.dtype == torch.int64
    assert torch.equal(xb, torch.stack([s.train[i][0] for i in range(5)]))


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_deterministic_by_seed(name):
    a = get_dataset(name, seed=3)
    data.clear_cache()
    b = get_dataset(name, seed=3)
    assert a.train.inputs is not b.train.inputs  # really built twice
    for sa, sb in ((a.train, b.train), (a.val, b.val)):
        assert torch.equal(sa.inputs, sb.inputs) and torch.equal(sa.targets, sb.targets)
    c = get_dataset(name, seed=4)
    assert not torch.equal(a.train.inputs, c.train.inputs)


def test_digits_split_pixels_and_image_size():
    from sklearn import datasets  # the reference: nas_flex reads its data file without importing scikit-learn

    ref = datasets.load_digits()
    s = get_dataset("digits", image_size=8, seed=0)
    tr, va = s.train.meta["source_index"].numpy(), s.val.meta["source_index"].numpy()
    assert not set(tr) & set(va)
    assert sorted([*tr, *va]) == list(range(len(ref.target)))
    counts_val, counts_all = np.bincount(ref.target[va]), np.bincount(ref.target)
    assert np.all(np.abs(counts_val - 0.2 * counts_all) <= 0.5)  # stratified
    for split, idx in ((s.train, tr), (s.val, va)):
        assert torch.allclose(_pixels(split.inputs, s)[:, 0], torch.from_numpy(ref.images[idx] / 16).float(), atol=1e-5)
        assert split.targets.tolist() == ref.target[idx].tolist()
    big = get_dataset("digits", image_size=32, seed=0)
    assert big.input_shape == (1, 32, 32) and torch.equal(big.train.meta["source_index"], s.train.meta["source_index"])
    assert not set(get_dataset("digits", seed=1).val.meta["source_index"].tolist()) == set(va.tolist())


def _ink_boxes(x: torch.Tensor, splits, threshold: float = 0.05) -> torch.Tensor:
    """(N, 1, H, W) normalised images -> (N, 4): top, left, height, width of the pixels brighter than black."""
    ink = _pixels(x, splits)[:, 0] > threshold  # (N, H, W)
    rows, cols = ink.any(2), ink.any(1)  # (N, H), (N, W)
    first = lambda m: m.float().argmax(1)  # noqa: E731
    last = lambda m: m.shape[1] - 1 - m.flip(1).float().argmax(1)  # noqa: E731
    return torch.stack([first(rows), first(cols), last(rows) - first(rows) + 1, last(cols) - first(cols) + 1], 1)


def test_multiscale_object_scale_follows_the_range():
    s = get_dataset("digits-multiscale", scales=(1.0, 3.0), seed=0)
    ink = _ink_boxes(s.train.inputs, s)
    box = s.train.meta["box"]  # top, left, side of each pasted digit
    sides = box[:, 2]
    assert sides.min() == 8 and sides.max() == 24  # the range is used end to end
    assert torch.equal(s.train.meta["scale"], sides / 8)
    # the ink lies inside the pasted square, and its size follows the drawn scale
    assert (ink[:, 0] >= box[:, 0]).all() and (ink[:, 0] + ink[:, 2] <= box[:, 0] + sides).all()
    assert (ink[:, 1] >= box[:, 1]).all() and (ink[:, 1] + ink[:, 3] <= box[:, 1] + sides).all()
    height = ink[:, 2].float()
    assert np.corrcoef(height.numpy(), sides.float().numpy())[0, 1] > 0.9
    assert height.min() <= 8 and height.max() >= 22
    # positions vary over the whole canvas
    assert box[:, 0].min() == 0 and (box[:, 0] + sides).max() == 32
    # a digit drawn at scale 1 is the 8x8 digit itself, pasted unchanged
    images = load_digits()[0]  # (1797, 1, 8, 8) in [0, 1]; test_digits_split_pixels_and_image_size checks it
    i = int(torch.nonzero(sides == 8)[0])
    t, l = int(box[i, 0]), int(box[i, 1])
    patch = _pixels(s.train.inputs[i : i + 1], s)[0, 0, t : t + 8, l : l + 8]
    assert torch.allclose(patch, images[int(s.train.meta["source_index"][i]), 0], atol=1e-5)


def test_multiscale_fixed_scales_measured_from_pixels():
    small, large = (get_dataset("digits-multiscale", scales=(k, k), seed=0) for k in (1.0, 3.0))
    ink_small, ink_large = _ink_boxes(small.val.inputs, small), _ink_boxes(large.val.inputs, large)
    assert ink_small[:, 2:].max() <= 8
    assert ink_large[:, 2].float().median() >= 20 and ink_large[:, 2:].max() <= 24


def test_scale_shift_train_and_val_scales():
    s = get_dataset("digits-scaleshift", seed=0)
    assert s.options["scales"] == [1.0, 1.5] and s.options["val_scales"] == [2.0, 3.0]
    assert _ink_boxes(s.train.inputs, s)[:, 2:].max() <= 12
    assert _ink_boxes(s.val.inputs, s)[:, 2].float().median() >= 15
    assert set(s.train.meta["source_index"].tolist()).isdisjoint(s.val.meta["source_index"].tolist())
    custom = get_dataset("digits-multiscale", scales=(1.0, 1.5), val_scales=(2.0, 3.0), copies=2, seed=0)
    assert len(custom.train) == 2 * 1438 and custom.val.meta["scale"].min() >= 2.0


def test_digits_seq_and_its_fixed_permutation():
    seq, perm = get_dataset("digits-seq", seed=1), get_dataset("digits-seq-permuted", seed=1)
    p = perm.train.permutation
    assert sorted(p.tolist()) == list(range(64)) and not torch.equal(p, torch.arange(64))
    assert torch.equal(perm.train.inputs, seq.train.inputs[..., p])
    assert torch.equal(perm.val.inputs, seq.val.inputs[..., p])
    assert torch.equal(perm.train.targets, seq.train.targets)
    # the same task for every split seed; another permutation_seed is another task
    assert torch.equal(get_dataset("digits-seq-permuted", seed=2).train.permutation, p)
    assert not torch.equal(get_dataset("digits-seq-permuted", permutation_seed=1).train.permutation, p)
    # a sequence is the digit image in row-major order
    image = get_dataset("digits", image_size=8, seed=1)
    assert torch.equal(image.train.inputs.flatten(2), seq.train.inputs)
    assert get_dataset("digits-seq", image_size=16).input_shape == (1, 256)


def test_textures_crops_come_from_disjoint_regions():
    import skimage.data

    s = get_dataset("textures", seed=0)
    boxes = {name: split.meta["box"] for name, split in (("train", s.train), ("val", s.val))}
    for label, photo in enumerate(s.classes):
        a = boxes["train"][s.train.targets == label][:, None]  # (Na, 1, 3): top, left, side
        b = boxes["val"][s.val.targets == label][None]  # (1, Nb, 3)
        overlap = ((a[..., 0] < b[..., 0] + b[..., 2]) & (b[..., 0] < a[..., 0] + a[..., 2])
                   & (a[..., 1] < b[..., 1] + b[..., 2]) & (b[..., 1] < a[..., 1] + a[..., 2]))
        assert not overlap.any(), f"{photo}: a train crop overlaps a validation crop"
        image = getattr(skimage.data, photo)().astype(np.float32) / 255
        for split in (s.train, s.val):  # crops at zoom 1 are the photograph's pixels, standardised
            for i in torch.nonzero((split.targets == label) & (split.meta["zoom"] == 1.0))[:5, 0].tolist():
                t, l, side = split.meta["box"][i].tolist()
                crop = torch.from_numpy(image[t : t + side, l : l + side])
                crop = (crop - crop.mean()) / crop.std()
                assert torch.allclose(split[i][0][0], crop, atol=1e-4)
    assert set(s.train.meta["zoom"].tolist()) == {1.0, 1.5, 2.0, 3.0}
    assert torch.equal(s.train.meta["box"][:, 2], torch.round(32 * s.train.meta["zoom"]).long())
    assert (boxes["train"][:, :2] + boxes["train"][:, 2:] <= 512).all()


# ----------------------------------------------------------------------------------------------- torchvision formats
# Each writer puts tiny files in the real on-disk format under root and returns what they hold: for each of
# "train" and "test", the pixels as uint8 (N, C, H, W) and the labels.


def _images(n, c, size, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(n, c, size, size), dtype=np.uint8)


def write_cifar10(root: Path):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    out = {"train": [], "test": []}
    for i, fname in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        x, y = _images(2 if i < 5 else 3, 3, 32, i), [(2 * i) % 10, (2 * i + 1) % 10, 9][: 2 if i < 5 else 3]
        batch = {"batch_label": fname, "data": x.reshape(len(x), -1), "labels": y,
                 "filenames": [f"{fname}_{j}.png" for j in range(len(x))]}  # data: rows of R, G, B planes
        with open(folder / fname, "wb") as f:
            pickle.dump(batch, f)
        out["test" if fname == "test_batch" else "train"].append((x, y))
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c10-{k}" for k in range(10)], "num_vis": 3072}, f)
    return {k: (np.concatenate([x for x, _ in v]), sum((y for _, y in v), [])) for k, v in out.items()}


def write_cifar100(root: Path):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out = {}
    for split, n in (("train", 4), ("test", 3)):
        x, y = _images(n, 3, 32, n), [int(v) for v in np.arange(n) * 31 % 100]
        with open(folder / split, "wb") as f:
            pickle.dump({"data": x.reshape(n, -1), "fine_labels": y, "coarse_labels": [v // 5 for v in y]}, f)
        out[split] = (x, y)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c100-{k}" for k in range(100)],
                     "coarse_label_names": [f"super-{k}" for k in range(20)]}, f)
    return out


def _idx(array: np.ndarray) -> bytes:
    """An idx-ubyte file: magic (0, 0, 0x08 = unsigned byte, number of dims), big-endian dims, the bytes."""
    return struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_mnist(root: Path, folder: str = "MNIST", gzipped: bool = False, n_train: int = 5):
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", 3)):
        x, y = _images(n, 1, 28, n), np.arange(n, dtype=np.uint8) % 10
        for kind, array in (("images-idx3", x[:, 0]), ("labels-idx1", y)):
            path = raw / f"{prefix}-{kind}-ubyte"
            with (gzip.open(f"{path}.gz", "wb") if gzipped else open(path, "wb")) as f:
                f.write(_idx(array))
        out[split] = (x, y.tolist())
    return out


def write_svhn(root: Path):
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", 4), ("test", 3)):
        x, digit = _images(n, 3, 32, n), np.arange(n) % 10
        # SVHN's .mat: X is (H, W, C, N), y is (N, 1) with the digit 0 stored as label 10
        y = np.where(digit == 0, 10, digit).astype(np.uint8)[:, None]
        savemat(root / f"{split}_32x32.mat", {"X": x.transpose(2, 3, 1, 0), "y": y})  # (N, C, H, W) -> (H, W, C, N)
        out[split] = (x, digit.tolist())
    return out


WRITERS = {"cifar10": write_cifar10, "cifar100": write_cifar100, "mnist": write_mnist,
           "fashionmnist": lambda root: write_mnist(root, "FashionMNIST"), "svhn": write_svhn}


@pytest.fixture
def no_md5(monkeypatch):
    """torchvision checks the CIFAR and SVHN files against the md5 sums of the official files, which tiny files
    cannot match. Replace only that check (file exists instead of file has the official md5) in the two modules
    that use it; the parsing that follows is torchvision's real code. test_md5_mismatch_is_reported shows the real
    check still rejects these files without this fixture."""
    import torchvision.datasets.cifar
    import torchvision.datasets.svhn

    exists = lambda fpath, md5=None: os.path.isfile(fpath)  # noqa: E731
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", exists)
    monkeypatch.setattr(torchvision.datasets.svhn, "check_integrity", exists)


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_round_trip(name, tmp_path, no_md5):
    written = WRITERS[name](tmp_path)
    s = get_dataset(name, root=tmp_path)
    c, size = written["train"][0].shape[1:3]
    assert (s.name, s.kind, s.input_shape) == (name, "image", (c, size, size))
    assert s.num_classes == (100 if name == "cifar100" else 10) and len(s.classes) == s.num_classes
    for split, key in ((s.train, "train"), (s.val, "test")):
        x, y = _stack(split)
        pixels, labels = written[key]
        assert x.dtype == torch.float32 and all(type(v) is int for v in y)
        assert torch.equal(torch.round(_pixels(x, s) * 255).to(torch.uint8), torch.from_numpy(pixels))
        assert y == list(labels)
    if name.startswith("cifar"):
        assert s.classes[0] == ("c10-0" if name == "cifar10" else "c100-0")  # read from the meta file
    xb, _ = next(iter(DataLoader(s.train, batch_size=3)))
    assert torch.allclose(xb, torch.stack([s.train[i][0] for i in range(3)]))
    small = get_dataset(name, root=tmp_path, image_size=16)
    assert small.input_shape == (c, 16, 16) and small.train[0][0].shape == (c, 16, 16)


def test_mnist_gzipped_files_are_unpacked(tmp_path):
    written = write_mnist(tmp_path, gzipped=True)
    assert not (tmp_path / "MNIST/raw/train-images-idx3-ubyte").exists()
    s = get_dataset("mnist", root=tmp_path)
    x, y = _stack(s.val)
    assert torch.equal(torch.round(_pixels(x, s) * 255).to(torch.uint8), torch.from_numpy(written["test"][0]))
    assert (tmp_path / "MNIST/raw/train-images-idx3-ubyte").is_file()


def test_torchvision_val_fraction_holds_out_part_of_train(tmp_path):
    written = write_mnist(tmp_path, n_train=20)  # labels 0..9 twice
    s = get_dataset("mnist", root=tmp_path, val_fraction=0.5, seed=0)
    assert len(s.train) == len(s.val) == 10
    xt, yt = _stack(s.train)
    xv, yv = _stack(s.val)
    assert sorted(yt) == sorted(yv) == list(range(10))  # stratified
    seen = [bytes(p) for p in torch.round(_pixels(torch.cat([xt, xv]), s) * 255).to(torch.uint8).numpy()]
    assert sorted(seen) == sorted(bytes(p) for p in written["train"][0])  # every train image exactly once
    other = get_dataset("mnist", root=tmp_path, val_fraction=0.5, seed=1)
    assert not torch.equal(_stack(other.val)[0], xv)


def test_download_only_when_asked(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    def fake_download(self):  # stands in for the network: writes the files where torchvision would
        calls.append(self.root)
        if not (Path(self.root) / "MNIST/raw").exists():
            write_mnist(Path(self.root))

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", fake_download)
    with pytest.raises(DatasetNotFoundError):
        get_dataset("mnist", root=tmp_path / "new")
    assert calls == []
    s = get_dataset("mnist", root=tmp_path / "new", download=True)
    assert calls and len(s.train) == 5


# ----------------------------------------------------------------------------------------------- errors


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(UnknownNameError, match="did you mean 'cifar10'") as err:
        get_dataset("cifar-10")
    assert all(repr(name) in str(err.value) for name in data.available_datasets())
    assert get_dataset("DIGITS").name == "digits"  # case-insensitive


@pytest.mark.parametrize("name", TORCHVISION)
def test_missing_files_name_the_path_and_how_to_get_them(name, tmp_path):
    with pytest.raises(DatasetNotFoundError, match="needs `root`"):
        get_dataset(name)
    nope = re.escape(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=f"not a folder.*{nope}.*download=True.*http"):
        get_dataset(name, root=tmp_path / "nope")
    first = re.escape(str(expected_files(name, tmp_path)[0]))
    with pytest.raises(DatasetNotFoundError, match=f"not found under.*expected {first}.*download=True.*http") as err:
        get_dataset(name, root=tmp_path)
    assert isinstance(err.value, NasFlexError)


def test_a_single_missing_file_is_named(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py/data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError, match="expected .*data_batch_3\\)"):
        get_dataset("cifar10", root=tmp_path)


@pytest.mark.parametrize("name", ["cifar10", "svhn"])
def test_md5_mismatch_is_reported(name, tmp_path):
    WRITERS[name](tmp_path)
    with pytest.raises(DatasetNotFoundError, match="md5"):
        get_dataset(name, root=tmp_path)


def test_missing_dataset_fails_before_loading_torch(tmp_path):
    code = ("import sys, nas_flex.data as d\n"
            f"try: d.get_dataset('cifar10', root={str(tmp_path)!r})\n"
            "except FileNotFoundError: print(' '.join(sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    mods = set(out.stdout.split())
    assert "nas_flex.data" in mods and not {"torch", "torchvision"} & mods


@pytest.mark.parametrize("image_size", [0, 3, -8, 2.5, True, "32"])
def test_bad_image_size(image_size):
    with pytest.raises(HyperparameterError, match="image_size"):
        get_dataset("digits", image_size=image_size)


@pytest.mark.parametrize("name, options, match", [
    ("digits", {"scales": (1, 2)}, "unknown option.*'scales'.*val_fraction"),
    ("digits", {"val_fraction": 1.0}, "val_fraction"),
    ("digits-multiscale", {"scales": (1.0, 5.0)}, "image_size to at least 40"),
    ("digits-multiscale", {"scales": (2.0, 1.0)}, "0 < lo <= hi"),
    ("digits-multiscale", {"val_scales": (0, 1)}, "val_scales"),
    ("digits-multiscale", {"copies": 0}, "copies"),
    ("textures", {"zooms": ()}, "zooms"),
    ("textures", {"zooms": (1, 9)}, "image_size \\* max\\(zooms\\)"),
    ("digits-seq-permuted", {"permutation_seed": -1}, "permutation_seed"),
    ("cifar10", {"val_fraction": 0}, "val_fraction"),
])
def test_bad_options(name, options, match):
    with pytest.raises(HyperparameterError, match=match):
        get_dataset(name, **options)


def test_bad_seed():
    with pytest.raises(HyperparameterError, match="seed"):
        get_dataset("digits", seed=-1)
