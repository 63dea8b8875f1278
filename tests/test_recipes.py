"""Each method's size parameters train by its own recipe; the record shows where sizes started and what they cost.

Behaviour, not constants: one Adam step moves a parameter by about its learning rate whatever the gradient's scale,
so the distance each size parameter moves in the first step tells which learning rate it really trained with.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nas_flex.layers import build
from nas_flex.leaderboard.schema import history_table, trial_table
from nas_flex.train import run_trial
from nas_flex.train.config import resolve_config
from nas_flex.train.optim import make_optimizers

LR = 1e-2


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        build("njet", 1, 4, order=2), nn.ReLU(),
        build("flexconv", 4, 4, hidden_channels=8, mask_sigma_init=0.3), nn.ReLU(),
        build("mixed", 4, 4, kernel_sizes=(3, 5)), nn.ReLU(),
        build("envelope", 4, 4, kernel_size=5),
    )


def _first_step_moves(config: dict) -> dict[str, float]:
    """max |change| of each layer's size parameters and of the ordinary weights after one optimizer step."""
    model = _model()
    cfg = resolve_config({"lr": LR, **config})
    opts = make_optimizers(model, cfg, schedule=lambda step: 1.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.randn(4, 1, 16, 16)
    opts.zero_grad()
    model(x).pow(2).mean().backward()
    opts.step(torch.amp.GradScaler("cuda", enabled=False))
    moves = {}
    for layer_idx, names in {"njet": ["0.log_sigma"], "flexconv": ["2.mask_sigma"], "mixed": ["4.alpha"],
                             "envelope": ["6.sigma"], "weights": ["4.weight"]}.items():
        moves[layer_idx] = max(float((model.get_parameter(n).detach() - before[n]).abs().max()) for n in names)
    return moves


def test_each_size_parameter_trains_with_its_layers_recipe():
    moved = _first_step_moves({})
    # Adam's first step moves every coordinate with a gradient by ~lr (sign of the gradient, bias-corrected)
    assert moved["weights"] == pytest.approx(LR, rel=0.05)
    assert moved["njet"] == pytest.approx(LR, rel=0.05)  # N-Jet: the weights' lr (Pintea et al.)
    assert moved["envelope"] == pytest.approx(LR, rel=0.05)  # ACONV: the weights' lr (Tek et al.)
    assert moved["flexconv"] == pytest.approx(0.1 * LR, rel=0.05)  # FlexConv: 0.1x (App. D.1, authors' code)
    # DARTS: own Adam at lr 3e-4 whatever the weights' lr, plus weight decay 1e-3 (tiny at alpha ~ 1e-3)
    assert moved["mixed"] == pytest.approx(3e-4, rel=0.05)


def test_size_lr_factor_overrides_every_recipe():
    moved = _first_step_moves({"size_lr_factor": 0.5})
    for kind in ("njet", "envelope", "flexconv", "mixed"):
        assert moved[kind] == pytest.approx(0.5 * LR, rel=0.05), kind
    assert moved["weights"] == pytest.approx(LR, rel=0.05)


def test_recipes_are_recorded_with_their_source():
    cfg = resolve_config({"lr": LR})
    recipes = {r["kind"]: r for r in make_optimizers(_model(), cfg, schedule=lambda s: 1.0).recipes}
    assert set(recipes) == {"njet", "flexconv", "mixed", "envelope"}
    assert recipes["mixed"]["optimizer"] == "adam" and recipes["mixed"]["schedule"] == "constant"
    assert recipes["flexconv"]["lr"] == pytest.approx(0.1 * LR) and "0.1x" in recipes["flexconv"]["source"]
    assert "Pintea" in recipes["njet"]["source"]
    over = make_optimizers(_model(), resolve_config({"lr": LR, "size_lr_factor": 2.0}), schedule=lambda s: 1.0)
    assert all(r["lr"] == pytest.approx(2 * LR) and "override" in r["source"] for r in over.recipes)


BASE = {"dataset": "digits", "backbone": "simple", "head": "dense", "width": 8, "depth": 2, "epochs": 2,
        "batch_size": 32, "lr": 1e-2, "seed": 0, "train_subset": 256, "val_subset": 64}


def test_history_starts_with_the_state_at_initialisation():
    result = run_trial({**BASE, "conv": "njet", "conv_hparams": {"order": 2}})
    first = result.history[0]
    assert first["epoch"] == 0 and first["train_loss"] is None
    assert 0.0 <= first["val_acc"] <= 0.3  # an untrained net is near chance (0.1)
    sigmas0 = [r["sigma"] for r in first["learned_sizes"]]
    assert sigmas0 == pytest.approx([1.0, 1.0])  # the paper's initial sigma
    assert list(result.initial_sizes) == first["learned_sizes"]
    sigmas = [r["sigma"] for r in result.learned_sizes]
    assert any(abs(s - 1.0) > 1e-3 for s in sigmas)  # trained at the weights' lr, sigma moves
    assert result.best["epoch"] >= 1 and result.epochs_completed == 2
    row = trial_table(result, experiment="e", trial_id="t", written_at=result.finished).to_pylist()[0]
    assert [s["height"] for s in row["initial_sizes"]] == [r["height"] for r in first["learned_sizes"]]
    assert "Pintea" in row["size_recipes"]
    hist = history_table(result, experiment="e", trial_id="t", written_at=result.finished).to_pylist()
    assert [h["epoch"] for h in hist] == [0, 1, 2] and hist[0]["train_loss"] is None


def test_regularization_is_logged_apart_from_the_task_loss():
    cfg = {**BASE, "conv": "flexconv", "epochs": 1, "conv_hparams": {"hidden_channels": 8}}
    off = run_trial(cfg)  # FlexConv's default: no alias-free penalty
    on = run_trial({**cfg, "conv_hparams": {"hidden_channels": 8, "regularize": True}})
    assert off.history[-1]["train_reg"] == 0.0
    assert on.history[-1]["train_reg"] > 0.0
    # train_loss is the cross-entropy alone: at the start of training it is near ln(10), whatever the penalty
    assert on.history[-1]["train_loss"] < 3 * math.log(10)
    hist = history_table(on, experiment="e", trial_id="t", written_at=on.finished).to_pylist()
    assert hist[-1]["train_reg"] == pytest.approx(on.history[-1]["train_reg"])


def test_bilevel_steps_sizes_on_held_out_batches_only():
    cfg = {**BASE, "conv": "mixed", "conv_hparams": {"kernel_sizes": [3, 5]}, "epochs": 1}
    joint = run_trial(cfg)
    bilevel = run_trial({**cfg, "size_update": "bilevel", "bilevel_split": 0.5})
    assert bilevel.status == "completed"
    # the weights saw half the training split; the alphas moved on the other half
    seen_joint = joint.examples_per_second * joint.train_seconds
    seen_bilevel = bilevel.examples_per_second * bilevel.train_seconds
    assert seen_joint == pytest.approx(256) and seen_bilevel == pytest.approx(128)
    probs = [r["probabilities"] for r in bilevel.learned_sizes]
    probs0 = [r["probabilities"] for r in bilevel.initial_sizes]
    assert probs != probs0
    assert all(r["update"] == "bilevel" for r in bilevel.size_recipes)


def test_bilevel_config_is_checked():
    from nas_flex.errors import HyperparameterError

    with pytest.raises(HyperparameterError, match="size_update"):
        resolve_config({"size_update": "alternate"})
    with pytest.raises(HyperparameterError, match="bilevel_split"):
        resolve_config({"bilevel_split": 1.0})
