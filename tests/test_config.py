"""The trial config: one field table, resolved once per trial, frozen, carrying the keys the leaderboard stores."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import nas_flex.config as config_module
from nas_flex.config import FIELDS, RUN_ONLY, TrialConfig, arrow_types, canonical_key, resolve_config
from nas_flex.errors import HyperparameterError, SearchSpaceError, UnknownNameError

ROOT = Path(__file__).resolve().parents[1]
TINY = {"backbone": "simple", "head": "dense", "width": 4, "dataset": "digits", "epochs": 1, "train_subset": 64,
        "val_subset": 32, "batch_size": 32}

# keys computed on the code before the config had its own module (resolve_config's dict, canonical JSON, sha256):
# existing storages must resume and dedupe with the same keys
OLD_KEYS = [
    ({}, "34c79f28c313aeca"),
    ({"conv": "flexconv", "kernel_size": [3, 5, 7], "pooling": ["max", "avg"], "lr": 0.01, "seed": 3},
     "cb5a8389e4833f6d"),
    ({"backbone": "resnet", "conv": "njet", "conv_hparams": {"order": 2}, "dataset": "digits",
      "data_options": {"scales": [1, 2]}, "epochs": 2, "device": "cpu"}, "18d2fdda92be1261"),
    ({"conv": "envelope", "kernel_size": 7, "size_lr_factor": 0.5, "amp": False, "train_subset": 64,
      "val_subset": 32}, "52e73df2e2e53e4d"),
]


@pytest.mark.parametrize(("config", "key"), OLD_KEYS)
def test_keys_are_the_ones_existing_storages_hold(config, key):
    from nas_flex.tune.trainable import config_key

    cfg = resolve_config(config)
    assert cfg.key == key == config_key(config) == config_key(cfg)
    assert hashlib.sha256(canonical_key(config).encode()).hexdigest()[:16] == key


def test_a_resolved_config_is_frozen_json_safe_and_resolves_to_itself():
    cfg = resolve_config({"conv": "njet", "conv_hparams": {"order": 2}, "kernel_size": [3, 5]})
    assert resolve_config(cfg) is cfg
    assert cfg["conv"] == "njet" and cfg["batch_size"] == 64 and len(cfg) == len(FIELDS)
    with pytest.raises(TypeError):
        cfg["conv"] = "conv"  # type: ignore[index]
    cfg["conv_hparams"]["order"] = 4  # a nested value comes back as a copy
    cfg["kernel_size"].append(9)
    assert cfg["conv_hparams"] == {"order": 2} and cfg["kernel_size"] == [3, 5]
    plain = cfg.to_dict()
    assert type(plain) is dict and plain == cfg and json.loads(json.dumps(plain)) == plain
    assert {**cfg} == plain  # unpacks like a dict
    with pytest.raises(TypeError, match="resolve_config"):
        TrialConfig({"conv": "conv"})
    again = pickle.loads(pickle.dumps(cfg))  # how it travels to a Ray worker
    assert isinstance(again, TrialConfig) and again == cfg and again.key == cfg.key


def test_architecture_key_leaves_out_the_seed_and_where_the_trial_runs():
    base = resolve_config({"conv": "flexconv", "seed": 0})
    assert set(RUN_ONLY) == {"device", "num_workers", "download", "val_every"}
    same = resolve_config({"conv": "flexconv", "seed": 7, "device": "cpu", "num_workers": 2})
    assert same.architecture_key == base.architecture_key and same.key != base.key
    for other in ({"conv": "njet"}, {"conv": "flexconv", "lr": 0.1}, {"conv": "flexconv", "pooling": "avg"}):
        assert resolve_config(other).architecture_key != base.architecture_key
    # a key added later (test_fraction) at its "as before" value is left out, so existing keys stay what they were
    kept = {k: v for k, v in base.to_dict().items() if k not in {"seed", *RUN_ONLY, "test_fraction"}}
    expected = hashlib.sha256(json.dumps(kept, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
    assert base.architecture_key == expected
    # the leaderboard's column (nas_flex.record) is the same function of the stored plain config
    from nas_flex.record import REPEAT_KEYS, architecture_key

    assert set(REPEAT_KEYS) == {"seed", *RUN_ONLY} and architecture_key(same.to_dict()) == expected


@pytest.mark.parametrize(("config", "match"), [
    ({"epoch": 3}, r"'epoch' \(did you mean 'epochs'\?\)"),
    ({"batch_szie": 3}, r"'batch_szie' \(did you mean 'batch_size'\?\)"),
    ({"lr": "fast"}, r"'lr' must be int/float, but got 'fast'"),
    ({"lr": 0}, r"'lr' must be > 0, but got 0"),
    ({"epochs": True}, r"'epochs' must be int, but got True"),
    ({"batch_size": 0}, r"'batch_size' must be >= 1"),
    ({"optimizer": "rmsprop"}, r"'optimizer' must be 'adam' or 'sgd', but got 'rmsprop'"),
    ({"size_update": "alternate"}, r"'size_update' must be 'joint' or 'bilevel'"),
    ({"bilevel_split": 1.0}, r"'bilevel_split' must be in \(0, 1\)"),
    ({"size_lr_factor": -1}, r"'size_lr_factor' must be >= 0 or None"),
    ({"weight_decay": -0.1}, r"'weight_decay' must be >= 0"),
    ({"amp": 1}, r"'amp' must be bool"),
    ({"data_options": {"x": float("nan")}}, r"JSON"),
])
def test_bad_values_are_rejected_naming_the_key(config, match):
    with pytest.raises(HyperparameterError, match=match):
        resolve_config(config)


def test_the_docs_and_leaderboard_columns_come_from_the_one_table():
    import pyarrow as pa

    from nas_flex.leaderboard.schema import CONFIG_COLUMNS, TRIAL_SCHEMA
    from nas_flex.train.config import DEFAULTS, KEY_DOCS

    names = [f.name for f in FIELDS]
    assert list(KEY_DOCS) == list(DEFAULTS) == list(CONFIG_COLUMNS) == names
    arrow = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_(),
             "json": pa.string()}
    for name, kind in arrow_types().items():
        assert TRIAL_SCHEMA.field(f"params_{name}").type == arrow[kind], name
        assert KEY_DOCS[name] == (config_module.DEFAULTS[name], next(f.doc for f in FIELDS if f.name == name))


def test_the_config_module_imports_without_torch():
    code = "import sys, nas_flex.config; print(sorted(m for m in ('torch', 'pyarrow', 'ray') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.strip() == "[]"


def _count_checks(monkeypatch) -> list[dict]:
    """Record every config the one resolving check sees."""
    seen: list[dict] = []
    inner = config_module._check

    def counting(config):
        seen.append(dict(config))
        return inner(config)

    monkeypatch.setattr(config_module, "_check", counting)
    return seen


def test_run_trial_and_build_take_a_resolved_config_without_checking_it_again(monkeypatch):
    from nas_flex.models import build
    from nas_flex.train import run_trial

    seen = _count_checks(monkeypatch)
    cfg = resolve_config({**TINY, "conv": "mixed"})
    assert len(seen) == 1
    result = run_trial(cfg)
    build(cfg, in_channels=1, num_classes=10, input_size=(8, 8))
    assert result.status == "completed" and len(seen) == 1  # resolved once, for the whole trial
    assert result.config is cfg
    run_trial({**TINY, "conv": "mixed", "epochs": 1})  # a plain dict is resolved once, in run_trial
    assert len(seen) == 2


def test_the_stored_config_keeps_the_device_the_user_asked_for(tmp_path):
    from nas_flex.leaderboard import Leaderboard, write_trial
    from nas_flex.train import run_trial

    cfg = resolve_config({**TINY, "device": "auto"})
    result = run_trial(cfg, device="cpu")  # chosen at run time (a search's worker: the GPU Ray gave it, or not)
    assert result.config["device"] == "auto" and result.device  # the record says what ran
    write_trial(tmp_path, result, experiment="e", trial_id="t", config_key=cfg.key)
    row = Leaderboard(tmp_path).to_pandas().iloc[0]
    assert json.loads(row["config"])["device"] == "auto" and row["params_device"] == "auto"
    assert row["config_key"] == cfg.key and row["device"] == result.device


def test_one_hyperparameter_check_and_one_pooling_check_everywhere():
    from nas_flex.layers import build as build_layer
    from nas_flex.layers import check_hparams
    from nas_flex.models import build, check_pooling
    from nas_flex.spaces import validate_config

    assert "sigma_init" in check_hparams("njet", {"sigma_init": 1.0})
    message = r"unknown hyperparameter\(s\) of layer 'njet' in conv_hparams: 'sigma' \(did you mean 'sigma_init'\?\)"
    with pytest.raises(HyperparameterError, match=message):
        check_hparams("njet", {"sigma": 1.0}, where=" in conv_hparams")
    with pytest.raises(HyperparameterError, match=message):
        build({**TINY, "conv": "njet", "conv_hparams": {"sigma": 1.0}}, in_channels=1, num_classes=10)
    with pytest.raises(SearchSpaceError, match=message):
        validate_config({"conv": "njet", "conv_hparams": {"sigma": 1.0}})
    with pytest.raises(HyperparameterError, match=r"layer 'njet': 'sigma' \(did you mean 'sigma_init'\?\)"):
        build_layer("njet", 1, 2, sigma=1.0)
    assert check_pooling(None) == [] and check_pooling("max") == ["max"] and check_pooling(["avg", "safe"])
    pooling = r"unknown pooling 'mx' \(did you mean 'max'\?\)"
    with pytest.raises(UnknownNameError, match=pooling):
        check_pooling(["avg", "mx"])
    with pytest.raises(UnknownNameError, match=pooling):
        build({**TINY, "pooling": "mx"}, in_channels=1, num_classes=10, input_size=(8, 8))
    with pytest.raises(SearchSpaceError, match=pooling):
        validate_config({"pooling": ["max", "mx"]})


# a sitecustomize module that makes every Ray worker record each call of resolve_config and of its inner check
_COUNTER = textwrap.dedent('''
    import json, os, uuid

    if os.environ.get("NAS_FLEX_TEST_CHECKS"):
        import nas_flex.config as _config

        def _recording(name, inner):
            def call(config):
                path = os.path.join(os.environ["NAS_FLEX_TEST_CHECKS"], f"{name}-{os.getpid()}-{uuid.uuid4().hex}")
                with open(path, "w") as f:
                    json.dump(dict(config), f, default=str)
                return inner(config)
            return call

        _config._check = _recording("check", _config._check)
        _config.resolve_config = _recording("resolve", _config.resolve_config)
''')


@pytest.mark.ray
@pytest.mark.slow
def test_a_search_resolves_each_trial_config_once(tmp_path, monkeypatch):
    """The driver resolves each trial's config once (in the searcher); the Ray workers never check it again."""
    from nas_flex.spaces import SearchSpace
    from nas_flex.tune import search

    hook, checks = tmp_path / "hook", tmp_path / "checks"
    hook.mkdir()
    checks.mkdir()
    (hook / "sitecustomize.py").write_text(_COUNTER)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hook), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("NAS_FLEX_TEST_CHECKS", str(checks))
    seen = _count_checks(monkeypatch)  # the driver (this process)

    def two(trial):
        return {**TINY, "conv": trial.suggest_categorical("conv", ["conv", "mixed"])}

    lb = search(SearchSpace(two, sampler="grid"), storage=tmp_path / "lb", experiment="once", verbose=0,
                validate=False, dedupe=False)
    df = lb.to_pandas()
    assert len(df) == 2 and (df["status"] == "completed").all()
    calls = [p.name.split("-")[0] for p in checks.iterdir()]
    assert calls.count("resolve") >= len(df)  # each trial's worker was handed its config ...
    assert calls.count("check") == 0  # ... and checked none of them
    # the driver: once per grid point for the run's epoch count (a dry run of the space), then once per trial
    assert len(seen) == 2 + len(df)
    assert sorted(json.loads(c)["conv"] for c in df["config"]) == ["conv", "mixed"]
    assert json.loads(df["config"].iloc[0])["device"] == "auto"
