"""CF-Conv's joint MLP with categorical channel inputs (one-hot or learned embeddings of c_in and c_out)."""

from __future__ import annotations

import math

import pytest
import torch

from nas_flex.errors import HyperparameterError
from nas_flex.functional.cfconv import channel_inputs
from nas_flex.kernels.frequency import frequencies
from nas_flex.layers.cfconv import CFConv


def _joint(c_in: int, c_out: int, mode: str, **kw) -> CFConv:
    return CFConv(c_in, c_out, parameterization="joint", channel_inputs=mode, hidden_features=(16, 16), **kw)


@pytest.mark.parametrize("mode", ["onehot", "embedding"])
@pytest.mark.parametrize("sampled", [None, 64])
def test_shapes_in_training_and_eval(mode, sampled):
    torch.manual_seed(0)
    layer = _joint(3, 5, mode, sampled_positions=sampled)
    x = torch.randn(2, 3, 8, 6)
    y = layer(x)
    assert y.shape == (2, 5, 8, 6)
    y.square().mean().backward()
    first = layer.kernel_mlp.weights[0]
    assert first.shape[-1] == 2 + (3 + 5 if mode == "onehot" else 2 * 4)
    assert first.grad is not None and bool(first.grad.abs().sum() > 0)
    if mode == "embedding":
        assert layer.channel_embedding_in.grad is not None and layer.channel_embedding_out.grad is not None
    layer.eval()
    assert layer(x).shape == (2, 5, 8, 6)
    assert f"channel_inputs={mode!r}" in repr(layer)


def _reference_entry(layer: CFConv, h: int, w: int, row: int, col: int, i: int, o: int) -> complex:
    """The kernel entry (row, col, c_in=i, c_out=o) computed by hand in float64: the MLP on [f_y, f_x, e_i, e_o]
    at f and at -f, Hermitian part (M(f) + conj(M(-f))) / 2, times 1 / sqrt(C_in)."""
    fy, fx = frequencies(h, dtype=torch.float64), frequencies(w, dtype=torch.float64)
    if layer.channel_inputs == "onehot":
        cat = torch.cat([torch.eye(layer.in_channels, dtype=torch.float64)[i],
                         torch.eye(layer.out_channels, dtype=torch.float64)[o]])
    else:
        cat = torch.cat([layer.channel_embedding_in[i].double(), layer.channel_embedding_out[o].double()])

    def mlp(r: int, c: int) -> complex:
        parts = []
        for part in range(2):  # real, imaginary
            h_ = torch.cat([torch.stack([fy[r], fx[c]]), cat])
            n = len(layer.kernel_mlp.weights)
            for k, (wk, bk) in enumerate(zip(layer.kernel_mlp.weights, layer.kernel_mlp.biases, strict=True)):
                h_ = wk[part].double() @ h_ + bk[part].double()
                if k < n - 1:
                    h_ = torch.relu(h_)
            parts.append(float(h_[0].detach()))
        return complex(parts[0], parts[1])

    value = 0.5 * (mlp(row, col) + mlp((-row) % h, (-col) % w).conjugate())
    return value / math.sqrt(layer.in_channels)


@pytest.mark.parametrize("mode", ["onehot", "embedding"])
def test_kernel_matches_a_float64_reference(mode):
    torch.manual_seed(1)
    layer = _joint(3, 4, mode, sampled_positions=None, dtype=torch.float64)
    h, w = 6, 7
    with torch.no_grad():
        spec = layer.frequency_kernel((h, w))  # (C_out, C_in, H, W // 2 + 1)
    for row, col, i, o in [(0, 0, 0, 0), (1, 2, 2, 3), (5, 3, 1, 0), (3, 1, 0, 2), (4, 0, 2, 1)]:
        ref = _reference_entry(layer, h, w, row, col, i, o)
        got = complex(spec[o, i, row, col])
        assert got.real == pytest.approx(ref.real, abs=1e-12) and got.imag == pytest.approx(ref.imag, abs=1e-12)


def test_embedding_with_identity_tables_equals_onehot():
    torch.manual_seed(2)
    onehot = _joint(4, 4, "onehot", sampled_positions=None, dtype=torch.float64)
    emb = _joint(4, 4, "embedding", channel_embedding_dim=4, sampled_positions=None, dtype=torch.float64)
    with torch.no_grad():
        for a, b in zip(emb.kernel_mlp.parameters(), onehot.kernel_mlp.parameters(), strict=True):
            a.copy_(b)
        emb.channel_embedding_in.copy_(torch.eye(4))
        emb.channel_embedding_out.copy_(torch.eye(4))
    torch.testing.assert_close(emb.frequency_kernel((5, 6)), onehot.frequency_kernel((5, 6)), rtol=0, atol=1e-13)
    positions = torch.tensor([0, 5, 17])
    assert channel_inputs(positions, 4, 4, dtype=torch.float64).sum(-1).tolist() == [2.0, 2.0, 2.0]


def _effective_rank(layer: CFConv, size: tuple[int, int]) -> float:
    """exp(entropy) of the normalised singular values of the (C_out, C_in x H x Wf x 2) kernel at init."""
    with torch.no_grad():
        k = layer.frequency_kernel(size)  # (C_out, C_in, H, Wf)
    m = torch.view_as_real(k).reshape(k.shape[0], -1)
    s = torch.linalg.svdvals(m)
    p = s / s.sum()
    return float(torch.exp(-(p * torch.log(p.clamp_min(1e-30))).sum()))


def test_categorical_channel_inputs_raise_the_rank_across_output_channels_at_init():
    # the paper's ten-layer joint MLP on a 16 x 16-channel layer: scalar indices tie neighbouring channels together
    ranks: dict[str, list[float]] = {"index": [], "onehot": [], "embedding": []}
    for seed in range(3):
        for mode in ranks:
            torch.manual_seed(seed)
            layer = CFConv(16, 16, parameterization="joint", channel_inputs=mode, sampled_positions=None)
            ranks[mode].append(_effective_rank(layer, (8, 8)))
    mean = {k: sum(v) / len(v) for k, v in ranks.items()}
    assert mean["onehot"] > 1.3 * mean["index"], ranks
    assert mean["embedding"] > 1.3 * mean["index"], ranks


def test_channel_inputs_are_checked():
    with pytest.raises(HyperparameterError, match="channel_inputs"):
        CFConv(2, 2, parameterization="joint", channel_inputs="ordinal")
    with pytest.raises(HyperparameterError, match="joint MLP only"):
        CFConv(2, 2, channel_inputs="onehot")  # per pair has no channel inputs
    with pytest.raises(HyperparameterError, match="encoding='channels'"):
        CFConv(2, 2, parameterization="joint", channel_inputs="onehot", encoding="channels")
    with pytest.raises(HyperparameterError, match="channel_embedding_dim"):
        CFConv(2, 2, parameterization="joint", channel_inputs="embedding", channel_embedding_dim=0)
    assert CFConv(2, 2).channel_inputs == "index"  # per pair stays the default
