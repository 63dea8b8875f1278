"""Stateless convolution ops (torch only): 'same' spatial / FFT convolution and the methods' own ops."""

from nas_flex.functional.conv import choose_conv_method, conv2d_same, fft_conv2d, fft_flops, next_fast_len

__all__ = ["choose_conv_method", "conv2d_same", "fft_conv2d", "fft_flops", "next_fast_len"]
