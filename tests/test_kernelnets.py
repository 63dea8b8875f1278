"""Kernel nets (MAGNet, MFN-Gabor, MFN-Fourier, SIREN): initialisation, frequency bounds, names, shapes."""

from __future__ import annotations

import math

import pytest
import torch

from nas_flex.errors import HyperparameterError, ShapeError, UnknownNameError
from nas_flex.kernels.masks import relative_grid
from nas_flex.layers.kernelnets import KERNEL_NETS, SIREN, MAGNet, MFNFourier, MFNGabor, build_kernel_net

NAMES = sorted(KERNEL_NETS)


def _energy_above(values: torch.Tensor, n: int, bounds: tuple[float, float]) -> tuple[float, float, float]:
    """Share of the spectral energy of an (n, n) kernel on [-1, 1]^2 with |f_h| > bounds[0], with |f_w| > bounds[1],
    and with max(|f_h|, |f_w|) > min(bounds) (frequencies in cycles per unit of position)."""
    spec = torch.fft.fft2(values.reshape(n, n)).abs().square()
    f = torch.fft.fftfreq(n, d=2.0 / (n - 1)).abs().to(spec.dtype)  # sample spacing 2 / (n - 1)
    fh, fw = f[:, None].expand(n, n), f[None, :].expand(n, n)
    total = spec.sum()
    return (
        float(spec[fh > bounds[0]].sum() / total),
        float(spec[fw > bounds[1]].sum() / total),
        float(spec[torch.maximum(fh, fw) > min(bounds)].sum() / total),
    )


# --------------------------------------------------------------------------------------------- names and shapes
def test_names_and_build():
    assert NAMES == ["magnet", "mfn_fourier", "mfn_gabor", "siren"]
    for name in NAMES:
        net = build_kernel_net(name, 2, 6, hidden_channels=8)
        assert isinstance(net, KERNEL_NETS[name])
        assert net(torch.rand(10, 2) * 2 - 1).shape == (10, 6)


def test_unknown_kernel_net_lists_the_valid_names():
    with pytest.raises(UnknownNameError, match=r"unknown kernel_net 'magnett'.*'magnet', 'mfn_fourier', 'mfn_gabor', "
                                               r"'siren'"):
        build_kernel_net("magnett", 2, 4)


@pytest.mark.parametrize(
    "kwargs, arg",
    [
        ({"hidden_channels": 0}, "hidden_channels"),
        ({"num_layers": 0}, "num_layers"),
        ({"input_scale": -1.0}, "input_scale"),
        ({"alpha": 0.0}, "alpha"),
        ({"init_region": (1.0, -1.0)}, "init_region"),
    ],
)
def test_bad_hyperparameters_are_named(kwargs, arg):
    with pytest.raises(HyperparameterError, match=arg):
        MAGNet(2, 4, **kwargs)


def test_unknown_options_are_named_with_the_valid_ones():
    with pytest.raises(HyperparameterError,
                       match=r"unknown option\(s\) of kernel net 'magnet': 'omega_0'; valid: input_scale, .*alpha"):
        build_kernel_net("magnet", 2, 4, omega_0=30.0)
    assert build_kernel_net("siren", 2, 4, omega_0=10.0).omega_0 == 10.0


def test_siren_needs_two_layers():
    with pytest.raises(HyperparameterError, match="num_layers >= 2"):
        SIREN(2, 4, num_layers=1)


def test_positions_of_the_wrong_dimension_are_rejected():
    with pytest.raises(ShapeError, match=r"\(P, 2\)"):
        MAGNet(2, 4)(torch.zeros(5, 3))


@pytest.mark.parametrize("name", NAMES)
def test_scale_is_folded_into_the_output(name):
    """``net(x, scale)`` equals ``scale[:, None] * net(x)`` (the mask folded into the last matmul)."""
    net = build_kernel_net(name, 2, 12, hidden_channels=8, dtype=torch.float64)
    x = torch.rand(30, 2, dtype=torch.float64) * 2 - 1
    s = torch.rand(30, dtype=torch.float64)
    torch.testing.assert_close(net(x, s), s[:, None] * net(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_meta_device_and_float64(name):
    net = build_kernel_net(name, 2, 4, device="meta")
    assert all(p.is_meta for p in net.parameters())
    net64 = build_kernel_net(name, 1, 3, dtype=torch.float64)
    assert net64(torch.zeros(4, 1, dtype=torch.float64)).dtype == torch.float64


# ----------------------------------------------------------------------------------------------- initialisation
def test_magnet_gamma_follows_gamma_alpha_over_layer():
    """MAGNet: gamma of filter l ~ Gamma(6 / (l + 1), 1), per unit and axis (paper Sec. 3.2, authors' code)."""
    torch.manual_seed(1)
    net = MAGNet(2, 1, hidden_channels=4096, num_layers=3)
    gamma = net.filter_gamma.detach().double()
    assert gamma.shape == (4, 4096, 2)
    for layer in range(4):
        k = 6.0 / (layer + 1)
        g = gamma[layer]
        # mean k and variance k (rate 1); 8192 samples: the mean's standard error is sqrt(k / 8192) <= 0.03
        assert abs(float(g.mean()) - k) < 0.15, (layer, float(g.mean()))
        assert abs(float(g.var()) / k - 1) < 0.15, (layer, float(g.var()))
    # the two axes are drawn independently (anisotropic)
    assert not torch.equal(gamma[..., 0], gamma[..., 1])


def test_magnet_sine_weights_scale_with_gamma():
    """W = U(-1/sqrt(2), 1/sqrt(2)) * 25.6 / sqrt(L + 1) * gamma; biases U(-pi, pi); mu in the init region."""
    torch.manual_seed(2)
    net = MAGNet(2, 1, hidden_channels=2048, num_layers=3, init_region=(-0.125, 0.125))
    base = (net.filter_weight / net.filter_gamma).detach()
    bound = 25.6 / 2.0 / math.sqrt(2.0)
    assert float(base.abs().max()) <= bound * (1 + 1e-5)
    assert float(base.abs().max()) > 0.99 * bound
    assert abs(float(base.std()) - bound / math.sqrt(3)) < 0.05 * bound  # uniform: std = bound / sqrt(3)
    b = net.filter_bias.detach()
    assert float(b.min()) >= -math.pi and float(b.max()) <= math.pi and float(b.abs().max()) > 3.0
    mu = net.filter_mu.detach()
    assert float(mu.min()) >= -0.125 and float(mu.max()) <= 0.125
    assert float(net.hidden_weight.detach().abs().max()) <= math.sqrt(1 / 2048) * (1 + 1e-6)


def test_mfn_gabor_is_isotropic_with_one_gamma_distribution():
    torch.manual_seed(3)
    net = MFNGabor(2, 1, hidden_channels=4096, num_layers=3)
    assert net.filter_gamma.shape == (4, 4096, 1)
    for layer in range(4):  # Gamma(6 / 4, 1) at every layer (Fathony et al.)
        assert abs(float(net.filter_gamma[layer].detach().mean()) - 1.5) < 0.1


def test_mfn_fourier_and_siren_init_bounds():
    torch.manual_seed(4)
    fourier = MFNFourier(2, 1, hidden_channels=1024, num_layers=3)
    bound = 25.6 / 2.0 / math.sqrt(2.0)
    w = fourier.filter_weight.detach().abs()
    assert bound * 0.98 < float(w.max()) <= bound * (1 + 1e-6)
    siren = SIREN(2, 1, hidden_channels=1024, num_layers=3)
    assert float(siren.first_weight.detach().abs().max()) <= 0.5  # U(-1/D, 1/D)
    hidden = math.sqrt(6 / 1024) / 30.0
    assert hidden * 0.98 < float(siren.hidden_weight.detach().abs().max()) <= hidden * (1 + 1e-6)
    assert siren.layer_max_frequencies() is None and siren.max_frequency() is None


# ----------------------------------------------------------------------------------------- frequency bounds
def test_magnet_bound_holds_and_is_tight_for_a_product_of_two_gabors():
    """A 2-filter MAGNet whose output is exactly g1 * g2: its spectrum peaks at (a + b) / 2 pi along the first axis,
    blurred by the envelopes. The per-axis bound sum_l max(|W| + 2 gamma) / 2 pi leaves a negligible energy above it,
    and is tight: a bound without the envelope term, or in radians, would fail one of the two assertions."""
    net = MAGNet(2, 1, hidden_channels=1, num_layers=1, dtype=torch.float64)
    a, b, gamma = 60.0, 45.0, 5.0
    with torch.no_grad():
        net.filter_weight.copy_(torch.tensor([[[a, 0.0]], [[b, 0.0]]]))
        net.filter_bias.fill_(math.pi / 2)  # cosines: the product has a strong (a + b) component
        net.filter_gamma.fill_(gamma)
        net.filter_mu.zero_()
        net.hidden_weight.fill_(1.0)
        net.hidden_bias.zero_()
        net.output_weight.fill_(1.0)
        net.output_bias.zero_()
    fh, fw = net.layer_max_frequencies().sum(0).tolist()
    assert fh == pytest.approx((a + b + 4 * gamma) / (2 * math.pi))
    assert fw == pytest.approx(4 * gamma / (2 * math.pi))
    n = 257  # Nyquist 64 cycles per unit, well above the bound (~20)
    with torch.no_grad():
        values = net(relative_grid((n, n), dtype=torch.float64).reshape(-1, 2))
    above_h, above_w, _ = _energy_above(values, n, (fh, fw))
    assert above_h < 1e-4 and above_w < 1e-4
    # tightness: a bound of only the sines' (a + b) / 2 pi leaves about half the energy above it
    sines_only, _, _ = _energy_above(values, n, ((a + b) / (2 * math.pi), fw))
    assert sines_only > 0.1


@pytest.mark.parametrize("cls", [MAGNet, MFNGabor, MFNFourier])
def test_random_net_has_no_energy_above_its_bound(cls):
    """Default-initialised nets (Hann-windowed on [-1, 1], which widens lines by at most 1 cycle per unit)."""
    torch.manual_seed(5)
    net = cls(2, 1, hidden_channels=16, input_scale=12.8, dtype=torch.float64)
    bounds = tuple(v + 1.0 for v in net.layer_max_frequencies().sum(0).tolist())
    n = 257
    assert max(bounds) < (n - 1) / 4  # sampled densely enough
    with torch.no_grad():
        values = net(relative_grid((n, n), dtype=torch.float64).reshape(-1, 2)).reshape(n, n)
    hann = torch.cos(math.pi * torch.linspace(-1, 1, n, dtype=torch.float64) / 2) ** 2
    above_h, above_w, above = _energy_above(values * hann[:, None] * hann[None, :], n, bounds)
    assert max(above_h, above_w, above) < 1e-5


def test_max_frequency_is_the_worst_axis_of_the_summed_layers():
    net = MAGNet(2, 1, hidden_channels=4)
    per_layer = net.layer_max_frequencies()
    assert per_layer.shape == (4, 2) and bool((per_layer > 0).all())
    torch.testing.assert_close(net.max_frequency(), per_layer.sum(0).max())
    per_layer.sum().backward()  # differentiable: the regularizer trains W and gamma
    assert net.filter_weight.grad is not None and net.filter_gamma.grad is not None
