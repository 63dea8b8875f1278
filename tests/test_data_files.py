"""A user's data on disk: ``imagefolder`` read back from real PNG files written here (both layouts, RGB and
grayscale), ``npz`` from a real .npz file, and every bad folder giving its one-line error, in a search before Ray
starts."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nas_flex.data import DatasetError, DatasetNotFoundError, clear_cache, get_dataset
from nas_flex.errors import HyperparameterError, NasFlexError


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


def _image(rng: np.random.Generator, label: int, size: tuple[int, int], mode: str) -> Image.Image:
    """A class-dependent image: class 0 bright top half, class 1 bright left half, class 2 dark; noise on top."""
    h, w = size
    arr = rng.integers(0, 40, size=(h, w, 3)).astype(np.uint8)
    if label == 0:
        arr[: h // 2] += 200
    elif label == 1:
        arr[:, : w // 2] += 200
    arr[..., 1] //= 2  # colour differs per channel
    img = Image.fromarray(arr, "RGB")
    return img.convert("L") if mode == "L" else img


def write_folder(root: Path, classes: dict[str, int], *, size=(12, 10), mode="RGB", seed=0) -> dict[Path, int]:
    """``root/<class>/<i>.png`` files (``classes``: name -> count); returns path -> label index (sorted names)."""
    rng = np.random.default_rng(seed)
    written = {}
    for label, (name, count) in enumerate(sorted(classes.items())):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            path = root / name / f"{i:03d}.png"
            _image(rng, label, size, mode).save(path)
            written[path] = label
    return written


def _reference(paths: dict[Path, int], gray: bool) -> tuple[torch.Tensor, list[int]]:
    """Pixels in [0, 1] (N, C, H, W) read independently, sorted by (label, pixel sum) to compare as sets."""
    xs, ys = [], []
    for path, label in paths.items():
        arr = np.asarray(Image.open(path).convert("L" if gray else "RGB"), dtype=np.float32) / 255
        xs.append(torch.from_numpy(arr[None] if gray else arr.transpose(2, 0, 1)))
        ys.append(label)
    return torch.stack(xs), ys


def _as_pixels(split, s) -> torch.Tensor:
    x = torch.stack([split[i][0] for i in range(len(split))])
    return x * torch.tensor(s.std).view(1, -1, 1, 1) + torch.tensor(s.mean).view(1, -1, 1, 1)


def _sorted_rows(x: torch.Tensor, y: list[int]) -> tuple[torch.Tensor, list[int]]:
    keys = sorted(range(len(y)), key=lambda i: (y[i], round(float(x[i].sum()), 3)))
    return x[keys], [y[i] for i in keys]


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_imagefolder_train_val_layout(tmp_path, mode):
    train = write_folder(tmp_path / "train", {"cat": 6, "dog": 5, "eel": 4}, mode=mode, seed=1)
    val = write_folder(tmp_path / "val", {"cat": 2, "dog": 3}, mode=mode, seed=2)  # a class may be absent from val
    s = get_dataset("imagefolder", root=tmp_path, seed=0)
    channels = 1 if mode == "L" else 3
    assert s.classes == ("cat", "dog", "eel") and s.num_classes == 3
    assert s.input_shape == (channels, 12, 10) and (len(s.train), len(s.val)) == (15, 5)
    for split, files in ((s.train, train), (s.val, val)):
        got = _sorted_rows(_as_pixels(split, s), [split[i][1] for i in range(len(split))])
        ref = _sorted_rows(*_reference(files, gray=mode == "L"))
        assert got[1] == ref[1]
        assert torch.allclose(got[0], ref[0], atol=1e-5)
    x = torch.stack([s.train[i][0] for i in range(len(s.train))])  # normalised with the training split's stats
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(channels), atol=1e-4)


def test_imagefolder_split_layout_seeded_and_grayscale_option(tmp_path):
    write_folder(tmp_path, {"a": 10, "b": 10}, mode="RGB")
    s0, s0b, s1 = (get_dataset("imagefolder", root=tmp_path, seed=k, val_fraction=0.3) for k in (0, 0, 1))
    assert (len(s0.train), len(s0.val)) == (14, 6)
    assert sorted(s0.val[i][1] for i in range(6)) == [0, 0, 0, 1, 1, 1]  # stratified
    val = lambda s: torch.stack([s.val[i][0] for i in range(len(s.val))])  # noqa: E731
    assert torch.equal(val(s0), val(s0b)) and not torch.equal(val(s0), val(s1))
    gray = get_dataset("imagefolder", root=tmp_path, grayscale=True, image_size=8, normalize=False)
    assert gray.input_shape == (1, 8, 8) and gray.mean == (0.0,) and gray.std == (1.0,)
    ref = np.asarray(Image.open(tmp_path / "a" / "000.png").convert("L").resize((8, 8), Image.BILINEAR)) / 255
    pixels = [split[i][0] for split in (gray.train, gray.val) for i in range(len(split))]
    assert any(torch.allclose(p[0], torch.from_numpy(ref).float(), atol=1e-6) for p in pixels)


def test_imagefolder_train_folder_alone_is_split(tmp_path):
    write_folder(tmp_path / "train", {"a": 5, "b": 5})
    s = get_dataset("imagefolder", root=tmp_path, val_fraction=0.4)
    assert s.classes == ("a", "b") and (len(s.train), len(s.val)) == (6, 4)


def test_imagefolder_mixed_sizes_need_image_size(tmp_path):
    write_folder(tmp_path, {"a": 3}, size=(12, 12))
    write_folder(tmp_path / "b_", {}, size=(8, 8))
    (tmp_path / "b").mkdir()
    Image.new("RGB", (9, 7)).save(tmp_path / "b" / "odd.png")
    Image.new("RGB", (12, 12)).save(tmp_path / "b" / "ok.png")
    with pytest.raises(DatasetError, match=r"different sizes .*image_size") as err:
        get_dataset("imagefolder", root=tmp_path)
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)
    s = get_dataset("imagefolder", root=tmp_path, image_size=6, val_fraction=0.4)
    assert s.input_shape == (3, 6, 6) and len(s.train) + len(s.val) == 5


def _bad_folders(tmp: Path) -> dict[str, tuple[Path, type[Exception], str]]:
    out = {}
    out["missing"] = (tmp / "nope", DatasetNotFoundError, "does not exist")
    (tmp / "empty" / "a").mkdir(parents=True)
    (tmp / "empty" / "b").mkdir()
    (tmp / "empty" / "a" / "notes.txt").write_text("no image")
    out["no images"] = (tmp / "empty", DatasetError, "no images")
    write_folder(tmp / "one", {"only": 4})
    out["one class"] = (tmp / "one", DatasetError, "one class")
    write_folder(tmp / "broken", {"a": 2, "b": 2})
    (tmp / "broken" / "b" / "zz.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out["unreadable"] = (tmp / "broken" / "b" / "zz.png", DatasetError, "cannot read image")
    write_folder(tmp / "mixed" / "a", {}, size=(4, 4))
    for cls, size in (("a", (10, 10)), ("b", (11, 10))):
        (tmp / "mixed" / cls).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size).save(tmp / "mixed" / cls / "x.png")
    out["mixed sizes"] = (tmp / "mixed", DatasetError, "different sizes")
    return out


def test_bad_folders_one_line_errors_naming_the_path(tmp_path):
    for case, (path, error, text) in _bad_folders(tmp_path).items():
        root = path if case != "unreadable" else tmp_path / "broken"
        with pytest.raises(error, match=text) as err:
            get_dataset("imagefolder", root=root)
        msg = str(err.value)
        assert str(path) in msg and "\n" not in msg, (case, msg)
    with pytest.raises(DatasetNotFoundError, match="needs `data_root`"):
        get_dataset("imagefolder")
    with pytest.raises(HyperparameterError, match="grayscale"):
        get_dataset("imagefolder", root=tmp_path, grayscale="yes")


@pytest.mark.parametrize("case", ["missing", "no images", "one class", "unreadable", "mixed sizes"])
def test_search_refuses_a_bad_folder_before_ray_starts(tmp_path, case):
    import nas_flex

    path, _, text = _bad_folders(tmp_path)[case]
    root = path if case != "unreadable" else tmp_path / "broken"
    space = {"backbone": "simple", "dataset": "imagefolder", "data_root": str(root), "epochs": 1, "width": 4}
    before = set(sys.modules)
    with pytest.raises(NasFlexError, match=text) as err:
        nas_flex.search(lambda trial: dict(space), storage=tmp_path / "runs", num_samples=1)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert "ray" not in sys.modules or "ray" in before  # nothing started Ray
    assert not (tmp_path / "runs" / "_ray").exists()


def test_npz_with_and_without_val(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(20, 2, 6, 5), dtype=np.uint8)
    y = np.repeat(np.arange(4), 5)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    s = get_dataset("npz", root=tmp_path / "d.npz", val_fraction=0.2, normalize=False)
    assert s.input_shape == (2, 6, 5) and s.num_classes == 4 and (len(s.train), len(s.val)) == (16, 4)
    got = {(int(lbl), round(float(img.sum()), 3)) for img, lbl in (s.train[i] for i in range(16))}
    got |= {(int(lbl), round(float(img.sum()), 3)) for img, lbl in (s.val[i] for i in range(4))}
    assert got == {(int(y[i]), round(float(x[i].astype(np.float32).sum() / 255), 3)) for i in range(20)}
    xv = rng.normal(size=(3, 6, 5)).astype(np.float32)  # (N, H, W) floats: one channel, taken as they are
    np.savez(tmp_path / "v.npz", x=xv, y=np.array([0, 1, 1]), x_val=xv[:2], y_val=np.array([1, 0]))
    v = get_dataset("npz", root=tmp_path / "v.npz", normalize=False)
    assert v.input_shape == (1, 6, 5) and (len(v.train), len(v.val)) == (3, 2)
    assert sorted(float(v.val[i][0].sum()) for i in range(2)) == pytest.approx(sorted(xv[:2].sum((1, 2))), rel=1e-5)


def test_npz_bad_files(tmp_path):
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}, None], dtype=object), y=np.array([0, 1]))
    np.savez(tmp_path / "noy.npz", x=np.zeros((2, 4, 4)))
    np.savez(tmp_path / "len.npz", x=np.zeros((3, 4, 4)), y=np.array([0, 1]))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    cases = {"obj.npz": "cannot read", "noy.npz": "no array 'y'", "len.npz": "3 integer labels",
             "junk.npz": "cannot read", "missing.npz": "is not a file"}
    for name, text in cases.items():
        with pytest.raises(NasFlexError, match=text) as err:
            get_dataset("npz", root=tmp_path / name)
        assert str(tmp_path / name) in str(err.value) and "\n" not in str(err.value)
