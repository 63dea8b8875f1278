"""The discrete baseline and the pooling choices."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nas_flex.errors import HyperparameterError, UnknownNameError
from nas_flex.layers import build
from nas_flex.layers.pooling import Pool2d


def test_conv_matches_nn_conv2d_with_the_same_weights():
    layer = build("conv", 3, 5, kernel_size=(3, 7))
    ref = nn.Conv2d(3, 5, (3, 7), padding="same")
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(2, 3, 12, 15)
    torch.testing.assert_close(layer(x), ref(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bad", [4, 0, -3, (3,), (3, 4), 2.0, "3"])
def test_conv_rejects_even_or_malformed_sizes(bad):
    with pytest.raises(HyperparameterError, match="kernel_size"):
        build("conv", 2, 2, kernel_size=bad)


@pytest.mark.parametrize("mode", ["max", "avg", "conv", "none"])
@pytest.mark.parametrize("hw", [(8, 8), (9, 7)])
def test_pooling_shapes(mode, hw):
    pool = Pool2d(mode, channels=4)
    y = pool(torch.randn(2, 4, *hw))
    expected = hw if mode == "none" else tuple(-(-s // 2) for s in hw)
    assert y.shape == (2, 4, *expected)


def test_pooling_values():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert Pool2d("max")(x).flatten().tolist() == [5.0, 7.0, 13.0, 15.0]
    assert Pool2d("avg")(x).flatten().tolist() == [2.5, 4.5, 10.5, 12.5]
    assert torch.equal(Pool2d("none")(x), x)


def test_pooling_errors():
    with pytest.raises(UnknownNameError, match="'avg'.*'max'"):
        Pool2d("mean")
    with pytest.raises(HyperparameterError, match="channels"):
        Pool2d("conv")
