"""run_trial end to end on the built-in digits: keys, sane values, metering, divergence, resume."""

from __future__ import annotations

import math

import pytest
import torch

from nas_flex.errors import HyperparameterError
from nas_flex.layers import KernelLayer, register, unregister
from nas_flex.record import RESULT_FIELDS, TrialRecord
from nas_flex.train import canonical_key, resolve_config, run_trial

# the ACONV paper's 2-layer net (conv - conv - pool - dense 256 - classes), narrow
BASE = {"dataset": "digits", "backbone": "simple", "head": "dense", "width": 8, "depth": 2, "epochs": 2,
        "batch_size": 64, "lr": 1e-2, "seed": 0}


@pytest.fixture(scope="module")
def digits_result():
    reports = []
    result = run_trial(dict(BASE), report=reports.append)
    return result, reports


def test_two_epochs_on_digits(digits_result):
    result, reports = digits_result
    assert isinstance(result, TrialRecord) and set(result.to_dict()) == set(RESULT_FIELDS)
    assert result.status == "completed" and result.error is None
    assert result.epochs_completed == 2 and [h["epoch"] for h in result.history] == [0, 1, 2]
    assert result.metrics["val_acc"] > 0.5  # chance is 0.1
    assert result.best["val_acc"] >= result.metrics["val_acc"]
    assert [r["epoch"] for r in reports] == [1, 2]
    assert reports[-1]["val_acc"] == result.metrics["val_acc"]


def test_metering_is_measured(digits_result):
    result, _ = digits_result
    from nas_flex.data import get_dataset
    from nas_flex.models import build

    splits = get_dataset("digits")
    model = build(result.config, in_channels=splits.input_shape[0], num_classes=splits.num_classes,
                  input_size=splits.input_shape[1:])
    assert result.params == sum(p.numel() for p in model.parameters())
    # two 3x3 convs at 16x16, (1*8 + 8*8) * 9 * 256 multiply-adds, plus the dense head 512*256 + 256*10,
    # two flops per multiply-add
    expected = 2 * ((1 * 8 + 8 * 8) * 9 * 16 * 16 + 8 * 8 * 8 * 256 + 256 * 10)
    assert expected <= result.flops < 1.05 * expected
    assert result.flops_fft == 0
    assert result.train_seconds > 0 and result.examples_per_second > 0
    assert result.peak_memory_bytes > 0 and result.peak_memory_kind == "process_max_rss"
    assert result.device.startswith("cpu")
    assert result.config == resolve_config(BASE)


def test_fft_layer_flops_are_counted():
    result = run_trial({**BASE, "conv": "niff", "epochs": 1, "train_subset": 64, "val_subset": 32})
    assert result.status == "completed"
    assert result.flops_fft > 0 and result.flops > result.flops_fft


def test_learned_sizes_per_epoch():
    result = run_trial({**BASE, "conv": "njet", "conv_hparams": {"order": 2}, "train_subset": 128,
                        "val_subset": 64})
    assert [h["epoch"] for h in result.history] == [0, 1, 2]
    for h in result.history:
        rows = h["learned_sizes"]
        assert [r["kind"] for r in rows] == ["njet", "njet"]
        assert all(r["height"] >= 1 and math.isfinite(r["sigma"]) for r in rows)
    # the trial's final records are the last epoch's, with where training left each size (nas_flex.train.bounds)
    final = [{k: v for k, v in r.items() if k not in ("at_bound", "budget_used")} for r in result.learned_sizes]
    assert final == result.history[-1]["learned_sizes"]
    assert all("at_bound" in r and r["budget_used"] > 0 for r in result.learned_sizes)


def test_same_seed_same_result():
    cfg = {**BASE, "epochs": 1, "train_subset": 128, "val_subset": 64}
    a, b = run_trial(cfg), run_trial(cfg)
    assert a.metrics == b.metrics
    c = run_trial({**cfg, "seed": 1})
    assert c.metrics != a.metrics


class _Explodes(KernelLayer):
    """A 3x3 conv that returns NaN from its 5th training call on: a divergence with a known time."""

    learns_size = False

    def __init__(self, in_channels, out_channels, kernel_size=3, *, device=None, dtype=None):
        super().__init__(in_channels, out_channels)
        self.conv = torch.nn.Conv2d(in_channels, out_channels, 3, padding=1, device=device, dtype=dtype)
        self.calls = 0

    effective_kernel_size = (3.0, 3.0)

    def forward(self, x):
        self._check_input(x)
        self.calls += self.training
        y = self.conv(x)
        return y * float("nan") if self.calls > 8 else y  # each layer counts its own steps


def test_divergence_is_a_status_not_an_exception():
    register("test_explodes")(_Explodes)
    try:
        # 128 examples / 64 per batch = 2 steps per epoch: epochs 1-4 train, step 9 gives NaN
        result = run_trial({**BASE, "conv": "test_explodes", "epochs": 6, "train_subset": 128, "val_subset": 64})
    finally:
        unregister("test_explodes")
    assert result.status == "diverged"
    assert "nan" in result.error.lower()
    assert result.epochs_completed == len(result.history) - 1 == 4
    assert result.metrics["val_acc"] == result.history[-1]["val_acc"]


def test_resume_continues_where_it_stopped(tmp_path):
    cfg = {**BASE, "epochs": 3, "train_subset": 128, "val_subset": 64, "dropout": 0.25}
    straight = run_trial(cfg)

    class Stop(Exception):
        pass

    def stop_after_two(metrics):
        if metrics["epoch"] == 2:
            raise Stop

    with pytest.raises(Stop):
        run_trial(cfg, report=stop_after_two, checkpoint_dir=tmp_path)
    seen = []
    resumed = run_trial(cfg, report=seen.append, checkpoint_dir=tmp_path)
    assert [m["epoch"] for m in seen] == [3]  # epochs 1-2 were not redone
    assert [h["val_acc"] for h in resumed.history] == [h["val_acc"] for h in straight.history]
    assert resumed.metrics == straight.metrics
    state = torch.load(tmp_path / "trial_state.pt", weights_only=True)
    assert state["epoch"] == 2



def test_resume_after_the_last_epoch_reports_the_trained_model(tmp_path):
    """A trial whose process died after its last checkpoint (before its row was written) is resumed with no epoch
    left: its record must describe the trained model (N-Jet's cost follows sigma), not the freshly built one."""
    cfg = {**BASE, "conv": "njet", "conv_hparams": {"order": 2}, "train_subset": 128, "val_subset": 64, "seed": 3}
    done = run_trial(cfg, checkpoint_dir=tmp_path)
    again = run_trial(cfg, checkpoint_dir=tmp_path)
    assert again.history[-1]["flops"] != again.history[0]["flops"]  # sigma moved: the cost changed
    assert (again.flops, again.flops_fft) == (done.flops, done.flops_fft) == (done.history[-1]["flops"],
                                                                               done.flops_fft)
    assert again.learned_sizes == done.learned_sizes and again.metrics == done.metrics

def test_config_errors():
    with pytest.raises(HyperparameterError, match=r"'epoch' \(did you mean 'epochs'\?\)"):
        resolve_config({"epoch": 3})
    with pytest.raises(HyperparameterError, match="'lr' must be"):
        resolve_config({"lr": "fast"})
    with pytest.raises(HyperparameterError, match="'epochs' must be >= 1"):
        resolve_config({"epochs": 0})
    with pytest.raises(HyperparameterError, match="JSON"):
        resolve_config({"conv_hparams": {"sigma_init": object()}})


def test_canonical_key_ignores_order_and_defaults():
    assert canonical_key({"epochs": 10, "conv": "conv"}) == canonical_key({"conv": "conv"})
    assert canonical_key({"lr": 0.1}) != canonical_key({"lr": 0.2})


def test_dataset_options_reach_the_dataset():
    result = run_trial({**BASE, "dataset": "digits-multiscale", "backbone": "simple", "head": "gap", "epochs": 1,
                        "train_subset": 64, "val_subset": 32, "data_options": {"scales": [1.0, 1.2]}})
    assert result.status == "completed"
    with pytest.raises(HyperparameterError, match="scale"):
        run_trial({**BASE, "dataset": "digits", "data_options": {"scales": [1.0, 2.0]}})


def test_a_non_finite_buffer_is_diverged_whatever_the_loss_says(tmp_path):
    """At lr 1e6 with SGD the training loss stays finite (BatchNorm normalises with batch statistics) while
    BatchNorm's running_var overflows to inf: the trial is diverged, and no non-finite state is checkpointed."""
    cfg = {"dataset": "digits", "backbone": "simple", "head": "dense", "width": 4, "epochs": 1, "train_subset": 96,
           "val_subset": 64, "batch_size": 32, "optimizer": "sgd", "lr": 1e6}
    result = run_trial(cfg, checkpoint_dir=tmp_path)
    assert result.status == "diverged"
    assert "running_var" in result.error and "the loss was finite" in result.error
    assert result.epochs_completed == 0 and math.isnan(result.metrics["val_acc"])
    assert not (tmp_path / "trial_state.pt").exists()  # the search keeps no weights holding an inf
