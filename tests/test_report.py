"""nas_flex.report: figures without a display and a markdown summary that links them; the report CLI."""

from __future__ import annotations

import re

import pytest

BASE = {"dataset": "digits", "backbone": "simple", "head": "dense", "width": 4, "epochs": 1, "train_subset": 96,
        "val_subset": 64, "device": "cpu"}
CONFIGS = {
    "c3": {"conv": "conv", "kernel_size": 3},
    "c5": {"conv": "conv", "kernel_size": 5},
    "nj": {"conv": "njet", "pooling": "safe", "head": "gap", "conv_hparams": {"order": 2}},
    "ff": {"conv": "niff"},
}
FIGURES = ("sizes_vs_depth.png", "acc_vs_flops.png", "grid_vs_learned.png")


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    from nas_flex.leaderboard import write_trial
    from nas_flex.train import run_trial

    root = tmp_path_factory.mktemp("report")
    for trial_id, extra in CONFIGS.items():
        result = run_trial({**BASE, **extra}, checkpoint_dir=root / "ckpt" / trial_id)
        write_trial(root / "lb", result, experiment="exp", trial_id=trial_id, sync=False)
    return root


def _check_report(out, figures):
    text = (out / "report.md").read_text()
    for name in figures:
        png = out / name
        assert png.stat().st_size > 1000
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({name})" in text
    return text


def test_report_without_weights(board, tmp_path):
    import matplotlib

    from nas_flex.report import make_report

    path = make_report(board / "lb", tmp_path)
    assert path == tmp_path / "report.md"
    assert matplotlib.get_backend().lower() == "agg"
    text = _check_report(tmp_path, FIGURES)
    assert not (tmp_path / "kernels.png").exists() and "Skipped: no trained weights" in text
    assert re.search(r"\| njet \| learned \| 1 \| nj \|", text)
    assert re.search(r"\| conv \| grid \| 2 \|", text)


def test_report_kernels_from_export(board, tmp_path):
    from nas_flex.export import export_trial
    from nas_flex.report import make_report

    export = export_trial(board / "lb", "ff", tmp_path / "export", weights=board / "ckpt" / "ff" / "trial_state.pt")
    make_report(board / "lb", tmp_path / "rep", export_dir=export.out, layer="features.3")
    text = _check_report(tmp_path / "rep", (*FIGURES, "kernels.png"))
    assert "features.3" in text and "frequency" in text


def test_cli_report(board, tmp_path, capsys):
    from nas_flex.cli import main

    assert main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "no leaderboard" in capsys.readouterr().err
    assert main(["report", str(board / "lb"), "--out", str(tmp_path / "o"), "--metric", "nope"]) == 2
    assert "unknown metric 'nope'" in capsys.readouterr().err
    assert main(["report", str(board / "lb"), "--out", str(tmp_path / "o")]) == 0
    _check_report(tmp_path / "o", FIGURES)
