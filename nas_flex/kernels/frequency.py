"""Frequency coordinates for the real-FFT layout, and Hermitian symmetry on it.

Pure tensor functions (torch only, no state) shared by the frequency-domain layers, NIFF (Grabinski et al., TMLR 2024)
and CF-Conv (Harper et al.). Both layers store and evaluate their filters on the half-spectrum that
``torch.fft.rfft2`` returns for an H x W input: shape (H, W // 2 + 1), rows in ``fftfreq`` order (0, 1, ..., then the
negative frequencies), columns the non-negative frequencies 0 ... W // 2.

Coordinates are *normalised*: the frequency in cycles per pixel times 2, so the Nyquist frequency is 1 for every
input size, and the same continuous filter function sampled on a finer grid describes the same filter in pixels
(the authors' code uses integer frequency indices instead, which tie the function to one input size).

A real spatial kernel has a Hermitian spectrum, K(-f) = conj(K(f)). On the rfft layout the missing half is implied;
what remains to enforce is the columns that are their own mirror image (column 0, and column W // 2 when W is even),
which must be Hermitian along the rows: K[-r, c] = conj(K[r, c]). ``hermitian_project`` does that, so the full
spectrum ``rfft_to_full`` rebuilds is exactly Hermitian and its inverse FFT is real.

Filters that come from a function of frequency (an MLP) are built as the authors of NIFF build them: the function is
evaluated over the *full* frequency plane (``full_grid``: both axes in ``fftfreq`` order, so an even axis samples
its Nyquist frequency once, at -1, as their ``arange(-N/2, N/2)`` grid does), and the Hermitian part
(M(f) + conj(M(-f))) / 2 of that evaluation is the filter (``hermitian_part_rfft`` returns it on the rfft layout).
It is what ``ifft2(...).real`` applies; mirroring the rfft half-plane instead would turn any odd imaginary part of
M into a Hilbert transform along the width (a constant 1 + 0.3j would not be a 1x1 kernel).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "rfft_shape",
    "frequencies",
    "rfft_frequencies",
    "rfft_grid",
    "full_grid",
    "mirror_index",
    "hermitian_part_rfft",
    "self_conjugate_columns",
    "hermitian_project",
    "rfft_to_full",
]


def rfft_shape(h: int, w: int) -> tuple[int, int]:
    """Shape (H, W // 2 + 1) of ``torch.fft.rfft2`` of an H x W signal."""
    return h, w // 2 + 1


def frequencies(n: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Tensor:
    """Normalised frequencies of a length-``n`` FFT axis in ``fftfreq`` order, in [-1, 1) (1 = Nyquist).

    Example:
        >>> frequencies(4).tolist()
        [0.0, 0.5, -1.0, -0.5]
    """
    return torch.fft.fftfreq(n, d=0.5, device=device, dtype=dtype)


def rfft_frequencies(n: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Tensor:
    """Normalised non-negative frequencies of a length-``n`` real-FFT axis (n // 2 + 1 values in [0, 1]).

    Example:
        >>> rfft_frequencies(4).tolist()
        [0.0, 0.5, 1.0]
    """
    return torch.fft.rfftfreq(n, d=0.5, device=device, dtype=dtype)


def rfft_grid(
    h: int, w: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    """The (f_y, f_x) coordinate map of the rfft2 layout of an H x W input, normalised to [-1, 1].

    Built fresh on every call (O(H W), negligible next to the FFTs it goes with), so it always matches the input's
    size, device and dtype; nothing is cached at a first resolution.

    Returns:
        (2, H, W // 2 + 1): channel 0 the row frequency f_y in [-1, 1), channel 1 the column frequency f_x in [0, 1].

    Example:
        >>> rfft_grid(3, 4).shape
        torch.Size([2, 3, 3])
    """
    fy = frequencies(h, device=device, dtype=dtype)
    fx = rfft_frequencies(w, device=device, dtype=dtype)
    gy, gx = torch.meshgrid(fy, fx, indexing="ij")  # (H, W//2+1) each
    return torch.stack([gy, gx])


def full_grid(
    h: int, w: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    """The (f_y, f_x) coordinate map of the full fft2 plane of an H x W input, normalised to [-1, 1).

    Both axes in ``fftfreq`` order; an even axis has its Nyquist frequency once, at -1 (index n // 2). Column c of
    the rfft layout (c <= W // 2) is column c here, so its coordinates are ``full_grid(h, w)[:, :, :W // 2 + 1]``.

    Returns:
        (2, H, W).

    Example:
        >>> full_grid(2, 4)[1, 0].tolist()
        [0.0, 0.5, -1.0, -0.5]
    """
    fy = frequencies(h, device=device, dtype=dtype)
    fx = frequencies(w, device=device, dtype=dtype)
    gy, gx = torch.meshgrid(fy, fx, indexing="ij")
    return torch.stack([gy, gx])


def mirror_index(n: int, *, device: torch.device | str | None = None) -> Tensor:
    """Index of frequency -f for each index of a length-n ``fftfreq`` axis: i -> (-i) mod n.

    Example:
        >>> mirror_index(4).tolist()
        [0, 3, 2, 1]
    """
    return (-torch.arange(n, device=device)) % n


def hermitian_part_rfft(values: Tensor, w: int, *, dims: tuple[int, int] = (0, 1)) -> Tensor:
    """The Hermitian part (M(f) + conj(M(-f))) / 2 of a full-plane evaluation, on the rfft layout.

    Args:
        values: complex, the function evaluated on ``full_grid(H, W)``, with the rows (H) and columns (W) at ``dims``.
        w: the spatial width W.
        dims: the (row, column) axes.

    Returns:
        Complex, the same shape except W // 2 + 1 columns: the half-spectrum of the real kernel
        ``ifft2(values).real`` (exactly Hermitian on the self-conjugate columns).
    """
    hdim, wdim = (d % values.dim() for d in dims)
    if values.shape[wdim] != w:
        raise ValueError(f"`values` must have W = {w} columns (the full plane), but got {values.shape[wdim]}")
    wf = w // 2 + 1
    h = values.shape[hdim]
    half = values.narrow(wdim, 0, wf)
    cols = mirror_index(w, device=values.device)[:wf]  # column of -f_x for the rfft columns
    mirrored = values.index_select(wdim, cols).index_select(hdim, mirror_index(h, device=values.device))
    return 0.5 * (half + mirrored.conj())


def self_conjugate_columns(w: int) -> list[int]:
    """Columns of the rfft layout that hold their own mirror frequencies: 0, and W // 2 when W is even."""
    return [0, w // 2] if w % 2 == 0 and w > 1 else [0]


def _mirror_rows(h: int, device: torch.device) -> Tensor:
    return (-torch.arange(h, device=device)) % h  # row r -> row -r (mod H)


def hermitian_project(spectrum: Tensor, w: int, *, dims: tuple[int, int] = (-2, -1)) -> Tensor:
    """Make an rfft-layout spectrum the half-spectrum of a real signal (differentiable, out of place).

    The self-conjugate columns are replaced by their Hermitian part, (K[r, c] + conj(K[-r, c])) / 2; the other
    columns are free. ``torch.fft.irfft2`` already ignores the anti-Hermitian part, so the inverse transform is
    unchanged; what changes is that the stored spectrum is then exactly that of the real kernel it applies (its
    DC and Nyquist entries are real, and ``rfft_to_full`` gives a spectrum whose ``ifft2`` has no imaginary part).

    Args:
        spectrum: complex, with the frequency rows (H) and columns (W // 2 + 1) at ``dims``.
        w: the spatial width W (its parity decides whether a Nyquist column exists).
        dims: the (row, column) axes; default the last two, (..., H, W // 2 + 1).

    Returns:
        Complex tensor of the same shape (and memory layout).

    Example:
        >>> k = hermitian_project(torch.randn(4, 3, dtype=torch.complex64), w=4)
        >>> bool(k[0, 0].imag == 0) and bool(k[2, 2].imag == 0)
        True
    """
    hdim, wdim = (d % spectrum.dim() for d in dims)
    wf = spectrum.shape[wdim]
    if wf != w // 2 + 1:
        raise ValueError(f"`spectrum` must have W // 2 + 1 = {w // 2 + 1} columns for w={w}, but got {wf}")
    mirror = _mirror_rows(spectrum.shape[hdim], spectrum.device)
    cols = torch.tensor(self_conjugate_columns(w), device=spectrum.device)
    edge = spectrum.index_select(wdim, cols)  # the self-conjugate columns only
    edge = 0.5 * (edge + edge.index_select(hdim, mirror).conj())
    return spectrum.index_copy(wdim, cols, edge)  # one copy of the spectrum with those columns replaced


def rfft_to_full(spectrum: Tensor, w: int) -> Tensor:
    """Extend an rfft-layout spectrum (..., H, W // 2 + 1) to the full (..., H, W) spectrum by K(-f) = conj(K(f)).

    For analysis and tests: ``torch.fft.ifft2(rfft_to_full(k, w))`` is real (up to rounding) iff the self-conjugate
    columns of ``k`` are Hermitian, i.e. iff ``hermitian_project(k, w)`` leaves ``k`` unchanged.
    """
    wf = spectrum.shape[-1]
    if wf != w // 2 + 1:
        raise ValueError(f"`spectrum` must have W // 2 + 1 = {w // 2 + 1} columns for w={w}, but got {wf}")
    h = spectrum.shape[-2]
    mirror = _mirror_rows(h, spectrum.device)
    cols = torch.arange(wf, w, device=spectrum.device)  # the missing columns c = Wf ... W - 1
    rest = spectrum[..., mirror, :][..., (w - cols) % w].conj()  # K[r, c] = conj(K[-r, W - c])
    return torch.cat([spectrum, rest], dim=-1)
