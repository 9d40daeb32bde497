"""Sliding-window enhancement (thesis ch.4, PROTOCOLS.md "Sliding-window enhancement").

The batched implementation is checked against a slow, literal per-image, per-window reference written here from
the thesis equations, in float64, on the tiny CNN of conftest.py. The wrapped method in most tests is
gradient x input written below with plain autograd (``d logit_c / d x * x`` summed over channels), so the
reference does not depend on any other module of xaiimg.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import xaiimg as xi
from xaiimg.methods.base import Explainer
from xaiimg.methods.sliding_window import SlidingWindow, ideal_lowpass
from xaiimg.nn import resolve_targets, select_scores
from xaiimg.passes import count_passes


class GradientTimesInput(Explainer):
    """Test-only wrapped method: sum over channels of ``x * d logit_c / d x`` (one forward, one backward)."""

    def attribute(self, model, x, target=None):
        x = x.clone().requires_grad_(True)
        logits = model(x)
        targets = resolve_targets(target, logits)
        (gradient,) = torch.autograd.grad(select_scores(logits, targets).sum(), x)
        return (gradient * x).sum(dim=1, keepdim=True)


# ------------------------------------------------------------------------------------------ references
def lowpass_reference(image: np.ndarray, cutoff: float) -> np.ndarray:
    """Ideal low-pass without fftshift: frequency indices from np.fft.fftfreq, keep sqrt(fu^2 + fv^2) <= D0."""
    height, width = image.shape
    fu = np.fft.fftfreq(height) * height
    fv = np.fft.fftfreq(width) * width
    keep = np.sqrt(fu[:, None] ** 2 + fv[None, :] ** 2) <= cutoff
    return np.fft.ifft2(np.fft.fft2(image) * keep).real


def enhancement_reference(model, explainer, x, targets, window, row_offsets, col_offsets, cutoff):
    """Literal eq. 4-1..4-11, one image and one window at a time: S0 of the image; per window k the crop is
    bilinearly upsampled to H x W (eq. 4-2), explained for class c (s_k, downsampled back to the window),
    weighted by alpha_k = softmax_c of the upsampled crop; S' = sum_k (alpha_k s_k + S0|W_k) at W_k (eq. 4-8);
    ideal low-pass with D0 = cutoff; min-max."""
    height, width = x.shape[-2:]
    results = []
    for b in range(x.shape[0]):
        image = x[b:b + 1]
        with torch.no_grad():
            c = int(model(image).argmax()) if targets is None else int(targets[b])
        s0 = explainer(model, image, target=c, normalize=True)[0, 0]
        fused = torch.zeros(height, width, dtype=torch.float64)
        for row in row_offsets:
            for col in col_offsets:
                crop = image[:, :, row:row + window, col:col + window]
                upsampled = F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False)
                with torch.no_grad():
                    alpha = torch.softmax(model(upsampled), dim=-1)[0, c]
                s_k = explainer(model, upsampled, target=c, normalize=True)
                s_k = F.interpolate(s_k, size=(window, window), mode="bilinear", align_corners=False)[0, 0]
                fused[row:row + window, col:col + window] += alpha * s_k + s0[row:row + window, col:col + window]
        smoothed = lowpass_reference(fused.numpy(), cutoff) if cutoff is not None else fused.numpy()
        results.append((smoothed - smoothed.min()) / (smoothed.max() - smoothed.min()))
    return torch.from_numpy(np.stack(results)[:, None])


@pytest.fixture
def tiny64(tiny_cnn):
    return tiny_cnn.double()


def images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------------------------- batched == literal
@pytest.mark.parametrize("batch,targets,stride,batch_size", [
    (1, None, 4, 26),          # predicted class, 4 x 4 windows, the image and all its windows in one call
    (3, [0, 3, 1], 6, 4),      # mixed targets, 3 x 3 windows, chunks that cut across images
    (2, None, 6, 7),           # predicted classes found in the chunk holding each full image
])
def test_batched_equals_literal_reference(tiny64, batch, targets, stride, batch_size):
    x = images(batch, 24, seed=batch)
    wrapped = GradientTimesInput()
    method = SlidingWindow(wrapped, window=12, stride=stride, smoothing_cutoff=6, batch_size=batch_size)
    offsets = list(range(0, 13, stride))
    assert method.windows(24, 24) == [(r, c) for r in offsets for c in offsets]
    result = method(tiny64, x, target=targets)
    reference = enhancement_reference(tiny64, wrapped, x, targets, 12, offsets, offsets, 6)
    assert result.shape == (batch, 1, 24, 24) and result.dtype == torch.float64
    torch.testing.assert_close(result, reference, atol=1e-5, rtol=0)
    if batch > 1:  # the maps really differ per image / target
        assert (result[0] - result[1]).abs().max() > 1e-2


def test_non_multiple_size_flush_matches_reference(tiny64):
    # 40 px, window 12, stride 8: grid 0, 8, 16, 24 ends at 36 < 40, so 'flush' adds 28.
    x = images(1, 40, seed=5)
    wrapped = GradientTimesInput()
    method = SlidingWindow(wrapped, window=12, stride=8, smoothing_cutoff=None, batch_size=9)
    offsets = [0, 8, 16, 24, 28]
    assert method.windows(40, 40) == [(r, c) for r in offsets for c in offsets]
    reference = enhancement_reference(tiny64, wrapped, x, [2], 12, offsets, offsets, None)
    torch.testing.assert_close(method(tiny64, x, target=2), reference, atol=1e-5, rtol=0)


def test_drop_border_leaves_last_pixels_uncovered(tiny64):
    x = images(1, 40, seed=6)
    method = SlidingWindow(GradientTimesInput(), window=12, stride=8, smoothing_cutoff=None, border="drop")
    assert method.windows(40, 40) == [(r, c) for r in (0, 8, 16, 24) for c in (0, 8, 16, 24)]
    raw = method(tiny64, x, target=1, normalize=False)
    assert torch.all(raw[..., 36:, :] == 0) and torch.all(raw[..., :, 36:] == 0)
    assert torch.all(raw[..., :36, :36] > 0)  # normalised window maps + S0 >= 0, alpha > 0, somewhere > 0
    counts = method.coverage(40, 40)
    assert counts[0, 0] == 1 and counts[10, 0] == 2 and counts[10, 10] == 4 and counts[12, 12] == 1
    assert counts[39, 39] == 0 and counts[:36, :36].min() == 1


def test_thesis_geometry_at_224_and_200():
    method = SlidingWindow(GradientTimesInput())
    corners = method.windows(224, 224)
    assert len(corners) == 25 and corners[0] == (0, 0) and corners[-1] == (128, 128)
    assert sorted({r for r, _ in corners}) == [0, 32, 64, 96, 128]
    flush = method.windows(200, 200)
    assert sorted({r for r, _ in flush}) == [0, 32, 64, 96, 104] and len(flush) == 25
    drop = SlidingWindow(GradientTimesInput(), border="drop").windows(200, 200)
    assert sorted({r for r, _ in drop}) == [0, 32, 64, 96] and len(drop) == 16
    rect = SlidingWindow(GradientTimesInput(), window=(96, 64), stride=(32, 48), start=(0, 16)).windows(224, 160)
    assert sorted({r for r, _ in rect}) == [0, 32, 64, 96, 128] and sorted({c for _, c in rect}) == [16, 64, 96]
    assert method.coverage(224, 224).sum() == 25 * 96 * 96


# ----------------------------------------------------------------------------------------- pass counts
def test_pass_counts(tiny64):
    x = images(2, 24)
    method = SlidingWindow(GradientTimesInput(), window=12, stride=4, smoothing_cutoff=6, batch_size=5)
    with count_passes(tiny64) as log:
        method(tiny64, x)
    jobs = 2 * (16 + 1)  # each image: the full image (S0) + 16 windows
    chunks = -(-jobs // 5)  # 7
    sizes = [5] * 6 + [4]
    # per chunk: one no-grad probability forward, then the wrapped method's forward + backward
    assert log.forward_batches == [size for size in sizes for _ in range(2)]
    assert log.backward_batches == sizes
    assert log.forwards == 2 * chunks and log.images_forwarded == 2 * jobs


class ConstantMap(Explainer):
    """Test-only wrapped method: the same value everywhere, whatever the input."""

    def __init__(self, value: float):
        self.value = value

    def attribute(self, model, x, target=None):
        return torch.full((x.shape[0], 1, *x.shape[-2:]), self.value, dtype=x.dtype)


class UniformClassifier(torch.nn.Module):
    """Equal logits for 4 classes: every window's softmax weight alpha_k is 1/4."""

    def forward(self, x):
        return x.new_zeros(x.shape[0], 4) + 0 * x.mean()


@pytest.mark.parametrize("fusion,expected", [
    ("literal", lambda n: (0.25 * 2 + 3) * n),        # sum_k alpha s_k + n S0
    ("normalised", lambda n: 0.25 * 2 + 3 + 0 * n),   # windows averaged, S0 once: constant
    ("windows", lambda n: 0.25 * 2 * n),
    ("s0-coverage", lambda n: 3 * n),
])
def test_fusions_of_constant_maps_by_hand(fusion, expected):
    """s_k = 2 and S0 = 3 are constant, alpha_k = 1/4: each fusion is a known function of the coverage n(p);
    the coverage-normalised one is constant (S0's centre weighting removed)."""
    window_map, full_map = ConstantMap(2.0), ConstantMap(3.0)
    method = SlidingWindow(window_map, window=12, stride=4, smoothing_cutoff=None, fusion=fusion,
                           normalize_wrapped=False)
    calls = []

    def wrapped_call(model, x, target=None, normalize=True):
        """S0 = 3 for the full image (the marker), s_k = 2 for every upsampled window."""
        calls.append(len(x))
        is_full = torch.stack([(image == marker).all() for image in x]).view(-1, 1, 1, 1)
        return torch.where(is_full, full_map.attribute(model, x), window_map.attribute(model, x))

    marker = images(1, 24)[0]
    method.wrapped = wrapped_call
    out = method.attribute(UniformClassifier(), marker[None])
    coverage = method.coverage(24, 24).double()
    torch.testing.assert_close(out[0, 0], expected(coverage), rtol=0, atol=1e-12)
    assert sum(calls) == (1 if fusion == "s0-coverage" else 17)


def test_unknown_fusion_is_named():
    with pytest.raises(ValueError, match="fusion"):
        SlidingWindow("grad-cam", fusion="sum")


# ------------------------------------------------------------------------------------------- low-pass
def test_lowpass_constant_stays_constant():
    constant = torch.full((2, 1, 16, 18), 3.25, dtype=torch.float64)
    torch.testing.assert_close(ideal_lowpass(constant, 1.0), constant, atol=1e-12, rtol=0)


def test_lowpass_removes_checkerboard_and_large_cutoff_is_identity():
    index = torch.arange(16, dtype=torch.float64)
    checkerboard = (-1.0) ** (index.view(-1, 1) + index.view(1, -1))  # only frequency (8, 8): D = 11.31
    assert ideal_lowpass(checkerboard, 11.3).abs().max() < 1e-12
    torch.testing.assert_close(ideal_lowpass(checkerboard, 11.32), checkerboard, atol=1e-12, rtol=0)
    noise = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(ideal_lowpass(noise, 100.0), noise, atol=1e-12, rtol=0)


def test_lowpass_cutoff_is_inclusive_and_matches_numpy_reference():
    rows = torch.arange(20, dtype=torch.float64).view(-1, 1).expand(20, 12)
    cosine = torch.cos(2 * torch.pi * 3 * rows / 20)  # frequency index 3 along rows: D = 3
    torch.testing.assert_close(ideal_lowpass(cosine, 3.0), cosine, atol=1e-12, rtol=0)
    assert ideal_lowpass(cosine, 2.99).abs().max() < 1e-12
    odd = torch.randn(2, 15, 17, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = np.stack([lowpass_reference(m.numpy(), 4.5) for m in odd])
    np.testing.assert_allclose(ideal_lowpass(odd, 4.5).numpy(), expected, atol=1e-12)
    single = ideal_lowpass(odd.float(), 4.5)
    assert single.dtype == torch.float32
    np.testing.assert_allclose(single.numpy(), expected, atol=1e-5)


def test_lowpass_bad_input():
    with pytest.raises(ValueError, match="cutoff must be positive"):
        ideal_lowpass(torch.zeros(4, 4), 0)
    with pytest.raises(TypeError, match="floating-point"):
        ideal_lowpass(torch.zeros(4, 4, dtype=torch.long), 2)


# ----------------------------------------------------------------------------------------- API, errors
def test_registry_and_explain_api(tiny64):
    assert "sliding-window" in xi.available_methods()
    x = images(1, 24, seed=9)
    wrapped = GradientTimesInput()
    direct = SlidingWindow(wrapped, window=12, stride=6, smoothing_cutoff=6)(tiny64, x, target=4)
    via_registry = xi.explain("sliding-window", tiny64, x, target=4, wrapped=wrapped, window=12, stride=6,
                              smoothing_cutoff=6)
    torch.testing.assert_close(via_registry, direct, atol=0, rtol=0)
    assert float(direct.min()) == 0.0 and float(direct.max()) == 1.0


def test_bad_input_errors_leave_model_unchanged(tiny64):
    tiny64.train()
    flags = [p.requires_grad for p in tiny64.parameters()]
    method = SlidingWindow(GradientTimesInput(), window=32, stride=8)
    with pytest.raises(ValueError, match=r"smaller than the sliding window \(32 px\)"):
        method(tiny64, images(1, 24))
    assert tiny64.training and [p.requires_grad for p in tiny64.parameters()] == flags
    assert all(p.grad is None for p in tiny64.parameters())
    with pytest.raises(ValueError, match="stride must be a positive"):
        SlidingWindow(GradientTimesInput(), stride=0)
    with pytest.raises(ValueError, match="stride must be a positive"):
        SlidingWindow(GradientTimesInput(), stride=(32, -1))
    with pytest.raises(ValueError, match="unknown method 'no-such-method'"):
        SlidingWindow("no-such-method")
    with pytest.raises(TypeError, match="constructor"):
        SlidingWindow(GradientTimesInput(), wrapped_params={"layer": "features.3"})
    with pytest.raises(ValueError, match="border must be one of"):
        SlidingWindow(GradientTimesInput(), border="wrap")
    with pytest.raises(ValueError, match="window start 20"):
        SlidingWindow(GradientTimesInput(), window=12, start=(20, 0))(tiny64, images(1, 24))
    with pytest.raises(ValueError, match="smoothing_cutoff"):
        SlidingWindow(GradientTimesInput(), smoothing_cutoff=-1)
    with pytest.raises(ValueError, match="out of range"):
        SlidingWindow(GradientTimesInput(), window=12, stride=4)(tiny64, images(1, 24), target=7)


# ------------------------------------------------------------------- wrapping the project's real methods
def tiny_vit() -> torch.nn.Module:
    """timm ViT, 32 px, patches of 8, 2 blocks, 5 classes, random weights (plumbing of the wrap only)."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=5)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.4)
    return model.double().eval()


@pytest.mark.parametrize("name,params", [
    ("grad-cam", {"layer": "features.3"}),  # CAM family
    ("lrp", {}),                            # LRP, epsilon-gamma-box composite (z^B bounds from model.spec)
    ("gradient", {}),                       # Captum adapter (Saliency)
])
def test_wraps_project_methods_on_tiny_cnn(tiny64, name, params):
    """Registry name + wrapped_params; batched == literal reference with the same wrapped method."""
    assert name in xi.available_methods()
    x = images(2, 24, seed=11)
    method = SlidingWindow(name, window=12, stride=12, smoothing_cutoff=5, batch_size=4, wrapped_params=params)
    assert type(method.wrapped) is xi.methods.base.registry()[name]
    result = method(tiny64, x, target=[0, 3])
    offsets = [0, 12]
    reference = enhancement_reference(tiny64, method.wrapped, x, [0, 3], 12, offsets, offsets, 5)
    assert result.amin(dim=(1, 2, 3)).tolist() == [0, 0] and result.amax(dim=(1, 2, 3)).tolist() == [1, 1]
    torch.testing.assert_close(result, reference, atol=1e-5, rtol=0)


def test_wraps_transformer_attribution_on_tiny_vit():
    assert "transformer-attribution" in xi.available_methods()
    model = tiny_vit()
    x = images(2, 32, seed=12)
    method = SlidingWindow("transformer-attribution", window=16, stride=16, smoothing_cutoff=6, batch_size=3)
    result = method(model, x, target=None)
    assert result.amax(dim=(1, 2, 3)).tolist() == [1, 1]
    offsets = [0, 16]
    reference = enhancement_reference(model, method.wrapped, x, None, 16, offsets, offsets, 6)
    torch.testing.assert_close(result, reference, atol=1e-5, rtol=0)


def test_thesis_defaults_on_lite0_grad_cam(lite0, lite0_batch):
    """Real EfficientNet-Lite0 at 224 px with the thesis defaults: 25 windows, so 26 jobs (the image and its
    windows) in chunks of the default batch_size 4: per chunk one probability forward and one Grad-CAM forward
    + backward."""
    x = lite0_batch[:1]
    method = SlidingWindow("grad-cam")
    with count_passes(lite0) as log:
        result = method(lite0, x)
    assert log.forward_batches == [4, 4] * 6 + [2, 2] and log.backward_batches == [4] * 6 + [2]
    assert result.shape == (1, 1, 224, 224) and result.amin() == 0 and result.amax() == 1
    # the enhanced map stays on the object Grad-CAM finds: its peak lies in Grad-CAM's top 10% region
    plain = xi.explain("grad-cam", lite0, x)
    peak = result.flatten().argmax()
    assert plain.flatten()[peak] >= plain.flatten().quantile(0.9)
