"""ACONV, the adaptive Gaussian-envelope conv: envelope normalisation, Theorem 3.1, clipping, initialisation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nas_flex.errors import HyperparameterError, NasFlexError, NonFiniteError, ShapeError
from nas_flex.functional.envelope import envelope_conv2d
from nas_flex.kernels.envelope import envelope_grid, envelope_side, gaussian_envelope
from nas_flex.layers import build
from nas_flex.layers.envelope import EnvelopeConv

D = torch.float64


def _reference_envelope(sigma: float, n: int) -> torch.Tensor:
    """The paper's envelope written out: exp(-((k - c)^2 + (l - c)^2) / (2 (sigma n)^2)), sum of squares n^2."""
    c = (n - 1) / 2
    u = torch.tensor(
        [[math.exp(-((k - c) ** 2 + (m - c) ** 2) / (2 * (sigma * n) ** 2)) for m in range(n)] for k in range(n)],
        dtype=D,
    )
    return u * n / u.pow(2).sum().sqrt()


# --------------------------------------------------------------------------------------------- the envelope
@pytest.mark.parametrize("n", [1, 3, 7, 9])
def test_each_envelope_has_mean_squared_coefficient_one(n):
    sigma = torch.tensor([1e-3, 1 / n, 0.1, 0.3, 0.5, 1.0, float(n), 1e3], dtype=D)
    u = gaussian_envelope(sigma, n)
    assert u.shape == (8, n, n)
    torch.testing.assert_close(u.pow(2).mean(dim=(-2, -1)), torch.ones(8, dtype=D), rtol=1e-12, atol=1e-12)
    assert torch.isfinite(u).all() and (u >= 0).all()


@pytest.mark.parametrize(("sigma", "n"), [(0.1, 7), (0.3, 7), (0.5, 9), (2.0, 5)])
def test_envelope_matches_the_paper_formula(sigma, n):
    """Normalised coordinates (k / n, l / n) centred on the middle pixel: one pixel is 1 / n of the grid."""
    u = gaussian_envelope(torch.tensor([sigma], dtype=D), n)[0]
    torch.testing.assert_close(u, _reference_envelope(sigma, n), rtol=1e-12, atol=1e-12)
    assert u.argmax() == (n * n) // 2
    torch.testing.assert_close(u, u.flip(0))
    torch.testing.assert_close(u, u.T)


def test_grid_is_centred_with_spacing_one_over_n():
    g = envelope_grid(7, dtype=D)
    torch.testing.assert_close(g, (torch.arange(7, dtype=D) - 3) / 7)


def test_theorem_3_1_output_variance_does_not_move_with_the_aperture():
    """Random W (zero mean, i.i.d.), random x: Var[x * (W o U)] / Var[x * W] ~ 1 for every aperture.

    Tolerance 10 %: the sampling error of the variance over 64 filters x 16 channels is ~2 % at the smallest
    aperture (few effective taps) and the border is cropped. The unnormalised envelope fails the same check.
    """
    n, c_in, c_out = 7, 16, 64
    x = torch.randn(4, c_in, 40, 40, dtype=D)
    w = torch.randn(c_out, c_in, n, n, dtype=D)
    crop = (slice(None), slice(None), slice(n, -n), slice(n, -n))  # away from the zero padding
    plain = F.conv2d(x, w, padding=n // 2)[crop].var()
    for sigma in (1 / n, 0.2, 0.5, 1.0, float(n)):
        s = torch.full((c_out,), sigma, dtype=D)
        ratio = float(envelope_conv2d(x, w, s)[crop].var() / plain)
        assert ratio == pytest.approx(1.0, abs=0.1), f"sigma={sigma}: variance ratio {ratio:.3f}"
    raw = torch.exp(-(envelope_grid(n, dtype=D)[:, None] ** 2 + envelope_grid(n, dtype=D)[None, :] ** 2) / (2 / n**2))
    ratio_unnormalised = float(F.conv2d(x, w * raw, padding=n // 2)[crop].var() / plain)
    assert ratio_unnormalised < 0.2  # what the normalisation prevents


@pytest.mark.parametrize("sigma", [0.05, 1 / 7, 0.3, 1.0, 50.0])
def test_envelope_side(sigma):
    side = float(envelope_side(torch.tensor(sigma, dtype=D), 7))
    assert side == pytest.approx(min(7.0, 2 * sigma * 7 * math.sqrt(2 * math.log(10)) + 1))
    # the envelope really is >= 0.1 of its peak within that half-width along an axis, and below it just past it
    u = _reference_envelope(sigma, 7)[3]
    half = (side - 1) / 2
    assert all(float(u[3 + k] / u[3]) >= 0.1 - 1e-12 for k in range(4) if k <= half)
    assert all(float(u[3 + k] / u[3]) < 0.1 for k in range(4) if k > half + 1e-9)


# ------------------------------------------------------------------------------------------------ the layer
def test_forward_is_a_conv_with_the_product_kernel():
    layer = EnvelopeConv(3, 4, 5, sigma_init=(0.25, 0.9), dtype=D)
    x = torch.randn(2, 3, 11, 8, dtype=D)
    u = torch.stack([_reference_envelope(float(s), 5) for s in layer.sigma.tolist()])  # (4, 5, 5)
    ref = F.conv2d(x, layer.weight * u[:, None], layer.bias, padding=2)
    torch.testing.assert_close(layer(x), ref, rtol=1e-12, atol=1e-12)


def test_to_conv2d_equals_the_layer():
    layer = EnvelopeConv(3, 4, 7, dtype=D).eval()
    x = torch.randn(2, 3, 9, 12, dtype=D)
    conv = layer.to_conv2d()
    assert conv.kernel_size == (7, 7) and conv.padding == (3, 3)
    torch.testing.assert_close(conv(x), layer(x), rtol=1e-12, atol=1e-12)


def test_sigma_init_range_is_spread_linearly_over_the_filters():
    layer = EnvelopeConv(2, 5, 11, sigma_init=(0.1, 0.5))  # 1 / 11 < 0.1: nothing clipped
    torch.testing.assert_close(layer.sigma.detach(), torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5]))
    assert EnvelopeConv(2, 1, 11, sigma_init=(0.2, 0.4)).sigma.tolist() == pytest.approx([0.2])
    assert EnvelopeConv(2, 3, 11, sigma_init=0.3).sigma.tolist() == pytest.approx([0.3] * 3)


def test_default_init_is_the_papers_range_clipped_to_one_pixel():
    layer = build("envelope", 2, 8)  # n = 7: 0.1 < 1 / 7, so the first filters start on the bound
    expected = torch.linspace(0.1, 0.5, 8).clamp(min=1 / 7)
    torch.testing.assert_close(layer.sigma.detach(), expected)
    assert layer.kernel_size == 7


def test_apertures_are_clipped_to_one_pixel_and_the_grid_side():
    n = 5
    layer = EnvelopeConv(2, 3, n, sigma_init=0.5, dtype=D)
    x = torch.randn(1, 2, 9, 9, dtype=D)
    with torch.no_grad():
        layer.sigma.copy_(torch.tensor([1e-4, 0.5, 100.0], dtype=D))
    y = layer(x)
    with torch.no_grad():
        layer.sigma.copy_(torch.tensor([1 / n, 0.5, float(n)], dtype=D))
    torch.testing.assert_close(y, layer(x))  # forward clamps to [1 / n, n]
    with torch.no_grad():
        layer.sigma.copy_(torch.tensor([1e-4, 0.5, 100.0], dtype=D))
    layer.constrain_()
    torch.testing.assert_close(layer.sigma.detach(), torch.tensor([1 / n, 0.5, float(n)], dtype=D))


def test_an_aperture_on_its_bound_still_gets_a_gradient():
    """Plain clamp has zero gradient on the bound, where the default init puts the first filters; not so here."""
    layer = EnvelopeConv(2, 3, 7, sigma_init=(0.1, 0.5))
    assert layer.sigma.tolist()[0] == pytest.approx(1 / 7)
    x, target = torch.randn(2, 2, 12, 12), torch.randn(2, 3, 12, 12)
    (layer(x) - target).pow(2).mean().backward()
    assert layer.sigma.grad[0] != 0


def test_gradcheck_float64_including_the_apertures():
    layer = EnvelopeConv(1, 3, 5, sigma_init=(0.3, 0.9), dtype=D)
    x = torch.randn(1, 1, 6, 7, dtype=D, requires_grad=True)
    weight = layer.weight.detach().clone().requires_grad_(True)
    sigma = layer.sigma.detach().clone().requires_grad_(True)
    bias = layer.bias.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(envelope_conv2d, (x, weight, sigma, bias), eps=1e-6, atol=1e-6, rtol=1e-5)


def _mass_side_reference(sigma: float, n: int, fraction: float = 0.9) -> float:
    """Bisection on the mass of the envelope's 1-D profile exp(-g^2 / 2 sigma^2) inside a centred window of
    continuous side s, each tap covering one pixel: what the window covers of tap k is clip(s/2 - |k| + 1/2, 0, 1)
    (the centre tap: clip(s, 0, 1))."""
    k = [i - (n - 1) // 2 for i in range(n)]
    m = [math.exp(-((i / n) ** 2) / (2 * sigma**2)) for i in k]

    def inside(side: float) -> float:
        return sum(mi * (min(max(side, 0), 1) if i == 0 else min(max(side / 2 - abs(i) + 0.5, 0), 1))
                   for i, mi in zip(k, m))

    lo, hi = 0.0, float(n)
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if inside(mid) < fraction * sum(m) else (lo, mid)
    return max(hi, 1.0)


def test_effective_kernel_size_is_the_mean_90_percent_mass_side_of_the_envelope():
    layer = EnvelopeConv(2, 3, 9, sigma_init=0.2)
    apertures = (1 / 9, 0.2, 5.0)
    with torch.no_grad():
        layer.sigma.copy_(torch.tensor(apertures))
    h, w = layer.effective_kernel_size
    assert h == w == pytest.approx(sum(_mass_side_reference(a, 9) for a in apertures) / 3, rel=1e-6)
    # the 0.1-of-peak side stays in the record; it saturates at n
    tenth = [min(9.0, 2 * a * 9 * math.sqrt(2 * math.log(10)) + 1) for a in apertures]
    assert layer.size_record()["side_at_0.1"] == pytest.approx(sum(tenth) / 3, rel=1e-6)


def test_envelope_size_keeps_moving_where_the_tenth_of_peak_side_is_saturated():
    layer = EnvelopeConv(1, 1, 7, sigma_init=0.2)
    sizes, tenth = [], []
    for a in torch.linspace(0.25, 2.0, 8):
        with torch.no_grad():
            layer.sigma.fill_(float(a))
        sizes.append(layer.effective_kernel_size[0])
        tenth.append(layer.size_record()["side_at_0.1"])
    assert all(t == 7.0 for t in tenth)  # the old measure: n for every one of these apertures
    assert all(b > a for a, b in zip(sizes, sizes[1:])) and sizes[-1] <= 0.9 * 7 + 1e-9


def test_size_record_and_repr():
    layer = EnvelopeConv(3, 4, 9, sigma_init=(0.2, 0.5))
    rec = layer.size_record()
    assert rec["sigma"] == pytest.approx(0.35) and rec["sigma_min"] == pytest.approx(0.2)
    assert rec["sigma_max"] == pytest.approx(0.5) and rec["n"] == 9
    assert rec["sigma_px"] == pytest.approx(0.35 * 9)
    assert list(layer.size_parameters()) == [layer.sigma]
    assert float(layer.regularization()) == 0.0
    text = repr(layer)
    assert "(learned, sigma=3.15 px mean of 4, base grid 9)" in text and "kernel_size=" in text
    assert "bias" not in text and "rescale" not in text


def test_base_grid_larger_than_the_input_is_an_error():
    layer = EnvelopeConv(2, 3, 7)
    with pytest.raises(ShapeError, match="kernel 7x7 is larger than the 5x9 input"):
        layer(torch.randn(1, 2, 5, 9))
    assert layer(torch.randn(1, 2, 7, 7)).shape == (1, 3, 7, 7)


@pytest.mark.parametrize("bad", [0, 4, -3, 2.0, True, "7"])
def test_bad_kernel_size(bad):
    with pytest.raises(HyperparameterError, match=r"`kernel_size` \(the base grid side n\) must be an odd int"):
        EnvelopeConv(2, 3, bad)


@pytest.mark.parametrize(
    "bad", [(0.5, 0.1), (0.0, 0.5), (-0.1, 0.5), (0.1,), (0.1, 0.2, 0.3), ("a", 1), 0.0, -1.0, float("nan"), True, "1"]
)
def test_bad_sigma_init(bad):
    with pytest.raises(HyperparameterError, match=r"`sigma_init` must be an aperture > 0 .*\(low, high\)"):
        EnvelopeConv(2, 3, 7, sigma_init=bad)


def test_rescale_output_is_off_by_default_and_matches_the_authors_code_when_on():
    x = torch.randn(3, 2, 10, 10) * torch.tensor([0.5, 1.0, 4.0]).view(3, 1, 1, 1)
    plain = EnvelopeConv(2, 4, 3)
    assert not plain.rescale_output
    layer = EnvelopeConv(2, 4, 3, rescale_output=True)
    layer.load_state_dict(plain.state_dict())
    y = layer(x)
    torch.testing.assert_close(y.std(dim=(1, 2, 3), unbiased=False), x.std(dim=(1, 2, 3), unbiased=False), rtol=1e-3,
                               atol=1e-4)
    ref = plain(x)
    ref = ref * x.std(dim=(1, 2, 3), keepdim=True, unbiased=False) / ref.std(dim=(1, 2, 3), keepdim=True,
                                                                           unbiased=False)
    torch.testing.assert_close(y, ref, rtol=1e-3, atol=1e-4)
    assert "rescale_output=True" in repr(layer)
    with pytest.raises(NasFlexError, match="rescale_output=True"):
        layer.to_conv2d()


def test_nan_aperture_is_reported():
    layer = EnvelopeConv(2, 3, 3)
    with torch.no_grad():
        layer.sigma[1] = float("nan")
    with pytest.raises(NonFiniteError, match="EnvelopeConv"):
        layer(torch.randn(1, 2, 8, 8))
    assert "sigma=nan" in repr(layer)
