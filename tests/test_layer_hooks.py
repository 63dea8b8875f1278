"""The layer contract is complete: a layer registered inside a test is handled by the contract tests, the
leaderboard's size summary, the report and export, with no other edit; each hook a layer may provide is declared on
``KernelLayer`` with its default (stem, 1-D form, frequency kernel, size summary)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
import test_layer_contract as contract
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nas_flex.layers import KernelLayer, build, register, unregister
from nas_flex.layers.base import check_finite, conv_init_
from nas_flex.layers.conv import Conv
from nas_flex.leaderboard.sizes import SIZE_PARAMETERS, fixed_size_methods, learns_size, size_changes

TINY = {"dataset": "digits", "backbone": "simple", "head": "gap", "width": 4, "depth": 2, "epochs": 1,
        "batch_size": 32, "train_subset": 96, "val_subset": 64, "seed": 0}


class RadiusConv(KernelLayer):
    """A 5x5 convolution under a Gaussian window of learned radius r: a learned-size layer nas_flex never saw.

    Its headline size parameter, ``radius``, is in no list of the package (``SIZE_PARAMETERS``).
    """

    size_parameter_names: ClassVar[tuple[str, ...]] = ("radius",)
    example_hparams: ClassVar[dict[str, Any]] = {"radius_init": 1.2}

    def __init__(self, in_channels: int, out_channels: int, *, radius_init: float = 1.0, device=None,
                 dtype=None) -> None:
        super().__init__(in_channels, out_channels)
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 5, 5, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory))
        if self.weight.device.type != "meta":
            conv_init_(self.weight, self.bias)
        self.radius = nn.Parameter(torch.full((), float(radius_init), **factory))

    def _r(self) -> Tensor:
        return check_finite("radius", self.radius, type(self).__name__).clamp(0.3, 3.0)

    def _kernel(self) -> Tensor:
        d = torch.arange(-2, 3, dtype=self.weight.dtype, device=self.weight.device)
        return self.weight * torch.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2 * self._r() ** 2))

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return F.conv2d(x, self._kernel(), self.bias, padding=2)

    @property
    def effective_kernel_size(self) -> tuple[float, float]:
        side = min(2.0 * float(self._r().detach()) + 1.0, 5.0)
        if self.last_input_size is not None:  # capped at the odd grid covering the input
            side = min(side, *(float(s + 1 - s % 2) for s in self.last_input_size))
        return side, side

    def size_parameters(self) -> Iterator[nn.Parameter]:
        yield self.radius

    def size_record(self) -> dict[str, Any]:
        return {"radius": float(self.radius.detach())}

    def to_conv2d(self) -> nn.Conv2d:
        return self._as_conv2d(self._kernel().detach())

    def extra_repr(self) -> str:
        h, w = self.effective_kernel_size
        return f"{self.in_channels}, {self.out_channels}, kernel_size={h:.2f}x{w:.2f} (learned, radius)"


class StemmedRadiusConv(RadiusConv):
    """RadiusConv behind a plain 3x3 stem."""

    spatial_stem: ClassVar[int | None] = 3


class FixedFive(Conv):
    """A fixed-size layer of the user's: a grid method as far as the report is concerned."""


@pytest.fixture
def registered():
    """Register the test's layers (inside the test), and free the names after."""
    names = {"radius_test": RadiusConv, "radius_stem_test": StemmedRadiusConv, "fixed_test": FixedFive}
    for name, cls in names.items():
        register(name)(cls)
    yield names
    for name in names:
        unregister(name)


def _contract_cases(name: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every (test function, arguments) of the contract tests that applies to layer ``name``: the ones
    parametrised over the registered layers, with the subset each selects (learned, spatial, frequency) decided by
    the same predicate the contract module uses."""
    cls = contract.get(name)
    selects = {id(contract.LAYERS): True, id(contract.LEARNED): cls.learns_size,
               id(contract.SPATIAL): cls.domain == "spatial", id(contract.FREQUENCY): cls.domain == "frequency"}
    for attr in sorted(dir(contract)):
        fn = getattr(contract, attr)
        marks = [m for m in getattr(fn, "pytestmark", []) if m.name == "parametrize"]
        if not attr.startswith("test_") or any(m.name == "slow" for m in getattr(fn, "pytestmark", [])):
            continue
        by_name = [m for m in marks if m.args[0] == "name"]
        if not by_name or not selects.get(id(by_name[0].args[1]), False):
            continue
        others = [(m.args[0], m.args[1]) for m in marks if m.args[0] != "name"]
        for values in itertools.product(*(v for _, v in others)):
            yield attr, {"name": name, **{k: v for (k, _), v in zip(others, values)}}


def test_contract_tests_cover_a_layer_registered_in_the_test(registered):
    ran = []
    for attr, kwargs in _contract_cases("radius_test"):
        torch.manual_seed(0)
        try:
            getattr(contract, attr)(**kwargs)
        except pytest.skip.Exception:
            continue
        ran.append(attr)
    # the learned-size and spatial checks ran too (not only the ones over every layer)
    assert {"test_same_size_output", "test_a_training_step_reaches_the_size_parameters",
            "test_to_conv2d_matches_the_layer_in_eval_mode", "test_learned_sizes_row",
            "test_nan_in_a_size_parameter_is_caught_where_it_arises", "test_pickle_round_trip"} <= set(ran)


def test_hooks_are_declared_with_defaults():
    base = KernelLayer
    assert base.spatial_stem is None and base.spatial_dims == 2 and base.size_parameter_names == ()
    assert base.sequence_layer() is None
    layer = build("conv", 2, 3, kernel_size=3)
    with pytest.raises(NotImplementedError, match="spatial layer"):
        layer.frequency_kernel((8, 8))
    with pytest.raises(NotImplementedError, match="2-D layer"):
        layer.to_conv1d()
    assert layer.size_summary() == {"size_parameter": None, "learns_size": False}
    njet = build("njet", 2, 3)
    assert njet.size_summary() == {"size_parameter": "sigma", "learns_size": True}


def test_leaderboard_report_and_export_pick_up_the_layer(registered, tmp_path):
    from nas_flex.export import to_deployable
    from nas_flex.leaderboard.schema import trial_table
    from nas_flex.models import build as build_model
    from nas_flex.report.curves import grid_curve, learned_points
    from nas_flex.train import run_trial

    rows = []
    for i, (conv, hp) in enumerate([("radius_test", {"radius_init": 1.5}), ("fixed_test", {"kernel_size": 3})]):
        result = run_trial({**TINY, "conv": conv, "conv_hparams": hp}, checkpoint_dir=tmp_path / conv)
        assert result.status == "completed", result.error
        rows.append(trial_table(result, experiment="e", trial_id=f"t{i}", written_at=result.finished).to_pandas())
    import pandas as pd

    df = pd.concat(rows, ignore_index=True)
    # the leaderboard's size summary: the layer's own headline parameter, from what the trial wrote
    assert "radius" not in SIZE_PARAMETERS
    changes = size_changes(df)
    assert set(changes["kind"]) == {"radius_test"} and (changes["parameter"] == "radius").all()
    assert (changes["init_value"] == 1.5).all() and changes["learned_value"].notna().all()
    assert (changes["learned_value"] != 1.5).any()  # trained
    records = json.loads(df.loc[0, "learned_sizes_json"])
    assert all(r["size_parameter"] == "radius" and r["learns_size"] is True for r in records)
    # the report: the user's fixed-size layer is a grid method, the learned one a learned-size method
    assert learns_size(df).tolist() == [True, False]
    assert fixed_size_methods(df) == {"fixed_test"}
    assert grid_curve(df, "metrics_val_acc")["trial_id"].tolist() == ["t1"]
    assert learned_points(df)["method"].tolist() == ["radius_test"]
    # export: the trained model becomes plain PyTorch with the same outputs
    model = build_model({**TINY, "conv": "radius_test"}, in_channels=1, num_classes=10, input_size=(16, 16)).eval()
    x = torch.randn(3, 1, 16, 16)
    plain = to_deployable(model, x)
    assert not any(isinstance(m, KernelLayer) for m in plain.modules())
    torch.testing.assert_close(plain(x), model(x), rtol=1e-4, atol=1e-5)


def test_backbones_read_the_stem_and_sequence_hooks(registered):
    from nas_flex.models import build as build_model

    model = build_model({**TINY, "conv": "radius_stem_test"}, in_channels=1, num_classes=10)
    convs = [m for m in model.modules() if isinstance(m, KernelLayer)]
    assert type(convs[0]) is Conv and convs[0].kernel_size == (3, 3)  # the declared stem
    assert all(type(c) is StemmedRadiusConv for c in convs[1:])

    @register("flex_seq_test")
    class MyFlex(contract.get("flexconv")):
        """A user's FlexConv: its 1-D form comes with it."""

    try:
        tcn = build_model({"backbone": "tcn", "conv": "flex_seq_test", "conv_hparams": {"hidden_channels": 8},
                           "width": 4, "depth": 1}, in_channels=1, num_classes=3)
        assert tcn(torch.randn(2, 1, 20)).shape == (2, 3)
        with pytest.raises(Exception, match="1-D form"):
            build_model({"backbone": "tcn", "conv": "radius_test", "width": 4}, in_channels=1, num_classes=3)
    finally:
        unregister("flex_seq_test")
