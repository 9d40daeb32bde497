"""Score-CAM, Group-CAM, RISE and CAMERAS (xaiimg.methods.perturbation, xaiimg.methods.cameras).

Golden values on a hand-built net; Score-CAM against pytorch-grad-cam's ScoreCAM (convention mapping in the
test); Group-CAM and CAMERAS against slow, literal per-image (per-mask) references written here from the
papers' equations / official code, in float64; pass counts with xaiimg.passes.count_passes; bad input.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_nets import strided_cnn
from torch import nn

from xaiimg.methods.cameras import CAMERAS
from xaiimg.methods.perturbation import RISE, GroupCAM, ScoreCAM
from xaiimg.methods.perturbation_base import group_sums, multiscale_passes, percentile_denoise
from xaiimg.ops import gaussian_blur
from xaiimg.passes import count_passes


def images(batch: int, size: int = 32, dtype=torch.float64, seed: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)).to(dtype)


# Images 0-2 (seed 2) on the seed-4 net: top-1 per scale 32/40/48/56 px is 4,4,3,3 | 4,4,3,3 | 3,3,3,3, so
# these targets keep scales {32, 40} | {48, 56} | none (falls back to the original) in multi-scale methods.
MIXED_TARGETS = [4, 3, 1]


def hooks_left(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def layer_and_gradient(model, layer, image, target):
    """Literal: forward one image with a hook on ``layer``; d logit_target / d activation."""
    store = {}
    handle = layer.register_forward_hook(lambda _m, _i, output: store.update(a=output))
    try:
        logits = model(image.clone().requires_grad_(True))
    finally:
        handle.remove()
    if target is None:
        target = int(logits.argmax())
    (gradient,) = torch.autograd.grad(logits[0, target], store["a"])
    return store["a"].detach(), gradient, logits.detach(), target


def probability(model, image, target) -> float:
    with torch.no_grad():
        return float(F.softmax(model(image), dim=-1)[0, target])


# ------------------------------------------------------------------------------------------ Score-CAM
class ChannelMeans(nn.Module):
    """Hand-built: ``layer`` is the identity on the input; logits = spatial means of the 2 input channels."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Identity()

    def forward(self, x):
        return self.layer(x).mean(dim=(2, 3))


def test_score_cam_golden_on_hand_built_net():
    # x: channel0 = [0, 2], channel1 = [3, 1] (1x2 image); layer = x, so masks M0 = [0, 1], M1 = [1, 0].
    # x*M0 -> channel means (1, 0.5): P(class 0) = sigmoid(0.5)  = 0.6224593
    # x*M1 -> channel means (0, 1.5): P(class 0) = sigmoid(-1.5) = 0.1824255
    # map = ReLU(0.6224593*[0, 2] + 0.1824255*[3, 1]) = [0.5472765, 1.4273441]
    model = ChannelMeans()
    x = torch.tensor([[[[0.0, 2.0]], [[3.0, 1.0]]]], dtype=torch.float64)
    raw = ScoreCAM(layer="layer")(model, x, target=0, normalize=False)
    assert torch.allclose(raw, torch.tensor([[[[0.5472765, 1.4273441]]]], dtype=torch.float64), atol=1e-7)
    # pytorch-grad-cam weighting: softmax over channels of the masked logits (1, 0) -> (0.7310586, 0.2689414)
    raw = ScoreCAM(layer="layer", weights="logit-softmax")(model, x, target=0, normalize=False)
    assert torch.allclose(raw, torch.tensor([[[[0.8068243, 1.7310586]]]], dtype=torch.float64), atol=1e-7)


def test_score_cam_matches_pytorch_grad_cam():
    """Convention mapping: pytorch-grad-cam ScoreCAM = ours with ``weights="logit-softmax"`` (softmax over
    channels of the target logits) and ``align_corners=True`` (its masks use ``UpsamplingBilinear2d``); its
    map is ReLU'd, min-max'ed and resized with cv2 (half-pixel bilinear) = our ``__call__`` output."""
    from pytorch_grad_cam import ScoreCAM as GradCamScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = strided_cnn(torch.float32)
    x = images(2, 16, torch.float32, seed=3)
    targets = [1, 4]
    ours = ScoreCAM(weights="logit-softmax", align_corners=True, batch_size=5)(model, x, target=targets)
    reference = GradCamScoreCAM(model=model, target_layers=[model.features[3]])
    reference.batch_size = 5
    theirs = reference(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
    assert ours[:, 0].abs().sum() > 1
    np.testing.assert_allclose(ours[:, 0].numpy(), theirs, atol=2e-5)


def test_score_cam_matches_pytorch_grad_cam_on_lite0(lite0, lite0_batch):
    """Real EfficientNet-Lite0, reduced layer ``blocks.0`` (16 channels at 112x112) to keep it to 2x16 masked
    forwards; same convention mapping as above."""
    from pytorch_grad_cam import ScoreCAM as GradCamScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x = lite0_batch[:1]
    ours = ScoreCAM(layer="blocks.0", weights="logit-softmax", align_corners=True, batch_size=16)(lite0, x, target=281)
    reference = GradCamScoreCAM(model=lite0, target_layers=[lite0.blocks[0]])
    try:
        reference.batch_size = 16
        theirs = reference(input_tensor=x, targets=[ClassifierOutputTarget(281)])
    finally:
        reference.activations_and_grads.release()
    assert hooks_left(lite0) == 0
    np.testing.assert_allclose(ours[:, 0].numpy(), theirs, atol=1e-4)


def test_score_cam_masked_forwards_respect_batch_size():
    model = strided_cnn()
    x = images(2, 16)
    with count_passes(model) as log:
        ScoreCAM(batch_size=5)(model, x)
    assert log.forward_batches == [2, 5, 5, 5, 1]  # 1 forward, then 2 images x 8 channels in batches of 5
    assert log.backwards == 0


# ------------------------------------------------------------------------------------------ Group-CAM
def group_cam_reference(model, layer, x, targets, groups, denoise, theta, combine, kernel=51, sigma=50.0):
    """Literal Group-CAM, one image and one group at a time (official cam/groupcam.py, with the options)."""
    maps = []
    size = x.shape[-2:]
    for b in range(x.shape[0]):
        image = x[b:b + 1]
        activation, gradient, _, target = layer_and_gradient(model, layer, image, targets[b])
        weighted = gradient.mean(dim=(2, 3), keepdim=True) * activation
        blurred = gaussian_blur(image, kernel, sigma, border="reflect")
        baseline = probability(model, blurred, target)
        total = torch.zeros(1, 1, *size, dtype=x.dtype)
        for channels in np.array_split(np.arange(weighted.shape[1]), groups):
            mask = F.relu(weighted[:, channels].sum(1, keepdim=True))
            if denoise == "feature":
                threshold = np.percentile(mask.numpy(), theta)
                denoised = F.interpolate(torch.where(mask > threshold, mask, 0.0), size=size, mode="bilinear",
                                         align_corners=False)
                mask = F.interpolate(mask, size=size, mode="bilinear", align_corners=False)
            else:
                mask = F.interpolate(mask, size=size, mode="bilinear", align_corners=False)
                denoised = mask
                if denoise == "input":
                    threshold = np.percentile(mask.numpy(), theta)
                    denoised = torch.where(mask > threshold, mask, 0.0)
            if denoised.max() == denoised.min():
                continue
            normalised = (denoised - denoised.min()) / (denoised.max() - denoised.min())
            alpha = probability(model, image * normalised + blurred * (1 - normalised), target) - baseline
            total += alpha * (mask if combine == "raw" else normalised)
        maps.append(F.relu(total))
    return torch.cat(maps)


@pytest.mark.parametrize("batch, targets", [(1, [None]), (3, MIXED_TARGETS)])
@pytest.mark.parametrize("denoise, combine, groups", [
    (None, "denoised", 4), ("feature", "denoised", 4), ("input", "raw", 3), ("feature", "raw", 8)])
def test_group_cam_matches_literal_reference(batch, targets, denoise, combine, groups):
    model = strided_cnn()
    x = images(batch)
    layer = model.features[3]
    explainer = GroupCAM(groups=groups, denoise=denoise, combine=combine, batch_size=5)
    ours = explainer(model, x, target=None if batch == 1 else targets, normalize=False)
    reference = group_cam_reference(model, layer, x, targets, groups, denoise, 70.0, combine)
    assert (reference.flatten(1).abs().sum(1) > 0).all()  # every sample's map is informative
    assert torch.allclose(ours, reference, atol=1e-10, rtol=0)


def test_group_cam_pass_counts():
    model = strided_cnn()
    x = images(3)
    with count_passes(model) as log:
        GroupCAM(groups=8, batch_size=10)(model, x, target=[0, 1, 2])
    # 1 forward+backward (3 images), 1 baseline forward, 3*8 = 24 blended images in batches of 10
    assert log.forward_batches == [3, 3, 10, 10, 4]
    assert log.backward_batches == [3]


def test_group_sums_and_percentile_denoise_golden():
    maps = torch.arange(6.0).view(1, 6, 1, 1)
    assert group_sums(maps, 3).flatten().tolist() == [1.0, 5.0, 9.0]
    assert group_sums(maps, 4).flatten().tolist() == [1.0, 5.0, 4.0, 5.0]  # sizes 2, 2, 1, 1
    values = torch.tensor([[[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 8.0], [9.0, 10.0, 11.0]]]])
    # 70th percentile of 0..11 = 0.7 * 11 = 7.7 -> keep 8, 9, 10, 11
    kept = percentile_denoise(values, 70.0)
    assert kept.flatten().tolist() == [0.0] * 8 + [8.0, 9.0, 10.0, 11.0]
    ties = torch.tensor([[[[0.0, 0.0, 0.0, 0.0, 5.0]]]])  # percentile 0 -> nothing equal to it survives
    assert percentile_denoise(ties, 70.0).flatten().tolist() == [0.0, 0.0, 0.0, 0.0, 5.0]


# ------------------------------------------------------------------------------------------------ RISE
def test_rise_masks_match_skimage_resize_and_crop():
    """Our torch masks = eclique/RISE generate_masks (skimage resize order=1, reflect, no anti-aliasing)."""
    from skimage.transform import resize

    rise = RISE(num_masks=6, grid_size=5, p=0.5, seed=3)
    size = (23, 19)
    grids, shifts, up_size = rise.mask_recipe(size)
    assert up_size == (6 * math.ceil(23 / 5), 6 * math.ceil(19 / 5))
    masks = rise.masks(size, dtype=torch.float64)
    for i in range(6):
        y, x = shifts[i].tolist()
        expected = resize(grids[i].double().numpy(), up_size, order=1, mode="reflect",
                          anti_aliasing=False)[y:y + size[0], x:x + size[1]]
        np.testing.assert_allclose(masks[i, 0].numpy(), expected, atol=1e-12)
    assert 0 < grids.double().mean() < 1


@pytest.mark.parametrize("score", ["probability", "logit"])
def test_rise_matches_literal_reference(score):
    model = strided_cnn()
    x = images(2, 16)
    rise = RISE(num_masks=12, grid_size=4, p=0.3, score=score, seed=5, batch_size=7)
    ours = rise(model, x, target=[3, 1], normalize=False)
    masks = rise.masks((16, 16), dtype=torch.float64)
    expected = torch.zeros(2, 1, 16, 16, dtype=torch.float64)
    for b, target in enumerate([3, 1]):
        for mask in masks:
            with torch.no_grad():
                output = model(x[b:b + 1] * mask)
            weight = F.softmax(output, -1)[0, target] if score == "probability" else output[0, target]
            expected[b] += weight * mask
    expected /= 12 * 0.3
    assert torch.allclose(ours, expected, atol=1e-10)


def test_rise_is_deterministic_for_a_seed_and_respects_batch_size():
    model = strided_cnn(torch.float32)
    x = images(2, 16, torch.float32)
    with count_passes(model) as log:
        first = RISE(num_masks=20, grid_size=4, seed=7, batch_size=16)(model, x)
    assert log.forward_batches == [2, 16, 16, 8]  # targets, then 2 images x 20 masks
    second = RISE(num_masks=20, grid_size=4, seed=7, batch_size=16)(model, x)
    other = RISE(num_masks=20, grid_size=4, seed=8, batch_size=16)(model, x)
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_rise_presets():
    eclique, groupcam = RISE(preset="eclique"), RISE(preset="groupcam")
    assert (eclique.num_masks, eclique.grid_size, eclique.p, eclique.score) == (4000, 8, 0.5, "probability")
    assert (groupcam.num_masks, groupcam.grid_size, groupcam.p, groupcam.score) == (8000, 7, 0.1, "logit")
    assert RISE(preset="groupcam", num_masks=10).num_masks == 10
    with pytest.raises(ValueError, match="preset"):
        RISE(preset="paper")
    with pytest.raises(ValueError, match="p "):
        RISE(p=0.0)


# --------------------------------------------------------------------------------------------- CAMERAS
def cameras_reference(model, layer, x, targets, resolutions):
    """Literal CAMERAS (official CAMERAS.py), one image at a time; a scale counts if its top-1 is the target."""
    maps = []
    size = x.shape[-2:]
    for b in range(x.shape[0]):
        kept, first = [], None
        for index, resolution in enumerate(resolutions):
            image = x[b:b + 1] if index == 0 else F.interpolate(
                x[b:b + 1], size=(resolution, resolution), mode="bicubic", align_corners=False)
            activation, gradient, logits, target = layer_and_gradient(
                model, layer, image, targets[b] if first is None else first)
            first = target
            up = [F.interpolate(t, size=size, mode="bilinear", align_corners=False) for t in (activation, gradient)]
            if index == 0:
                original = up
            if int(logits.argmax()) == target:
                kept.append(up)
        kept = kept or [original]
        features = sum(k[0] for k in kept) / len(kept)
        gradients = sum(k[1] for k in kept) / len(kept)
        maps.append(F.relu((features * gradients).sum(1, keepdim=True)))
    return torch.cat(maps)


def test_cameras_matches_literal_reference_with_mixed_targets():
    model = strided_cnn()
    x = images(3)
    resolutions = [32, 40, 48, 56]
    _, _, keep, _ = multiscale_passes(model, x, model.features[3], [(r, r) for r in resolutions], MIXED_TARGETS,
                                      "bicubic")
    assert keep.T.tolist() == [[True, True, False, False], [False, False, True, True], [False] * 4]
    for targets in (None, MIXED_TARGETS):
        ours = CAMERAS(resolutions=resolutions, channel_chunk=3)(model, x, target=targets, normalize=False)
        reference = cameras_reference(model, model.features[3], x, targets or [None] * 3, resolutions)
        assert (reference.flatten(1).abs().sum(1) > 0).all()
        assert torch.allclose(ours, reference, atol=1e-10)


def test_cameras_pass_counts_and_layer_accumulation():
    model = strided_cnn()
    x = images(2)
    with count_passes(model) as log:
        at_layer = CAMERAS(resolutions=[32, 48], accumulate_at="layer")(model, x, normalize=False)
    assert log.forward_batches == [2, 2] and log.backward_batches == [2, 2]
    assert at_layer.shape == (2, 1, 32, 32)


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("make, message", [
    (lambda: GroupCAM(theta=101), "theta"),
    (lambda: GroupCAM(theta=-1), "theta"),
    (lambda: GroupCAM(groups=0), "groups"),
    (lambda: GroupCAM(denoise="pixel"), "denoise"),
    (lambda: GroupCAM(combine="sum"), "combine"),
    (lambda: ScoreCAM(batch_size=0), "batch_size"),
    (lambda: ScoreCAM(weights="cic"), "weights"),
    (lambda: CAMERAS(resolutions=[]), "resolutions"),
    (lambda: CAMERAS(resolutions=[224, 0]), "resolutions"),
    (lambda: CAMERAS(resolutions=[224, 224]), "repeat"),
])
def test_bad_parameters_raise_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_errors_leave_no_hooks_and_inputs_unchanged():
    model = strided_cnn()
    x = images(1)
    before = x.clone()
    with pytest.raises(ValueError, match="groups=9 exceeds the layer's 8 channels"):
        GroupCAM(groups=9)(model, x)
    with pytest.raises(ValueError, match="blur_kernel"):
        GroupCAM(groups=2)(model, images(1, 16))
    with pytest.raises(ValueError, match="unknown layer"):
        ScoreCAM(layer="features.9")(model, x)
    with pytest.raises(ValueError, match="out of range"):
        CAMERAS(resolutions=[32])(model, x, target=7)
    assert hooks_left(model) == 0
    assert torch.equal(x, before) and not x.requires_grad
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
