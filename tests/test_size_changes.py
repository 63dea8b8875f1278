"""``size_changes``: a leaderboard's learned sizes next to where they started, one row per (trial, layer)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from nas_flex.errors import LeaderboardSchemaError
from nas_flex.leaderboard.schema import trial_table
from nas_flex.leaderboard.sizes import format_size_changes, size_changes
from nas_flex.train import run_trial

BASE = {"dataset": "digits", "backbone": "simple", "head": "dense", "width": 8, "depth": 2, "epochs": 2,
        "batch_size": 32, "lr": 1e-2, "seed": 0, "train_subset": 256, "val_subset": 64}


@pytest.fixture(scope="module")
def board() -> pd.DataFrame:
    """Two real trials (N-Jet, DARTS-style mixed) as leaderboard rows, read back through pandas."""
    rows = []
    for i, (conv, hp) in enumerate([("njet", {"order": 2}), ("mixed", {"kernel_sizes": [3, 5]})]):
        result = run_trial({**BASE, "conv": conv, "conv_hparams": hp})
        rows.append(trial_table(result, experiment="e", trial_id=f"t{i}", written_at=result.finished))
    return pd.concat([t.to_pandas() for t in rows], ignore_index=True)


def test_one_row_per_trial_and_layer_with_init_and_learned(board):
    changes = size_changes(board)
    assert list(changes["trial_id"]) == ["t0", "t0", "t1", "t1"]
    assert list(changes["depth"]) == [0, 1, 0, 1]
    for (_, trial), (_, group) in zip(board.iterrows(), changes.groupby("trial_id"), strict=True):
        init, learned = json.loads(trial["initial_sizes_json"]), json.loads(trial["learned_sizes_json"])
        assert list(group["layer"]) == [r["name"] for r in learned]
        assert list(group["init_height"]) == [r["height"] for r in init]
        assert list(group["height"]) == [r["height"] for r in learned]
    njet = changes[changes["kind"] == "njet"]
    assert (njet["parameter"] == "sigma").all()
    assert njet["init_value"].tolist() == pytest.approx([1.0, 1.0])  # N-Jet's initial sigma
    assert njet["learned_value"].tolist() == pytest.approx(njet["learned_sigma"].tolist())
    assert (njet["learned_value"] != njet["init_value"]).any()  # sigma trained at the weights' lr moves
    assert njet["change"].tolist() == pytest.approx((njet["learned_value"] / njet["init_value"] - 1).tolist())
    mixed = changes[changes["kind"] == "mixed"]
    assert (mixed["parameter"] == "normalized_entropy").all()
    assert mixed["init_value"].tolist() == pytest.approx([1.0, 1.0], abs=1e-4)  # alphas start ~uniform
    assert (mixed["learned_value"] < 1.0).all()
    assert math.isnan(mixed["init_sigma"].iloc[0])  # a parameter the kind does not have is NaN


def test_rows_without_initial_records_keep_their_learned_sizes(board):
    old = board.assign(initial_sizes_json=None)  # a row written before initial sizes were recorded
    changes = size_changes(old)
    assert len(changes) == 4 and changes["init_height"].isna().all() and changes["change"].isna().all()
    assert changes["height"].notna().all()


def test_formatted_lines_show_init_to_learned(board):
    changes = size_changes(board)
    text = format_size_changes(changes[changes["trial_id"] == "t0"])
    lines = text.splitlines()
    assert len(lines) == 2 and all("njet" in line and "sigma 1 -> " in line for line in lines)
    first = changes.iloc[0]
    assert f"{first['init_height']:5.2f} x" in lines[0] and f"-> {first['height']:5.2f} x" in lines[0]


def test_bad_input_names_the_column():
    with pytest.raises(LeaderboardSchemaError, match="learned_sizes_json"):
        size_changes(pd.DataFrame({"trial_id": ["t"]}))
    with pytest.raises(LeaderboardSchemaError, match="initial_sizes_json of trial t"):
        size_changes(pd.DataFrame({"trial_id": ["t"], "learned_sizes_json": ["[]"], "initial_sizes_json": ["{"]}))
    assert size_changes(pd.DataFrame({"trial_id": ["t"], "learned_sizes_json": ["[]"]})).empty
