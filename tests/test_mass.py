"""The kernel mass ratio (NIFF paper, Sec. 5) and the 90 %-mass effective size, against independent references."""

from __future__ import annotations

import pytest
import torch

from nas_flex.errors import ShapeError
from nas_flex.kernels.mass import centred_window, effective_size_from_mass, kernel_mass_ratio
from nas_flex.layers import build


def _offset_range(n: int, side: int) -> range:
    """Offsets from the centre covered by a centred window: -(s // 2) ... s - s // 2 - 1, clipped to the axis."""
    lo, hi = -(n // 2), n - n // 2 - 1  # offsets an axis of length n holds (fftshift's convention)
    return range(max(-(side // 2), lo), min(side - side // 2 - 1, hi) + 1)


def _reference_ratio(kernel: torch.Tensor, side: int, circular: bool) -> float:
    """Mass inside the window by offsets, reading a circular kernel at offset mod n (no fftshift involved)."""
    h, w = kernel.shape
    a = kernel.abs().double()
    inside = 0.0
    for dy in _offset_range(h, side):
        for dx in _offset_range(w, side):
            inside += float(a[dy % h, dx % w] if circular else a[h // 2 + dy, w // 2 + dx])
    return inside / float(a.sum())


@pytest.mark.parametrize("shape", [(7, 7), (8, 6), (9, 4), (5, 12)])
@pytest.mark.parametrize("circular", [False, True])
def test_ratio_matches_an_offset_reference(shape, circular):
    k = torch.randn(*shape, dtype=torch.float64)
    sizes = [1, 2, 3, 4, 5, 7, 13]
    got = kernel_mass_ratio(k, sizes, circular=circular)
    want = torch.tensor([_reference_ratio(k, s, circular) for s in sizes], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_paper_example_and_monotonic():
    k = torch.zeros(5, 5)
    k[2, 2], k[0, 2] = 3.0, -1.0  # absolute mass: the sign does not matter
    assert kernel_mass_ratio(k, [1, 3, 5]).tolist() == [0.75, 0.75, 1.0]
    r = kernel_mass_ratio(torch.randn(3, 2, 11, 9), range(1, 12))
    assert r.shape == (3, 2, 11)
    assert (r.diff(dim=-1) >= 0).all() and torch.allclose(r[..., -1], torch.ones(()).double())


def test_circular_centres_the_origin():
    k = torch.zeros(6, 8)
    k[0, 0] = 1.0  # a delta at offset 0, as irfft2 returns it
    assert kernel_mass_ratio(k, [1], circular=True).item() == 1.0
    assert kernel_mass_ratio(k, [1], circular=False).item() == 0.0
    k[-1, 0] = 1.0  # offset -1 wraps to the last row
    assert kernel_mass_ratio(k, [1, 3], circular=True).tolist() == [0.5, 1.0]
    assert effective_size_from_mass(k, circular=True) == (3, 1)


def test_even_windows_take_the_negative_side():
    assert centred_window(6, 2) == (2, 4)  # centre 3: offsets -1, 0
    assert centred_window(6, 6) == (0, 6) and centred_window(5, 9) == (0, 5)
    k = torch.zeros(1, 6)
    k[0, 2] = 1.0  # offset -1 from the centre index 3
    assert kernel_mass_ratio(k, [2]).item() == 1.0


def test_zero_kernel():
    assert kernel_mass_ratio(torch.zeros(4, 4), [1, 3]).tolist() == [1.0, 1.0]
    assert effective_size_from_mass(torch.zeros(2, 4, 4)) == (1, 1)


def _reference_side(marginal: torch.Tensor, fraction: float) -> int:
    n = marginal.numel()
    total = float(marginal.sum())
    for side in [*range(1, n + 1, 2), n]:
        lo = n // 2 - side // 2
        if float(marginal[lo : lo + side].sum()) >= fraction * total - 1e-12:
            return side
    return n


@pytest.mark.parametrize("shape", [(15, 15), (16, 11), (10, 20)])
def test_effective_size_of_anisotropic_gaussians(shape):
    h, w = shape
    y = torch.arange(h, dtype=torch.float64)[:, None] - h // 2
    x = torch.arange(w, dtype=torch.float64)[None, :] - w // 2
    k = torch.exp(-0.5 * (y / 0.8) ** 2 - 0.5 * (x / 2.5) ** 2)
    kh, kw = effective_size_from_mass(k)
    assert kh < kw  # an elongated kernel gets an elongated size
    assert (kh, kw) == (_reference_side(k.sum(1), 0.9), _reference_side(k.sum(0), 0.9))
    # the same kernel stored circularly (origin at (0, 0)) gets the same size
    circ = torch.fft.ifftshift(k)
    assert effective_size_from_mass(circ, circular=True) == (kh, kw)
    # 90 % of a Gaussian lies within +-1.645 sigma: side 2 * ceil(1.645 * 2.5 - 0.5) + 1 = 9
    assert kw == 9
    # a larger fraction needs at least as large a window
    assert effective_size_from_mass(k, 0.99)[1] >= kw


def test_effective_size_pools_channels():
    k = torch.zeros(2, 3, 9, 9)
    k[0, 0, 4, 4] = 1.0
    k[1, 2, 4, 1:8] = 1.0  # one wide kernel among deltas: 7 / 8 of the mass, so the window must cover it
    assert effective_size_from_mass(k) == (1, 7)


def test_usable_on_a_spatial_layers_kernel():
    weight = build("conv", 3, 4, kernel_size=5).to_conv2d().weight
    r = kernel_mass_ratio(weight, [1, 3, 5])
    assert r.shape == (4, 3, 3) and torch.allclose(r[..., -1], torch.ones((), dtype=r.dtype))


def test_bad_arguments():
    with pytest.raises(ShapeError, match="at least 2 dims"):
        kernel_mass_ratio(torch.zeros(5), [1])
    with pytest.raises(ValueError, match="sizes"):
        kernel_mass_ratio(torch.zeros(5, 5), [0, 3])
    with pytest.raises(ValueError, match="sizes"):
        kernel_mass_ratio(torch.zeros(5, 5), [])
    with pytest.raises(ValueError, match="fraction"):
        effective_size_from_mass(torch.zeros(5, 5), 1.5)
    with pytest.raises(ValueError, match="real spatial kernel"):
        kernel_mass_ratio(torch.zeros(5, 5, dtype=torch.complex64), [1])


def test_continuous_size_moves_in_small_steps_where_the_window_jumps():
    """A heavy-tailed kernel whose centre tap's share falls from 1.0 to 0.55: the integer 90 % window jumps by
    whole rings (1 -> 3 -> ... -> 7), the continuous side by little per step, and they agree where a ring ends."""
    from nas_flex.kernels.mass import continuous_size_from_mass

    r = torch.arange(33) - 16
    tail = 1 / (1 + (r[:, None] ** 2 + r[None, :] ** 2).double().sqrt()) ** 3
    tail[16, 16] = 0
    tail = tail / tail.sum()
    sizes, windows = [], []
    for share in torch.linspace(1.0, 0.55, 451):
        k = (1 - share) * tail
        k[16, 16] = share
        sizes.append(continuous_size_from_mass(k)[0])
        windows.append(effective_size_from_mass(k)[0])
    assert max(abs(b - a) for a, b in zip(sizes, sizes[1:])) < 0.1
    assert max(b - a for a, b in zip(windows, windows[1:])) >= 2  # what the integer window does
    assert all(w - 2 <= s <= w for s, w in zip(sizes, windows))
    k = torch.zeros(9, 9)
    k[4, 4], k[4, 3], k[4, 5] = 0.8, 0.05, 0.05
    k[4, 2] = k[4, 6] = 0.05
    assert continuous_size_from_mass(k) == (1.0, 3.0)  # 90 % exactly at the end of the first ring
