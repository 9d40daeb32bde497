"""MSG-CAM (thesis ch.3 Algorithm 1, PROTOCOLS.md "MSG-CAM").

The batched implementation (group sums at layer resolution, keep masks, separable upsampled means) is checked
against a slow, literal per-image, per-scale, per-group reference written here from Algorithm 1 at input
resolution, in float64, on a tiny strided CNN whose top-1 changes with scale.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_nets import strided_cnn
from torch import nn

from xaiimg.methods.msgcam import MSGCAM, upsampled_mean
from xaiimg.methods.perturbation_base import multiscale_passes, scaled_sizes
from xaiimg.ops import gaussian_blur
from xaiimg.passes import count_passes


def images(batch: int) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(2)).double()


# zeta_0=32, zeta_max=24, N=3 -> scales 32, 40, 48. Top-1 per scale: image 0: 4,4,3; image 1: 4,4,3; image 2:
# 3,3,3. Targets 4, 3, 1 keep scales {32, 40} | {48} | none (fallback to the original).
SCALES = dict(zeta_max=24, num_scales=3)
MIXED_TARGETS = [4, 3, 1]
# CAMERAS's upsampling and Group-CAM's alpha: the fixture's kept scales above and non-empty maps were read with them
# (the defaults are the thesis's bilinear + logit, tested against the reference in the ablation test)
BICUBIC_SOFTMAX = dict(image_mode="bicubic", alpha_score="probability")


def hooks_left(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def msg_cam_reference(model, x, targets, zetas, groups, theta, combine, denoise="input", kernel=51, sigma=50.0,
                      image_mode="bilinear", keep_scales="top1", alpha_score="logit"):
    """Literal Algorithm 1, one image, one scale and one group at a time, everything at input size."""
    layer = model.features[3]
    size = x.shape[-2:]
    maps = []
    for b in range(x.shape[0]):
        image, target = x[b:b + 1], targets[b]
        kept = []
        for t, zeta in enumerate(zetas):
            scaled = image if t == 0 else F.interpolate(
                image, size=(size[0] * zeta // zetas[0], size[1] * zeta // zetas[0]), mode=image_mode,
                align_corners=False)
            store = {}
            handle = layer.register_forward_hook(lambda _m, _i, output: store.update(a=output))
            logits = model(scaled.clone().requires_grad_(True))
            handle.remove()
            if target is None:
                target = int(logits.argmax())
            (gradient,) = torch.autograd.grad(logits[0, target], store["a"])
            up = [F.interpolate(v, size=size, mode="bilinear", align_corners=False) for v in (store["a"], gradient)]
            if t == 0:
                original = up
            if keep_scales == "all" or int(logits.argmax()) == target:
                kept.append(up)
        kept = kept or [original]
        activation = sum(k[0] for k in kept) / len(kept)
        gradient = sum(k[1] for k in kept) / len(kept)
        weighted = activation.detach() * gradient.mean(dim=(2, 3), keepdim=True)
        blurred = gaussian_blur(image, kernel, sigma, border="reflect")
        def score(images):
            logits = model(images)
            return (F.softmax(logits, -1) if alpha_score == "probability" else logits)[0, target]

        with torch.no_grad():
            baseline = score(blurred)
        total = torch.zeros(1, 1, *size, dtype=x.dtype)
        for channels in np.array_split(np.arange(weighted.shape[1]), groups):
            mask = F.relu(weighted[:, channels].sum(1, keepdim=True))
            denoised = mask
            if denoise == "input":
                denoised = torch.where(mask > np.percentile(mask.numpy(), theta), mask, 0.0)
            if denoised.max() == denoised.min():
                continue
            normalised = (denoised - denoised.min()) / (denoised.max() - denoised.min())
            with torch.no_grad():
                blended = score(image * normalised + blurred * (1 - normalised))
            total += (blended - baseline) * (mask if combine == "raw" else normalised)
        maps.append(F.relu(total))
    return torch.cat(maps)


@pytest.mark.parametrize("batch, targets", [(1, [None]), (3, MIXED_TARGETS)])
@pytest.mark.parametrize("groups, combine, denoise, theta", [
    (4, "raw", "input", 70.0), (3, "denoised", "input", 70.0), (8, "raw", None, 70.0), (4, "raw", "input", 40.0)])
def test_msg_cam_matches_literal_reference(batch, targets, groups, combine, denoise, theta):
    model = strided_cnn()
    x = images(batch)
    explainer = MSGCAM(groups=groups, combine=combine, denoise=denoise, theta=theta, batch_size=5, **SCALES,
                       **BICUBIC_SOFTMAX)
    assert explainer.scales(32) == [32, 40, 48]
    ours = explainer(model, x, target=None if batch == 1 else targets, normalize=False)
    reference = msg_cam_reference(model, x, targets, [32, 40, 48], groups, theta, combine, denoise, **BICUBIC_SOFTMAX)
    assert (reference.flatten(1).abs().sum(1) > 0).all()
    assert torch.allclose(ours, reference, atol=1e-10, rtol=0)


@pytest.mark.parametrize("image_mode, keep_scales, alpha_score", [
    ("bilinear", "top1", "logit"), ("bicubic", "all", "probability"), ("bilinear", "all", "logit")])
def test_msg_cam_ablation_options_match_the_literal_reference(image_mode, keep_scales, alpha_score):
    """The thesis's literal settings (bilinear, top-1 rule, pre-softmax F_c) and the ablations beside them."""
    model = strided_cnn()
    x = images(3)
    explainer = MSGCAM(groups=4, batch_size=5, image_mode=image_mode, keep_scales=keep_scales,
                       alpha_score=alpha_score, **SCALES)
    ours = explainer(model, x, normalize=False)
    reference = msg_cam_reference(model, x, [None] * 3, [32, 40, 48], 4, 70.0, "raw", image_mode=image_mode,
                                  keep_scales=keep_scales, alpha_score=alpha_score)
    assert (reference.flatten(1).abs().sum(1) > 0).sum() >= 2       # not a comparison of empty maps
    assert torch.allclose(ours, reference, atol=1e-10, rtol=0)
    kept = explainer.last_kept_scales
    assert kept.shape == (3, 3) and kept[:, 0].all() and (kept.all() if keep_scales == "all" else True)


def test_msg_cam_records_the_kept_scales_of_each_image():
    model = strided_cnn()
    explainer = MSGCAM(groups=8, batch_size=10, **SCALES, **BICUBIC_SOFTMAX)
    explainer(model, images(3), target=MIXED_TARGETS)
    assert explainer.last_kept_scales.tolist() == [[True, True, False], [False, False, True], [False, False, False]]


def test_msg_cam_pass_counts_and_keep_masks():
    model = strided_cnn()
    x = images(3)
    sizes = scaled_sizes((32, 32), [32, 40, 48], 32)
    _, _, keep, _ = multiscale_passes(model, x, model.features[3], sizes, MIXED_TARGETS, "bicubic")
    assert keep.T.tolist() == [[True, True, False], [False, False, True], [False, False, False]]
    with count_passes(model) as log:
        MSGCAM(groups=8, batch_size=10, **SCALES, **BICUBIC_SOFTMAX)(model, x, target=MIXED_TARGETS)
    # 3 scales x 1 forward+backward of the batch, 1 baseline forward, 3*8 = 24 blended images in batches of 10
    assert log.forward_batches == [3, 3, 3, 3, 10, 10, 4]
    assert log.backward_batches == [3, 3, 3]


def test_msg_cam_default_scales_and_no_nan_on_flat_input():
    assert MSGCAM().scales(224) == [224, 324, 424, 524, 624, 724, 824, 924]
    assert MSGCAM(zeta_0=200, zeta_max=100, num_scales=3).scales(224) == [200, 233, 266]
    assert MSGCAM(num_scales=1).scales(224) == [224]
    model = strided_cnn()
    flat = torch.zeros(2, 3, 32, 32, dtype=torch.float64)
    out = MSGCAM(groups=4, **SCALES)(model, flat)
    assert torch.isfinite(out).all() and out.abs().sum() == 0


def test_msg_cam_no_scale_policy_error_names_samples_and_removes_hooks():
    model = strided_cnn()
    x = images(3)
    with pytest.raises(ValueError, match=r"no scale has the target class as top-1 for samples \[2\]"):
        MSGCAM(groups=4, on_no_scale="error", **SCALES)(model, x, target=MIXED_TARGETS)
    with pytest.raises(ValueError, match="groups=9 exceeds the layer's 8 channels"):
        MSGCAM(groups=9, **SCALES)(model, x)
    assert hooks_left(model) == 0
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_scales=0), "num_scales"),
    (dict(zeta_max=-1), "zeta_max"),
    (dict(zeta_max=3, num_scales=4), "step"),
    (dict(zeta_0=0), "zeta_0"),
    (dict(theta=100.5), "theta"),
    (dict(groups=0), "groups"),
    (dict(on_no_scale="skip"), "on_no_scale"),
    (dict(denoise="feature"), "denoise"),
    (dict(image_mode="nearest"), "image_mode"),
])
def test_bad_msg_cam_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MSGCAM(**kwargs)


@pytest.mark.parametrize("source, target", [((7, 7), (224, 224)), ((5, 9), (32, 20)), ((12, 12), (8, 8))])
def test_upsampled_mean_equals_mean_of_upsampled_maps(source, target):
    maps = torch.randn(2, 3, *source, generator=torch.Generator().manual_seed(0)).double()
    literal = F.interpolate(maps, size=target, mode="bilinear", align_corners=False).mean(dim=(2, 3))
    assert torch.allclose(upsampled_mean(maps, target), literal, atol=1e-12)


def test_registry_names():
    import xaiimg as xi

    explainer = xi.methods.get_method("msg-cam", groups=4)
    assert isinstance(explainer, MSGCAM) and explainer.groups == 4
    assert {"score-cam", "group-cam", "rise", "cameras", "msg-cam"} <= set(xi.available_methods())
