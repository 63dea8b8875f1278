"""The held-out test split (config key ``test_fraction``): disjoint from train and validation, absent by default (the
splits then stay exactly what they were), scored once after the last epoch, and never seen by a searcher or
scheduler."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nas_flex.config import resolve_config
from nas_flex.data import DatasetSplits, dataset_from_config, get_dataset, register, unregister
from nas_flex.data.digits import build_digits, load_digits
from nas_flex.errors import HyperparameterError, NasFlexError, SearchSpaceError, TrainableError
from nas_flex.record import TASK_METRICS, TEST_METRICS
from nas_flex.spaces import SearchSpace

DIGITS_FAMILY = ("digits", "digits-multiscale", "digits-scaleshift", "digits-seq", "digits-seq-permuted")
TINY = {"backbone": "simple", "head": "dense", "width": 4, "dataset": "digits", "epochs": 2, "train_subset": 96,
        "val_subset": 64, "batch_size": 32}

# digests of every split's labels and per-sample meta (digit indices, scales, paste boxes), computed with the code as
# it was before test splits existed: without test_fraction the same seed must still give exactly these splits
BEFORE = {
    ("digits", 0): "76d5f89dcee70f89", ("digits", 3): "8c9720739e0dfb74",
    ("digits-multiscale", 0): "92a23ec15ba7ea74", ("digits-multiscale", 3): "25430688c7ecc07c",
    ("digits-scaleshift", 0): "a980d49b5a1cb8f0", ("digits-scaleshift", 3): "61b1f647cb8060d4",
    ("digits-seq", 0): "76d5f89dcee70f89", ("digits-seq", 3): "8c9720739e0dfb74",
    ("digits-seq-permuted", 0): "76d5f89dcee70f89", ("digits-seq-permuted", 3): "8c9720739e0dfb74",
    ("textures", 0): "605bc307be4ccef3", ("textures", 3): "736cf00f7440833d",
}


def _digest(splits: DatasetSplits) -> str:
    h = hashlib.sha256()
    for split in (splits.train, splits.val):
        for key in sorted(split.meta):
            h.update(key.encode())
            h.update(split.meta[key].numpy().tobytes())
        h.update(split.targets.numpy().tobytes())
    return h.hexdigest()[:16]


def _digits_of(split) -> set[int]:
    return set(split.meta["source_index"].tolist())


# ------------------------------------------------------------------------------------------------ the splits
@pytest.mark.parametrize("name", DIGITS_FAMILY)
def test_digit_splits_are_disjoint_stratified_and_normalised_on_train(name):
    splits = get_dataset(name, seed=3, test_fraction=0.25)
    train, val, test = _digits_of(splits.train), _digits_of(splits.val), _digits_of(splits.test)
    assert not train & val and not train & test and not val & test  # no digit in two splits
    assert len(train | val | test) == 1797 == len(splits.train) + len(splits.val) + len(splits.test)
    _, labels = load_digits()
    for c in range(10):  # stratified: round(0.25 n_c) of each class in test, round(0.2 of the rest) in val
        n_c = int((labels == c).sum())
        n_test = int((splits.test.targets == c).sum())
        assert n_test == round(0.25 * n_c)
        assert int((splits.val.targets == c).sum()) == round(0.2 * (n_c - n_test))
    assert (splits.test.targets.numpy() == labels[splits.test.meta["source_index"].numpy()]).all()
    x = splits.train.inputs  # standardised with the training split's own statistics
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-3
    assert splits.test.inputs.shape[1:] == x.shape[1:] and splits.options["test_fraction"] == 0.25
    if name == "digits-scaleshift":  # scored where validation selects: at the validation scales
        assert float(splits.test.meta["scale"].min()) >= 2 - 1 / 16 and float(splits.train.meta["scale"].max()) <= 1.5
    # its own random stream: another seed draws other test digits; the same seed the same ones
    assert _digits_of(get_dataset(name, seed=4, test_fraction=0.25).test) != test
    assert _digits_of(get_dataset(name, seed=3, test_fraction=0.25).test) == test


@pytest.mark.parametrize("name", [*DIGITS_FAMILY, "textures"])
@pytest.mark.parametrize("seed", [0, 3])
def test_without_test_fraction_the_splits_are_exactly_the_ones_before(name, seed):
    plain = get_dataset(name, seed=seed)
    assert plain.test is None and "test_fraction" not in plain.options
    assert _digest(plain) == BEFORE[(name, seed)]
    cfg = resolve_config({"dataset": name, "seed": seed})  # the config's key at its default: the same arrays
    assert cfg["test_fraction"] is None
    via_config = dataset_from_config(cfg)
    for a, b in ((plain.train, via_config.train), (plain.val, via_config.val)):
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert plain.mean == via_config.mean and plain.std == via_config.std


def test_texture_test_crops_come_from_cells_of_their_own():
    from nas_flex.data.textures import DEFAULT_SIZE

    splits = get_dataset("textures", seed=2, test_fraction=0.2, train_per_class=32, val_per_class=16)
    assert len(splits.test) == 3 * 16 and sorted(set(splits.test.targets.tolist())) == [0, 1, 2]
    cell = math.ceil(DEFAULT_SIZE * 3.0)  # the largest zoom's crop side

    def cells(split, label):  # every crop lies inside one cell: its top-left corner names it
        boxes = split.meta["box"][split.targets == label]
        return {(int(t) // cell, int(left) // cell) for t, left, _ in boxes.tolist()}

    for label in range(3):
        train, val, test = (cells(s, label) for s in (splits.train, splits.val, splits.test))
        assert test and not train & test and not val & test and not train & val


def _png_folder(root: Path, layout: dict[str, dict[str, int]]) -> None:
    """``root/<split>/<class>/<i>.png``: 6x6 grey images, each of its own constant intensity (its identity)."""
    value = 10
    for split, classes in layout.items():
        for cls, count in classes.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(np.full((6, 6), value, np.uint8)).save(root / split / cls / f"{i}.png")
                value += 3


def _values(split) -> set[int]:
    return {round(float(x.mean()) * 255) for x, _ in (split[i] for i in range(len(split)))}


def test_imagefolder_reads_test_or_holds_out_test_fraction(tmp_path):
    _png_folder(tmp_path / "a", {"train": {"cat": 20, "dog": 20}, "val": {"cat": 3, "dog": 3},
                                 "test": {"cat": 4, "dog": 5}})
    splits = get_dataset("imagefolder", root=tmp_path / "a", test_fraction=0.5, normalize=False)
    assert len(splits.test) == 9 and len(splits.train) == 40 and len(splits.val) == 6  # test/ as it is
    assert get_dataset("imagefolder", root=tmp_path / "a", normalize=False).test is None
    _png_folder(tmp_path / "b", {"train": {"cat": 20, "dog": 20}})  # no test/, no val/: both held out
    splits = get_dataset("imagefolder", root=tmp_path / "b", test_fraction=0.25, normalize=False, seed=1)
    train, val, test = _values(splits.train), _values(splits.val), _values(splits.test)
    assert not train & val and not train & test and not val & test and len(train | val | test) == 40
    assert sorted(int(y) for _, y in (splits.test[i] for i in range(len(splits.test)))) == [0] * 5 + [1] * 5
    plain = get_dataset("imagefolder", root=tmp_path / "b", normalize=False, seed=1)
    assert plain.test is None and len(plain.val) == 8 and len(plain.train) == 32  # unchanged without the key


def test_npz_reads_x_test_or_holds_out_test_fraction(tmp_path):
    x = np.arange(60, dtype=np.float32)[:, None, None].repeat(4, 1).repeat(4, 2)  # value i: example i
    y = np.arange(60) % 3
    np.savez(tmp_path / "held.npz", x=x, y=y)
    splits = get_dataset("npz", root=tmp_path / "held.npz", test_fraction=0.2, normalize=False)
    ids = [{int(t[0, 0, 0]) for t, _ in (s[i] for i in range(len(s)))} for s in (splits.train, splits.val, splits.test)]
    assert not ids[0] & ids[1] and not ids[0] & ids[2] and not ids[1] & ids[2] and len(set.union(*ids)) == 60
    assert len(ids[2]) == 12
    np.savez(tmp_path / "given.npz", x=x, y=y, x_test=x[:7] + 100, y_test=y[:7])
    splits = get_dataset("npz", root=tmp_path / "given.npz", test_fraction=0.2, normalize=False)
    assert len(splits.test) == 7 and len(splits.train) + len(splits.val) == 60
    assert get_dataset("npz", root=tmp_path / "given.npz").test is None


def test_a_torchvision_datasets_official_test_split_is_the_test_split(tmp_path):
    from test_data import write_mnist  # real idx-ubyte files in torchvision's layout

    official = write_mnist(tmp_path, n_train=20)
    splits = get_dataset("mnist", root=tmp_path, test_fraction=0.5, val_fraction=0.5)
    assert len(splits.test) == 3 and splits.test.targets.tolist() == official["test"][1]
    assert torch.equal(splits.test.images[:, 0], torch.from_numpy(official["test"][0][:, 0]))
    assert len(splits.train) == len(splits.val) == 10  # validation from the training split (2 per class)
    plain = get_dataset("mnist", root=tmp_path)
    assert plain.test is None and plain.val.targets.tolist() == official["test"][1]  # as before: val is the test split


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("value", [0, 1, 1.5, -0.1, math.nan, math.inf])
def test_test_fraction_must_be_a_fraction(value):
    with pytest.raises(HyperparameterError, match=r"config key 'test_fraction' must be in \(0, 1\) or None, but got"):
        resolve_config({"test_fraction": value})
    assert resolve_config({"test_fraction": 0.2})["test_fraction"] == 0.2


def test_a_bad_test_fraction_in_a_space_fails_in_one_line_before_ray(tmp_path):
    from nas_flex.tune import search

    space = SearchSpace(lambda trial: {**TINY, "test_fraction": 1.5}, sampler="random")
    with pytest.raises(SearchSpaceError, match=r"'test_fraction' must be in \(0, 1\) or None, but got 1.5") as err:
        search(space, storage=tmp_path / "s", num_samples=1, verbose=0)
    assert len(str(err.value).splitlines()) == 1 and not (tmp_path / "s").exists()


@pytest.mark.parametrize("value", [True, "0.2", [0.2]])
def test_test_fraction_must_be_a_number(value):
    with pytest.raises(HyperparameterError, match=r"config key 'test_fraction' must be int/float/NoneType, but got"):
        resolve_config({"test_fraction": value})


def test_datasets_that_cannot_make_a_test_split_say_so_before_reading_files(tmp_path):
    with pytest.raises(HyperparameterError, match=r"0 < test_fraction < 1"):
        get_dataset("digits", test_fraction=1.0)
    register("no-test-split", options={})(lambda name, *, root, image_size, seed, download: None)
    try:
        with pytest.raises(HyperparameterError, match="'no-test-split' makes no test split"):
            get_dataset("no-test-split", test_fraction=0.2)
    finally:
        unregister("no-test-split")
    # a torchvision dataset's test split is its official one: validation must then come from train (tmp_path is
    # empty, so a files check would have failed with another error)
    with pytest.raises(HyperparameterError, match="`test_fraction`.*val_fraction"):
        get_dataset("mnist", root=tmp_path, test_fraction=0.2)


@pytest.mark.parametrize("objectives", ["test_acc", {"metrics_test_loss": "min"}, ["val_acc", "test_acc"]])
def test_a_search_refuses_to_select_on_the_test_split_before_ray(tmp_path, objectives):
    from nas_flex.tune import search
    from nas_flex.tune.options import TuneConfig

    with pytest.raises(SearchSpaceError, match="held-out test split, which is for scoring only") as err:
        TuneConfig(objectives=objectives)
    assert len(str(err.value).splitlines()) == 1
    space = SearchSpace(lambda trial: {**TINY, "test_fraction": 0.2}, sampler="random")
    with pytest.raises(SearchSpaceError, match="for scoring only"):  # ASHA stops on the first objective: also refused
        search(space, storage=tmp_path / "s", num_samples=1, objectives=objectives, scheduler="asha", verbose=0)
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())


# ------------------------------------------------------------------------------------------- scored once
class _CountingSplit(torch.utils.data.Dataset):
    """A split that counts the examples read from it."""

    def __init__(self, inner) -> None:
        self.inner, self.reads = inner, 0

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i):
        self.reads += 1
        return self.inner[i]


_COUNTED: list[_CountingSplit] = []


def _counting_digits(name, *, root, image_size, seed, download, val_fraction=0.2, test_fraction=None):
    splits = build_digits(name, image_size=image_size, seed=seed, val_fraction=val_fraction,
                          test_fraction=test_fraction)
    _COUNTED.append(_CountingSplit(splits.test))
    import dataclasses

    return dataclasses.replace(splits, test=_COUNTED[-1])


def test_run_trial_scores_the_test_split_once_after_the_last_epoch_and_never_reports_it(tmp_path):
    from nas_flex.leaderboard import Leaderboard, write_trial
    from nas_flex.train import run_trial

    register("counting-digits", options={"val_fraction": 0.2})(_counting_digits)
    try:
        config = {**TINY, "dataset": "counting-digits", "test_fraction": 0.2}
        reports: list[dict] = []
        ckpt = tmp_path / "state.pt"
        record = run_trial(config, report=reports.append, checkpoint=ckpt)
        test = _COUNTED[-1]
        assert test.reads == len(test) > 300  # every test example read once: one evaluation, after training
        assert set(record.metrics) == {*TASK_METRICS, *TEST_METRICS}
        assert 0 <= record.metrics["test_acc"] <= 1 and math.isfinite(record.metrics["test_loss"])
        assert len(reports) == 2 and not any(k.startswith("test") for r in reports for k in r)
        assert not any(k.startswith("test") for h in record.history for k in h)
        resumed = run_trial(config, checkpoint=ckpt)  # resumed after its last epoch: scored again, on the same model
        assert _COUNTED[-1].reads == len(_COUNTED[-1])
        assert resumed.metrics["test_acc"] == record.metrics["test_acc"]
        assert resumed.metrics["test_loss"] == pytest.approx(record.metrics["test_loss"], rel=1e-6)
    finally:
        unregister("counting-digits")
    write_trial(tmp_path / "lb", record, experiment="e", trial_id="t1")
    plain = run_trial({**TINY, "epochs": 1})  # no test split: no test metrics, null in the row
    assert set(plain.metrics) == set(TASK_METRICS)
    write_trial(tmp_path / "lb", plain, experiment="e", trial_id="t2")
    df = Leaderboard(tmp_path / "lb").to_pandas().set_index("trial_id")
    assert df.loc["t1", "metrics_test_acc"] == record.metrics["test_acc"]
    assert df.loc["t1", "params_test_fraction"] == 0.2
    assert math.isnan(df.loc["t2", "metrics_test_acc"]) and math.isnan(df.loc["t2", "metrics_test_loss"])
    assert not any("test" in c for c in Leaderboard(tmp_path / "lb").history().columns)


def test_a_users_loop_gets_the_test_split_and_reports_its_score_outside_the_epoch_stream():
    from nas_flex.train.context import run_trainable

    def trainable(config, ctx):
        data = ctx.data()
        assert data.test is not None and len(data.test) > 300
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 10))
        xs, ys = data.train.inputs[:64], data.train.targets[:64]
        for _ in range(config["epochs"]):
            ctx.report(model, val_acc=0.5, train_loss=1.0)
        with torch.no_grad():
            acc = (model(data.test.inputs).argmax(1) == data.test.targets).float().mean()
        with pytest.raises(TrainableError, match="report_test takes metrics among"):
            ctx.report_test(val_acc=acc)
        ctx.report_test(test_acc=acc)
        assert xs.shape[0] == ys.shape[0] == 64

    reports: list[dict] = []
    record = run_trainable(trainable, {**TINY, "test_fraction": 0.2}, report=reports.append)
    assert 0 <= record.metrics["test_acc"] <= 1 and "test_loss" not in record.metrics
    assert len(reports) == 2 and not any(k.startswith("test") for r in reports for k in r)


# -------------------------------------------------------------------------------------- a real search
@pytest.mark.usefixtures("local_ray")
@pytest.mark.ray
@pytest.mark.slow
def test_a_search_with_a_test_split_never_shows_it_to_the_searcher_or_the_scheduler(tmp_path, monkeypatch):
    """Ray Tune's own record of every result it received (what ASHA and the Optuna searcher were given) holds no
    test metric, while every completed row has both; a searcher re-seeded from the rows is told validation only."""
    from nas_flex.leaderboard import Leaderboard
    from nas_flex.tune import search

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # Ray's files for this test only

    def space(trial):
        return {**TINY, "test_fraction": 0.25, "pooling": trial.suggest_categorical("pooling", ["max", "avg"])}

    lb = search(SearchSpace(space, sampler="grid"), storage=tmp_path / "s", experiment="held", scheduler="asha",
                max_concurrent=1, verbose=0)
    df = Leaderboard(tmp_path / "s").to_pandas()
    assert len(df) == 2 and (df["params_test_fraction"] == 0.25).all()
    completed = df[df["status"] == "completed"]
    assert len(completed) >= 1 and completed["metrics_test_acc"].between(0, 1).all()
    assert completed["metrics_test_loss"].notna().all()
    assert df.loc[df["status"] != "completed", "metrics_test_acc"].isna().all()  # stopped early: never scored
    results = [json.loads(line) for f in (tmp_path / "cache").rglob("result.json")
               for line in f.read_text().splitlines() if line.strip()]
    assert len(results) >= 3 and all("val_acc" in r for r in results)
    assert not [k for r in results for k in r if "test" in k]
    finals = {r["val_acc"] for r in results if r.get("status") == "completed"}
    assert set(completed["metrics_val_acc"]) <= finals  # what the searcher was told at the end: validation
    from nas_flex.tune.searcher import optuna_searcher

    searcher = optuna_searcher(SearchSpace(space), {"val_acc": "max"}, "grid", 0, "reseeded",
                               finished=lb.to_pandas().to_dict("records"))
    told = sorted(t.values[0] for t in searcher.study.trials if t.values)
    assert told == sorted(completed["metrics_val_acc"])


def test_test_metrics_are_scoring_only_in_the_metric_table():
    from nas_flex.record import METRIC_COLUMNS, METRIC_DIRECTIONS, METRICS

    assert METRIC_DIRECTIONS["metrics_test_acc"] == "max" and METRIC_DIRECTIONS["metrics_test_loss"] == "min"
    assert not {"test_acc", "test_loss"} & set(METRICS) and not {"test_acc", "test_loss"} & set(METRIC_COLUMNS)
    with pytest.raises(NasFlexError):
        resolve_config({"test_fraction": "all"})


def test_rows_written_before_test_splits_still_read_and_a_duplicate_takes_its_owners_test_score(tmp_path):
    import dataclasses
    from datetime import datetime, timezone

    import pyarrow.parquet as pq

    from nas_flex.leaderboard import Leaderboard, write_trial
    from nas_flex.leaderboard.schema import trial_table
    from nas_flex.record import TrialRecord, TrialStatus
    from nas_flex.storage.layout import trial_file_name
    from nas_flex.tune.trainable import _duplicate_of, owner_row

    cfg = resolve_config({**TINY, "test_fraction": 0.2})
    metrics = {"train_loss": 0.5, "train_acc": 0.8, "val_loss": 0.6, "val_acc": 0.75, "test_loss": 0.7,
               "test_acc": 0.7}
    owner = TrialRecord(status=TrialStatus.COMPLETED, config=cfg, epochs_completed=2, metrics=metrics,
                        best={"val_acc": 0.75, "val_loss": 0.6, "epoch": 2}, params=10, flops=1.0, flops_fft=0.0,
                        started="2024-05-01T12:00:00+00:00", finished="2024-05-01T12:01:00+00:00")
    write_trial(tmp_path, owner, experiment="e", trial_id="own")
    row = owner_row(tmp_path, "e", "own")
    duplicate = _duplicate_of(cfg, "own", row, "2024-05-01T12:00:00+00:00", {})
    assert duplicate.metrics["test_acc"] == 0.7 and duplicate.metrics["test_loss"] == 0.7
    # a row file as the code before test splits wrote it: without the three new columns
    old = dataclasses.replace(owner, config=resolve_config(TINY), metrics={k: metrics[k] for k in TASK_METRICS})
    table = trial_table(old, experiment="e", trial_id="old", written_at=datetime.now(timezone.utc))
    # (and without the params_ column of any config key added since: val_every)
    pq.write_table(table.drop_columns(["params_test_fraction", "params_val_every", "metrics_test_loss",
                                       "metrics_test_acc"]),
                   tmp_path / trial_file_name("e", "old"))
    df = Leaderboard(tmp_path).to_pandas().set_index("trial_id")
    assert math.isnan(df.loc["old", "metrics_test_acc"]) and df.loc["own", "metrics_test_acc"] == 0.7
    assert math.isnan(owner_row(tmp_path, "e", "old")["metrics_test_acc"])
    assert df.loc["old", "config_key"] == resolve_config(TINY).key  # keys as before: test_fraction None left out
