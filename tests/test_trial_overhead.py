"""What a trial does besides training, made cheaper without changing what it records: FLOPs counted again only
when a kernel's size changed, a trial's peak memory its own in a worker that ran others before, a trial's record
independent of what ran before it in the process, and Ray's workers reused between trials."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from nas_flex.config import resolve_config
from nas_flex.errors import SearchSpaceError
from nas_flex.layers import available, build, get
from nas_flex.train.metering import FlopMeter, count_flops, kernel_signature, peak_memory, reset_peak_memory
from nas_flex.train.trial import _initial_progress, _train_epochs, run_trial, setup_trial
from nas_flex.tune import RunConfig

TINY = {"dataset": "digits", "epochs": 3, "train_subset": 256, "val_subset": 64, "width": 8, "depth": 2,
        "batch_size": 32, "device": "cpu"}


def _uncached(model: torch.nn.Module, sample: torch.Tensor) -> float:
    was = model.training
    model.eval()
    try:
        return count_flops(model, sample).per_sample
    finally:
        model.train(was)


@pytest.mark.parametrize("conv", ["conv", "njet"])
def test_epoch_records_report_the_flops_of_an_uncached_count(conv):
    # lr 0.05 moves N-Jet's sigma far enough in 3 epochs of 8 steps that a kernel's integer size changes
    cfg = resolve_config({**TINY, "conv": conv, "lr": 0.05, **({"kernel_size": 5} if conv == "conv" else {})})
    trial, flops = setup_trial(cfg)
    progress = _initial_progress(trial, flops)
    seen = []

    def report(record):  # called right after the epoch's record is made, before the next epoch trains
        seen.append((record["flops"], _uncached(trial.model, trial.sample), kernel_signature(trial.model)))

    _train_epochs(trial, progress, report, None)
    assert len(seen) == cfg["epochs"]
    assert [recorded for recorded, _, _ in seen] == [reference for _, reference, _ in seen]
    if conv == "conv":
        assert trial.flop_meter.counts == 1  # counted at set-up only: a fixed kernel's cost cannot change
    else:
        signatures = {sig for _, _, sig in seen}
        assert len(signatures) > 1  # the size moved ...
        assert len({recorded for recorded, _, _ in seen}) > 1  # ... and the recorded cost with it
        assert trial.flop_meter.counts <= len(signatures) + 1  # ... and it was counted only when it moved


def test_the_meter_counts_again_when_a_kernel_size_changes():
    from nas_flex.layers.njet import NJetConv

    layer = NJetConv(2, 3)
    meter = FlopMeter(layer, torch.randn(1, 2, 24, 24))
    first = meter()
    assert meter() is first and meter.counts == 1
    with torch.no_grad():
        layer.log_sigma.add_(1.0)  # sigma x e: a larger kernel
    grown = meter()
    assert meter.counts == 2 and grown.total > first.total
    assert grown.total == count_flops(layer.eval(), torch.randn(1, 2, 24, 24)).total


def test_a_trial_records_the_same_whatever_ran_before_it_in_the_process():
    cfg = {**TINY, "conv": "conv", "kernel_size": 3, "epochs": 2}
    first = run_trial(cfg)
    run_trial({**TINY, "conv": "njet", "epochs": 1, "deterministic": True, "seed": 5})
    again = run_trial(cfg)
    keys = ("val_acc", "val_loss", "train_loss", "flops", "learned_sizes")
    assert [{k: h[k] for k in keys} for h in again.history] == [{k: h[k] for k in keys} for h in first.history]
    assert again.flops == first.flops and again.metrics == first.metrics


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's resettable peak RSS")
def test_peak_memory_is_measured_from_the_reset():
    cpu = torch.device("cpu")
    reset_peak_memory(cpu)
    base, kind = peak_memory(cpu)
    big = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    high, _ = peak_memory(cpu)
    del big
    reset_peak_memory(cpu)
    after, _ = peak_memory(cpu)
    assert kind == "process_max_rss"
    assert high >= base + 60 * 2**20  # the allocation is seen
    assert after < high - 60 * 2**20  # and forgotten after the next reset: a later trial reports its own peak


def test_reuse_actors_is_checked_before_ray():
    assert RunConfig().reuse_actors is True
    with pytest.raises(SearchSpaceError, match="`reuse_actors` must be True or False"):
        RunConfig(reuse_actors="yes")


@pytest.mark.usefixtures("local_ray")
@pytest.mark.slow
@pytest.mark.ray
def test_a_search_reuses_its_worker_processes(tmp_path):
    import nas_flex
    from nas_flex.spaces import SearchSpace

    log = tmp_path / "pids.jsonl"

    def space(trial):
        return {**TINY, "epochs": 1, "train_subset": 64, "val_subset": 32, "seed": trial.suggest_categorical(
            "seed", [0, 1, 2, 3])}

    def trainable(config, ctx, log=str(log)):
        data = ctx.data()
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(np.prod(data.input_shape)), 10))
        x = torch.stack([data.val[i][0] for i in range(8)])
        ctx.report(model, example=x, val_acc=0.5, val_loss=1.0)
        with open(log, "a") as f:
            f.write(json.dumps({"pid": os.getpid()}) + "\n")

    lb = nas_flex.search(SearchSpace(space, sampler="grid"), storage=tmp_path / "runs", trainable=trainable,
                         verbose=0)
    rows = lb.to_pandas()
    pids = {json.loads(line)["pid"] for line in Path(log).read_text().splitlines()}
    assert len(rows) == 4 and set(rows["status"]) == {"completed"}
    assert len(pids) < 4  # some trial ran in a worker process a finished trial left


@pytest.mark.parametrize("name", sorted(n for n in available() if get(n).spatial_dims == 2))
def test_every_layer_has_a_stable_cost_signature_and_the_meter_matches_a_fresh_count(name):
    layer = build(name, 3, 4, **get(name).example_hparams)
    x = torch.randn(1, 3, 16, 16)
    meter = FlopMeter(layer, x)
    first = meter()
    signature = layer.cost_signature()
    hash(signature)
    assert layer.cost_signature() == signature and meter() is first  # unchanged layer: no recount
    assert first.total == count_flops(layer.eval(), x).total
    if get(name).domain == "frequency":
        assert signature is None  # the input grid sets a frequency layer's cost


def test_val_every_validates_only_the_chosen_epochs_and_trains_the_same_model():
    """``val_every`` 3 over 4 epochs validates after epochs 3 and 4 (the last, always) and not at initialisation;
    the training is unchanged (validation draws no random numbers), so the final metrics equal a run validated
    after every epoch, and the config and architecture keys of the default are those of a config without the key."""
    from nas_flex.errors import HyperparameterError
    from nas_flex.train import run_trial

    base = {**TINY, "epochs": 4, "train_subset": 64, "val_subset": 32}
    every, reports = run_trial(base), []
    sparse = run_trial({**base, "val_every": 3}, report=reports.append)
    validated = [h["epoch"] for h in sparse.history if h["val_acc"] is not None]
    assert validated == [3, 4] and [h["epoch"] for h in sparse.history] == [0, 1, 2, 3, 4]
    assert [r["epoch"] for r in reports] == [3, 4]  # the searcher and ASHA see validated epochs only
    assert sparse.history[0]["learned_sizes"] == every.history[0]["learned_sizes"]  # sizes at init still recorded
    assert sparse.metrics["val_acc"] == every.metrics["val_acc"]
    assert sparse.metrics["train_loss"] == every.metrics["train_loss"]
    assert sparse.best["epoch"] in (3, 4)
    assert resolve_config({**base, "val_every": 1}).key == resolve_config(base).key
    assert resolve_config({**base, "val_every": 5}).architecture_key == resolve_config(base).architecture_key
    with pytest.raises(HyperparameterError, match="val_every"):
        resolve_config({**base, "val_every": 0})


def test_how_often_a_trial_validates_never_changes_what_it_trains():
    """CF-Conv draws its sampled positions from torch's global RNG; evaluation must not draw from it (a DataLoader
    draws a base seed when an iteration starts), so a CF-Conv trial validated after every epoch and one validated
    only after the last train the same model."""
    from nas_flex.train import run_trial

    base = {**TINY, "conv": "cfconv", "conv_hparams": {"sampled_positions": 64}, "epochs": 3, "train_subset": 64,
            "val_subset": 32, "image_size": 8}
    every = run_trial(base)
    last = run_trial({**base, "val_every": 3})
    assert every.status.value == "completed"
    assert last.metrics["train_loss"] == every.metrics["train_loss"]
    assert last.metrics["val_acc"] == every.metrics["val_acc"]
