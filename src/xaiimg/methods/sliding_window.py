"""Sliding-window enhancement of any saliency method (thesis ch.4, eq. 4-1..4-11; PROTOCOLS.md
"Sliding-window enhancement").

For an image ``I`` (``H x W``) and class ``c``:

1. ``S0`` = the wrapped method's map of the full image for ``c``.
2. Windows ``W_k`` of ``window`` pixels are placed every ``stride`` pixels from ``start`` (224 px, 96/32 from
   (0,0): 5 x 5 = 25 windows).
3. Each crop is bilinearly upsampled to ``H x W`` and explained by the wrapped method for the same class ``c``;
   its map is bilinearly downsampled back to the window size, ``s_k``, and weighted by
   ``alpha_k = softmax(f(upsampled crop))_c``.
4. Fusion (eq. 4-8): ``S' = sum_k place_k(alpha_k * s_k + S0|W_k)``, i.e. every window adds its weighted map and
   the full-image map restricted to the window at the window's place; pixels covered by several windows add up.
   Taken literally this adds ``S0`` once per covering window, ``n(p)`` times at pixel ``p`` (1..9 at 224/96/32,
   peaked at the centre): ``S' = sum_k place_k(alpha_k s_k) + n * S0``. ``fusion`` names it and its ablations:
   ``"literal"`` (default, eq. 4-8), ``"normalised"`` ``(sum_k place_k(alpha_k s_k)) / n + S0`` (windows averaged,
   ``S0`` once), ``"windows"`` ``sum_k place_k(alpha_k s_k)`` (no ``S0``), and the control ``"s0-coverage"``
   ``n * S0`` (the centre weighting alone, no window is explained).
5. Smoothing: ideal low-pass filter in the centred 2-D spectrum, keeping frequencies at distance ``D <= D0``
   (``smoothing_cutoff``) from the centre (:func:`ideal_lowpass`); then min-max (done by ``Explainer.__call__``).

Batched: the full images and all their windows form one job list (image by image: the full image, then its
windows in raster order), cut into chunks of ``batch_size``. Each chunk costs one no-grad probability forward
(giving ``alpha_k``, and the predicted class when ``target`` is ``None``) and one call of the wrapped method
with per-job targets. For ``B`` images and ``K`` windows per image that is ``ceil(B*(K+1)/batch_size)``
probability forwards plus as many wrapped calls, each making the wrapped method's own passes.
"""
from __future__ import annotations

import torch
from torch import nn

from xaiimg.methods.base import Explainer, check_choice, check_positive_int, register
from xaiimg.nn import TargetLike, explicit_targets, select_scores
from xaiimg.ops import batches, upsample

BORDER_MODES = ("flush", "drop")
FUSIONS = ("literal", "normalised", "windows", "s0-coverage")


def ideal_lowpass(maps: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Ideal low-pass filter of ``[..., H, W]`` maps (thesis ch.4 smoothing step).

    ``F = fftshift(fft2(maps))``; keep ``F(u, v)`` where ``D(u, v) = sqrt((u - H//2)^2 + (v - W//2)^2) <= cutoff``
    (distance from the spectrum's centre in frequency-index units), zero the rest; return the real part of
    ``ifft2(ifftshift(F))``. The mask is symmetric under ``(u, v) -> -(u, v)``, so the result is real up to
    rounding. Half-precision input is filtered in float32 and cast back.
    """
    if not isinstance(maps, torch.Tensor) or maps.ndim < 2:
        raise ValueError("ideal_lowpass expects a tensor of maps [..., H, W]")
    if not maps.is_floating_point():
        raise TypeError(f"ideal_lowpass expects floating-point maps, got {maps.dtype}")
    if not cutoff > 0:
        raise ValueError(f"cutoff must be positive (distance from the spectrum centre), got {cutoff}")
    dtype = maps.dtype
    work = maps if dtype in (torch.float32, torch.float64) else maps.float()
    height, width = work.shape[-2:]
    rows = torch.arange(height, dtype=work.dtype, device=work.device) - height // 2
    cols = torch.arange(width, dtype=work.dtype, device=work.device) - width // 2
    keep = (rows.view(-1, 1).square() + cols.view(1, -1).square()).sqrt() <= cutoff
    spectrum = torch.fft.fftshift(torch.fft.fft2(work), dim=(-2, -1))
    filtered = torch.fft.ifft2(torch.fft.ifftshift(spectrum * keep, dim=(-2, -1)))
    return filtered.real.to(dtype)


def _pair(value, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise TypeError(f"{name} must be an int or a pair of ints (rows, cols), got {value!r}")
    return pair


def window_offsets(size: int, window: int, stride: int, start: int, border: str) -> list[int]:
    """Window offsets along one axis: ``start, start + stride, ...`` while the window fits; with
    ``border="flush"`` a last window flush with the far border is added when the grid does not reach it
    (``(size - window - start)`` not a multiple of ``stride``); ``"drop"`` leaves those last pixels uncovered."""
    if window > size:
        raise ValueError(f"the image ({size} px) is smaller than the sliding window ({window} px)")
    if not 0 <= start <= size - window:
        raise ValueError(f"window start {start} must lie in [0, {size - window}] for a {window} px window "
                         f"in a {size} px image")
    offsets = list(range(start, size - window + 1, stride))
    if border == "flush" and offsets[-1] + window < size:
        offsets.append(size - window)
    return offsets


@register("sliding-window")
class SlidingWindow(Explainer):
    """Sliding-window enhancement of a wrapped saliency method (thesis ch.4; see the module docstring).

    Args:
        wrapped: the wrapped explainer, a registry name (with ``wrapped_params``) or an :class:`Explainer`.
            (Not called ``method``: :func:`xaiimg.explain` and ``get_method`` take the method itself as their
            ``method`` argument, so ``explain("sliding-window", model, x, wrapped="grad-cam")`` needs another name.)
        window: window size in pixels, int or (rows, cols). Default 96 (thesis, 224 px input).
        stride: step between windows, int or (rows, cols), > 0. Default 32.
        start: offset (row, col) of the first window. Default (0, 0).
        smoothing_cutoff: ideal low-pass radius ``D0`` in frequency-index units (keep ``D <= D0``); the thesis
            uses 35 at 224 px. ``None`` skips smoothing.
        batch_size: jobs (full images + upsampled windows) per wrapped call and per probability forward; bounds
            memory. Default 4: on 2 CPU cores EfficientNet-Lite0 runs fastest per image at batch 4 and about
            half as fast at 26 (benchmarks/bench_sliding_window.py sweeps it); on a GPU larger is better.
        border: ``"flush"`` (default) adds a last window flush with the bottom/right border when the grid does
            not reach it, so every pixel is covered (200 px, 96/32: offsets 0, 32, 64, 96, 104);
            ``"drop"`` keeps the regular grid only (0, 32, 64, 96) and uncovered pixels get no windows' mass
            (``S'`` is 0 there before smoothing).
        normalize_wrapped: passed as ``normalize`` to the wrapped explainer for ``S0`` and every window. ``True``
            (default) min-max normalises each map to [0,1] before fusion, so maps from different windows are on
            one scale (raw gradients/relevances of different crops are not comparable); ``False`` fuses raw maps.
            PROTOCOLS.md does not fix this; it is our choice.
        wrapped_params: constructor parameters of the wrapped method when ``wrapped`` is a name.
        fusion: ``"literal"`` (eq. 4-8, default), ``"normalised"``, ``"windows"`` or the control ``"s0-coverage"``
            (module docstring, step 4). Pixels no window covers (``border="drop"``) keep ``S0`` once under
            ``"normalised"``.
    """

    def __init__(self, wrapped: str | Explainer, window: int | tuple[int, int] = 96,
                 stride: int | tuple[int, int] = 32, start: tuple[int, int] = (0, 0),
                 smoothing_cutoff: float | None = 35, batch_size: int = 4, border: str = "flush",
                 normalize_wrapped: bool = True, wrapped_params: dict | None = None, fusion: str = "literal"):
        from xaiimg.methods import get_method

        self.wrapped = get_method(wrapped, **(wrapped_params or {}))
        self.window = _pair(window, "window")
        self.stride = _pair(stride, "stride")
        self.start = _pair(start, "start")
        if min(self.window) < 1:
            raise ValueError(f"window must be positive, got {window!r}")
        if min(self.stride) < 1:
            raise ValueError(f"stride must be a positive number of pixels, got {stride!r}")
        if min(self.start) < 0:
            raise ValueError(f"start must be non-negative, got {start!r}")
        if smoothing_cutoff is not None and not smoothing_cutoff > 0:
            raise ValueError(f"smoothing_cutoff must be positive or None, got {smoothing_cutoff!r}")
        check_positive_int(batch_size, "batch_size")
        if border not in BORDER_MODES:
            raise ValueError(f"border must be one of {BORDER_MODES}, got {border!r}")
        self.smoothing_cutoff = smoothing_cutoff
        self.batch_size = batch_size
        self.border = border
        self.normalize_wrapped = normalize_wrapped
        self.fusion = check_choice(fusion, FUSIONS, "fusion")

    def windows(self, height: int, width: int) -> list[tuple[int, int]]:
        """Top-left corners ``(row, col)`` of the windows for an ``height x width`` image, in raster order."""
        rows = window_offsets(height, self.window[0], self.stride[0], self.start[0], self.border)
        cols = window_offsets(width, self.window[1], self.stride[1], self.start[1], self.border)
        return [(row, col) for row in rows for col in cols]

    def coverage(self, height: int, width: int) -> torch.Tensor:
        """``[H, W]`` count of windows covering each pixel (how often ``S0`` enters eq. 4-8 there)."""
        counts = torch.zeros(height, width)
        for row, col in self.windows(height, width):
            counts[row:row + self.window[0], col:col + self.window[1]] += 1
        return counts

    def attribute(self, model: nn.Module, x: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
        full_maps, window_sum = self.components(model, x, target)
        return self.fuse(full_maps, window_sum)

    def components(self, model: nn.Module, x: torch.Tensor, target: TargetLike = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(S0, sum_k place_k(alpha_k s_k))``, each ``[B,1,H,W]``: the wrapped method's full-image maps and the
        placed, weighted window maps (zeros under ``fusion="s0-coverage"``, which explains no window). Every
        fusion (and smoothing cutoff) is a cheap function of these two (:meth:`fuse`), so an ablation over fusions
        explains the windows once."""
        batch, _, height, width = x.shape
        corners = [] if self.fusion == "s0-coverage" else self.windows(height, width)
        win_h, win_w = self.window
        jobs_per_image = len(corners) + 1  # job 0 of each image is the full image (S0), then its windows
        targets: torch.Tensor | None = None
        full_maps = torch.zeros(batch, 1, height, width, dtype=x.dtype, device=x.device)
        window_sum = torch.zeros_like(full_maps)
        for chunk in batches(batch * jobs_per_image, self.batch_size):
            jobs = [divmod(job, jobs_per_image) for job in range(chunk.start, chunk.stop)]
            inputs = self._job_inputs(x, jobs, corners)
            with torch.no_grad():
                logits = model(inputs)
            if targets is None:
                targets = (torch.full((batch,), -1, dtype=torch.long, device=x.device) if target is None
                           else explicit_targets(target, batch, logits.shape[-1], logits.device))
            images = torch.tensor([image for image, _ in jobs], device=x.device)
            is_full = torch.tensor([index == 0 for _, index in jobs], device=x.device)
            if target is None and is_full.any():
                targets[images[is_full]] = logits[is_full].argmax(dim=-1)
            job_targets = targets[images]
            alphas = select_scores(torch.softmax(logits, dim=-1), job_targets).to(x.dtype)
            maps = self.wrapped(model, inputs, target=job_targets, normalize=self.normalize_wrapped)
            maps = maps.detach().to(x.dtype)
            full_maps[images[is_full]] = maps[is_full]
            if (~is_full).any():
                window_maps = upsample(maps[~is_full], (win_h, win_w)) * alphas[~is_full].view(-1, 1, 1, 1)
                window_jobs = [job for job in jobs if job[1] > 0]
                for (image, index), window_map in zip(window_jobs, window_maps):
                    row, col = corners[index - 1]
                    window_sum[image, :, row:row + win_h, col:col + win_w] += window_map
        return full_maps, window_sum

    def fuse(self, full_maps: torch.Tensor, window_sum: torch.Tensor, fusion: str | None = None,
             smoothing_cutoff: float | None | str = "same") -> torch.Tensor:
        """Eq. 4-8 (or the ablation ``fusion``, default ``self.fusion``) of :meth:`components`, then the ideal
        low-pass at ``smoothing_cutoff`` (default ``self.smoothing_cutoff``; ``None`` skips it). Not normalised."""
        fusion = self.fusion if fusion is None else check_choice(fusion, FUSIONS, "fusion")
        cutoff = self.smoothing_cutoff if smoothing_cutoff == "same" else smoothing_cutoff
        coverage = self.coverage(*full_maps.shape[-2:]).to(full_maps.device, full_maps.dtype)
        if fusion in ("literal", "s0-coverage"):
            # sum_k S0|W_k placed at W_k == S0 times the number of windows covering each pixel
            fused = full_maps * coverage + (window_sum if fusion == "literal" else 0)
        elif fusion == "normalised":
            fused = window_sum / coverage.clamp_min(1) + full_maps
        else:
            fused = window_sum.clone()
        return fused if cutoff is None else ideal_lowpass(fused, cutoff)

    def _job_inputs(self, x: torch.Tensor, jobs: list[tuple[int, int]], corners: list[tuple[int, int]]):
        """Model inputs of a chunk of jobs: full images as they are, windows cropped and bilinearly upsampled."""
        win_h, win_w = self.window
        inputs = torch.empty((len(jobs),) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
        crops, crop_rows = [], []
        for position, (image, index) in enumerate(jobs):
            if index == 0:
                inputs[position] = x[image]
            else:
                row, col = corners[index - 1]
                crops.append(x[image, :, row:row + win_h, col:col + win_w])
                crop_rows.append(position)
        if crops:
            inputs[crop_rows] = upsample(torch.stack(crops), tuple(x.shape[-2:]))
        return inputs

