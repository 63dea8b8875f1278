"""The NIFF recipe experiment trains what it says: each recipe's config reaches the trial's optimizer as described."""

from __future__ import annotations

import pytest
import torch

from experiments.niff_recipe import DEFAULT_PLAN, METHODS, RECIPES, summarise, trial_config
from nas_flex.layers.niff import NIFFConv
from nas_flex.train.config import resolve_config
from nas_flex.train.trial import setup_trial


def _setup(recipe: str, method: str = "niff"):
    cfg = resolve_config({**trial_config(recipe, method, seed=0), "train_subset": 64, "val_subset": 32})
    trial, _ = setup_trial(cfg)
    return cfg, trial


def _niff_params(model: torch.nn.Module) -> set[int]:
    return {id(p) for m in model.modules() if isinstance(m, NIFFConv) for p in m.parameters()}


def test_authors_recipe_reaches_the_optimizer():
    cfg, trial = _setup("authors")
    opt = trial.opts.weights
    assert isinstance(opt, torch.optim.SGD)
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["nesterov"]
    (group,) = opt.param_groups  # NIFF has no size parameters: one group holds every weight, the filter MLPs too
    assert _niff_params(trial.model) <= {id(p) for p in group["params"]}
    assert group["weight_decay"] == pytest.approx(2e-3)
    assert group["lr"] == pytest.approx(0.02)  # no warm-up: the first step runs at the peak
    assert cfg["label_smoothing"] == 0.1 and cfg["epochs"] == 10 and cfg["batch_size"] == 32


def test_main_job_recipe_is_the_baseline_row():
    cfg, trial = _setup("nas_flex")
    opt = trial.opts.weights
    assert isinstance(opt, torch.optim.Adam)
    assert opt.param_groups[0]["weight_decay"] == 0.0
    assert opt.param_groups[0]["initial_lr"] == pytest.approx(1e-2)
    assert opt.param_groups[0]["lr"] < 1e-2  # the first step is inside the warm-up
    assert cfg["label_smoothing"] == 0.0
    assert trial_config("nas_flex_3x", "conv7", 0)["epochs"] == 3 * cfg["epochs"]


def test_plan_pairs_each_recipe_with_a_conv_of_the_same_budget():
    assert {rc for rc, _ in DEFAULT_PLAN} == set(RECIPES)
    assert {(rc, "conv7") for rc in RECIPES} <= set(DEFAULT_PLAN)
    assert trial_config("nas_flex", "conv7", 0)["kernel_size"] == 7 and set(METHODS) == {"niff", "conv7"}


def test_summary_pairs_by_seed():
    runs = [{"recipe": "nas_flex", "method": "niff", "seed": s, "val_acc": a} for s, a in ((0, 0.8), (1, 0.9))]
    runs += [{"recipe": "nas_flex", "method": "conv7", "seed": s, "val_acc": a} for s, a in ((0, 0.95), (1, 0.97))]
    runs += [{"recipe": "authors", "method": "niff", "seed": 1, "val_acc": 0.5}]
    summary = summarise(runs)
    diffs = summary["nas_flex"]["niff_minus_conv7"]["per_seed"]
    assert diffs == pytest.approx({0: -0.15, 1: -0.07})
    assert summary["nas_flex"]["niff"]["val_acc"][0] == pytest.approx(0.85)
    assert "niff_minus_conv7" not in summary["authors"]  # no conv under the authors' recipe yet
    assert summary["authors"]["niff_minus_conv7_main_recipe"]["per_seed"] == pytest.approx({1: 0.5 - 0.97})
