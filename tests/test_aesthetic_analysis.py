"""The paper-000 analyses: subject mass share, CAM with/without attention, stage feature maps, LRP contract."""
from __future__ import annotations

import math

import pytest
import torch
from aesthetic_nets import TinyBackbone

from xaiimg.methods import Explainer, available_methods, get_method
from xaiimg.models.aesthetic import AestheticModel, attention_modules
from xaiimg.nn import resolve_targets, select_scores
from xaiimg.ops import minmax_normalize, upsample
from xaiimg.studies.aesthetic import (
    cam_with_without_attention,
    class_activation_maps,
    feature_maps_by_stage,
    lrp_through_attention,
    positive_relevance,
    subject_focus_study,
    subject_mass_share,
)


def tiny(attention=True, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    model = AestheticModel(TinyBackbone(), attention=attention)
    with torch.no_grad():
        model.classifier.bias.zero_()
        if attention:
            model.aggregate.position.gamma.fill_(0.8)
            model.aggregate.channel.beta.fill_(0.8)
            model.aggregate.position.value.bias.zero_()
    return model.to(dtype).eval()


# ------------------------------------------------------------------------------------ subject mass share
def test_subject_mass_share_golden_values():
    saliency = torch.tensor([[[[1.0, 3.0], [0.0, 4.0]]], [[[0.5, 0.5], [0.5, 0.5]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    masks = torch.tensor([[[[1, 0], [0, 1]]], [[[1, 0], [0, 0]]], [[[1, 1], [0, 0]]]], dtype=torch.bool)
    share = subject_mass_share(saliency, masks)
    assert share[:2].tolist() == [pytest.approx(5 / 8), pytest.approx(1 / 4)]   # uniform map -> mask area
    assert math.isnan(share[2])                                                # no mass: undefined
    assert torch.equal(subject_mass_share(saliency[:2, 0], masks[:2, 0].int()), share[:2])


@pytest.mark.parametrize("saliency,masks,message", [
    (torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 3, dtype=torch.bool), "same shape"),
    (-torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2, dtype=torch.bool), "negative"),
    (torch.ones(1, 1, 2, 2), torch.full((1, 1, 2, 2), 2), "only 0 and 1"),
    (torch.full((1, 1, 2, 2), float("nan")), torch.ones(1, 1, 2, 2, dtype=torch.bool), "finite"),
])
def test_subject_mass_share_rejects_bad_input(saliency, masks, message):
    with pytest.raises(ValueError, match=message):
        subject_mass_share(saliency, masks)


# ---------------------------------------------------------------------------------------------- CAM
def test_cam_matches_literal_definition_and_grad_cam_for_the_score():
    model = tiny(dtype=torch.float64)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    features = model.aggregate(model.backbone(x))                     # [2,32,8,8]
    weights = model.classifier.weight
    literal = torch.stack([sum(weights[t, k] * features[b, k] for k in range(features.shape[1]))
                           for b, t in enumerate([3, 7])]).unsqueeze(1)
    expected = minmax_normalize(upsample(literal, (32, 32)))
    assert torch.allclose(class_activation_maps(model, x, target=[3, 7]), expected, atol=1e-10)
    # "score": Grad-CAM of the mean score at the aggregated map (equal to CAM with linearised weights)
    leaf = features.detach().requires_grad_(True)
    probabilities = model.classifier(model.pool(leaf).flatten(1)).softmax(-1)
    score = (probabilities * torch.arange(1, 11, dtype=torch.float64)).sum()
    (gradient,) = torch.autograd.grad(score, leaf)
    grad_cam = (gradient.mean(dim=(2, 3), keepdim=True) * leaf).sum(1, keepdim=True)
    assert torch.allclose(class_activation_maps(model, x, target="score"),
                          minmax_normalize(upsample(grad_cam, (32, 32))), atol=1e-10)
    predicted = model(x).argmax(1).tolist()
    assert torch.allclose(class_activation_maps(model, x, target=None), class_activation_maps(model, x, predicted))
    with pytest.raises(ValueError, match="'score'"):
        class_activation_maps(model, x, target="mean")


def test_cam_with_without_attention_and_focus_study():
    attention, plain = tiny(True), tiny(False, seed=1)
    x = torch.randn(4, 3, 32, 32)
    maps = cam_with_without_attention(attention, plain, x)
    assert set(maps) == {"attention", "plain"} and all(m.shape == (4, 1, 32, 32) for m in maps.values())
    assert all(m.min() >= 0 and m.max() <= 1 for m in maps.values())
    with pytest.raises(ValueError, match="attention first"):
        cam_with_without_attention(plain, attention, x)
    masks = torch.zeros(4, 1, 32, 32, dtype=torch.bool)
    masks[:, :, 8:20, 10:24] = True
    study = subject_focus_study(attention, plain, x, masks, batch_size=3)
    for name in ("attention", "plain"):
        expected = subject_mass_share(maps[name], masks)
        assert torch.allclose(study[name]["shares"], expected)
        assert study[name]["mean"] == pytest.approx(float(expected.mean()))
    assert study["area"] == pytest.approx(12 * 14 / 32**2)
    difference = study["attention"]["shares"] - study["plain"]["shares"]
    assert study["difference"]["mean"] == pytest.approx(float(difference.mean()))
    assert study["difference"]["attention_higher"] == int((difference > 0).sum())
    assert 0 <= study["difference"]["wilcoxon_p"] <= 1


def test_focus_study_of_equivalent_models_shows_no_difference():
    """Sum aggregation with gamma = beta = 0 doubles the backbone map: same CAM as the plain model."""
    torch.manual_seed(0)
    attention = AestheticModel(TinyBackbone(), attention=True, aggregation="sum").eval()
    plain = AestheticModel(TinyBackbone(), attention=False).eval()
    plain.load_state_dict({k: v for k, v in attention.state_dict().items() if not k.startswith("aggregate.")})
    x = torch.randn(3, 3, 32, 32)
    masks = torch.zeros(3, 1, 32, 32, dtype=torch.bool)
    masks[:, :, :16] = True
    study = subject_focus_study(attention, plain, x, masks, target=4)
    assert torch.equal(study["attention"]["shares"], study["plain"]["shares"])   # scaling by 2 is exact
    assert study["difference"] == {"mean": 0.0, "attention_higher": 0, "count": 3, "wilcoxon_p": 1.0}


# -------------------------------------------------------------------------------------- feature maps
def test_feature_maps_by_stage_upsample_projection():
    model = tiny()
    x = torch.randn(2, 3, 32, 32)
    stages = {"shallow": "backbone.features.1", "deep": "aggregate"}
    result = feature_maps_by_stage(model, x, stages, projection="upsample")
    assert result.projection == "upsample"
    shallow = model.backbone.features[:2](x)
    deep = model.aggregate(model.backbone(x))
    for name, activation in (("shallow", shallow), ("deep", deep)):
        channels = activation.amax(dim=(2, 3)).argmax(1)
        assert torch.equal(result.channels[name], channels)
        chosen = torch.stack([activation[b, c] for b, c in enumerate(channels.tolist())]).unsqueeze(1)
        assert torch.allclose(result.maps[name], minmax_normalize(upsample(chosen, (32, 32))), atol=1e-6)
    with pytest.raises(ValueError, match="projection"):
        feature_maps_by_stage(model, x, stages, projection="guided")
    with pytest.raises(ValueError, match="unknown layer"):
        feature_maps_by_stage(model, x, {"x": "backbone.nothing"})


def test_feature_maps_deconvnet_projection():
    model = tiny()
    x = torch.randn(2, 3, 32, 32)
    stages = {"shallow": "backbone.features.1", "deep": "aggregate"}
    result = feature_maps_by_stage(model, x, stages, projection="auto")
    assert result.projection == ("deconvnet" if "deconvnet" in available_methods() else "upsample")
    deconvnet = feature_maps_by_stage(model, x, stages, projection="deconvnet")
    for name, layer in stages.items():
        expected = get_method("deconvnet", layer=layer)(model, x)   # projects the layer's peak activation
        assert torch.allclose(deconvnet.maps[name], expected)
        assert deconvnet.maps[name].shape == (2, 1, 32, 32)
    # the projection of a shallow unit is confined to its receptive field (3x3 conv, stride 2: 3x3 pixels)
    peak = model.backbone.features[:2](x)[0].flatten().argmax().item() % (16 * 16)
    row, col = divmod(peak, 16)
    support = deconvnet.maps["shallow"][0, 0] > 0
    rows, cols = support.nonzero(as_tuple=True)
    assert rows.min() >= 2 * row - 1 and rows.max() <= 2 * row + 1
    assert cols.min() >= 2 * col - 1 and cols.max() <= 2 * col + 1


# ---------------------------------------------------------------------------------------------- LRP
class RecordingGradientTimesInput(Explainer):
    """Gradient x input summed over channels, recording the attention flags it saw (a stand-in for LRP: for a
    bias-free ReLU network with constant attention weights, sum of gradient x input equals the logit)."""

    def attribute(self, model, x, target=None):
        self.flags = [m.detach_attention for m in attention_modules(model)]
        x = x.clone().requires_grad_(True)
        logits = model(x)
        self.targets = resolve_targets(target, logits)
        selected = select_scores(logits, self.targets)
        (gradient,) = torch.autograd.grad(selected.sum(), x)
        self.selected = selected.detach()
        return (gradient * x).sum(1, keepdim=True)


def test_lrp_through_attention_detaches_and_conserves():
    model = tiny(dtype=torch.float64)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    explainer = RecordingGradientTimesInput()
    relevance = lrp_through_attention(model, x, target=[2, 5], method=explainer)
    assert explainer.flags == [True, True]
    assert [m.detach_attention for m in attention_modules(model)] == [False, False]
    assert torch.allclose(relevance.flatten(1).sum(1), explainer.selected, rtol=1e-9)  # conservation
    plain_relevance = explainer(model, x, target=[2, 5], normalize=False)              # softmax in the graph
    assert not torch.allclose(plain_relevance.flatten(1).sum(1), explainer.selected, rtol=1e-3)
    score_relevance = lrp_through_attention(model, x, method=explainer, explain_score=True)
    assert score_relevance.shape == (2, 1, 32, 32) and explainer.targets.tolist() == [0, 0]
    assert torch.allclose(explainer.selected, model.score(x).detach())
    with pytest.raises(ValueError, match="explain_score"):
        lrp_through_attention(model, x, target=3, method=explainer, explain_score=True)
    # the project's LRP (xaiimg.methods.lrp) through the attention model: relevance is conserved
    lrp = lrp_through_attention(model, x, target=[2, 5], method="lrp-epsilon")
    with torch.no_grad():
        logits = model(x)[[0, 1], [2, 5]]
    assert torch.allclose(lrp.flatten(1).sum(1), logits, rtol=0, atol=1e-5)  # epsilon absorbs ~1e-6


def test_positive_relevance_keeps_the_positive_part_scaled_to_one():
    relevance = torch.tensor([[[[-2.0, 1.0], [4.0, 0.5]]], [[[-1.0, -3.0], [0.0, -0.5]]]])
    expected = torch.tensor([[[[0.0, 0.25], [1.0, 0.125]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    torch.testing.assert_close(positive_relevance(relevance), expected)
