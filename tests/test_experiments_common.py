"""experiments.common: the main job's configs come from its space file, and results carry their scope."""

from __future__ import annotations

import json

import pytest

from experiments import common
from nas_flex.spaces import load_space, sample_configs


def test_main_job_configs_are_the_spaces_own():
    space = load_space(common.MAIN_JOB_SPACE)
    params, configs = sample_configs(space, "grid", 10_000)
    pooling = common.space_constants()["POOLING"]
    assert len(configs) == 9  # the main job's grid: 3 conv sizes + 6 other methods, one pooling (each under 3 seeds)
    for config, p in zip(configs, params, strict=True):
        assert common.main_job_config(p["method"], pooling, p.get("kernel_size")) == config
        other = "avg" if pooling == "max" else "max"  # the experiments still choose either pooling
        assert common.main_job_config(p["method"], other, p.get("kernel_size")) == {**config, "pooling": other}
    base = common.main_job_base()
    assert all(config[k] == v for config in configs for k, v in base.items())  # BASE is what every trial shares
    assert common.main_job_methods() == sorted({c["conv"] for c in configs}, key=common.main_job_methods().index)


def test_main_job_config_refuses_what_the_main_job_does_not_run():
    with pytest.raises(ValueError, match="one of the main job's"):
        common.main_job_config("nope", "max")
    with pytest.raises(ValueError, match="kernel_size"):
        common.main_job_config("conv", "max")


def test_space_constants_are_copies():
    first = common.space_constants()
    first["BASE"]["epochs"] = -1
    assert common.main_job_base()["epochs"] > 0


def test_results_carry_their_scope(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    path = common.write_json("bench_x", {"rows": [1, 2]})
    assert path == tmp_path / "bench_x.json"
    data = json.loads(path.read_text())
    assert data["rows"] == [1, 2] and {"date", "machine", "cpus", "argv"} <= set(data["scope"])
    assert [p.name for p in tmp_path.iterdir()] == ["bench_x.json"]  # no temporary file left behind
    for i in range(2):
        common.append_jsonl("runs_x", {"i": i})
    lines = (tmp_path / "runs_x.jsonl").read_text().splitlines()
    assert [json.loads(line)["i"] for line in lines] == [0, 1]
    assert common.write_json(tmp_path / "sub" / "y.json", {}).parent == tmp_path / "sub"  # a path goes where it says
