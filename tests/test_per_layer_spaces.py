"""The per-layer study's spaces: per-layer kernel sizes and per-stage pooling reach the model, and bad plans fail."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from nas_flex.errors import HyperparameterError, SearchSpaceError, UnknownNameError
from nas_flex.layers import KernelLayer
from nas_flex.layers.njet import SafeSubsample2d
from nas_flex.layers.pooling import Pool2d
from nas_flex.models import build
from nas_flex.spaces import grid_size, load_space, replay, sample_configs, validate_config

ROOT = Path(__file__).resolve().parents[1]


def _pool_modes(model: nn.Module) -> list[str]:
    return [m.mode if isinstance(m, Pool2d) else "safe" for m in model.modules()
            if isinstance(m, (Pool2d, SafeSubsample2d))]


def test_per_stage_pooling_reaches_each_backbone():
    simple = build({"backbone": "simple", "depth": 4, "pooling": ["avg", "conv"]}, in_channels=1, num_classes=10)
    assert _pool_modes(simple) == ["avg", "conv"]
    resnet = build({"backbone": "resnet", "depth": 20, "pooling": ["max", "avg"]}, in_channels=3, num_classes=10)
    assert _pool_modes(resnet) == ["max", "avg"]
    flexnet = build({"backbone": "flexnet", "depth": 5, "pooling": ["conv", "max"]}, in_channels=3, num_classes=10)
    assert _pool_modes(flexnet) == ["conv", "max"]
    # one mode for every step still works, and a list of one mode equals it
    a = build({"backbone": "simple", "depth": 4, "pooling": "avg"}, in_channels=1, num_classes=10)
    assert _pool_modes(a) == ["avg", "avg"]
    safe = build({"backbone": "simple", "depth": 4, "conv": "njet", "pooling": ["safe", "max"]}, in_channels=1,
                 num_classes=10)
    assert _pool_modes(safe) == ["safe", "max"]
    assert safe(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_bad_pooling_plans_name_the_problem():
    with pytest.raises(HyperparameterError, match=r"lists 3 modes, but backbone 'simple' has 2"):
        build({"backbone": "simple", "depth": 4, "pooling": ["max", "max", "max"]}, in_channels=1, num_classes=10)
    with pytest.raises(UnknownNameError, match="maxx"):
        build({"backbone": "simple", "depth": 4, "pooling": ["max", "maxx"]}, in_channels=1, num_classes=10)
    with pytest.raises(SearchSpaceError, match="unknown pooling 'maxx'"):
        validate_config({"backbone": "simple", "depth": 4, "pooling": ["max", "maxx"]})


def test_per_layer_grid_space_sizes_and_poolings_reach_the_model():
    space = load_space(ROOT / "search_spaces" / "per_layer_grid.py")
    assert space.sampler == "tpe"
    assert grid_size(space) == 3**4 * 3**2
    params, configs = sample_configs(space, "random", 6, seed=3)
    for p, cfg in zip(params, configs):
        assert replay(space, p) == cfg
        model = build(cfg, in_channels=1, num_classes=10, input_size=(32, 32))
        convs = [m for m in model.modules() if isinstance(m, KernelLayer)]
        assert [c.effective_kernel_size for c in convs] == [(float(p[f"kernel_size_{i}"]),) * 2 for i in range(4)]
        assert _pool_modes(model) == [p["pooling_0"], p["pooling_1"]]
        validate_config(cfg, p, build=True)


def test_per_layer_learned_space_covers_every_learned_method():
    space = load_space(ROOT / "search_spaces" / "per_layer_learned.py")
    params, configs = sample_configs(space, "grid", 1000)
    assert len(configs) == 5 * 9 + 10 == grid_size(space)
    methods = {c["conv"] for c in configs}
    assert methods == {"mixed", "flexconv", "njet", "envelope", "niff", "cfconv"}
    assert all(c["pooling"] != ["safe", "safe"] or c["conv"] == "njet" for c in configs)
    assert any(c["pooling"] == ["safe", "safe"] for c in configs)


def test_the_studys_learned_runs_use_the_main_jobs_hyperparameters():
    """Each learned method of the study's space gets the conv_hparams and kernel_size the main job gives it (the
    study once ran FlexConv at the authors' mask width 0.075 while the main job used 0.125)."""
    import runpy

    main_job = runpy.run_path(str(ROOT / "search_spaces" / "grid_vs_learned.py"))
    study = runpy.run_path(str(ROOT / "search_spaces" / "per_layer_learned.py"))

    class Fixed:  # answers each categorical with the given method (an Optuna-compatible define-by-run trial)
        def __init__(self, method):
            self.method = method

        def suggest_categorical(self, name, choices):
            return self.method if name == "method" else choices[0]

    for method in study["METHODS"]:
        a, b = main_job["space"](Fixed(method)), study["space"](Fixed(method))
        assert a.get("conv_hparams") == b.get("conv_hparams"), method
        assert a.get("kernel_size") == b.get("kernel_size"), method
    assert study["space"](Fixed("flexconv"))["conv_hparams"] == {"mask_sigma_init": 0.125}
