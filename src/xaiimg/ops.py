"""Tensor operations shared by methods, metrics and studies (PROTOCOLS.md, "Common conventions").

The ground floor with :mod:`xaiimg.nn` (model helpers) and :mod:`xaiimg.passes`; it imports nothing else from
xaiimg. Everything stays in torch on the input's device and dtype.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

MINMAX_EPS = 1e-12


def check_images(x: torch.Tensor, channels: int | None = 3, name: str = "x") -> torch.Tensor:
    """Validate an image batch ``[B,C,H,W]``: floating point, finite, expected channel count."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [B,C,H,W], got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{name} must have shape [B,C,H,W], got {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channels, got {x.shape[1]} (shape {tuple(x.shape)})")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}; preprocess images first")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def minmax_normalize(maps: torch.Tensor, eps: float = MINMAX_EPS) -> torch.Tensor:
    """Min-max per sample over all non-batch dims: ``(m - min) / (max - min)``; a flat map becomes zeros."""
    flat = maps.reshape(maps.shape[0], -1)
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    out = torch.where(span > eps, (flat - low) / span.clamp_min(eps), torch.zeros_like(flat))
    return out.reshape(maps.shape)


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize with ``align_corners=False`` (the project-wide convention)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)


def gaussian_kernel1d(kernel_size: int, sigma: float, dtype=torch.float32, device=None) -> torch.Tensor:
    """Normalised 1-D Gaussian ``g_i ∝ exp(-(i - c)^2 / (2 sigma^2))`` with ``c = (k-1)/2``."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    positions = torch.arange(kernel_size, dtype=dtype, device=device) - (kernel_size - 1) / 2
    kernel = torch.exp(-positions.pow(2) / (2 * sigma**2))
    return kernel / kernel.sum()


def gaussian_blur(x: torch.Tensor, kernel_size: int = 51, sigma: float = 50.0, border: str = "reflect") -> torch.Tensor:
    """Separable Gaussian blur of ``[B,C,H,W]`` per channel.

    ``border="reflect"`` (PROTOCOLS default, kernel 51 / sigma 50, applied to the normalised tensor) or
    ``"zeros"`` (zero padding, as eclique/RISE's 11x11 / sigma 5 insertion canvas).
    """
    if border not in ("reflect", "zeros"):
        raise ValueError(f"border must be 'reflect' or 'zeros', got {border!r}")
    channels = x.shape[1]
    kernel = gaussian_kernel1d(kernel_size, sigma, dtype=x.dtype, device=x.device)
    pad = kernel_size // 2
    if border == "reflect":
        x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        conv_pad = 0
    else:
        conv_pad = pad
    horizontal = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    vertical = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    x = F.conv2d(x, horizontal, padding=(0, conv_pad), groups=channels)
    return F.conv2d(x, vertical, padding=(conv_pad, 0), groups=channels)


def stable_descending_order(maps: torch.Tensor) -> torch.Tensor:
    """Pixel indices of ``[B,...]`` maps sorted by value, descending; ties keep raster order (stable sort)."""
    flat = maps.reshape(maps.shape[0], -1)
    return torch.sort(flat, dim=1, descending=True, stable=True).indices


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks ``0..n-1`` along the last dim, ties given their mean rank (``scipy.stats.rankdata`` minus 1), float64."""
    sorted_values = values.sort(dim=-1).values.contiguous()
    values = values.contiguous()
    first = torch.searchsorted(sorted_values, values, right=False)
    last = torch.searchsorted(sorted_values, values, right=True) - 1
    return (first + last).double() / 2


def spearman_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's rank correlation per sample ``[B]`` of ``[B,...]`` tensors: Pearson correlation of the average
    ranks, ``rho = sum_i r_i s_i / (||r|| ||s||)`` with centred ranks ``r``, ``s`` (``scipy.stats.spearmanr``).
    NaN when a sample is constant."""
    ranks_a = average_ranks(a.reshape(a.shape[0], -1).double())
    ranks_b = average_ranks(b.reshape(b.shape[0], -1).double())
    ranks_a = ranks_a - ranks_a.mean(dim=1, keepdim=True)
    ranks_b = ranks_b - ranks_b.mean(dim=1, keepdim=True)
    return (ranks_a * ranks_b).sum(1) / (ranks_a.norm(dim=1) * ranks_b.norm(dim=1))


def batches(total: int, batch_size: int) -> Iterator[slice]:
    """Slices ``[0:bs], [bs:2bs], ...`` covering ``range(total)``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, total, batch_size):
        yield slice(start, min(start + batch_size, total))
