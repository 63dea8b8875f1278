"""The trial record: one typed result, its states and metric directions, shared by every stage."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest

from nas_flex.record import (
    METRIC_COLUMNS,
    METRIC_DIRECTIONS,
    METRICS,
    RESULT_FIELDS,
    TrialRecord,
    TrialStatus,
    config_hash,
    to_jsonable,
    utc_now,
)


def test_failed_record_round_trips_through_a_plain_dict():
    rec = TrialRecord.failed({"conv": "njet"}, "boom", started="2026-01-01T00:00:00+00:00")
    d = rec.to_dict()
    assert d["status"] == "error" and type(d["status"]) is str
    assert set(d) == set(RESULT_FIELDS)
    assert math.isnan(d["metrics"]["val_acc"]) and d["best"]["epoch"] == 0
    back = TrialRecord.from_dict(d)
    assert back.status is TrialStatus.ERROR
    assert back.to_dict()["config"] == {"conv": "njet"} and back.finished >= back.started


def test_record_is_frozen_and_replace_copies():
    rec = TrialRecord(status="completed", config={}, history=[{"epoch": 0}])
    assert rec.status is TrialStatus.COMPLETED and rec.history == ({"epoch": 0},)
    with pytest.raises(AttributeError):
        rec.status = TrialStatus.ERROR  # type: ignore[misc]
    dup = rec.replace(status=TrialStatus.DUPLICATE, error="duplicate of trial t1")
    assert dup.status is TrialStatus.DUPLICATE and rec.status is TrialStatus.COMPLETED


def test_unknown_key_and_unknown_status_are_named():
    with pytest.raises(ValueError, match="bogus"):
        TrialRecord.from_dict({"status": "completed", "config": {}, "bogus": 1})
    with pytest.raises(ValueError, match="finished-ish"):
        TrialRecord(status="finished-ish", config={})


def test_status_values_are_the_leaderboard_strings():
    assert str(TrialStatus.DIVERGED) == "diverged" and TrialStatus("stopped") is TrialStatus.STOPPED


def test_metric_directions_are_one_table():
    assert METRICS["val_acc"] == "max" and METRICS["val_loss"] == "min" and METRICS["flops"] == "min"
    for metric, column in METRIC_COLUMNS.items():
        assert METRICS[metric] == METRIC_DIRECTIONS[column]


def test_config_hash_now_and_json_helpers():
    text = json.dumps({"a": 1}, sort_keys=True)
    assert config_hash(text) == hashlib.sha256(text.encode()).hexdigest()[:16]
    assert utc_now().endswith("+00:00")
    value = {1: (np.float32(0.5), float("nan")), "s": TrialStatus.STOPPED, "i": np.int64(3),
             "a": np.array([[1.0, np.inf]])}
    assert to_jsonable(value) == {"1": [0.5, None], "s": "stopped", "i": 3, "a": [[1.0, None]]}
    json.dumps(to_jsonable(value), allow_nan=False)
