"""Search spaces: validation before launch, FixedTrial replay, and pickling by value (Ray's OptunaSearch)."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nas_flex.errors import SearchSpaceError
from nas_flex.spaces import SearchSpace, grid_size, load_space, replay, sample_configs, validate_config, validate_space

ROOT = Path(__file__).resolve().parents[1]


def grid(trial):
    conv = trial.suggest_categorical("conv", ["conv", "mixed"])
    config = {"backbone": "simple", "conv": conv, "pooling": trial.suggest_categorical("pooling", ["max", "avg"])}
    if conv == "conv":
        config["kernel_size"] = trial.suggest_categorical("kernel_size", [3, 5, 7])
    return config


def test_grid_is_enumerated_exactly_with_its_conditional_branch():
    space = SearchSpace(grid, sampler="grid")
    assert grid_size(space) == 2 * 3 + 2  # conv: 2 poolings x 3 sizes; mixed: 2 poolings
    params, configs = sample_configs(space, "grid", 100)
    assert len({str(sorted(p.items())) for p in params}) == 8


def test_fixed_trial_replay_rebuilds_the_config():
    space = SearchSpace(grid, sampler="grid")
    params, configs = sample_configs(space, "grid", 100)
    for p, c in zip(params, configs):
        assert replay(space, p) == c


def test_overrides_apply_after_the_space():
    space = SearchSpace(grid).with_overrides(epochs=3, dataset=None)
    assert replay(space, {"conv": "mixed", "pooling": "max"})["epochs"] == 3
    assert "dataset" not in replay(space, {"conv": "mixed", "pooling": "max"})


@pytest.mark.parametrize("fn, match", [
    (lambda t: {"conv": t.suggest_categorical("conv", ["conv", "flexconvv"])},
     r"\"conv\": \"flexconvv\"\}: unknown layer 'flexconvv' \(did you mean 'flexconv'\?\)"),
    (lambda t: {"backbone": "simple", "kernal_size": t.suggest_int("k", 3, 3)},
     r"'kernal_size' \(did you mean 'kernel_size'\?\)"),
    (lambda t: {"dataset": t.suggest_categorical("ds", ["cifar11"])},
     r"\"ds\": \"cifar11\"\}: unknown dataset 'cifar11'"),
    (lambda t: {"conv": "njet", "conv_hparams": {"sigma": t.suggest_categorical("s", [1.0])}},
     r"unknown hyperparameter\(s\) of layer 'njet' in conv_hparams: 'sigma' \(did you mean 'sigma_init'\?\)"),
    (lambda t: {"epochs": t.suggest_categorical("e", ["ten"])}, r"\{\"e\": \"ten\"\}.*'epochs' must be int"),
    (lambda t: {"lr": t.suggest_float("lr", 1e-3, 1e-1)}, r"step must be given for BruteForceSampler"),
    (lambda t: ["not", "a", "dict"], r"must return a trial config dict"),
    (lambda t: {"conv": "conv", "kernel_size": t.suggest_categorical("k", [3, 21])}, r"\"k\": 21.*larger than the"),
    (lambda t: 1 / 0, r"raised ZeroDivisionError"),
])
def test_validation_errors_name_the_parameter(fn, match):
    with pytest.raises(SearchSpaceError, match=match):
        validate_space(SearchSpace(fn, sampler="grid"))


def test_dry_build_loads_the_dataset_the_trial_would(monkeypatch):
    """The dry build reads the dataset with the config's own settings, ``download`` included, as run_trial does."""
    import nas_flex.data as data

    calls = []
    real = data.get_dataset

    def recording(name, **kwargs):
        calls.append((name, kwargs))
        return real(name, **kwargs)

    monkeypatch.setattr(data, "get_dataset", recording)
    config = {"dataset": "digits", "download": True, "seed": 3, "image_size": 12, "data_options": {"val_fraction": 0.5}}
    validate_config(config, build=True)
    assert calls == [("digits", {"root": None, "image_size": 12, "seed": 3, "download": True, "test_fraction": None,
                                 "val_fraction": 0.5})]


def test_bad_settings():
    with pytest.raises(SearchSpaceError, match="sampler"):
        SearchSpace(grid, sampler="cmaes")
    with pytest.raises(SearchSpaceError, match="function of a trial"):
        SearchSpace({"conv": "conv"})
    with pytest.raises(SearchSpaceError, match="does not exist"):
        load_space("/no/such/space.py")


def test_a_lambda_space_pickles_by_value():
    space = SearchSpace(lambda t: {"conv": "conv", "kernel_size": t.suggest_categorical("k", [3, 5])})
    again = pickle.loads(pickle.dumps(space))
    assert replay(again, {"k": 5}) == {"conv": "conv", "kernel_size": 5}


def test_a_file_space_unpickles_in_another_process_without_the_file(tmp_path):
    """What Tuner.restore does: unpickle the searcher (and its space) in a fresh process."""
    src = tmp_path / "my_space.py"
    src.write_text(textwrap.dedent('''
        """A user's space."""
        SAMPLER = "grid"
        SIZES = [3, 5]
        def helper(k):
            return {"conv": "conv", "kernel_size": k}
        def space(trial):
            return helper(trial.suggest_categorical("k", SIZES))
    '''))
    space = load_space(src)
    assert space.sampler == "grid" and space.description == "A user's space."
    blob = tmp_path / "space.pkl"
    blob.write_bytes(pickle.dumps(space))
    src.unlink()  # the other process must not need the file
    code = (
        "import pickle, sys; from nas_flex.spaces import replay; "
        f"s = pickle.loads(open({str(blob)!r}, 'rb').read()); print(replay(s, {{'k': 5}})['kernel_size'])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "5"


@pytest.mark.parametrize("path", sorted((ROOT / "search_spaces").glob("*.py")), ids=lambda p: p.stem)
def test_shipped_spaces_are_valid(path):
    space = load_space(path)
    # as the search validates it: a space with its own training loop builds its own model (not the backbone)
    configs = validate_space(space, samples=6, max_builds=4, build=space.trainable is None)
    assert configs and all(c["dataset"] for c in configs)
    if space.sampler != "grid":
        assert space.num_samples
