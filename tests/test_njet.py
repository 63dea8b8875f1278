"""N-Jet: the Gaussian-derivative basis against independent references, the layer, and safe-subsampling.

References: finite differences of the Gaussian, closed-form Hermite polynomials, and scipy.ndimage.gaussian_filter
(whose derivative kernels, times sigma^(i+j), are the basis to machine precision).
"""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nas_flex.errors import HyperparameterError, NonFiniteError, ShapeError, UnknownNameError
from nas_flex.functional.njet import njet_conv2d, njet_weight, safe_subsample2d, safe_subsample_size
from nas_flex.kernels.gaussian import (
    basis_orders,
    gaussian,
    gaussian_derivative,
    gaussian_derivative_basis,
    hermite,
    njet_kernel_size,
    num_basis,
)
from nas_flex.layers import build
from nas_flex.layers.njet import NJetConv, SafeSubsample2d

D = torch.float64


# ----------------------------------------------------------------------------------------------- the basis
def test_hermite_matches_closed_forms():
    x = torch.linspace(-3, 3, 13, dtype=D)
    closed = [
        torch.ones_like(x),
        2 * x,
        4 * x**2 - 2,
        8 * x**3 - 12 * x,
        16 * x**4 - 48 * x**2 + 12,
        32 * x**5 - 160 * x**3 + 120 * x,
    ]
    for m, ref in enumerate(closed):
        torch.testing.assert_close(hermite(x, m), ref, rtol=1e-12, atol=1e-12)


def _central_difference(f, x: torch.Tensor, m: int, h: float) -> torch.Tensor:
    """m-th derivative of f at x by the central difference sum_k (-1)^k C(m, k) f(x + (m/2 - k) h) / h^m."""
    return sum((-1) ** k * math.comb(m, k) * f(x + (m / 2 - k) * h) for k in range(m + 1)) / h**m


@pytest.mark.parametrize("sigma", [0.6, 1.0, 2.5])
@pytest.mark.parametrize(("m", "h", "atol"), [(1, 1e-4, 1e-8), (2, 1e-4, 1e-6), (3, 1e-3, 1e-6), (4, 5e-3, 5e-5)])
def test_gaussian_derivative_matches_finite_differences(sigma, m, h, atol):
    x = torch.linspace(-4 * sigma, 4 * sigma, 41, dtype=D)
    scale = sigma ** (m + 1)  # G^m ~ sigma^-(m+1): compare on the scale-free values
    ref = _central_difference(lambda u: gaussian(u, sigma), x, m, h * sigma)
    torch.testing.assert_close(gaussian_derivative(x, sigma, m) * scale, ref * scale, rtol=0, atol=atol)


def test_basis_matches_finite_differences_of_the_gaussian():
    """s^(i+j) d^i/dy^i d^j/dx^j of the grid-normalised Gaussian, from finite differences of exp alone."""
    sigma, kh, kw = 1.3, 9, 7
    basis = gaussian_derivative_basis(sigma, 3, (kh, kw), dtype=D)
    y = torch.arange(kh, dtype=D) - kh // 2
    x = torch.arange(kw, dtype=D) - kw // 2

    def bump(u):
        return torch.exp(-(u**2) / (2 * sigma**2))

    hs = {0: 1.0, 1: 1e-5, 2: 1e-4, 3: 1e-3}
    for b, (i, j) in enumerate(basis_orders(3)):
        fy = bump(y) if i == 0 else _central_difference(bump, y, i, hs[i])
        fx = bump(x) if j == 0 else _central_difference(bump, x, j, hs[j])
        ref = sigma ** (i + j) * torch.outer(fy, fx) / (bump(y).sum() * bump(x).sum())
        torch.testing.assert_close(basis[b], ref, rtol=0, atol=1e-7, msg=f"basis function {(i, j)}")


@pytest.mark.parametrize("sigma", [0.3, 1.0, 2.7])
def test_order_zero_is_a_normalised_gaussian(sigma):
    k = njet_kernel_size(sigma, 2)
    basis = gaussian_derivative_basis(sigma, 0, k, dtype=D)
    assert basis.shape == (1, k, k)
    g = basis[0]
    torch.testing.assert_close(g.sum(), torch.tensor(1.0, dtype=D), rtol=0, atol=1e-14)
    r = torch.arange(k, dtype=D) - k // 2
    ref = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
    torch.testing.assert_close(g, ref / ref.sum(), rtol=1e-13, atol=1e-15)
    assert g.argmax() == (k * k) // 2  # peak at the centre


@pytest.mark.parametrize(("sigma", "size"), [(0.4, 3), (1.0, 5), (1.7, (9, 5)), (3.2, 15), (1.0, (5, 21))])
def test_basis_equals_scipy_gaussian_filter_on_an_impulse(sigma, size):
    ndimage = pytest.importorskip("scipy.ndimage")
    import numpy as np

    basis = gaussian_derivative_basis(sigma, 3, size, dtype=D).numpy()
    kh, kw = basis.shape[-2:]
    impulse = np.zeros((kh, kw))
    impulse[kh // 2, kw // 2] = 1.0
    for b, (i, j) in enumerate(basis_orders(3)):
        ref = ndimage.gaussian_filter(impulse, sigma, order=(i, j), mode="constant", radius=(kh // 2, kw // 2))
        np.testing.assert_allclose(basis[b], ref * sigma ** (i + j), rtol=0, atol=1e-13, err_msg=f"{(i, j)}")


def test_basis_counts_and_order():
    assert num_basis(0) == 1 and num_basis(2) == 6 and num_basis(3) == 10 and num_basis(4) == 15
    assert gaussian_derivative_basis(1.0, 2, 5).shape == (6, 5, 5)
    assert gaussian_derivative_basis(1.0, 3, 5).shape == (10, 5, 5)
    assert basis_orders(2) == [(0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2)]


@pytest.mark.parametrize(
    ("sigma", "extent", "size"),
    [(1.0, 2, 5), (0.5, 2, 3), (0.01, 2, 3), (1.5, 2, 7), (1.6, 2, 9), (2.0, 3, 13), (0.7, 2.5, 5), (10.0, 2, 41)],
)
def test_kernel_size_formula(sigma, extent, size):
    assert njet_kernel_size(sigma, extent) == size == 2 * max(1, math.ceil(extent * sigma - 1e-9)) + 1


def test_kernel_size_is_stable_under_float_rounding():
    # exp(log(1.5)) in float32 is not exactly 1.5: the size must not jump to 9
    s = torch.exp(torch.log(torch.tensor(1.5, dtype=torch.float32)))
    assert njet_kernel_size(s, 2) == 7


def test_basis_gradient_in_sigma():
    """The basis's analytic sigma-derivative against finite differences, square and rectangular grids."""
    for size in (7, (5, 9)):
        sigma = torch.tensor(1.3, dtype=D, requires_grad=True)

        def basis(s, size=size):
            return gaussian_derivative_basis(s, 3, size)

        assert torch.autograd.gradcheck(basis, (sigma,), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": -1.0}, "sigma"),
        ({"sigma": float("nan")}, "sigma"),
        ({"order": -1}, "order"),
        ({"order": 1.5}, "order"),
        ({"size": 4}, "size"),
        ({"size": (5, 0)}, "size"),
    ],
)
def test_basis_rejects_bad_arguments(kwargs, match):
    args = {"sigma": 1.0, "order": 2, "size": 5, **kwargs}
    with pytest.raises(HyperparameterError, match=match):
        gaussian_derivative_basis(**args)


# ------------------------------------------------------------------------------------------------- the layer
def test_forward_is_a_conv_with_the_alpha_weighted_basis():
    layer = NJetConv(3, 4, sigma_init=1.3, dtype=D)
    x = torch.randn(2, 3, 17, 15, dtype=D)
    k = njet_kernel_size(1.3, 2)
    basis = gaussian_derivative_basis(1.3, 3, k, dtype=D)
    kernel = torch.einsum("oib,bhw->oihw", layer.alphas, basis)
    ref = F.conv2d(x, kernel, layer.bias, padding=k // 2)
    torch.testing.assert_close(layer(x), ref, rtol=1e-10, atol=1e-10)
    assert layer.effective_kernel_size == (7.0, 7.0)


def test_sigma_stays_positive_and_finite_under_a_big_gradient_step():
    layer = NJetConv(2, 2)
    x = torch.randn(1, 2, 16, 16)
    lo, hi = NJetConv.SIGMA_BOUNDS
    for sign in (1.0, -1.0):
        layer.zero_grad()
        (sign * layer(x).pow(2).mean() + sign * 1e3 * layer.sigma).backward()
        with torch.no_grad():
            layer.log_sigma -= 1e6 * layer.log_sigma.grad  # a step far beyond any sane learning rate
        s = float(layer.sigma.detach())
        assert lo * (1 - 1e-6) <= s <= hi * (1 + 1e-6) and s > 0  # the bounds, up to float32 rounding
        assert torch.isfinite(layer(x)).all()
        layer.constrain_()
        assert float(layer.log_sigma.detach()) == pytest.approx(math.log(lo if sign > 0 else hi), abs=1e-6)


def test_a_sigma_on_or_past_its_bound_still_gets_a_gradient():
    """The clamp passes the gradient straight through: a sigma that ran onto a bound can come back."""

    class Narrow(NJetConv):
        SIGMA_BOUNDS = (0.5, 2.0)

    x = torch.randn(2, 1, 12, 12)
    grads = []
    for sigma in (0.5, 0.3):  # on the bound, and past it (forward uses 0.5 both times)
        layer = Narrow(1, 1, sigma_init=0.5)
        with torch.no_grad():
            layer.log_sigma.fill_(math.log(sigma))
            layer.alphas.fill_(0.3)
            layer.bias.zero_()
        (layer(x) - x).pow(2).mean().backward()
        grads.append(layer.log_sigma.grad)
    assert grads[0] != 0
    torch.testing.assert_close(grads[0], grads[1])


def test_nan_sigma_is_reported():
    layer = NJetConv(1, 1)
    with torch.no_grad():
        layer.log_sigma.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="NJetConv"):
        layer(torch.randn(1, 1, 8, 8))
    assert "sigma=nan" in repr(layer)  # printing the diverged model still works


@pytest.mark.parametrize(
    ("hw", "kernel"), [((6, 9), (7, 9)), ((2, 2), (3, 3)), ((1, 20), (1, 13)), ((40, 40), (13, 13))]
)
def test_kernel_is_capped_at_the_input_grid(hw, kernel):
    layer = NJetConv(2, 3, sigma_init=3.0, dtype=D)  # uncapped: 2 * ceil(6) + 1 = 13
    assert layer.kernel_size == 13
    x = torch.randn(2, 2, *hw, dtype=D)
    y = layer(x)
    assert y.shape == (2, 3, *hw)
    assert layer.effective_kernel_size == (float(kernel[0]), float(kernel[1]))
    conv = layer.eval().to_conv2d()
    assert conv.kernel_size == kernel
    torch.testing.assert_close(conv(x), y, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sigma", [0.4, 1.0, 2.2])
def test_to_conv2d_equals_the_layer(sigma):
    layer = NJetConv(3, 5, sigma_init=sigma, order=2, bias=True, dtype=D).eval()
    x = torch.randn(2, 3, 20, 13, dtype=D)
    y = layer(x)
    conv = layer.to_conv2d()
    assert type(conv) is nn.Conv2d and conv.padding == (conv.kernel_size[0] // 2, conv.kernel_size[1] // 2)
    torch.testing.assert_close(conv(x), y, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("sigma", "hw"), [(1.3, (7, 6)), (2.4, (5, 4))])
def test_gradcheck_float64_including_sigma(sigma, hw):
    layer = NJetConv(2, 2, order=3, sigma_init=sigma, dtype=D)
    x = torch.randn(1, 2, *hw, dtype=D, requires_grad=True)
    alphas = layer.alphas.detach().clone().requires_grad_(True)
    bias = layer.bias.detach().clone().requires_grad_(True)
    sig = layer.sigma.detach().clone().requires_grad_(True)

    def f(x, alphas, sig, bias):
        return njet_conv2d(x, alphas, sig, bias, order=3, extent=2)

    assert torch.autograd.gradcheck(f, (x, alphas, sig, bias), eps=1e-6, atol=1e-6, rtol=1e-5)
    # and through the layer's own parameterisation (log_sigma)
    layer(x)
    assert torch.autograd.gradcheck(
        lambda ls: torch.func.functional_call(layer, {"log_sigma": ls}, (x.detach(),)),
        (layer.log_sigma.detach().clone().requires_grad_(True),),
        eps=1e-6,
        atol=1e-6,
    )


@pytest.mark.parametrize("target_sigma", [0.7, 2.0, 3.0])
def test_learned_sigma_recovers_a_gaussian_blur(target_sigma):
    """The paper's point: sigma is learnable. Fit an N-Jet layer to a Gaussian blur of known scale.

    Order 0, so the scale is identifiable: with second derivatives in the basis, a blur of scale s2 is also matched
    by a smaller sigma plus a Laplacian term (the heat equation), and sigma need not land on s2.
    """
    x = torch.randn(2, 1, 24, 24)
    blur = gaussian_derivative_basis(target_sigma, 0, 17)[None]  # (1, 1, 17, 17): truncated far out
    y = F.conv2d(x, blur, padding=8)
    layer = NJetConv(1, 1, order=0, sigma_init=1.0, extent=3, bias=False)
    with torch.no_grad():
        layer.alphas.fill_(0.5)
    opt = torch.optim.Adam(layer.parameters(), lr=0.1)
    for _ in range(60):
        opt.zero_grad()
        (layer(x) - y).pow(2).mean().backward()
        opt.step()
        layer.constrain_()
    assert float(layer.sigma.detach()) == pytest.approx(target_sigma, rel=0.1)
    assert float(layer.alphas.detach()) == pytest.approx(1.0, rel=0.15)


def test_size_parameters_record_regularization_and_repr():
    layer = build("njet", 3, 4, order=2, sigma_init=1.62, extent=3, bias=False)
    assert list(layer.size_parameters()) == [layer.log_sigma]
    assert layer.alphas.shape == (4, 3, 6)
    reg = layer.regularization()
    assert reg.dim() == 0 and float(reg) == 0.0
    rec = layer.size_record()
    assert rec == {"sigma": pytest.approx(1.62), "order": 2, "extent": 3.0}
    text = repr(layer)
    assert "kernel_size=11 (learned, sigma=1.62 px)" in text
    assert "order=2" in text and "extent=3" in text and "bias=False" in text
    assert "order" not in repr(NJetConv(3, 4)) and "extent" not in repr(NJetConv(3, 4))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"order": -1}, "order"),
        ({"order": 2.0}, "order"),
        ({"sigma_init": 0.0}, "sigma_init"),
        ({"sigma_init": -1.0}, "sigma_init"),
        ({"sigma_init": float("inf")}, "sigma_init"),
        ({"sigma_init": 1e4}, r"sigma_init.*\[0.05, 256"),
        ({"extent": 0}, "extent"),
        ({"extent": "2"}, "extent"),
    ],
)
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(HyperparameterError, match=match):
        NJetConv(2, 2, **kwargs)


def test_functional_checks_alphas_against_order():
    with pytest.raises(ShapeError, match=r"\(C_out, C_in, 10\) for order=3"):
        njet_conv2d(torch.randn(1, 2, 8, 8), torch.randn(3, 2, 6), torch.tensor(1.0), order=3, extent=2)
    with pytest.raises(HyperparameterError, match="sigma"):
        njet_weight(torch.randn(3, 2, 6), torch.tensor(-1.0), order=2, extent=2)


# ---------------------------------------------------------------------------------------- safe-subsampling
@pytest.mark.parametrize("size", [32, 33, 7, 1])
@pytest.mark.parametrize("sigma", [0.1, 0.5, 1.0, 2.0, 4.0, 8.0, 100.0])
def test_safe_subsample_size_follows_the_paper(size, sigma):
    expected = max(1, math.floor(size * 0.5 ** (sigma / 4) + 0.5))
    assert safe_subsample_size(size, sigma) == expected
    x = torch.randn(2, 3, size, size + 5)
    y = SafeSubsample2d(sigma=sigma)(x)
    assert y.shape == (2, 3, expected, safe_subsample_size(size + 5, sigma))
    assert y.shape[-1] >= 1 and y.shape[-2] >= 1


def test_safe_subsample_halves_at_sigma_equal_r():
    assert safe_subsample_size(32, 4.0, r=4.0) == 16
    assert safe_subsample_size(32, 2.0, r=2.0) == 16
    assert safe_subsample_size(64, 8.0, r=4.0) == 16


def test_safe_subsample_reads_the_sigma_of_the_layer_before_it():
    njet = NJetConv(3, 4)
    model = nn.Sequential(njet, SafeSubsample2d(njet))
    x = torch.randn(2, 3, 32, 32)
    for sigma, side in [(1.0, 27), (4.0, 16), (8.0, 8)]:
        with torch.no_grad():
            njet.log_sigma.fill_(math.log(sigma))
        y = model(x)
        assert y.shape == (2, 4, side, side)
        assert model[1].current_sigma() == pytest.approx(sigma)
        assert model[1].output_size(32, 32) == (side, side)
        torch.testing.assert_close(y, safe_subsample2d(njet(x), sigma))
    y.sum().backward()
    assert njet.alphas.grad is not None and njet.log_sigma.grad is not None  # sigma learns through the conv


def test_safe_subsample_resamples_smoothly():
    x = torch.full((1, 2, 20, 20), 3.0)
    torch.testing.assert_close(SafeSubsample2d(sigma=4.0)(x), torch.full((1, 2, 10, 10), 3.0))
    ramp = torch.arange(20.0).view(1, 1, 1, 20).expand(1, 1, 4, 20)
    y = SafeSubsample2d(sigma=4.0)(ramp)  # bilinear halving of a ramp samples it at the new pixel centres
    torch.testing.assert_close(y[0, 0, 0], torch.arange(10.0) * 2 + 0.5)
    nearest = SafeSubsample2d(sigma=4.0, mode="nearest")(ramp)
    torch.testing.assert_close(nearest[0, 0, 0], torch.arange(10.0) * 2)


def test_safe_subsample_is_not_a_second_parent_of_the_layer():
    njet = NJetConv(3, 4)
    model = nn.Sequential(njet, SafeSubsample2d(njet))
    keys = list(model.state_dict())
    assert keys == [f"0.{k}" for k in njet.state_dict()]
    assert len(keys) == len(set(keys))
    assert len(list(model.parameters())) == len(list(njet.parameters()))
    assert [type(m).__name__ for m in model.modules()] == ["Sequential", "NJetConv", "SafeSubsample2d"]
    assert model[1].source is njet and "SafeSubsample2d" not in repr(njet)


def test_safe_subsample_pickle_and_deepcopy_keep_the_link():
    njet = NJetConv(3, 4, sigma_init=4.0)
    model = nn.Sequential(njet, SafeSubsample2d(njet))
    x = torch.randn(1, 3, 32, 32)
    y = model(x)
    for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert clone[1].source is clone[0] and clone[0] is not njet
        torch.testing.assert_close(clone(x), y, rtol=0, atol=0)
        with torch.no_grad():
            clone[0].log_sigma.fill_(math.log(8.0))
        assert clone(x).shape[-1] == 8 and model(x).shape[-1] == 16  # follows its own copy only


def test_safe_subsample_errors():
    njet = NJetConv(1, 1)
    with pytest.raises(HyperparameterError, match="exactly one of `source`"):
        SafeSubsample2d()
    with pytest.raises(HyperparameterError, match="exactly one of `source`"):
        SafeSubsample2d(njet, sigma=1.0)
    with pytest.raises(HyperparameterError, match="N-Jet layer"):
        SafeSubsample2d(nn.Conv2d(1, 1, 3))
    with pytest.raises(HyperparameterError, match="`r`"):
        SafeSubsample2d(njet, r=0)
    with pytest.raises(HyperparameterError, match="sigma"):
        SafeSubsample2d(sigma=-1.0)
    with pytest.raises(UnknownNameError, match="'bilinear'"):
        SafeSubsample2d(njet, mode="cubic")
    with pytest.raises(ShapeError, match=r"\(N, C, H, W\)"):
        SafeSubsample2d(sigma=1.0)(torch.randn(3, 8, 8))
