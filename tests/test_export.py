"""nas_flex.export: architecture JSON, weights, deployable plain-PyTorch models, discretise, and the CLI."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

from nas_flex.errors import NasFlexError

BASE = {"dataset": "digits", "backbone": "simple", "head": "dense", "width": 4, "epochs": 1, "train_subset": 96,
        "val_subset": 64, "device": "cpu"}
CONFIGS = {
    "conv": {"conv": "conv"},
    "njet": {"conv": "njet", "pooling": "safe", "head": "gap", "conv_hparams": {"order": 2}},
    "flexconv": {"conv": "flexconv"},
    "niff": {"conv": "niff"},
}


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """A leaderboard of one tiny trial per method, written with write_trial (no Ray), and their checkpoints."""
    from nas_flex.leaderboard import write_trial
    from nas_flex.train import run_trial

    root = tmp_path_factory.mktemp("export")
    lb, ckpts = root / "lb", {}
    for name, extra in CONFIGS.items():
        ckpts[name] = root / "ckpt" / name
        result = run_trial({**BASE, **extra}, checkpoint_dir=ckpts[name])
        assert result.status == "completed"
        write_trial(lb, result, experiment="exp", trial_id=name, sync=False)
    return lb, ckpts, root


def _examples(n=16):
    from nas_flex.data import get_dataset

    splits = get_dataset("digits", seed=0)
    return torch.stack([splits.val[i][0] for i in range(n)])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_export_reload_same_outputs(board, name, tmp_path):
    from safetensors.torch import load_file

    from nas_flex.export import FixedCircularConv2d, export_trial, load_model
    from nas_flex.layers.base import KernelLayer
    from nas_flex.models import build

    lb, ckpts, _ = board
    out = tmp_path / name
    res = export_trial(lb, name, out, weights=ckpts[name] / "trial_state.pt", onnx=False)  # ONNX: test_onnx_*
    arch = json.loads((out / "architecture.json").read_text())
    assert arch["config"]["conv"] == name and arch["source"]["trial_id"] == name
    for layer in arch["layers"]:
        assert all(isinstance(k, int) and k % 2 == 1 for k in layer["kernel_size"])
    assert max(arch["check"]["max_rel_diff"].values()) <= 1e-4
    assert not (out / "model.onnx").exists() and arch["notes"]["onnx"] == "not written (onnx=False)"

    x = _examples()
    with torch.no_grad():
        ref = res.model(x)
        # the loader rebuilds the trainable model from the JSON + weights
        again = load_model(out)
        torch.testing.assert_close(again(x), ref, rtol=1e-4, atol=1e-5)
        # the deployable model: only plain convs / fixed circular kernels, no kernel nets
        plain = res.deployable
        assert not any(isinstance(m, KernelLayer) for m in plain.modules())
        assert not any(type(m).__module__.startswith("nas_flex.layers") for m in plain.modules())
        convs = [m for m in plain.modules() if isinstance(m, (nn.Conv2d, FixedCircularConv2d))]
        assert len(convs) == 2
        if name == "niff":
            assert type(convs[0]) is nn.Conv2d  # the spatial stem the backbone keeps for NIFF
            assert all(isinstance(m, FixedCircularConv2d) for m in convs[1:])
            assert all(not list(m.parameters()) and m.spectrum_real.numel() > 0 for m in convs[1:])
        else:
            assert all(type(m) is nn.Conv2d for m in convs)
        torch.testing.assert_close(plain(x), ref, rtol=1e-4, atol=1e-5)
        # TorchScript and torch.export files load and agree
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            scripted = torch.jit.load(str(out / "model.torchscript.pt"))
        torch.testing.assert_close(scripted(x), ref, rtol=1e-4, atol=1e-5)
        program = torch.export.load(str(out / "model.pt2"))
        torch.testing.assert_close(program.module()(x), ref, rtol=1e-4, atol=1e-5)
    # weights: torch.load(weights_only=True) and safetensors both load into a freshly built model
    state = torch.load(out / "state_dict.pt", weights_only=True)
    fresh = build(arch["config"], in_channels=arch["in_channels"], num_classes=arch["num_classes"],
                  input_size=tuple(arch["input_size"]))
    fresh.load_state_dict(state)
    tensors = load_file(str(out / "weights.safetensors"))
    assert set(tensors) == {k for k, v in state.items() if isinstance(v, torch.Tensor)}


def test_frozen_frequency_layer_rejects_other_sizes(board, tmp_path):
    from nas_flex.export import FixedCircularConv2d, export_trial

    lb, ckpts, _ = board
    res = export_trial(lb, "niff", tmp_path, weights=ckpts["niff"] / "trial_state.pt", onnx=False)
    layer = next(m for m in res.deployable.modules() if isinstance(m, FixedCircularConv2d))
    with pytest.raises(RuntimeError, match="frozen frequency-domain kernel"):
        layer(torch.randn(1, layer.in_channels, layer.height + 2, layer.width))


def test_export_best_retrains_deterministically(board, tmp_path):
    from nas_flex.export import export_best
    from nas_flex.leaderboard import Leaderboard

    lb, ckpts, _ = board
    best = Leaderboard(lb).best("metrics_val_acc")
    res = export_best(lb, tmp_path, metric="metrics_val_acc", onnx=False)
    src = res.architecture["source"]
    assert src["trial_id"] == best["trial_id"]
    assert "retrained" in src["weights"]
    assert src["retrained_metrics"]["val_acc"] == pytest.approx(best["metrics_val_acc"])
    # same seed on the CPU: the retrained weights are the search trial's
    original = torch.load(ckpts[best["trial_id"]] / "trial_state.pt", weights_only=True)["model"]
    for key, value in res.model.state_dict().items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            torch.testing.assert_close(value, original[key], rtol=1e-5, atol=1e-6)


def test_mismatch_fails_loudly():
    from nas_flex.export import EquivalenceError, ExportError, check_outputs_match

    assert issubclass(EquivalenceError, ExportError) and issubclass(ExportError, NasFlexError)
    ref = torch.randn(4, 10)
    check_outputs_match(ref, ref + 1e-7)
    with pytest.raises(EquivalenceError, match="does not reproduce"):
        check_outputs_match(ref, ref + 1e-2)


def test_round_odd():
    from nas_flex.export import round_odd

    assert [round_odd(v) for v in (0.2, 1.0, 2.0, 3.4, 4.0, 5.9, 6.0, 7.2)] == [1, 1, 3, 3, 5, 5, 7, 7]


def test_discretise_trains(board):
    from nas_flex.export import discretise
    from nas_flex.leaderboard import Leaderboard
    from nas_flex.train import run_trial
    from nas_flex.train.config import resolve_config

    lb, _, _ = board
    df = Leaderboard(lb).to_pandas().set_index("trial_id")
    njet = discretise(df.loc["njet"])
    assert njet["conv"] == "conv" and njet["conv_hparams"] == {} and njet["pooling"] == "avg"
    flex = discretise(df.loc["flexconv"])
    assert len(flex["kernel_size"]) == 2
    for k in flex["kernel_size"]:
        for side in (k if isinstance(k, list) else [k]):
            assert side % 2 == 1
    resolve_config(flex)
    result = run_trial(flex)
    assert result.status == "completed" and result.epochs_completed == 1
    with pytest.raises(NasFlexError, match="already discrete"):
        discretise(df.loc["conv"])


def test_cli_export(board, tmp_path, capsys):
    from nas_flex.cli import main

    lb, ckpts, _ = board
    assert main(["export", str(tmp_path / "missing"), "--best", "--out", str(tmp_path / "o")]) == 2
    assert "no leaderboard" in capsys.readouterr().err
    assert main(["export", str(lb), "--trial", "nope", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no trial 'nope'" in err and "flexconv" in err
    rc = main(["export", str(lb), "--trial", "njet", "--out", str(tmp_path / "o"),
               "--weights", str(ckpts["njet"] / "trial_state.pt")])
    assert rc == 0
    assert (tmp_path / "o" / "model.torchscript.pt").stat().st_size > 0
    # ONNX by default: written and checked with onnxruntime (a learned-size trial)
    assert (tmp_path / "o" / "model.onnx").stat().st_size > 0
    arch = json.loads((tmp_path / "o" / "architecture.json").read_text())
    assert arch["files"]["onnx"] == "model.onnx" and arch["check"]["max_rel_diff"]["onnx"] <= 1e-4
    assert "onnx" in capsys.readouterr().out
    assert main(["export", str(lb), "--trial", "njet", "--out", str(tmp_path / "p"), "--no-onnx",
                 "--weights", str(ckpts["njet"] / "trial_state.pt")]) == 0
    assert not (tmp_path / "p" / "model.onnx").exists()
    assert (tmp_path / "p" / "model.pt2").stat().st_size > 0


# ---------------------------------------------------------------------------------------------------------- ONNX
@pytest.fixture(scope="module")
def every_kind(tmp_path_factory):
    """One tiny trained trial per registry layer kind: {kind: (config, trial_state.pt path)}."""
    from nas_flex.layers import available
    from nas_flex.train import run_trial

    root = tmp_path_factory.mktemp("onnx")
    out = {}
    for kind in available():
        cfg = {**BASE, **CONFIGS.get(kind, {"conv": kind})}
        result = run_trial(cfg, checkpoint_dir=root / kind)
        assert result.status == "completed", result.error
        out[kind] = (cfg, root / kind / "trial_state.pt")
    return out


def _registry_kinds():
    from nas_flex.layers import available

    return available()


@pytest.mark.parametrize("kind", _registry_kinds())
def test_onnx_export_matches_trained_model(every_kind, kind, tmp_path):
    """Every layer kind: model.onnx is written, passes the ONNX checker, and onnxruntime (run here independently of
    nas_flex.export.run_onnx) gives the trained model's outputs, also for a batch size other than the example's."""
    import onnx
    import onnxruntime as ort

    from nas_flex.export import export_row
    from nas_flex.layers import get

    cfg, weights = every_kind[kind]
    res = export_row(cfg, tmp_path, weights=weights, check_examples=32)
    path = tmp_path / "model.onnx"
    assert res.files["onnx"] == path and res.max_rel_diff["onnx"] <= 1e-4
    assert "dynamic batch" in res.architecture["notes"]["onnx"]
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    ops = {node.op_type for node in graph.graph.node}
    if get(kind).domain == "frequency":  # the fixed circular kernel runs as FFTs, not as a huge spatial conv
        assert "DFT" in ops
    else:
        assert "Conv" in ops and "DFT" not in ops
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for x in (_examples(16)[5:12], _examples(1)):
        with torch.no_grad():
            ref = res.model(x)
        (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        torch.testing.assert_close(torch.from_numpy(got), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
        assert torch.equal(torch.from_numpy(got).argmax(1), ref.argmax(1))


def test_onnx_missing_runtime_is_a_clear_error_before_any_work(board, monkeypatch, tmp_path):
    import importlib.util

    from nas_flex.export import ExportError, export_trial

    lb, ckpts, _ = board
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(ExportError, match=r"onnxruntime is not installed.*--no-onnx"):
        export_trial(lb, "conv", tmp_path / "o", weights=ckpts["conv"] / "trial_state.pt")
    assert not (tmp_path / "o").exists()  # raised before any file or training
    export_trial(lb, "conv", tmp_path / "p", weights=ckpts["conv"] / "trial_state.pt", onnx=False)
    assert (tmp_path / "p" / "model.pt2").exists() and not (tmp_path / "p" / "model.onnx").exists()


class _Payload:
    """A pickle that, if anything unpickled it, would create a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("damage", ["truncated", "malicious", "wrong_model"])
def test_a_bad_kept_weights_file_is_one_line_naming_it(board, tmp_path, capsys, damage):
    """``export --best`` with a damaged ``_weights/`` file: exit 2, one line naming the file, no output folder."""
    import pickle
    import shutil

    from nas_flex.cli import main
    from nas_flex.export.core import kept_weights_path
    from nas_flex.leaderboard import Leaderboard

    lb, ckpts, _ = board
    lb = shutil.copytree(lb, tmp_path / "lb")
    best = Leaderboard(lb).best("metrics_val_acc")
    kept = kept_weights_path(lb, "exp", best["trial_id"])
    kept.parent.mkdir(parents=True)
    marker = tmp_path / "payload_ran"
    if damage == "truncated":
        torch.save(torch.load(ckpts[best["trial_id"]] / "trial_state.pt", weights_only=True)["model"], kept)
        kept.write_bytes(kept.read_bytes()[: kept.stat().st_size // 2])
    elif damage == "malicious":
        kept.write_bytes(pickle.dumps(_Payload(marker)))
        with open(tmp_path / "probe.pkl", "wb") as fh:  # the payload is live: plain pickle would run it
            pickle.dump(_Payload(tmp_path / "probe_ran"), fh)
        pickle.loads((tmp_path / "probe.pkl").read_bytes())
        assert (tmp_path / "probe_ran").exists()
    else:  # a real state_dict, of another architecture
        other = "conv" if best["trial_id"] != "conv" else "njet"
        torch.save(torch.load(ckpts[other] / "trial_state.pt", weights_only=True)["model"], kept)
    out = tmp_path / "out"
    assert main(["export", str(lb), "--best", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nas-flex: error:") and str(kept) in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert {"truncated": "truncated", "malicious": "refused", "wrong_model": "do not fit"}[damage] in err
    assert not marker.exists()
    assert not out.exists()  # no half-written export is left


def test_a_sequence_model_exports_to_plain_causal_conv1d(tmp_path):
    """The 1-D path: a TCN of FlexConv1d layers on digits-seq exports to Conv1d layers with causal padding, in
    every format, with the trained model's outputs; load_model rebuilds it; discretise says why it does not apply."""
    from nas_flex.export import export_trial, load_model
    from nas_flex.leaderboard import write_trial
    from nas_flex.train import run_trial

    config = {"backbone": "tcn", "conv": "flexconv", "dataset": "digits-seq", "width": 4, "depth": 2, "epochs": 1,
              "train_subset": 64, "val_subset": 32, "batch_size": 32, "device": "cpu",
              "conv_hparams": {"hidden_channels": 8}}
    result = run_trial(config, checkpoint_dir=tmp_path / "ckpt")
    assert result.status == "completed" and result.learned_sizes
    # a 1-D kernel is (1, L) on a (1, 64) sequence: only its length can reach the input's bound
    assert not any("input" in (r.get("at_bound") or "") for r in result.learned_sizes)
    write_trial(tmp_path / "lb", result, experiment="seq", trial_id="t1", sync=False)
    res = export_trial(tmp_path / "lb", "t1", tmp_path / "out", weights=tmp_path / "ckpt" / "trial_state.pt",
                       check_examples=8)
    convs = [m for m in res.deployable.modules() if isinstance(m, nn.Conv1d)]
    assert convs and not any(isinstance(m, nn.Conv2d) for m in res.deployable.modules())
    assert set(res.max_rel_diff) == {"deployable", "torchscript", "torch_export", "onnx"}
    assert max(res.max_rel_diff.values()) < 1e-4
    arch = json.loads((tmp_path / "out" / "architecture.json").read_text())
    assert arch["input_size"] == [64] and arch["discrete_config"] is None and "tcn" in arch["notes"]["discretise"]
    x = torch.randn(3, 1, 64)
    with torch.no_grad():
        assert torch.allclose(load_model(tmp_path / "out")(x), res.model(x), atol=1e-6)
        assert torch.allclose(res.deployable(x), res.model(x), rtol=1e-4, atol=1e-5)


def test_a_row_of_the_users_own_loop_is_refused_before_any_work(board, tmp_path, capsys):
    """An experiment run with ``trainable=`` (its ``_experiments/<name>.json`` says so): export names the reason and
    the kept weights file, exit 2, and neither trains nor writes anything."""
    import shutil

    from nas_flex.cli import main
    from nas_flex.export import export_trial
    from nas_flex.storage import StorageLayout

    lb = shutil.copytree(board[0], tmp_path / "lb")
    meta = StorageLayout(lb).experiment_file("exp")
    meta.parent.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps({"experiment": "exp", "trainable": True}))
    out = tmp_path / "out"
    with pytest.raises(NasFlexError, match=r"trained by your own training function .*_weights/exp--conv\.pt"):
        export_trial(lb, "conv", out)
    assert main(["export", str(lb), "--best", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "docs/trainable.md" in err, err
    assert not out.exists()
    meta.write_text(json.dumps({"experiment": "exp", "trainable": False}))  # the built-in loop's: exported
    assert (export_trial(lb, "conv", out, onnx=False).out / "architecture.json").is_file()


@pytest.mark.parametrize("experiment", ["../../elsewhere", "_weights", "a/b"])
def test_a_forged_experiment_name_in_a_row_reads_nothing_outside_the_storage(board, tmp_path, experiment):
    """A row whose experiment names a path: export refuses it in one line before looking for weights with it."""
    import pandas as pd

    from nas_flex.errors import UnsafeStorageError
    from nas_flex.export import export_trial
    from nas_flex.leaderboard import Leaderboard

    row = Leaderboard(board[0]).to_pandas().iloc[0].copy()
    row["experiment"] = experiment
    forged = tmp_path / "forged"
    forged.mkdir()
    pd.DataFrame([row]).to_parquet(forged / "forged.parquet")
    (tmp_path / "elsewhere--conv.pt").write_bytes(b"not read")
    with pytest.raises(UnsafeStorageError, match="experiment name .* could name a path"):
        export_trial(forged, str(row["trial_id"]), tmp_path / "out", onnx=False)
    assert not (tmp_path / "out").exists()


def test_exporting_the_best_by_the_test_score_warns_that_it_selects_on_the_test_split(board, tmp_path):
    """The test split is for scoring: choosing the export by it is allowed, with a warning that names why."""
    import shutil

    import pandas as pd

    from nas_flex.export import export_best
    from nas_flex.leaderboard import Leaderboard

    lb = shutil.copytree(board[0], tmp_path / "lb")
    df = Leaderboard(lb).to_pandas()
    if "metrics_test_acc" not in df.columns or df["metrics_test_acc"].isna().all():  # rows without a test split
        for f in lb.glob("*.parquet"):
            part = pd.read_parquet(f)
            part["metrics_test_acc"] = 0.5
            part.to_parquet(f)
    with pytest.warns(UserWarning, match="chooses the trial on the held-out test split"):
        export_best(lb, tmp_path / "out", metric="metrics_test_acc", onnx=False)
    with warnings.catch_warnings(record=True) as seen:  # by validation: no such warning
        warnings.simplefilter("always")
        export_best(lb, tmp_path / "out2", metric="metrics_val_acc", onnx=False)
    assert not [w for w in seen if "held-out test split" in str(w.message)]
