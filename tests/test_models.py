"""Backbones through the registry, and convert() on a torchvision model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nas_flex.errors import HyperparameterError, UnknownNameError
from nas_flex.layers import KernelLayer, available, get
from nas_flex.models import build, convert

IMAGE_BACKBONES = {
    "simple": {"depth": 2, "width": 4},
    "resnet": {"depth": 20, "width": 4},
    "flexnet": {"depth": 2, "width": 4},
}


def small(conv: str) -> dict:
    return dict(get(conv).example_hparams)


@pytest.mark.parametrize("conv", available())
@pytest.mark.parametrize("backbone", sorted(IMAGE_BACKBONES))
def test_every_backbone_with_every_layer_trains_a_step(backbone, conv):
    hp = small(conv)
    kernel_size = hp.pop("kernel_size", None)
    cfg = {"backbone": backbone, "conv": conv, "conv_hparams": hp, "kernel_size": kernel_size,
           **IMAGE_BACKBONES[backbone]}
    model = build(cfg, in_channels=1, num_classes=3)
    n_layers = sum(isinstance(m, KernelLayer) and m.kind == conv for m in model.modules())
    assert n_layers >= (1 if getattr(get(conv), "spatial_stem", None) else 2)  # NIFF: a spatial stem comes first
    x, y = torch.randn(4, 1, 24, 24), torch.tensor([0, 1, 2, 0])  # resnet: 24 -> 12 -> 6
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    opt.step()
    assert model(x).shape == (4, 3) and torch.isfinite(model(x)).all()


@pytest.mark.parametrize("conv", ["flexconv", "conv"])
def test_tcn_on_sequences(conv):
    hp = {k: v for k, v in small(conv).items() if k != "kernel_size"} if conv == "flexconv" else {}
    model = build({"backbone": "tcn", "conv": conv, "conv_hparams": hp, "width": 4, "depth": 2},
                  in_channels=1, num_classes=10)
    x = torch.randn(3, 1, 40, requires_grad=True)
    out = model(x)
    assert out.shape == (3, 10)
    # causal: the prediction (read at the last step) depends on every position, and nothing leaks backwards
    model.eval()
    feats = model.blocks(x)
    feats[0, :, 10].sum().backward()
    assert x.grad[0, :, 11:].abs().sum() == 0
    assert x.grad[0, :, :11].abs().sum() > 0


def test_tcn_rejects_2d_only_layers():
    with pytest.raises(HyperparameterError, match="tcn"):
        build({"backbone": "tcn", "conv": "njet"}, in_channels=1, num_classes=2)


def test_per_layer_kernel_sizes_and_their_count():
    model = build({"backbone": "simple", "conv": "conv", "depth": 2, "kernel_size": [3, 7]},
                  in_channels=1, num_classes=2)
    assert [m.kernel_size for m in model.modules() if isinstance(m, KernelLayer)] == [(3, 3), (7, 7)]
    with pytest.raises(HyperparameterError, match="lists 3 sizes but the backbone has 2"):
        build({"backbone": "simple", "conv": "conv", "depth": 2, "kernel_size": [3, 5, 7]}, in_channels=1,
              num_classes=2)


@pytest.mark.parametrize("cfg, err, match", [
    ({"backbone": "vgg"}, UnknownNameError, "unknown backbone 'vgg'.*'resnet'"),
    ({"backbone": "simple", "conv": "flex"}, UnknownNameError, "unknown layer 'flex'"),
    ({"backbone": "simple", "pooling": "mean"}, UnknownNameError, "unknown pooling 'mean'"),
    ({"backbone": "simple", "depth": 3}, HyperparameterError, "depth 2 or 4"),
    ({"backbone": "resnet", "depth": 21}, HyperparameterError, "6n"),
    ({"backbone": "simple", "conv": "mixed", "conv_hparams": {"kernel_size": 3}}, HyperparameterError, "kernel_size"),
    ({"backbone": "simple", "conv": "conv", "pooling": "safe"}, HyperparameterError, "safe-subsampling"),
])
def test_config_errors_name_the_key(cfg, err, match):
    with pytest.raises(err, match=match):
        build(cfg, in_channels=1, num_classes=2)


def test_safe_subsampling_follows_the_njet_sigma():
    model = build({"backbone": "simple", "conv": "njet", "depth": 2, "pooling": "safe", "width": 4},
                  in_channels=1, num_classes=2)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 2)


def test_convert_torchvision_resnet18_keeps_strided_convs():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(num_classes=10)
    before = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    report = convert(model, to="mixed", kernel_sizes=(1, 3))
    after = dict(model.named_modules())
    swapped = [r for r in report if r["action"] == "swapped"]
    kept = [r for r in report if r["action"] == "kept"]
    assert len(report) == len(before) == 20
    assert len(swapped) == 13 and len(kept) == 7
    for r in kept:  # the stride-2 convs (stem, first conv of stages 2-4, 1x1 downsample shortcuts) are untouched
        assert after[r["name"]] is before[r["name"]] and before[r["name"]].stride == (2, 2)
    for r in swapped:
        assert get("mixed") is type(after[r["name"]])
        assert before[r["name"]].stride == (1, 1)
    assert model(torch.randn(1, 3, 96, 96)).shape == (1, 10)  # stage 4 runs at 3x3


def test_convert_to_conv_keeps_sizes_and_reports_kept_reasons():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 5, padding=0),
                          nn.Conv2d(4, 4, 3, padding=1, groups=2), nn.Conv2d(4, 4, (3, 5), padding=(1, 2), bias=False))
    report = {r["name"]: r for r in convert(model, to="conv")}
    assert report["0"]["action"] == "swapped" and model[0].kernel_size == (3, 3)
    assert report["4"]["action"] == "swapped" and model[4].kernel_size == (3, 5) and model[4].bias is None
    assert "1x1" in report["1"]["reason"]
    assert "padding" in report["2"]["reason"]
    assert "grouped" in report["3"]["reason"]
    with pytest.raises(UnknownNameError):
        convert(model, to="nope")
