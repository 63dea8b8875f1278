"""nas_flex.report: figures without a display and a markdown summary that links them; the report CLI."""

from __future__ import annotations

import json
import re

import pytest

BASE = {"dataset": "digits", "backbone": "simple", "head": "dense", "width": 4, "epochs": 1, "train_subset": 96,
        "val_subset": 64, "device": "cpu"}
CONFIGS = {
    "c3": {"conv": "conv", "kernel_size": 3},
    "c5": {"conv": "conv", "kernel_size": 5},
    "nj": {"conv": "njet", "pooling": "safe", "head": "gap", "conv_hparams": {"order": 2}},
    "ff": {"conv": "niff"},
    "mx": {"conv": "mixed", "conv_hparams": {"kernel_sizes": [3, 5]}},
}
FIGURES = ("grid_or_learned.png", "by_architecture.png", "sizes_vs_depth.png", "acc_vs_flops.png",
           "grid_vs_learned.png")


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
    assert re.search(r"\| mixed \| learned \| 1 \| mx \|", text)  # a learned choice, not part of the grid
    assert "metrics_val_acc" not in text.split("\n## ", 1)[1]  # readable names after the header line


def test_report_kernels_from_export(board, tmp_path):
    from nas_flex.export import export_trial
    from nas_flex.report import make_report

    export = export_trial(board / "lb", "ff", tmp_path / "export", weights=board / "ckpt" / "ff" / "trial_state.pt",
                          onnx=False)
    make_report(board / "lb", tmp_path / "rep", export_dir=export.out, layer="features.3")
    text = _check_report(tmp_path / "rep", (*FIGURES, "kernels.png"))
    assert "features.3" in text and "frequency" in text



def test_report_trial_uses_the_weights_its_search_kept(board, tmp_path):
    """``--trial`` exports with the weights the search kept (``<storage>/_weights/<experiment>--<trial>.pt``) and
    says so; nothing is retrained and no text claims it was."""
    import shutil

    import torch

    from nas_flex.report import make_report

    lb = tmp_path / "lb"
    shutil.copytree(board / "lb", lb)
    kept = lb / "_weights" / "exp--ff.pt"
    kept.parent.mkdir()
    torch.save(torch.load(board / "ckpt" / "ff" / "trial_state.pt", weights_only=True)["model"], kept)
    logged: list[str] = []
    make_report(lb, tmp_path / "rep", trial_id="ff", log=logged.append)
    text = _check_report(tmp_path / "rep", (*FIGURES, "kernels.png"))
    assert not (tmp_path / "rep" / "export_ff" / "training").exists()  # not retrained
    assert not [line for line in logged if "retrain" in line], logged
    assert any(str(kept) in line for line in logged) and str(kept) in text

def test_cli_report(board, tmp_path, capsys):
    from nas_flex.cli import main

    assert main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "no leaderboard" in capsys.readouterr().err
    assert main(["report", str(board / "lb"), "--out", str(tmp_path / "o"), "--metric", "nope"]) == 2
    assert "unknown metric 'nope'" in capsys.readouterr().err
    assert main(["report", str(board / "lb"), "--out", str(tmp_path / "o")]) == 0
    _check_report(tmp_path / "o", FIGURES)


# --------------------------------------------------------------------------------------------- grid or learned?
def _hand_board():
    """A hand-made leaderboard: a grid of four conv trials (written out of run order, one diverged, one a
    duplicate that did not train) and three learned runs, in two experiments' worth of columns."""
    import pandas as pd

    t = pd.Timestamp("2026-01-01 10:00:00", tz="UTC")
    s = pd.Timedelta(seconds=1)
    rows = [
        # trial, method, kernel, status, started, val_acc, train_seconds, examples_per_second, flops
        ("g3", "conv", 5, "completed", t + 30 * s, 0.80, 20.0, 50.0, 1000.0),
        ("g1", "conv", 3, "completed", t, 0.70, 10.0, 100.0, 400.0),
        ("g2", "conv", 7, "diverged", t + 15 * s, 0.10, 5.0, 200.0, 2000.0),
        ("g4", "conv", 9, "completed", t + 60 * s, 0.75, 40.0, 25.0, 3000.0),
        ("g5", "conv", 3, "duplicate", t + 61 * s, 0.70, None, None, 400.0),
        ("nj", "njet", None, "completed", t + 2 * s, 0.78, 12.0, 100.0, 600.0),
        ("mx", "mixed", None, "completed", t + 3 * s, 0.90, 30.0, 40.0, 1500.0),
        ("ff", "niff", None, "error", t + 4 * s, None, None, None, None),
    ]
    return pd.DataFrame([{
        "experiment": "e", "trial_id": r[0], "params_conv": r[1], "params_kernel_size": r[2], "status": r[3],
        "started": r[4], "written_at": r[4] + 100 * s, "metrics_val_acc": r[5], "metrics_val_loss": None,
        "train_seconds": r[6], "examples_per_second": r[7], "flops": r[8],
        # what a trial writes: no size record for a fixed-size layer, one per learned-size layer, none after an error
        "learned_sizes_json": None if r[3] == "error" else "[]" if r[1] == "conv" else json.dumps(
            [{"name": "features.0", "kind": r[1], "height": 3.0, "width": 3.0, "learns_size": True}]),
    } for r in rows])


def test_grid_curve_by_hand():
    from nas_flex.report.curves import grid_cost_to_reach, grid_curve, learned_points

    curve = grid_curve(_hand_board(), "metrics_val_acc", "max")
    # run order by `started`: g1, g2 (diverged: costs time, no accuracy), g3, g4; g5 trained nothing
    assert curve["trial_id"].tolist() == ["g1", "g2", "g3", "g4"]
    assert curve["order"].tolist() == [1, 2, 3, 4]
    assert curve["kernel_size"].tolist() == [3, 7, 5, 9]
    assert curve["cum_seconds"].tolist() == pytest.approx([10, 15, 35, 75])
    # FLOPs x examples seen: g1 400 x (100/s x 10 s) = 4e5; g2 2000 x 1000 = 2e6; g3 1000 x 1000 = 1e6;
    # g4 3000 x 1000 = 3e6
    assert curve["train_flops"].tolist() == pytest.approx([4e5, 2e6, 1e6, 3e6])
    assert curve["cum_flops"].tolist() == pytest.approx([4e5, 2.4e6, 3.4e6, 6.4e6])
    assert curve["best_so_far"].tolist() == pytest.approx([0.70, 0.70, 0.80, 0.80])
    assert grid_cost_to_reach(curve, 0.78) == {"trials": 3, "seconds": 35.0, "flops": 3.4e6}
    assert grid_cost_to_reach(curve, 0.70) == {"trials": 1, "seconds": 10.0, "flops": 4e5}
    assert grid_cost_to_reach(curve, 0.90) is None
    points = learned_points(_hand_board(), "metrics_val_acc")
    assert points["method"].tolist() == ["mixed", "njet"]  # mixed is learned; the errored niff run is no point
    assert points["train_seconds"].tolist() == pytest.approx([30.0, 12.0])
    assert points["train_flops"].tolist() == pytest.approx([1500 * 1200, 600 * 1200])
    # a "min" metric takes the running minimum
    loss = _hand_board().assign(metrics_val_loss=[0.5, 0.9, 3.0, 0.6, 0.9, 0.7, 0.3, None])
    assert grid_curve(loss, "metrics_val_loss", "min")["best_so_far"].tolist() == pytest.approx([0.9, 0.9, 0.5,
                                                                                                  0.5])


def test_grid_or_learned_on_a_real_leaderboard(board):
    from nas_flex.leaderboard import Leaderboard
    from nas_flex.report.curves import grid_curve

    df = Leaderboard(board / "lb").to_pandas()
    curve = grid_curve(df, "metrics_val_acc", "max")
    grid = df[df["params_conv"] == "conv"].set_index("trial_id")
    assert curve["trial_id"].tolist() == ["c3", "c5"]  # the fixture trained them in this order
    assert curve["cum_seconds"].iloc[-1] == pytest.approx(grid["train_seconds"].sum())
    examples = 96  # train_subset, one epoch
    assert curve["train_flops"].tolist() == pytest.approx([grid.loc[t, "flops"] * examples for t in ("c3", "c5")])
    assert curve["best_so_far"].iloc[-1] == pytest.approx(grid["metrics_val_acc"].max())


def _capture_figures(monkeypatch):
    """Record the texts and line styles of every figure make_report saves."""
    from matplotlib.figure import Figure

    seen = {}
    real = Figure.savefig

    def savefig(fig, path, *args, **kwargs):
        texts = [fig._suptitle.get_text()] if fig._suptitle is not None else []
        for ax in fig.axes:
            texts += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        styles = [line.get_linestyle() for ax in fig.axes for line in ax.get_lines()]
        seen[str(path).rsplit("/", 1)[-1]] = {"texts": texts, "styles": styles}
        return real(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return seen


def test_report_answers_grid_or_learned(board, tmp_path, monkeypatch):
    from nas_flex.report import make_report

    seen = _capture_figures(monkeypatch)
    make_report(board / "lb", tmp_path)
    text = _check_report(tmp_path, FIGURES)
    assert set(seen) == set(FIGURES)
    for name, fig in seen.items():  # readable titles and labels: no raw column names
        for t in fig["texts"]:
            assert not re.search(r"metrics_|params_|best_val|_acc\b", t), (name, t)
    titles = " ".join(seen["grid_or_learned.png"]["texts"])
    assert "Grid or learned" in titles and "training time" in titles and "FLOPs x training examples" in titles
    section = text.split("## Grid or learned?")[1].split("## ")[0]
    assert re.search(r"\| 1 \| c3 \| 3 \| completed \|", section)
    assert re.search(r"\| 2 \| c5 \| 5 \| completed \|", section)
    for method, trial in (("njet", "nj"), ("niff", "ff"), ("mixed", "mx")):
        assert re.search(rf"\| {method} \| {trial} \| \d\.\d{{4}} \|", section)


def test_sizes_at_init_dashed_only_when_history_has_epoch_0(tmp_path, monkeypatch):
    """A history with an epoch-0 record (learned sizes at initialisation) adds the init sizes as dashed lines; a
    history without one gives the learned sizes alone, and the report says so."""
    from nas_flex.leaderboard import write_trial
    from nas_flex.report import make_report
    from nas_flex.train import run_trial

    result = run_trial({**BASE, **CONFIGS["nj"]})
    trained = [h for h in result.history if h["epoch"] >= 1]
    init = [{**r, "height": 5.0, "width": 5.0} for r in trained[0]["learned_sizes"]]
    with_init = {**result.to_dict(), "history": [{**trained[0], "epoch": 0, "learned_sizes": init}, *trained]}
    write_trial(tmp_path / "with", with_init, experiment="exp", trial_id="nj", sync=False)
    without = {**result.to_dict(), "history": trained}
    write_trial(tmp_path / "without", without, experiment="exp", trial_id="nj", sync=False)
    seen = _capture_figures(monkeypatch)

    make_report(tmp_path / "with", tmp_path / "rep_with")
    assert "dashed for 1" in (tmp_path / "rep_with" / "report.md").read_text()
    fig = seen["sizes_vs_depth.png"]
    assert fig["styles"].count("--") == 2  # the init line and its legend entry
    assert "initialisation" in " ".join(fig["texts"])

    make_report(tmp_path / "without", tmp_path / "rep_without")
    assert "no epoch-0 record" in (tmp_path / "rep_without" / "report.md").read_text()
    fig = seen["sizes_vs_depth.png"]
    assert "--" not in fig["styles"] and fig["texts"][0] == "Learned kernel size per layer"
