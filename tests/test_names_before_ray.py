"""Every name and path argument is checked before Ray starts (or before a leaderboard is read): one line, no Ray."""

from __future__ import annotations

import time

import pytest

from nas_flex.cli import main
from nas_flex.errors import SearchSpaceError
from nas_flex.spaces import SearchSpace
from nas_flex.tune import search
from nas_flex.tune.options import NAME_RESERVE_BYTES, name_max

SPACE_TEXT = '''
SAMPLER = "grid"


def space(trial):
    return {"dataset": "digits", "conv": "conv", "kernel_size": trial.suggest_categorical("kernel_size", [3, 5]),
            "width": 4, "epochs": 1, "train_subset": 64, "val_subset": 32, "device": "cpu"}
'''


def _space(trial):
    return {"dataset": "digits", "conv": "conv", "kernel_size": trial.suggest_categorical("kernel_size", [3, 5]),
            "width": 4, "epochs": 1, "train_subset": 64, "val_subset": 32, "device": "cpu"}


@pytest.mark.parametrize("name, message", [
    ("x" * 300, r"`experiment` must be at most \d+ bytes .* is 300 bytes"),  # was Errno 36 after Ray started
    ("\u00e9" * 100, r"`experiment` must be at most \d+ bytes .* is 200 bytes"),  # 100 characters, 200 bytes
    ("tab\there", r"without '/', '\\' or control characters"),
    ("new\nline", r"without '/', '\\' or control characters"),
])
def test_an_experiment_name_that_cannot_name_files_fails_before_ray(tmp_path, name, message):
    import ray

    start = time.monotonic()
    with pytest.raises(SearchSpaceError, match=message) as info:
        search(SearchSpace(_space, sampler="grid"), storage=tmp_path / "lb", experiment=name, verbose=0)
    assert "\n" not in str(info.value)
    assert not ray.is_initialized() and not (tmp_path / "lb").exists()
    assert time.monotonic() - start < 30  # loosely: no Ray start, no training


def test_the_longest_name_allowed_fits_every_file_name(tmp_path):
    limit = name_max(tmp_path) - NAME_RESERVE_BYTES
    name = "e" * limit
    with pytest.raises(SearchSpaceError, match=rf"at most {limit} bytes .* is {limit + 1} bytes"):
        search(SearchSpace(_space, sampler="grid"), storage=tmp_path / "lb", experiment=name + "e", verbose=0)
    # the longest accepted name leaves room for what the runner builds from it: a weights file with a trial id
    # and a temporary suffix, written on this very filesystem
    long_file = tmp_path / f"{name}--{'t' * 40}.pt.tmp.{'9' * 8}.{'f' * 12}"
    long_file.write_bytes(b"")
    assert long_file.exists()


def test_the_cli_checks_a_long_name_and_a_default_name_from_a_long_space_file(tmp_path, capsys):
    import ray

    space_file = tmp_path / "space.py"
    space_file.write_text(SPACE_TEXT)
    storage = tmp_path / "lb"
    assert main(["search", str(space_file), "--storage", str(storage), "--experiment", "x" * 300, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nas-flex: error: `experiment` must be at most") and len(err.splitlines()) == 1, err
    # no --experiment: the default name is the space file's name and a timestamp, checked the same way
    long_space = tmp_path / f"{'s' * 200}.py"
    long_space.write_text(SPACE_TEXT)
    assert main(["search", str(long_space), "--storage", str(storage), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "`experiment` must be at most" in err and len(err.splitlines()) == 1, err
    assert main(["search", str(tmp_path / "missing.py"), "--storage", str(storage), "--quiet"]) == 2
    assert "search space file" in capsys.readouterr().err
    assert not ray.is_initialized() and not storage.exists()


@pytest.mark.parametrize("flag, reuse", [([], True), (["--fresh-workers"], False)])
def test_the_cli_passes_the_worker_choice_to_the_search(tmp_path, monkeypatch, flag, reuse):
    """``--fresh-workers`` reaches ``search`` as ``reuse_actors=False``; without it the default (reuse) is kept."""
    import nas_flex.tune

    seen = {}

    def capture(*args, **kwargs):
        seen.update(kwargs)
        raise SystemExit(7)  # stop before anything runs

    monkeypatch.setattr(nas_flex.tune, "search", capture)
    with pytest.raises(SystemExit):
        main(["search", "space.py", "--storage", str(tmp_path / "lb"), "--quiet", *flag])
    assert seen["reuse_actors"] is reuse


def test_leaderboard_and_export_arguments_are_checked_before_reading(tmp_path, capsys):
    """No leaderboard exists at the path: each bad argument is reported, not the missing leaderboard."""
    missing = str(tmp_path / "no_board")
    cases = [
        (["leaderboard", missing, "--sort", "flop"], "unknown sort column 'flop' (did you mean 'flops'?)"),
        (["leaderboard", missing, "--columns", "trial_id,acc"], "unknown column 'acc'"),
        (["leaderboard", missing, "--where", "flops >> 2"], "bad filter"),
        (["leaderboard", missing, "--top", "0"], "--top must be >= 1"),
        (["export", missing, "--best", "--metric", "accuracy", "--out", str(tmp_path / "o"), "--no-onnx"],
         "unknown metric 'accuracy'"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "no leaderboard at" not in err and len(err.splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing created
