"""Export never overwrites: a non-empty folder is refused unless forced, and a forced export that fails half-way
leaves the old folder byte for byte as it was."""

from __future__ import annotations

import pytest

from nas_flex.errors import ExportError

CONFIG = {"dataset": "digits", "backbone": "simple", "head": "dense", "conv": "conv", "width": 4, "epochs": 1,
          "train_subset": 96, "val_subset": 64, "device": "cpu"}
USER_FILES = {"architecture.json": b'{"mine": true}\n', "model.onnx": b"\x08\x07my own model",
              "notes/readme.txt": b"keep me"}


@pytest.fixture(scope="module")
def weights():
    """An untrained model's state_dict for CONFIG (the export checks equivalence, not accuracy)."""
    import torch

    from nas_flex.data import dataset_from_config
    from nas_flex.export.core import _dims
    from nas_flex.models import build
    from nas_flex.train.config import resolve_config

    torch.manual_seed(0)
    cfg = resolve_config(CONFIG)
    in_channels, num_classes, input_size = _dims(dataset_from_config(cfg))
    model = build(cfg, in_channels=in_channels, num_classes=num_classes, input_size=input_size)
    return model.state_dict()


def _user_folder(out):
    for name, data in USER_FILES.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    return out


def _tree(folder):
    """Every file under ``folder``: relative path -> bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_non_empty_folder_is_refused_before_any_work(tmp_path, weights, capsys):
    from nas_flex.cli import main
    from nas_flex.export import export_row

    out = _user_folder(tmp_path / "out")
    with pytest.raises(ExportError, match=r"`out` '.*out' is not empty \(3 entries: architecture.json, model.onnx, "
                                          r"notes\).*force=True \(--force\)"):
        export_row(CONFIG, out, weights=weights, onnx=False)
    assert _tree(out) == {k: v for k, v in USER_FILES.items()}
    # the CLI checks --out first: this leaderboard does not even exist
    assert main(["export", str(tmp_path / "no_board"), "--best", "--out", str(out), "--no-onnx"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nas-flex: error: `out`") and "is not empty" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="is a file, not a folder"):
        export_row(CONFIG, tmp_path / "file", weights=weights, onnx=False)


@pytest.mark.parametrize("late_step", ["_torch_export", "_write_architecture"])
def test_a_forced_export_that_fails_leaves_the_old_folder_as_it_was(tmp_path, weights, monkeypatch, late_step):
    """The failure comes after state_dict.pt and weights.safetensors (torch.export, the 2nd format) or after every
    model file (the architecture JSON, the last file): the user's files stay byte-identical either way."""
    import nas_flex.export.core as core
    from nas_flex.export import export_row

    out = _user_folder(tmp_path / "out")
    written = []
    real = getattr(core, late_step)

    def failing(*args, **kwargs):
        written.extend(p.name for p in (args[-1].parent if late_step == "_torch_export" else args[0].parent).iterdir())
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(core, late_step, failing)
    with pytest.raises(OSError, match="No space left"):
        export_row(CONFIG, out, weights=weights, onnx=False, force=True)
    assert "state_dict.pt" in written  # the staging folder had files in it when the step failed
    assert _tree(out) == USER_FILES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the staging folder is gone
    monkeypatch.setattr(core, late_step, real)


def test_a_forced_export_replaces_the_folder_at_the_end(tmp_path, weights):
    from nas_flex.export import export_row, load_architecture

    out = _user_folder(tmp_path / "out")
    res = export_row(CONFIG, out, weights=weights, onnx=False, force=True)
    files = _tree(out)
    assert res.out == out.absolute() and all(p.parent == out.absolute() and p.is_file() for p in res.files.values())
    assert "notes/readme.txt" not in files and files["architecture.json"] != USER_FILES["architecture.json"]
    assert {"state_dict.pt", "weights.safetensors", "model.pt2", "model.torchscript.pt"} <= set(files)
    assert load_architecture(out)["config"]["conv"] == "conv"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # neither the staging nor the old folder is left
    # an existing empty folder, and a folder holding only a failed export's training/ folder, need no force
    (tmp_path / "empty").mkdir()
    (tmp_path / "resumable" / "training").mkdir(parents=True)
    for folder in ("empty", "resumable"):
        assert export_row(CONFIG, tmp_path / folder, weights=weights, onnx=False).files["torch_export"].is_file()
