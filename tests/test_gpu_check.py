"""experiments/gpu_check.py: its pieces on hand-made numbers, its CPU self-test (--smoke), and its fail-fast start."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
import torch

from experiments import gpu_check
from nas_flex.errors import HyperparameterError


def _rows(ks, ratios, fft_wins):
    return [{"hw": 32, "k": k, "model_ratio": m, "spatial_s": 1.0, "fft_s": 0.5 if win else 2.0}
            for k, m, win in zip(ks, ratios, fft_wins)]


def test_fit_crossover_finds_the_measured_break_even():
    ks = [3, 5, 7, 9, 11, 13, 15]
    rows = _rows(ks, [float(k) for k in ks], [k > 8 for k in ks])  # FFT faster once the flop ratio passes 8
    fit = gpu_check.fit_crossover(rows)
    assert fit["wide_kernel_penalty"] is None and fit["regret"] == 0.0
    assert fit["crossover"] == 7.9  # the geometric middle of 7 and 9, two significant digits
    # the constants in use lose time: crossover 12 keeps k = 9, 11 direct, each twice as slow as the FFT there;
    # k = 3 is always direct (not a loss: the FFT is slower there too)
    assert gpu_check.choice_regret(rows, 12.0, None) == pytest.approx(2 * (2.0 - 1.0) / 7)


def test_fit_crossover_adds_a_wide_kernel_penalty_only_when_it_is_needed():
    # a cliff: from k = 15 the FFT wins although the flop model says the direct conv is cheaper (ratio 4 < 10)
    ks = [5, 7, 9, 11, 13, 15, 17, 21]
    rows = _rows(ks, [10.0] * 5 + [4.0] * 3, [k >= 15 for k in ks])
    fit = gpu_check.fit_crossover(rows)
    # factor 2 lifts 4 to 8, still below 10: no threshold separates them; factor 3 lifts it to 12
    assert fit["wide_kernel_penalty"] == (15, 3.0)
    assert fit["crossover"] == 11.0 and fit["regret"] == 0.0  # sqrt(10 * 12) = 10.95


def test_conv_choice_mirrors_choose_conv_method():
    from nas_flex.functional.conv import (
        FFT_CROSSOVER,
        WIDE_KERNEL_PENALTY,
        choose_conv_method,
        fft_conv_flops,
        spatial_conv_flops,
    )

    for device in ("cpu", "cuda"):
        for hw in (16, 32, 64):
            for k in (1, 3, 5, 9, 13, 15, 17, 25, 33):
                m = spatial_conv_flops(16, 32, 32, hw, hw, k, k) / fft_conv_flops(16, 32, 32, hw, hw, k, k)
                got = gpu_check.conv_choice(k, m, FFT_CROSSOVER.get(device, FFT_CROSSOVER["cpu"]),
                                            WIDE_KERNEL_PENALTY.get(device))
                assert got == choose_conv_method((16, 32, hw, hw), (32, 32, k, k), device), (device, hw, k)


def _import_conv_beside(folder):
    """A fresh copy of nas_flex/functional/conv.py imported from ``folder``: it reads the constants file there."""
    from nas_flex.functional import conv

    shutil.copy(conv.__file__, folder / "conv.py")
    spec = importlib.util.spec_from_file_location("conv_copy", folder / "conv.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_written_constants_are_read_at_import(tmp_path):
    from nas_flex.functional import conv

    assert _import_conv_beside(tmp_path).FFT_CROSSOVER == conv.FFT_CROSSOVER  # no file: the defaults
    target = tmp_path / conv.CONSTANTS_FILE.name
    gpu_check.write_constants("cuda", gpu_check.constants_entry(6.5, (17, 2.0), fitted_on="test"), target)
    patched = _import_conv_beside(tmp_path)
    assert patched.FFT_CROSSOVER == {**conv.FFT_CROSSOVER, "cuda": 6.5}
    assert patched.WIDE_KERNEL_PENALTY == {**conv.WIDE_KERNEL_PENALTY, "cuda": (17, 2.0)}
    assert patched.choose_conv_method((16, 32, 64, 64), (32, 32, 17, 17), "cuda") == "fft"
    # a second device keeps the first; no penalty drops that device's entry
    gpu_check.write_constants("cpu", gpu_check.constants_entry(20.0, None), target)
    patched = _import_conv_beside(tmp_path)
    assert patched.FFT_CROSSOVER == {"cpu": 20.0, "cuda": 6.5}
    assert "cpu" not in patched.WIDE_KERNEL_PENALTY and patched.WIDE_KERNEL_PENALTY["cuda"] == (17, 2.0)
    assert json.loads(target.read_text())["cuda"]["fitted_on"] == "test"


def test_a_bad_constants_file_is_refused_naming_it(tmp_path):
    target = tmp_path / "conv_constants.json"
    before = '{"cuda": {"fft_crossover": 6.5, "wide_kernel_penalty": null}}'
    target.write_text(before)
    with pytest.raises(HyperparameterError, match="fft_crossover"):
        gpu_check.write_constants("cuda", {"fft_crossover": -1.0}, target)
    assert target.read_text() == before and [p.name for p in tmp_path.iterdir()] == [target.name]  # untouched
    for text, match in (("not json", "not readable JSON"), ('{"cuda": {"fft_crossover": 5, '
                                                            '"wide_kernel_penalty": [15]}}', "wide_kernel_penalty")):
        target.write_text(text)
        with pytest.raises(HyperparameterError, match=match) as err:
            _import_conv_beside(tmp_path)
        assert "conv_constants.json" in str(err.value)


def test_trial_overlap():
    a = {"started": "2026-01-01T10:00:00+00:00", "finished": "2026-01-01T10:00:30+00:00"}
    b = {"started": "2026-01-01T10:00:05+00:00", "finished": "2026-01-01T10:00:40+00:00"}
    c = {"started": "2026-01-01T10:00:31+00:00", "finished": "2026-01-01T10:00:50+00:00"}
    assert gpu_check.trial_overlap([a, b]) == 25.0
    assert gpu_check.trial_overlap([a, c]) == -1.0  # one after the other
    with pytest.raises(gpu_check.CheckFailed, match="two trials"):
        gpu_check.trial_overlap([a])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the start on a machine without CUDA")
def test_fails_fast_without_cuda(tmp_path):
    said = []
    assert gpu_check.main(["--out", str(tmp_path / "out")], log_error=said.append) == 2
    assert "no CUDA device" in said[0] and "--smoke" in said[0]
    assert not (tmp_path / "out").exists()  # nothing ran


def test_smoke_runs_every_step_but_the_search_on_the_cpu(tmp_path):
    from nas_flex.layers import available

    assert gpu_check.main(["--smoke", "--out", str(tmp_path), "--skip", "search"]) == 0
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert results["smoke"] and results["failures"] == []
    assert {r["layer"] for r in results["steps"]["layers"]} == {"conv", "njet", "niff"}
    assert all(r["layer_ms"] > 0 for r in results["steps"]["layers"])
    crossover = results["steps"]["crossover"]
    assert crossover["fitted"]["regret"] <= crossover["current"]["regret"] + 1e-12  # the fit never does worse
    from nas_flex.functional.conv import read_conv_constants

    written = tmp_path / gpu_check.CONSTANTS_FILE
    assert "NOT for the package" in json.loads(written.read_text())["cuda"]["fitted_on"]  # a smoke fit says so
    assert read_conv_constants(written)["cuda"][0] == crossover["fitted"]["crossover"]  # a valid constants file
    amp = results["steps"]["amp"]
    assert [r["kind"] for r in amp] == available() and all(r["status"] == "completed" for r in amp)
    assert "all checks passed" in (tmp_path / "gpu_check.log").read_text()


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")  # the session's embedded Ray
def test_smoke_search_runs_both_trials_at_once(tmp_path):
    assert gpu_check.main(["--smoke", "--out", str(tmp_path), "--steps", "search"]) == 0
    search = json.loads((tmp_path / "gpu_check.json").read_text())["steps"]["search"]
    assert [t["status"] for t in search["trials"]] == ["completed", "completed"]
    assert search["overlap_seconds"] >= 2
