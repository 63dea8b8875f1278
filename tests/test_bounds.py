"""Sizes at a bound: a size parameter that used its optimizer's whole travel budget, or a kernel spanning the map."""

from __future__ import annotations

import dataclasses
import math

import pandas as pd
import pytest
import torch

from nas_flex.errors import HyperparameterError
from nas_flex.layers.base import SizeRecipe
from nas_flex.layers.njet import NJetConv
from nas_flex.leaderboard.schema import trial_table
from nas_flex.leaderboard.sizes import format_size_changes, size_changes
from nas_flex.sizes import learned_size_records
from nas_flex.train import run_trial
from nas_flex.train.bounds import mark_bounds, size_parameter_start, travel_budgets
from nas_flex.train.optim import make_optimizers
from nas_flex.train.trial import warmup_cosine

CFG = {"optimizer": "adam", "weight_decay": 0.0, "size_lr_factor": None, "size_update": "joint"}


def _schedule(total: int, warmup: int = 0):
    return lambda s: warmup_cosine(s, total, warmup)


def test_adam_with_a_constant_gradient_travels_exactly_its_budget():
    # the reference: Adam's step is lr when the gradient never changes, so the travel is the sum of the lrs
    p = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.Adam([p], lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(40, 5))
    for _ in range(40):
        opt.zero_grad()
        (p * torch.tensor([2.0, -5.0, 0.5])).sum().backward()
        opt.step()
        sched.step()
    budget = travel_budgets([opt], [sched])[id(p)]
    assert budget == pytest.approx(0.05 * sum(warmup_cosine(s, 40, 5) for s in range(40)))
    assert p.detach().abs().tolist() == pytest.approx([budget] * 3, rel=1e-4)


def test_sgd_gives_no_budget():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    assert travel_budgets([opt], [sched]) == {id(p): None}


def _fit(sigma_init: float, target_sigma: float, lr: float, steps: int, size: int = 24) -> list[dict]:
    """Fit an N-Jet layer to another N-Jet layer of ``target_sigma`` (the same alphas) with the trial's optimizers."""
    torch.manual_seed(0)
    layer, target = NJetConv(1, 2, sigma_init=sigma_init, order=2), NJetConv(1, 2, sigma_init=target_sigma, order=2)
    target.load_state_dict({**target.state_dict(), "alphas": layer.alphas.detach().clone()})
    start = size_parameter_start(layer)
    opts = make_optimizers(layer, {**CFG, "lr": lr}, _schedule(steps))
    for _ in range(steps):
        x = torch.randn(8, 1, size, size)
        opts.zero_grad()
        torch.nn.functional.mse_loss(layer(x), target(x).detach()).backward()
        opts.weights.step()
        opts.schedule_step()
    return mark_bounds(learned_size_records(layer), layer, start, travel_budgets(opts.all, opts.schedulers))


def test_a_sigma_pulled_far_with_a_tiny_budget_is_marked_schedule():
    (rec,) = _fit(sigma_init=1.0, target_sigma=4.0, lr=1e-3, steps=20)
    assert rec["at_bound"] == "schedule"
    assert rec["budget_used"] >= 0.9
    assert rec["sigma"] < 1.05  # log sigma moved by at most 20 x 1e-3: nowhere near 4


def test_a_sigma_that_reaches_its_target_is_not_marked():
    (rec,) = _fit(sigma_init=1.0, target_sigma=1.5, lr=5e-2, steps=200)
    assert rec["sigma"] == pytest.approx(1.5, rel=0.05)  # it got where the data wanted it
    assert rec["budget_used"] < 0.5
    assert rec["at_bound"] is None


def test_a_kernel_spanning_the_input_is_marked_input():
    layer = NJetConv(1, 1, sigma_init=3.0)  # side 2 ceil(6) + 1 = 13
    start = size_parameter_start(layer)
    for side, expected in ((8, "input"), (32, None)):
        layer(torch.randn(1, 1, side, side))
        (rec,) = mark_bounds(learned_size_records(layer), layer, start, {})
        assert rec["at_bound"] == expected
        assert rec["budget_used"] is None  # no optimizer: no budget


@pytest.fixture(scope="module")
def bounded_trial():
    """One optimizer step: Adam's first step is exactly lr, so the whole budget is used; sigma 3 on 8 px is capped."""
    cfg = {"dataset": "digits", "backbone": "simple", "conv": "njet", "conv_hparams": {"order": 2, "sigma_init": 3.0},
           "width": 4, "depth": 2, "pooling": "none", "image_size": 8, "epochs": 1, "batch_size": 32,
           "train_subset": 32, "val_subset": 32, "lr": 1e-3, "seed": 0}
    return run_trial(cfg)


def test_a_trial_records_the_marks_and_the_summary_shows_them(bounded_trial):
    result = bounded_trial
    first = result.learned_sizes[0]
    assert first["at_bound"] == "schedule+input"
    assert first["budget_used"] == pytest.approx(1.0, abs=1e-3)
    assert result.initial_sizes[0].get("at_bound") is None  # only the final sizes are judged
    row = trial_table(result, experiment="e", trial_id="t0", written_at=result.finished).to_pandas()
    changes = size_changes(row)
    assert changes["at_bound"].iloc[0] == "schedule+input"
    assert "[at bound: schedule+input]" in format_size_changes(changes).splitlines()[0]
    free = size_changes(pd.DataFrame({"trial_id": ["t"], "learned_sizes_json": [
        '[{"name": "a", "kind": "njet", "height": 5.0, "width": 5.0, "sigma": 1.0}]']}))
    assert free["at_bound"].iloc[0] is None and "at bound" not in format_size_changes(free)


def test_constant_size_schedule_keeps_the_peak_learning_rate():
    layer = NJetConv(1, 1)
    constant = dataclasses.replace(NJetConv.size_recipe, schedule="constant")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(NJetConv, "size_recipe", constant)
        opts = make_optimizers(layer, {**CFG, "lr": 0.01}, _schedule(10))
    for _ in range(9):
        opts.weights.step()  # no gradients: nothing moves, the schedule advances
        opts.schedule_step()
    lrs = {g["name"]: g["lr"] for g in opts.weights.param_groups}
    assert lrs["size:njet"] == pytest.approx(0.01)
    assert lrs["weights"] == pytest.approx(0.01 * warmup_cosine(9, 10, 0))
    assert opts.recipes[0]["schedule"] == "constant"
    assert travel_budgets(opts.all, opts.schedulers)[id(layer.log_sigma)] == pytest.approx(0.09)
    assert math.isclose(travel_budgets(opts.all, opts.schedulers)[id(layer.alphas)],
                        0.01 * sum(warmup_cosine(s, 10, 0) for s in range(9)))


def test_unknown_size_schedule_is_refused():
    with pytest.raises(HyperparameterError, match="schedule"):
        SizeRecipe(source="x", schedule="cosine")


def test_the_report_lists_sizes_at_bound(bounded_trial, tmp_path):
    from nas_flex.leaderboard import write_trial
    from nas_flex.report import make_report

    write_trial(tmp_path / "lb", bounded_trial.to_dict(), experiment="e", trial_id="nj", sync=False)
    text = make_report(tmp_path / "lb", tmp_path / "rep").read_text()
    assert "at bound" in text and "njet nj layer 1 (schedule+input)" in text


# ------------------------------------------------------------------------------------------- a layer's own range
def _fit_envelope(target_sigma: float | None, steps: int = 150) -> list[dict]:
    """Fit the apertures of an envelope layer (weights frozen, sigma from 0.4 grid units, Adam at 0.05 with the
    trial's optimizers and after-step clip) to a target kernel: W o U(target_sigma), or with ``None`` W o U(1/7)
    narrowed further by a 0.5 px Gaussian, which no aperture in the clip [1/7, 7] can reach."""
    from nas_flex.functional.envelope import envelope_weight
    from nas_flex.layers.envelope import EnvelopeConv

    torch.manual_seed(0)
    layer = EnvelopeConv(2, 3, 7, sigma_init=0.4)
    layer.weight.requires_grad_(False)
    with torch.no_grad():
        if target_sigma is None:
            r2 = (torch.arange(7.0) - 3).square()
            narrow = torch.exp(-0.5 * (r2[:, None] + r2[None, :]) / 0.5**2)  # (7, 7), 1 at the centre
            kernel = envelope_weight(layer.weight, torch.full((3,), 1 / 7)) * narrow
        else:
            kernel = envelope_weight(layer.weight, torch.full((3,), target_sigma))
    start = size_parameter_start(layer)
    opts = make_optimizers(layer, {**CFG, "lr": 0.05}, lambda s: 1.0)
    for _ in range(steps):
        x = torch.randn(8, 2, 12, 12)
        target = torch.nn.functional.conv2d(x, kernel, layer.bias.detach(), padding=3)
        opts.zero_grad()
        torch.nn.functional.mse_loss(layer(x), target).backward()
        opts.weights.step()
        opts.schedule_step()
        layer.constrain_()  # as the trial does after every step
    return mark_bounds(learned_size_records(layer), layer, start, travel_budgets(opts.all, opts.schedulers))


def test_apertures_driven_onto_the_clip_are_marked_range():
    (rec,) = _fit_envelope(target_sigma=None)
    assert rec["sigma_min"] == pytest.approx(1 / 7, rel=1e-6)  # held on the clip, where the target pulls past it
    assert rec["at_bound"] == "range"
    assert rec["budget_used"] < 0.9  # 150 steps of 0.05 could move them by 7.5: the clip stopped them, not Adam


def test_apertures_that_reach_their_target_inside_the_range_are_not_marked():
    (rec,) = _fit_envelope(target_sigma=0.25)
    assert rec["sigma_min"] == pytest.approx(0.25, rel=0.05) and rec["sigma_max"] == pytest.approx(0.25, rel=0.05)
    assert rec["at_bound"] is None


def test_a_range_is_declared_by_the_layer_and_marks_only_what_sits_on_it():
    from nas_flex.layers.envelope import EnvelopeConv

    layer = EnvelopeConv(1, 4, 7, sigma_init=(0.3, 0.6))
    assert [(p is layer.sigma, lo, hi) for p, lo, hi in layer.size_ranges()] == [(True, 1 / 7, 7.0)]
    from nas_flex.layers import build

    assert list(build("conv", 1, 1, kernel_size=3).size_ranges()) == []  # the default: no declared range
    start = size_parameter_start(layer)
    for values, expected in (([0.3, 0.4, 0.5, 0.6], None), ([1 / 7, 0.4, 0.5, 0.6], "range"),
                             ([0.3, 0.4, 0.5, 7.0], "range"), ([1 / 7 * 1.01, 0.4, 0.5, 0.6], None)):
        with torch.no_grad():
            layer.sigma.copy_(torch.tensor(values))
        (rec,) = mark_bounds(learned_size_records(layer), layer, start, {})
        assert rec["at_bound"] == expected, values
    # moved from 0.3 to 1/7 with a budget of 0.1: stopped by the schedule and (one filter) by the clip
    with torch.no_grad():
        layer.sigma.copy_(torch.tensor([1 / 7, 0.4, 0.5, 0.6]))
    (rec,) = mark_bounds(learned_size_records(layer), layer, start, {id(layer.sigma): 0.1})
    assert rec["at_bound"] == "schedule+range" and rec["budget_used"] == pytest.approx((0.3 - 1 / 7) / 0.1)


@pytest.fixture(scope="module")
def clipped_trial():
    """An envelope trial whose apertures all start on the clip (sigma_init below 1/n) and are not trained
    (size_lr_factor 0): a size that starts at the clip and stays there counts as held by the range."""
    cfg = {"dataset": "digits", "backbone": "simple", "conv": "envelope", "kernel_size": 3,
           "conv_hparams": {"sigma_init": 0.05}, "width": 4, "depth": 2, "pooling": "none", "image_size": 8,
           "epochs": 1, "batch_size": 32, "train_subset": 32, "val_subset": 32, "lr": 1e-2, "size_lr_factor": 0.0,
           "seed": 0}
    return run_trial(cfg)


def test_a_trial_with_apertures_on_the_clip_shows_range_in_the_summary_and_the_report(clipped_trial, tmp_path):
    from nas_flex.leaderboard import write_trial
    from nas_flex.report import make_report

    result = clipped_trial
    assert [r["at_bound"] for r in result.learned_sizes] == ["range", "range"]
    assert result.learned_sizes[0]["sigma_max"] == pytest.approx(1 / 3)
    row = trial_table(result, experiment="e", trial_id="t0", written_at=result.finished).to_pandas()
    assert "[at bound: range]" in format_size_changes(size_changes(row)).splitlines()[0]
    write_trial(tmp_path / "lb", result.to_dict(), experiment="e", trial_id="env", sync=False)
    text = make_report(tmp_path / "lb", tmp_path / "rep").read_text()
    assert "envelope env layer 1 (range)" in text


@pytest.mark.parametrize("kind", ["njet", "flexconv"])
def test_njet_and_flexconv_declare_their_sigma_clips(kind):
    """N-Jet's log_sigma is clipped to log SIGMA_BOUNDS, FlexConv's mask width to [SIGMA_MIN, SIGMA_MAX]: a size on
    the clip is marked "range", one just inside it is not, and the declared range is the one constrain_ applies."""
    from nas_flex.layers import build

    layer = build(kind, 1, 2)
    ((param, low, high),) = list(layer.size_ranges())
    assert param is (layer.log_sigma if kind == "njet" else layer.mask_sigma)
    start = size_parameter_start(layer)
    for value, expected in ((low - 1.0 if kind == "njet" else low / 2, "range"), (high + 1.0, "range"),
                            ((low + high) / 2, None), (low + 0.05 * abs(low) + 1e-3, None)):
        with torch.no_grad():
            param.fill_(value)
        layer.constrain_()  # as the trial does after every step: a value past the clip lands on it
        v = param.detach()
        assert low - 1e-6 * abs(low) <= float(v.min()) and float(v.max()) <= high + 1e-6 * abs(high)  # float32
        (rec,) = mark_bounds(learned_size_records(layer), layer, start, {})
        assert rec["at_bound"] == expected, (kind, value)
