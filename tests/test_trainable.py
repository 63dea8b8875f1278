"""A user's own training function in a search (``search(space, trainable=fn)``): the context it gets, its rows on
the embedded Ray, resume after a killed driver, errors, and the copyable example in search_spaces/."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
import torch
from test_tune import NAS_FLEX, ROOT, TINY, _experiment
from torch import nn

from nas_flex.errors import NasFlexError, SearchSpaceError
from nas_flex.layers import build
from nas_flex.leaderboard import Leaderboard
from nas_flex.models import convert
from nas_flex.spaces import SearchSpace, load_space
from nas_flex.train.context import TrainableError, TrialContext, run_trainable
from nas_flex.train.optim import param_groups
from nas_flex.tune import search

EXAMPLE = ROOT / "search_spaces" / "own_training_loop.py"


def tiny_model(channels: int, classes: int, conv: str) -> nn.Module:
    """A plain PyTorch CNN, its 3x3 convolutions swapped for ``conv`` layers."""
    model = nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, classes))
    convert(model, to=conv)
    return model


def tiny_loop(config, ctx, on_epoch=None):
    """A user's loop over ``config["train_subset"]`` digits: report, then checkpoint, after every epoch."""
    data = ctx.data()
    model = tiny_model(data.input_shape[0], data.num_classes, config["conv"]).to(ctx.device)
    opt = torch.optim.Adam(ctx.param_groups(model))
    train = torch.utils.data.Subset(data.train, range(config["train_subset"]))
    for epoch in range(ctx.load(model, optimizer=opt), config["epochs"]):
        if on_epoch is not None:
            on_epoch(epoch)
        for x, y in torch.utils.data.DataLoader(train, batch_size=config["batch_size"]):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            (loss + ctx.regularization(model)).backward()
            opt.step()
            ctx.constrain(model)
        ctx.report(model, train_loss=float(loss.detach()), val_loss=1.0 / (epoch + 1), val_acc=epoch / 10)
        ctx.save(model, optimizer=opt)


# ------------------------------------------------------------------------------------------ without Ray
def test_param_groups_give_each_size_parameter_its_layers_recipe():
    model = nn.Sequential(build("njet", 1, 4), build("flexconv", 4, 4), build("mixed", 4, 4), nn.Conv2d(4, 4, 1))
    groups, recipes = param_groups(model, lr=0.01, weight_decay=0.5)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"weights", "size:njet", "size:flexconv", "size:mixed"}
    seen = [id(p) for g in groups for p in g["params"]]
    assert len(seen) == len(set(seen)) == len(list(model.parameters()))  # every parameter once
    for layer, name in ((model[0], "size:njet"), (model[1], "size:flexconv"), (model[2], "size:mixed")):
        recipe = layer.size_recipe
        group = by_name[name]
        assert {id(p) for p in layer.size_parameters()} == {id(p) for p in group["params"]}
        want = 0.01 * recipe.lr_factor if recipe.optimizer == "shared" else recipe.lr
        assert group["lr"] == pytest.approx(want) and group["weight_decay"] == recipe.weight_decay
    assert by_name["size:flexconv"]["lr"] == pytest.approx(0.001)  # FlexConv's mask at 0.1x
    assert by_name["weights"]["weight_decay"] == 0.5 and [r["kind"] for r in recipes] == ["njet", "flexconv", "mixed"]
    torch.optim.AdamW(groups)  # a torch optimizer takes them as they are
    groups, _ = param_groups(model, lr=0.01, size_lr_factor=2.0)  # a config's size_lr_factor overrides every recipe
    assert all(g["lr"] == pytest.approx(0.02) for g in groups if g["name"] != "weights")


def test_a_resumed_trainable_continues_from_its_checkpoint_and_redoes_no_epoch(tmp_path):
    config = {**TINY, "conv": "njet", "epochs": 4, "train_subset": 64}
    trained: list[int] = []

    def crash_at_two(epoch):
        trained.append(epoch)
        if epoch == 2 and trained.count(2) == 1:
            raise RuntimeError("killed")

    def fn(config, ctx):
        tiny_loop(config, ctx, on_epoch=crash_at_two)

    with pytest.raises(TrainableError, match=r"trainable .*fn raised RuntimeError: killed"):
        run_trainable(fn, config, checkpoint_dir=tmp_path)
    before = torch.load(tmp_path / "trial_state.pt", weights_only=True)
    assert before["epoch"] == 2 and [h["epoch"] for h in before["history"]] == [1, 2]
    record = run_trainable(fn, config, checkpoint_dir=tmp_path)
    assert trained == [0, 1, 2, 2, 3]  # epochs 0 and 1 were not trained again
    assert record.status.value == "completed" and [h["epoch"] for h in record.history] == [1, 2, 3, 4]
    assert [h["seconds"] for h in record.history[:2]] == [h["seconds"] for h in before["history"]]
    assert list(record.initial_sizes) == before["initial_sizes"] and record.initial_sizes[0]["sigma"] == 1.0
    fresh = run_trainable(fn, config)  # the same trial without interruption ends with the same weights
    assert fresh.learned_sizes == record.learned_sizes
    assert record.metrics["val_acc"] == pytest.approx(0.3) and record.best["epoch"] == 4
    assert record.flops > 0 and record.params > 0 and record.epochs_completed == 4


def test_the_row_reads_sizes_and_flops_from_the_model():
    models = []

    def fn(config, ctx):
        tiny_loop(config, ctx)
        models.append(ctx.model)

    record = run_trainable(fn, {**TINY, "conv": "flexconv", "epochs": 1, "train_subset": 32})
    assert [s["kind"] for s in record.learned_sizes] == ["flexconv", "flexconv"]
    assert record.history[0]["learned_sizes"] == list(record.learned_sizes)
    from nas_flex.train.metering import count_flops, count_parameters

    trained = models[0].eval()
    assert record.params == count_parameters(trained) == count_parameters(tiny_model(1, 10, "flexconv"))
    assert record.flops == count_flops(trained, torch.zeros(1, 1, 16, 16)).per_sample > 0
    assert math.isnan(record.metrics["train_acc"]) and record.size_recipes[0]["kind"] == "flexconv"


def test_a_layer_that_diverges_ends_the_trial_as_diverged_with_its_epochs():
    def fn(config, ctx):
        tiny_loop({**config, "epochs": 1}, ctx)
        layer = next(m for m in ctx.model.modules() if hasattr(m, "log_sigma"))
        with torch.no_grad():
            layer.log_sigma.fill_(float("nan"))
        ctx.model(torch.zeros(1, 1, 16, 16))  # an N-Jet with a NaN sigma raises NonFiniteError

    record = run_trainable(fn, {**TINY, "conv": "njet", "epochs": 2, "train_subset": 32})
    assert record.status.value == "diverged" and record.epochs_completed == 1 and record.error


def test_context_misuse_is_a_one_line_error():
    ctx = TrialContext({"device": "cpu", "seed": 0, "lr": 1e-3, "weight_decay": 0.0, "size_lr_factor": None})
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1))
    with pytest.raises(TrainableError, match=r"ctx.report takes metrics among .*'val_acc'.* but got \['accuracy'\]"):
        ctx.report(model, accuracy=0.5)
    with pytest.raises(TrainableError, match="needs `example=`"):
        ctx.report(model, val_acc=0.5)
    with pytest.raises(TrainableError, match="must be a number"):
        ctx.report(model, example=torch.zeros(2, 1, 4, 4), val_acc="high")

    def silent(config, ctx):
        return None

    with pytest.raises(TrainableError, match="trainable .*silent returned without reporting an epoch"):
        run_trainable(silent, {**TINY, "epochs": 1})


@pytest.mark.parametrize("bad, message", [
    (42, r"`trainable` must be a function trainable\(config, ctx\), but got int 42"),
    (lambda config: None, r"`trainable` must take two arguments \(config, ctx\), but .*<lambda>\(config\) does not"),
])
def test_a_bad_trainable_is_refused_before_ray_starts(tmp_path, bad, message):
    import ray

    space = SearchSpace(lambda trial: {**TINY, "conv": "njet"})
    with pytest.raises(SearchSpaceError, match=message):
        search(space, storage=tmp_path, num_samples=1, trainable=bad, verbose=0)
    assert not ray.is_initialized() and not (tmp_path / "_ray").exists()


def test_a_space_file_brings_its_own_trainable(tmp_path):
    assert load_space(EXAMPLE).trainable.__name__ == "trainable"
    assert load_space(EXAMPLE).with_overrides(epochs=1).trainable is not None
    bad = tmp_path / "bad_space.py"
    bad.write_text("def space(trial):\n    return {}\n\ntrainable = 'train.py'\n")
    with pytest.raises(SearchSpaceError, match="`trainable` must be a function"):
        search(bad, storage=tmp_path / "lb", num_samples=1, verbose=0)


def test_a_resume_runs_the_loop_its_experiment_started_with(tmp_path):
    import ray

    space = SearchSpace(four_cases, sampler="grid")
    _experiment(tmp_path, "builtin", 4, space.name)
    with pytest.raises(SearchSpaceError, match="'builtin' was run with the built-in training loop"):
        search(space, storage=tmp_path, resume=True, experiment="builtin", trainable=njet_or_fail, verbose=0)
    _experiment(tmp_path, "own", 4, space.name)
    meta = tmp_path / "_experiments" / "own.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "trainable": True}))
    with pytest.raises(SearchSpaceError, match="'own' was run with a `trainable` function: pass it again"):
        search(space, storage=tmp_path, resume=True, experiment="own", verbose=0)
    assert not ray.is_initialized()


def test_a_function_of_a_module_no_worker_can_import_travels_by_value(tmp_path):
    """A helper module beside a user's script: pickled with its code, it loads in a fresh interpreter that cannot
    import the module (as a Ray worker on another node could not)."""
    import importlib
    import sys

    from nas_flex.tune.user import pack

    (tmp_path / "my_helpers.py").write_text("SCALE = 3\n\ndef my_trainable(config, ctx):\n    return SCALE * config\n")
    sys.path.insert(0, str(tmp_path))
    try:
        fn = importlib.import_module("my_helpers").my_trainable
        payload = pack(fn)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("my_helpers", None)
    (tmp_path / "fn.pkl").write_bytes(payload)
    code = ("import cloudpickle, sys; fn = cloudpickle.loads(open(sys.argv[1], 'rb').read()); "
            "assert 'my_helpers' not in sys.modules; print(fn(14, None))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "fn.pkl")], capture_output=True, text=True,
                         cwd=tmp_path.parent, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "42", out.stderr[-2000:]


@pytest.mark.parametrize("conv", ["njet", "flexconv"])
def test_convert_puts_learned_size_layers_into_torchvision_resnet18(conv):
    import torchvision

    import nas_flex

    model = torchvision.models.resnet18(weights=None, num_classes=3)
    records = convert(model, to=conv)
    assert sum(r["action"] == "swapped" for r in records) == 13  # every stride-1 3x3 conv; strided and 1x1 kept
    out = model(torch.randn(2, 3, 16, 16))
    out.sum().backward()
    assert out.shape == (2, 3) and len(nas_flex.learned_sizes(model)) == 13


def test_the_example_trains_a_resnet18_with_its_own_loop():
    space = load_space(EXAMPLE)
    config = {**space(_first_point()), "dataset": "digits", "data_root": None, "epochs": 1, "train_subset": 16,
              "val_subset": 16, "batch_size": 16, "conv": "njet", "pooling": "avg"}
    record = run_trainable(space.trainable, config)
    assert record.status.value == "completed" and len(record.learned_sizes) == 13
    assert 0 <= record.metrics["val_acc"] <= 1 and record.flops > 0


def _first_point():
    import optuna

    return optuna.trial.FixedTrial({"conv": "conv", "pooling": "max"})


# ------------------------------------------------------------------------------------------ on the embedded Ray
def four_cases(trial):
    case = trial.suggest_categorical("case", ["njet", "flexconv", "raises", "silent"])
    pooling = {"raises": "avg", "silent": "none"}.get(case, "max")
    return {**TINY, "epochs": 2, "conv": case if case in ("njet", "flexconv") else "conv", "pooling": pooling}


def njet_or_fail(config, ctx):
    """Trains, raises or reports nothing, by the config's pooling (the test module is pickled by value)."""
    if config["pooling"] == "avg":
        raise ValueError("boom")
    if config["pooling"] == "max":
        tiny_loop(config, ctx)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")  # the session's embedded Ray
def test_a_trainable_search_writes_the_rows_of_built_in_trials(tmp_path):
    lb = search(SearchSpace(four_cases, sampler="grid"), storage=tmp_path, experiment="own", trainable=njet_or_fail,
                max_failures=0, verbose=0)
    df = lb.to_pandas()
    df.index = [json.loads(p)["case"] for p in df["search_params"]]
    assert sorted(df.index) == ["flexconv", "njet", "raises", "silent"]
    for case in ("njet", "flexconv"):
        row = df.loc[case]
        assert row["status"] == "completed" and row["flops"] > 0 and row["params"] > 0
        sizes = json.loads(row["learned_sizes_json"])
        assert [s["kind"] for s in sizes] == [case, case]
        assert row["epochs_completed"] == 2 and row["metrics_val_acc"] == pytest.approx(0.1)
        weights = torch.load(tmp_path / "_weights" / f"own--{row['trial_id']}.pt", weights_only=True)
        assert set(weights) == set(tiny_model(1, 10, case).state_dict())
    assert df.loc["raises", "status"] == "error"
    assert "njet_or_fail raised ValueError: boom" in df.loc["raises", "error"]
    assert df.loc["silent", "status"] == "error" and "returned without reporting" in df.loc["silent", "error"]
    history = lb.history()
    trained = history[history["trial_id"].isin(df.loc[["njet", "flexconv"], "trial_id"])]
    assert sorted(trained["epoch"]) == [1, 1, 2, 2] and (trained["flops"] > 0).all()
    left = {p.name for p in (tmp_path / "_running" / "own").iterdir()}  # an errored trial's stays for its retry
    assert left == set(df.loc[["raises", "silent"], "trial_id"])
    from nas_flex.export import export_trial  # the user's model is not the config's: refused, naming the weights

    with pytest.raises(NasFlexError, match="trained by your own training function"):
        export_trial(tmp_path, df.loc["njet", "trial_id"], tmp_path / "export")


RESUME_SPACE = textwrap.dedent('''
    """conv x pooling with the test's own loop; it logs every epoch it trains."""
    import torch
    from torch import nn
    from nas_flex.models import convert

    SAMPLER = "grid"
    LOG = {log!r}

    def space(trial):
        return {{**{tiny!r}, "conv": trial.suggest_categorical("conv", ["njet", "flexconv"]),
                "pooling": trial.suggest_categorical("pooling", ["max", "avg"])}}

    def trainable(config, ctx):
        data = ctx.data()
        model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                              nn.Linear(4, 10))
        convert(model, to=config["conv"])
        opt = torch.optim.Adam(ctx.param_groups(model))
        train = torch.utils.data.Subset(data.train, range(config["train_subset"]))
        for epoch in range(ctx.load(model, optimizer=opt), config["epochs"]):
            with open(LOG, "a") as log:
                log.write(f"{{config['conv']}} {{config['pooling']}} {{epoch}}\\n")
            for x, y in torch.utils.data.DataLoader(train, batch_size=32):
                loss = nn.functional.cross_entropy(model(x), y) + ctx.regularization(model)
                opt.zero_grad()
                loss.backward()
                opt.step()
                ctx.constrain(model)
            ctx.report(model, train_loss=float(loss), val_acc=0.5, val_loss=1.0)
            ctx.save(model, optimizer=opt)
''')


@pytest.mark.ray
@pytest.mark.slow
def test_a_trainable_search_resumes_after_a_killed_driver(tmp_path):
    log = tmp_path / "epochs.log"
    space_file = tmp_path / "own_space.py"
    space_file.write_text(RESUME_SPACE.format(log=str(log), tiny={**TINY, "epochs": 20, "train_subset": 320}))
    storage = tmp_path / "lb"
    env = {**os.environ, "RAY_TMPDIR": "/tmp"}
    cmd = [NAS_FLEX, "search", str(space_file), "--storage", str(storage), "--experiment", "own",
           "--max-concurrent", "1", "--quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    running = storage / "_running" / "own"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # interrupt once a trial finished and another checkpointed an epoch
        done = {f.name.removeprefix("own--").removesuffix(".parquet") for f in storage.glob("own--*.parquet")}
        unfinished = [f for f in running.glob("*/trial_state.pt") if f.parent.name not in done]
        if done and unfinished:
            break
        if proc.poll() is not None:
            pytest.fail(f"the search ended before it could be interrupted:\n{proc.stdout.read()}")
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130, proc.stdout.read()[-3000:]
    first = Leaderboard(storage).to_pandas()
    done_before = first[first["status"] == "completed"].set_index("trial_id")["written_at"].to_dict()
    interrupted = {}
    for state_file in running.glob("*/trial_state.pt"):
        info = json.loads((state_file.parent / "trial.json").read_text())["config"]
        state = torch.load(state_file, weights_only=True)
        interrupted[state_file.parent.name] = (f"{info['conv']} {info['pooling']}", state["history"])
    assert done_before and interrupted, "the interruption came too late to test a resume"

    out = subprocess.run(cmd[:-3] + ["--resume", "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=400,
                         env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    df = Leaderboard(storage).to_pandas()
    assert len(df) == 4 and df["trial_id"].is_unique and (df["status"] == "completed").all()
    after = df.set_index("trial_id")["written_at"].to_dict()
    assert all(after[t] == w for t, w in done_before.items())  # finished trials were not redone
    lines = log.read_text().splitlines()
    history = Leaderboard(storage).history()
    for trial_id, (arch, epochs) in interrupted.items():
        for before in epochs:  # a checkpointed epoch is trained once, and its record is kept as it ran
            assert lines.count(f"{arch} {before['epoch'] - 1}") == 1, lines
        mine = history[history["trial_id"] == trial_id].set_index("epoch")
        assert sorted(mine.index) == list(range(1, 21))
        assert all(mine.loc[b["epoch"], "seconds"] == b["seconds"] for b in epochs)
        assert len(json.loads(df.set_index("trial_id").loc[trial_id, "learned_sizes_json"])) == 1


def _write_image_folder(root: Path, classes=("circle", "square"), per_split=(6, 4), size=20) -> None:
    """A train/ and val/ folder of real PNG files, one subfolder per class."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in zip(("train", "val"), per_split):
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
                pixels[4:16, 4:16] += np.uint8(120 + 40 * label)
                Image.fromarray(pixels).save(folder / f"{i}.png")


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")  # the session's embedded Ray
def test_the_example_searches_an_image_folder(tmp_path):
    _write_image_folder(tmp_path / "images")
    lb = search(EXAMPLE, storage=tmp_path / "lb", num_samples=2, experiment="example", max_failures=0, verbose=0,
                overrides={"data_root": str(tmp_path / "images"), "epochs": 1, "batch_size": 4})
    df = lb.to_pandas()
    assert len(df) == 2 and (df["status"] == "completed").all(), df[["status", "error"]]
    assert (df["flops"] > 0).all() and df["metrics_val_acc"].between(0, 1).all()
    for conv, sizes in zip(df["params_conv"], df["learned_sizes_json"]):  # 13 learned-size layers unless plain conv
        assert len(json.loads(sizes or "[]")) == (0 if conv == "conv" else 13)
