"""FlexConv and FlexConv1d: the paper's properties (mask, crop, grid, alias-free regularizer), equivalences,
gradients and errors. The generic layer contract is in test_layer_contract.py."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from torch import nn
from torch.func import functional_call

import nas_flex
from nas_flex.errors import HyperparameterError, NonFiniteError, ShapeError, UnknownNameError
from nas_flex.functional.conv import conv2d_same
from nas_flex.functional.flexconv import causal_conv1d, flexconv_kernel
from nas_flex.kernels.masks import (
    causal_crop_start,
    crop_half_size,
    crop_sizes,
    gaussian_mask,
    odd_grid_size,
    relative_grid,
    relative_positions,
    threshold_radius,
)
from nas_flex.layers import build
from nas_flex.layers.flexconv import DEFAULT_GRID, SIGMA_MAX, SIGMA_MIN, FlexConv, FlexConv1d
from nas_flex.layers.kernelnets import KERNEL_NETS, MAGNet

F64 = torch.float64


def _set_mask(layer, mean, sigma) -> None:
    with torch.no_grad():
        layer.mask_mean.copy_(torch.as_tensor(mean, dtype=layer.mask_mean.dtype))
        layer.mask_sigma.copy_(torch.as_tensor(sigma, dtype=layer.mask_sigma.dtype))


# ------------------------------------------------------------------------------------------------ masks (pure)
def test_grid_helpers():
    assert [odd_grid_size(n) for n in (1, 2, 7, 32)] == [1, 3, 7, 33]
    torch.testing.assert_close(relative_positions(5), torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))
    assert relative_positions(1).tolist() == [0.0]
    grid = relative_grid((3, 5))
    assert grid.shape == (3, 5, 2)
    assert grid[0, 4].tolist() == [-1.0, 1.0]  # (row, column) coordinates
    assert threshold_radius(0.1) == pytest.approx(2.1460, abs=1e-4)


def test_gaussian_mask_is_the_product_of_the_axis_gaussians():
    ys, xs = torch.linspace(-1, 1, 7, dtype=F64), torch.linspace(-1, 1, 9, dtype=F64)
    mean, sigma = torch.tensor([0.1, -0.2], dtype=F64), torch.tensor([0.3, 0.5], dtype=F64)
    mask = gaussian_mask([ys, xs], mean, sigma)
    ref = torch.exp(-0.5 * ((ys[:, None] - 0.1) / 0.3) ** 2 - 0.5 * ((xs[None, :] + 0.2) / 0.5) ** 2)
    torch.testing.assert_close(mask, ref, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("sigma, side", [(0.075, 5), (0.2, 13), (0.3, 21), (0.47, 33), (0.6, 33), (5.0, 33)])
def test_crop_sizes_match_the_authors_rule(sigma, side):
    """On a 33-sample grid (CIFAR-10): half-width |mu| + 2.146 sigma gives the digest's known sides."""
    assert 2 * crop_half_size(threshold_radius(0.1) * sigma, 33) + 1 == side
    layer = FlexConv(2, 2, hidden_channels=4, mask_sigma_init=sigma)
    layer(torch.randn(1, 2, 32, 32))  # grid 33
    assert layer.effective_kernel_size == (float(side), float(side))


def test_crop_keeps_exactly_the_positions_above_the_threshold():
    """Every grid position whose mask factor exceeds the threshold is kept; every dropped one is <= threshold."""
    grid = relative_positions(41, dtype=F64)
    for mean, sigma in [(0.0, 0.1), (0.13, 0.07), (-0.3, 0.2), (0.0, 0.02)]:
        (half,) = crop_sizes([mean], [sigma], 0.1, [41])
        factor = torch.exp(-0.5 * ((grid - mean) / sigma) ** 2)
        kept = torch.zeros(41, dtype=torch.bool)
        kept[20 - half : 21 + half] = True
        assert bool((factor[~kept] <= 0.1).all()), (mean, sigma)
        assert bool(kept[factor > 0.1].all()), (mean, sigma)
    # a one-tap crop is widened to 3 taps where the grid allows (a centred 1-tap mask gets no gradient)
    assert crop_sizes([0.0], [0.01], 0.1, [41], min_half=1) == (1,)
    assert crop_sizes([0.0], [0.01], 0.1, [1], min_half=1) == (0,)


def test_causal_crop_keeps_the_newest_positions_above_the_threshold():
    grid = relative_positions(50, dtype=F64)
    for mean, sigma in [(1.0, 0.075), (1.0, 0.4), (0.5, 0.1)]:
        start = causal_crop_start(mean, sigma, 0.1, 50)
        factor = torch.exp(-0.5 * ((grid - mean) / sigma) ** 2)
        assert bool((factor[:start] <= 0.1).all())
        assert bool((grid[start:] > mean - threshold_radius(0.1) * sigma).all())
    assert causal_crop_start(1.0, 1e-4, 0.1, 50, min_length=2) == 48


# -------------------------------------------------------------------------------------------- kernel and crop
def test_kernel_is_mask_times_kernel_net_on_the_cropped_grid():
    layer = FlexConv(3, 4, hidden_channels=8, dtype=F64)
    _set_mask(layer, [0.05, -0.1], [0.2, 0.12])
    w = layer.kernel((20, 24))  # grid 21 x 25
    hh, hw = crop_sizes([0.05, -0.1], [0.2, 0.12], 0.1, [21, 25])
    assert w.shape == (4, 3, 2 * hh + 1, 2 * hw + 1)
    full = relative_grid((21, 25), dtype=F64)[10 - hh : 11 + hh, 12 - hw : 13 + hw]  # (kh, kw, 2)
    with torch.no_grad():
        values = layer.kernel_net(full.reshape(-1, 2))  # (P, C_out * C_in)
    mask = torch.exp(-0.5 * ((full[..., 0] - 0.05) / 0.2) ** 2 - 0.5 * ((full[..., 1] + 0.1) / 0.12) ** 2)
    ref = (values * mask.reshape(-1, 1)).t().reshape(4, 3, *mask.shape)  # value o * C_in + i is entry (o, i)
    torch.testing.assert_close(w.detach(), ref, rtol=1e-12, atol=1e-12)


def test_cropping_changes_the_output_by_no_more_than_the_threshold_allows():
    """y_full - y_cropped comes only from dropped taps, where the mask is <= 0.1:
    |y_full - y_crop| <= conv(|x|, 0.1 * |kernel_net| on the dropped positions), pointwise."""
    torch.manual_seed(3)
    layer = FlexConv(3, 4, hidden_channels=8, dtype=F64)
    mean, sigma = torch.tensor([0.02, -0.05], dtype=F64), torch.tensor([0.15, 0.25], dtype=F64)
    _set_mask(layer, mean, sigma)
    x = torch.randn(2, 3, 21, 21, dtype=F64)
    with torch.no_grad():
        y_crop = layer(x)
        assert layer.effective_kernel_size == (7.0, 11.0)  # of the full 21 x 21
        w_full = flexconv_kernel(layer.kernel_net, mean, sigma, (21, 21), (4, 3), crop=(10, 10))
        y_full = conv2d_same(x, w_full, layer.bias)
        unmasked = layer.kernel_net(relative_grid((21, 21), dtype=F64).reshape(-1, 2)).t().reshape(4, 3, 21, 21)
    dropped = torch.ones(21, 21, dtype=torch.bool)
    dropped[7:14, 5:16] = False
    # the kernels agree on the kept taps, and the dropped taps are at most threshold * |kernel net|
    w_crop = layer.kernel().detach()
    torch.testing.assert_close(w_full[..., 7:14, 5:16], w_crop, rtol=1e-12, atol=1e-14)
    assert bool((w_full.abs()[..., dropped] <= 0.1 * unmasked.abs()[..., dropped] + 1e-15).all())
    bound = conv2d_same(x.abs(), 0.1 * unmasked.abs() * dropped, method="spatial")
    diff = (y_full - y_crop).abs()
    assert float(diff.max()) > 1e-6  # the crop did drop something
    assert bool((diff <= bound + 1e-10).all())
    # and most of the output is kept: the dropped taps carry little of the kernel
    assert float(diff.norm() / y_full.norm()) < 0.2


def test_anisotropic_sigma_gives_a_rectangular_kernel_and_fft_equals_spatial():
    layer = FlexConv(3, 4, hidden_channels=8, mask_sigma_init=0.075, dtype=F64)
    _set_mask(layer, [0.0, 0.0], [0.075, 0.3])
    x = torch.randn(2, 3, 32, 32, dtype=F64)
    y = layer(x)
    w = layer.kernel()
    assert w.shape[-2:] == (5, 21) and layer.effective_kernel_size == (5.0, 21.0)
    y_fft = conv2d_same(x, w, layer.bias, method="fft")
    y_spatial = conv2d_same(x, w, layer.bias, method="spatial")
    torch.testing.assert_close(y_fft, y_spatial, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(y, y_spatial, rtol=1e-10, atol=1e-10)
    assert "kernel_size=5x21 (learned, mask sigma=0.075x0.3)" in repr(layer)


def test_a_new_input_size_gives_a_new_grid_sampled_at_the_same_positions():
    layer = FlexConv(2, 3, hidden_channels=8, mask_sigma_init=0.3, dtype=F64)
    layer(torch.randn(1, 2, 16, 16, dtype=F64))
    k17 = layer.kernel().detach()
    assert layer.effective_kernel_size == (11.0, 11.0)  # grid 17: half-width 0.644 / 0.125 -> 5
    layer(torch.randn(1, 2, 32, 32, dtype=F64))
    assert layer.last_input_size == (32, 32)
    k33 = layer.kernel().detach()
    assert layer.effective_kernel_size == (21.0, 21.0)  # grid 33
    # the 17-sample grid is every other sample of the 33-sample one: same continuous kernel, sampled sparser
    torch.testing.assert_close(k17, k33[..., ::2, ::2], rtol=1e-12, atol=1e-12)
    layer(torch.randn(1, 2, 9, 40, dtype=F64))
    assert layer.grid_size() == (9, 41) and layer.kernel().shape[-2:] == (5, 25)


def test_horizon_fixes_the_grid():
    layer = FlexConv(2, 2, hidden_channels=4, horizon=33, mask_sigma_init=0.3)
    assert layer.effective_kernel_size == (21.0, 21.0)  # before any input: the horizon grid
    y = layer(torch.randn(1, 2, 8, 8))
    assert y.shape == (1, 2, 8, 8) and layer.effective_kernel_size == (21.0, 21.0)
    assert FlexConv(2, 2, horizon=(9, 33)).grid_size((5, 5)) == (9, 33)
    assert FlexConv(2, 2).effective_kernel_size == (5.0, 5.0)  # DEFAULT_GRID before the first input
    assert DEFAULT_GRID == 33


def test_kernel_never_exceeds_the_grid():
    layer = FlexConv(2, 2, hidden_channels=4)
    _set_mask(layer, [0.9, -2.0], [3.0, 1.0])
    layer(torch.randn(1, 2, 6, 11))
    assert layer.kernel().shape[-2:] == (7, 11)


@pytest.mark.parametrize("hw", [(12, 12), (11, 14), (7, 30)])
def test_to_conv2d_equals_the_layer_in_eval_mode(hw):
    layer = FlexConv(3, 4, hidden_channels=8, bias=True, dtype=F64)
    _set_mask(layer, [0.03, -0.02], [0.35, 0.15])
    with torch.no_grad():
        layer.bias.normal_()
    layer.eval()
    x = torch.randn(2, 3, *hw, dtype=F64)
    y = layer(x)
    conv = layer.to_conv2d()
    assert type(conv) is nn.Conv2d and conv.padding == (conv.kernel_size[0] // 2, conv.kernel_size[1] // 2)
    assert conv.kernel_size == tuple(int(v) for v in layer.effective_kernel_size)
    torch.testing.assert_close(conv(x), y, rtol=1e-10, atol=1e-10)
    assert FlexConv(3, 4, bias=False).to_conv2d().bias is None


# --------------------------------------------------------------------------------------------------- gradients
def test_gradcheck_float64_all_parameters_including_mask_mean_and_sigma():
    torch.manual_seed(0)
    layer = FlexConv(2, 2, hidden_channels=4, num_layers=2, dtype=F64)
    # a 5 x 3 crop of the 9 x 9 grid, away from the crop boundaries (eps cannot flip the crop)
    _set_mask(layer, [0.05, -0.03], [0.3, 0.2])
    x = torch.randn(1, 2, 9, 9, dtype=F64, requires_grad=True)
    layer(x.detach())
    assert layer.kernel().shape[-2:] == (5, 3)
    names = [n for n, _ in layer.named_parameters()]
    assert {"mask_mean", "mask_sigma"} <= set(names)
    params = [p.detach().clone().requires_grad_(True) for _, p in layer.named_parameters()]

    def f(x, *values):
        return functional_call(layer, dict(zip(names, values)), (x,))

    # fast mode (random projections of the Jacobian) keeps this under a second with every parameter included
    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)
    # and the full Jacobian of the generated kernel in the mask parameters
    def kernel(mean, sigma):
        return flexconv_kernel(layer.kernel_net, mean, sigma, (9, 9), (2, 2), crop=(2, 1))

    mask = tuple(p.detach().clone().requires_grad_(True) for p in (layer.mask_mean, layer.mask_sigma))
    assert torch.autograd.gradcheck(kernel, mask, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_mask_receives_a_gradient_even_from_a_tiny_initial_crop():
    """On a 13-sample grid the initial mask (sigma 0.075) covers one tap; the 3x3 minimum keeps it learnable."""
    layer = FlexConv(3, 4, hidden_channels=8)
    x = torch.randn(2, 3, 12, 12)
    (layer(x) - torch.randn(2, 4, 12, 12)).pow(2).mean().backward()
    assert layer.effective_kernel_size == (3.0, 3.0)
    assert float(layer.mask_sigma.grad.abs().min()) > 0


@pytest.mark.parametrize("name", sorted(KERNEL_NETS))
def test_every_kernel_net_trains_the_mask(name):
    layer = FlexConv(3, 4, kernel_net=name, hidden_channels=8, mask_sigma_init=0.2, dtype=F64)
    x = torch.randn(2, 3, 11, 14, dtype=F64)
    y = layer(x)
    assert y.shape == (2, 4, 11, 14) and y.dtype == F64
    (y.pow(2).mean() + layer.regularization()).backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in layer.size_parameters())
    assert float(layer.mask_sigma.grad.abs().sum()) > 0
    assert f"kernel_net='{name}'" in repr(layer) or name == "magnet"


# ------------------------------------------------------------------------------------------------ regularizer
def test_regularization_matches_the_together_formula():
    """weight * sum_l relu(max_d(f_ld - nyq_d / F))^2, f_ld = max_i(|W| + 2 gamma) / 2 pi, nyq_d = (k_d - 1) / 4."""
    layer = FlexConv(1, 1, hidden_channels=1, num_layers=1, regularize=True, dtype=F64)
    net = layer.kernel_net
    with torch.no_grad():
        net.filter_weight.copy_(torch.tensor([[[3.0, 0.0]], [[0.0, 4.0]]]))
        net.filter_gamma.fill_(1.0)
    layer(torch.randn(1, 1, 5, 9, dtype=F64))  # grid 5 x 9: Nyquist (1, 2), per layer (0.5, 1.0)
    f0 = ((3 + 2) / (2 * math.pi), 2 / (2 * math.pi))  # layer 0: exceeds on the height axis
    f1 = (2 / (2 * math.pi), (4 + 2) / (2 * math.pi))  # layer 1: below on both
    excess0 = max(f0[0] - 0.5, f0[1] - 1.0)
    assert max(f1[0] - 0.5, f1[1] - 1.0) < 0
    assert layer.regularization().item() == pytest.approx(0.1 * excess0**2, rel=1e-12)


def test_regularization_trains_the_kernel_net_and_shrinks_on_larger_grids():
    layer = FlexConv(3, 4, hidden_channels=8, regularize=True)
    layer(torch.randn(1, 3, 16, 16))
    small_grid = layer.regularization()
    assert small_grid > 0
    small_grid.backward()
    net = layer.kernel_net
    assert float(net.filter_weight.grad.abs().sum()) > 0 and float(net.filter_gamma.grad.abs().sum()) > 0
    assert layer.mask_sigma.grad is None  # the paper's default regularises the kernel net only
    layer(torch.randn(1, 3, 64, 64))
    assert layer.regularization() < small_grid  # a finer grid has a higher Nyquist frequency
    with torch.no_grad():  # a band-limited net is not penalised
        net.filter_weight.mul_(1e-3)
        net.filter_gamma.mul_(1e-3)
    assert layer.regularization().item() == 0.0


def test_regularization_variants():
    x = torch.randn(1, 3, 16, 16)
    with_mask = FlexConv(3, 4, hidden_channels=8, regularize=True, regularize_mask=True)
    with_mask(x)
    with_mask.regularization().backward()
    assert float(with_mask.mask_sigma.grad.max()) < 0  # a wider mask has a lower frequency: the penalty grows it
    off = FlexConv(3, 4, hidden_channels=8)  # the default, as the authors train CIFAR-10 / MNIST / STL-10
    off(x)
    assert off.regularization().item() == 0.0 and off.regularization().shape == ()
    on = FlexConv(3, 4, hidden_channels=8, regularize=True)
    on(x)
    assert on.regularization().item() > 0 and "regularize=True" in repr(on) and "regularize" not in repr(off)
    siren = FlexConv(3, 4, kernel_net="siren", hidden_channels=8, regularize=True)
    siren(x)
    assert siren.regularization().item() == 0.0  # no analytic bound for SIREN
    torch.manual_seed(0)
    base = FlexConv(3, 4, hidden_channels=8, regularize=True)
    torch.manual_seed(0)
    weighted = FlexConv(3, 4, hidden_channels=8, regularize=True, regularization_weight=0.2)
    base(x), weighted(x)
    torch.testing.assert_close(weighted.regularization(), 2 * base.regularization())


# ------------------------------------------------------------------------------------------- records and guards
def test_size_parameters_records_and_repr():
    layer = FlexConv(3, 4, hidden_channels=8)
    assert [p is q for p, q in zip(layer.size_parameters(), (layer.mask_mean, layer.mask_sigma))] == [True, True]
    _set_mask(layer, [0.1, -0.2], [0.2, 0.3])
    rec = layer.size_record()
    assert set(rec) == {"mask_mean_h", "mask_mean_w", "mask_sigma_h", "mask_sigma_w"}
    assert all(type(v) is float for v in rec.values())
    assert rec["mask_mean_w"] == pytest.approx(-0.2) and rec["mask_sigma_w"] == pytest.approx(0.3)
    text = layer.extra_repr()
    assert "(learned, mask sigma=0.2x0.3, mean=0.1x-0.2)" in text and "hidden_channels=8" in text
    assert "num_layers" not in text and "mask_threshold" not in text and "bias" not in text
    df = nas_flex.learned_sizes(nn.Sequential(layer))
    assert df.iloc[0]["kind"] == "flexconv" and df.iloc[0]["mask_sigma_h"] == pytest.approx(0.2)


def test_sigma_is_clamped_in_forward_and_projected_by_constrain():
    layer = FlexConv(2, 2, hidden_channels=4)
    x = torch.randn(1, 2, 9, 9)
    _set_mask(layer, [0.0, 0.0], [-1.0, 100.0])
    y = layer(x)
    assert torch.isfinite(y).all() and layer.effective_kernel_size == (3.0, 9.0)
    layer.constrain_()
    assert layer.mask_sigma.tolist() == pytest.approx([SIGMA_MIN, SIGMA_MAX])
    torch.testing.assert_close(layer(x), y)


def test_non_finite_kernel_is_reported_where_it_arises():
    layer = FlexConv(2, 2, hidden_channels=4)
    with torch.no_grad():
        layer.kernel_net.output_bias[0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"FlexConv: `kernel`"):
        layer(torch.randn(1, 2, 9, 9))
    _set_mask(layer, [0.0, float("inf")], [0.1, 0.1])
    with pytest.raises(NonFiniteError, match=r"`mask_mean`"):
        layer(torch.randn(1, 2, 9, 9))
    assert layer.effective_kernel_size == (9.0, 9.0)  # never raises: the full grid of the last input


@pytest.mark.parametrize(
    "kwargs, arg",
    [
        ({"mask_threshold": 0.0}, "mask_threshold"),
        ({"mask_threshold": 1.0}, "mask_threshold"),
        ({"mask_threshold": float("nan")}, "mask_threshold"),
        ({"hidden_channels": 0}, "hidden_channels"),
        ({"num_layers": 0}, "num_layers"),
        ({"mask_sigma_init": 0.0}, "mask_sigma_init"),
        ({"mask_sigma_init": float("inf")}, "mask_sigma_init"),
        ({"horizon": 32}, "horizon"),
        ({"horizon": (33, 0)}, "horizon"),
        ({"regularization_weight": -0.1}, "regularization_weight"),
        ({"regularize": "yes"}, "regularize"),
        ({"kernel_net": "siren", "num_layers": 1}, "num_layers"),
        ({"kernel_net_options": {"omega_0": 3.0}}, "omega_0"),
        ({"kernel_net_options": {"dtype": torch.float64}}, "kernel_net_options"),
    ],
)
def test_bad_hyperparameters_are_named(kwargs, arg):
    with pytest.raises(HyperparameterError, match=arg):
        FlexConv(3, 4, **kwargs)


def test_kernel_net_options_reach_the_kernel_net():
    layer = FlexConv(2, 2, kernel_net="mfn_fourier", kernel_net_options={"input_scale": 3.0})
    assert layer.kernel_net.input_scale == 3.0 and "kernel_net_options={'input_scale': 3.0}" in layer.extra_repr()


def test_unknown_kernel_net_lists_the_valid_names():
    with pytest.raises(UnknownNameError, match=r"unknown kernel_net 'magnett' \(did you mean 'magnet'\?\); "
                                               r"expected one of: 'magnet', 'mfn_fourier', 'mfn_gabor', 'siren'"):
        build("flexconv", 3, 4, kernel_net="magnett")


def test_meta_device_float64_and_round_trips():
    meta = FlexConv(3, 4, device="meta")
    assert all(p.is_meta for p in meta.parameters())
    assert meta.effective_kernel_size == (5.0, 5.0) and meta.size_record()["mask_sigma_h"] == 0.075
    layer = FlexConv(3, 4, hidden_channels=8, dtype=F64)
    assert all(p.dtype == F64 for p in layer.parameters())
    x = torch.randn(2, 3, 10, 13, dtype=F64)
    y = layer(x)
    clone = pickle.loads(pickle.dumps(layer))
    torch.testing.assert_close(clone(x), y, rtol=0, atol=0)
    other = FlexConv(3, 4, hidden_channels=8, dtype=F64)
    other.load_state_dict(layer.state_dict())
    torch.testing.assert_close(other(x), y, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------- FlexConv1d
def test_flexconv1d_mask_starts_at_the_last_position():
    layer = FlexConv1d(3, 4, hidden_channels=8)
    assert layer.mask_mean.tolist() == [1.0] and layer.mask_sigma.tolist() == pytest.approx([0.075])
    mu = layer.kernel_net.filter_mu.detach()  # Gabor envelopes start just before the present
    assert float(mu.min()) >= 1.0 - 1.667 * 0.075 - 1e-6 and float(mu.max()) <= 1.0
    y = layer(torch.randn(2, 3, 33))
    assert y.shape == (2, 4, 33)
    assert layer.effective_kernel_size == (1.0, 3.0)  # the 3 newest of 33 samples
    w = layer.kernel().detach()
    mask = torch.exp(-0.5 * ((torch.tensor([0.875, 0.9375, 1.0]) - 1.0) / 0.075) ** 2)
    with torch.no_grad():
        values = layer.kernel_net(torch.tensor([[0.875], [0.9375], [1.0]]))
    torch.testing.assert_close(w, (values * mask[:, None]).t().reshape(4, 3, 3))


@pytest.mark.parametrize("sigma", [0.075, 0.3, 2.0])
def test_flexconv1d_is_causal(sigma):
    layer = FlexConv1d(2, 3, hidden_channels=8, mask_sigma_init=sigma, dtype=F64)
    x = torch.randn(1, 2, 40, dtype=F64)
    y = layer(x)
    for t in (0, 17, 39):
        x2 = x.clone()
        x2[..., t] += 1.0
        y2 = layer(x2)
        assert torch.equal(y2[..., :t], y[..., :t]), t  # nothing before t moves
        assert (y2[..., t] - y[..., t]).abs().max().item() > 0  # the present sees x[t]


@pytest.mark.parametrize("length", [1, 2, 33, 100])
def test_flexconv1d_to_conv1d_and_fft_path(length):
    layer = FlexConv1d(3, 4, hidden_channels=8, mask_sigma_init=0.4, dtype=F64)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(2, 3, length, dtype=F64)
    y = layer(x).detach()
    ref = layer.to_conv1d()
    torch.testing.assert_close(ref(x).detach(), y, rtol=1e-10, atol=1e-10)
    w = layer.kernel().detach()
    assert w.shape[-1] == int(layer.effective_kernel_size[1])
    for method in ("fft", "spatial"):
        torch.testing.assert_close(causal_conv1d(x, w, layer.bias.detach(), method=method), y, rtol=1e-10, atol=1e-10)


def test_flexconv1d_gradcheck_with_mask_parameters():
    layer = FlexConv1d(2, 2, hidden_channels=4, num_layers=2, dtype=F64)
    _set_mask(layer, [0.9], [0.3])
    x = torch.randn(1, 2, 12, dtype=F64, requires_grad=True)
    assert layer.kernel(12).shape[-1] == 5  # away from a crop boundary
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for _, p in layer.named_parameters()]

    def f(x, *values):
        return functional_call(layer, dict(zip(names, values)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


def test_flexconv1d_grid_records_and_errors():
    layer = FlexConv1d(3, 4, hidden_channels=8, mask_sigma_init=0.3, regularize=True)
    assert layer.effective_kernel_size == (1.0, 11.0)  # DEFAULT_GRID before the first input
    layer(torch.randn(2, 3, 200))
    assert layer.grid_size() == 200 and layer.effective_kernel_size[1] > 60
    assert layer.regularization() > 0
    df = nas_flex.learned_sizes(nn.Sequential(layer))
    assert df.iloc[0]["kind"] == "flexconv1d" and df.iloc[0]["height"] == 1.0
    assert set(layer.size_record()) == {"mask_mean", "mask_sigma"}
    assert "kernel_size=" in repr(layer) and "(learned, mask sigma=0.3" in repr(layer)
    clone = pickle.loads(pickle.dumps(layer))
    x = torch.randn(2, 3, 50)
    torch.testing.assert_close(clone(x), layer(x), rtol=0, atol=0)
    with pytest.raises(ShapeError, match=r"\(N, C, L\)"):
        layer(torch.randn(2, 3, 8, 8))
    with pytest.raises(ShapeError, match="C=3"):
        layer(torch.randn(2, 5, 8))
    with pytest.raises(HyperparameterError, match="horizon"):
        FlexConv1d(3, 4, horizon=0)
    with pytest.raises(HyperparameterError, match="mask_mean_init"):
        FlexConv1d(3, 4, mask_mean_init=1.5)
    assert FlexConv1d(3, 4, horizon=64, mask_sigma_init=0.3)(torch.randn(1, 3, 10)).shape == (1, 4, 10)
    assert all(p.is_meta for p in FlexConv1d(3, 4, device="meta").parameters())


# ------------------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
def test_cuda_forward_backward_and_to_conv2d():
    layer = FlexConv(3, 4, hidden_channels=8, device="cuda")
    _set_mask(layer, [0.0, 0.0], [0.1, 0.3])
    x = torch.randn(2, 3, 32, 32, device="cuda")
    y = layer(x)
    (y.square().mean() + layer.regularization()).backward()
    assert y.device.type == "cuda" and layer.mask_sigma.grad is not None
    torch.testing.assert_close(layer.to_conv2d()(x), y, rtol=1e-4, atol=1e-4)
    seq = FlexConv1d(3, 4, hidden_channels=8, device="cuda")
    assert seq(torch.randn(2, 3, 50, device="cuda")).device.type == "cuda"
    assert isinstance(MAGNet(2, 4, device="cuda").layer_max_frequencies(), torch.Tensor)
