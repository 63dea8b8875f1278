"""conv2d_same / fft_conv2d against independent references, and the FFT flop metering."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nas_flex.errors import HyperparameterError, ShapeError
from nas_flex.functional import choose_conv_method, conv2d_same, fft_conv2d, next_fast_len
from nas_flex.train.metering import count_flops, count_parameters


def loop_correlate(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """'Same' zero-padded cross-correlation written out with loops: the reference nothing else shares."""
    n, c_in, h, wd = x.shape
    c_out, _, kh, kw = w.shape
    out = torch.zeros(n, c_out, h, wd, dtype=x.dtype)
    for i in range(h):
        for j in range(wd):
            for u in range(kh):
                for v in range(kw):
                    ii, jj = i + u - kh // 2, j + v - kw // 2
                    if 0 <= ii < h and 0 <= jj < wd:
                        out[:, :, i, j] += x[:, :, ii, jj] @ w[:, :, u, v].T
    return out


@pytest.mark.parametrize("method", ["spatial", "fft"])
@pytest.mark.parametrize("kernel", [(1, 1), (3, 3), (5, 3), (1, 7), (9, 9)])
def test_against_a_loop_reference(method, kernel):
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    w = torch.randn(4, 3, *kernel, dtype=torch.float64)
    torch.testing.assert_close(conv2d_same(x, w, method=method), loop_correlate(x, w), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("hw", [(32, 32), (17, 40), (5, 5)])
@pytest.mark.parametrize("kernel", [(3, 3), (7, 27), (33, 33), (11, 5)])
def test_fft_equals_direct_conv(hw, kernel):
    """Includes kernels larger than the input and non-square crops (the authors' FFT path broke on those)."""
    x = torch.randn(2, 3, *hw, dtype=torch.float64)
    w = torch.randn(5, 3, *kernel, dtype=torch.float64)
    b = torch.randn(5, dtype=torch.float64)
    ref = F.conv2d(x, w, b, padding=(kernel[0] // 2, kernel[1] // 2))
    torch.testing.assert_close(fft_conv2d(x, w, b), ref, rtol=1e-9, atol=1e-9)


def test_fft_gradients_match_direct_conv():
    x = torch.randn(1, 2, 6, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 2, 3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: fft_conv2d(x, w), (x, w))


def test_fft_float32_and_autocast_bfloat16():
    x, w = torch.randn(2, 3, 16, 16), torch.randn(4, 3, 9, 9)
    ref = F.conv2d(x, w, padding=4)
    torch.testing.assert_close(fft_conv2d(x, w), ref, rtol=1e-4, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fft_conv2d(x.bfloat16(), w)
    assert y.dtype == torch.bfloat16  # computed in float32, returned in the input's dtype
    ref = F.conv2d(x.bfloat16().float(), w, padding=4)
    torch.testing.assert_close(y.float(), ref, rtol=1e-2, atol=0.1)  # bf16 output rounding only


def test_errors_name_the_problem():
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ShapeError, match="odd"):
        conv2d_same(x, torch.randn(2, 3, 4, 3))
    with pytest.raises(ShapeError, match="C_in=2"):
        conv2d_same(x, torch.randn(2, 2, 3, 3))
    with pytest.raises(HyperparameterError, match="method"):
        conv2d_same(x, torch.randn(2, 3, 3, 3), method="winograd")


def test_next_fast_len():
    assert [next_fast_len(n) for n in (1, 7, 11, 13, 17, 97, 128)] == [1, 8, 12, 15, 18, 100, 128]


def test_method_choice_follows_the_measured_crossover():
    """Direct conv for 3x3, FFT for featuremap-sized kernels (see experiments/bench_fft_crossover.py)."""
    shape = (16, 32, 32, 32)
    assert choose_conv_method(shape, (32, 32, 3, 3)) == "spatial"
    assert choose_conv_method(shape, (32, 32, 33, 33)) == "fft"


def test_fft_flops_are_counted():
    class Op(torch.nn.Module):
        def __init__(self, method):
            super().__init__()
            self.method = method
            self.w = torch.nn.Parameter(torch.randn(8, 4, 9, 9))

        def forward(self, x):
            return conv2d_same(x, self.w, method=self.method)

    x = torch.randn(2, 4, 16, 16)
    spatial, fft = count_flops(Op("spatial"), x), count_flops(Op("fft"), x)
    assert spatial.fft == 0 and spatial.total == 2 * 2 * 8 * 4 * 16 * 16 * 81
    # rfft2 over a 24x24 grid (next fast length of 16 + 9 - 1) for 2 * 4 input and 8 * 4 kernel planes, and an
    # irfft2 for 2 * 8 output planes: 2.5 N log2 N each (half a complex FFT), N = 576
    n = 24 * 24
    expected = 2.5 * n * math.log2(n) * (2 * 4 + 8 * 4 + 2 * 8)
    assert fft.fft == pytest.approx(expected, rel=0.05)
    assert fft.total > fft.fft > 0
    assert fft.per_sample == fft.total / 2


def test_count_parameters_counts_shared_weights_once():
    lin = torch.nn.Linear(3, 4)
    model = torch.nn.Sequential(lin, torch.nn.ReLU(), lin.__class__(4, 3))
    model[2].weight = torch.nn.Parameter(lin.weight.T.detach())
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())
    shared = torch.nn.Sequential(lin, lin)
    assert count_parameters(shared) == 3 * 4 + 4
