"""The DARTS-style mixed kernel: the single-conv forward equals the softmax mixture of the candidate convs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nas_flex.errors import HyperparameterError, ShapeError
from nas_flex.layers import build


def test_forward_equals_the_softmax_mixture_of_cropped_candidates():
    layer = build("mixed", 3, 4, kernel_sizes=(3, 5, 7), dtype=torch.float64)
    with torch.no_grad():
        layer.alpha.copy_(torch.tensor([0.3, -1.0, 2.0]))
    x = torch.randn(2, 3, 10, 9, dtype=torch.float64)
    probs = torch.softmax(layer.alpha, 0)
    ref = 0
    for p, k in zip(probs, (3, 5, 7)):
        c = (7 - k) // 2
        w = layer.weight[:, :, c : c + k, c : c + k]  # the centred k x k crop of the shared weight
        ref = ref + p * F.conv2d(x, w, padding=k // 2)
    ref = ref + layer.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(layer(x), ref, rtol=1e-10, atol=1e-10)


def test_sizes_entropy_and_argmax():
    layer = build("mixed", 2, 2, kernel_sizes=(7, 3, 5))
    assert layer.kernel_sizes == (3, 5, 7)
    with torch.no_grad():
        layer.alpha.zero_()
    rec = layer.size_record()
    assert layer.effective_kernel_size == pytest.approx((5.0, 5.0))
    assert rec["normalized_entropy"] == pytest.approx(1.0)
    with torch.no_grad():
        layer.alpha.copy_(torch.tensor([0.0, 0.0, 20.0]))
    rec = layer.size_record()
    assert rec["argmax_kernel_size"] == 7 and rec["entropy"] < 1e-6
    assert layer.effective_kernel_size[0] == pytest.approx(7.0, abs=1e-6)
    assert rec["entropy"] <= math.log(3)


def test_alpha_learns_the_right_size():
    """Fit the layer to a target made by a 7x7 kernel whose border a smaller candidate cannot express."""
    torch.manual_seed(0)
    target_w = torch.randn(1, 1, 7, 7)
    x = torch.randn(16, 1, 16, 16)
    y = F.conv2d(x, target_w, padding=3)
    layer = build("mixed", 1, 1, kernel_sizes=(3, 5, 7), bias=False)
    opt = torch.optim.Adam(layer.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        (layer(x) - y).pow(2).mean().backward()
        opt.step()
    assert layer.size_record()["argmax_kernel_size"] == 7
    assert layer.effective_kernel_size[0] > 6.0


@pytest.mark.parametrize("bad", [(3,), (3, 4), (3, 3), (0, 3), "35", (3.0, 5)])
def test_bad_kernel_sizes(bad):
    with pytest.raises(HyperparameterError, match="kernel_sizes"):
        build("mixed", 2, 2, kernel_sizes=bad)


def test_largest_candidate_must_fit():
    with pytest.raises(ShapeError, match="7x7 is larger than the 5x6 input"):
        build("mixed", 2, 2)(torch.randn(1, 2, 5, 6))
