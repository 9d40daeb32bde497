"""Contracts of every registered method and metric, enumerated from the registries: a newly registered method runs
here with its defaults on the tiny CNN (unless listed below), a newly registered metric with its category's case.

Methods: maps ``[B,1,H,W]``, finite, in [0,1]; the model's modes, ``requires_grad`` flags, gradients, parameters,
buffers, public attributes and hooks (module, parameter and global) as found; the input untouched; target ``t_i``
of a batch gives the map of image ``i`` explained alone for ``t_i``; the same call twice gives the same maps.
Metrics: on a constructed case whose answer is known, every score of the good saliency (or explainer) beats the
bad one's in the declared direction; per-image metrics score each image as if alone.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xaiimg.compare import score_images
from xaiimg.methods import available_methods, get_method
from xaiimg.metrics import available_metrics, get_metric
from xaiimg.models.zoo import ModelSpec, attach_spec

# Cheap parameters for 16x16 inputs and 6-channel layers; a method not listed runs with its defaults.
CHEAP_PARAMS = {
    "cameras": dict(resolutions=(16, 24)),
    "group-cam": dict(groups=6, blur_kernel=3, blur_sigma=1.0),
    "integrated-gradients": dict(n_steps=3),
    "msg-cam": dict(groups=6, num_scales=2, zeta_max=8, blur_kernel=3, blur_sigma=1.0),
    "occlusion": dict(window=8, stride=4),
    "rise": dict(num_masks=16),
    "sliding-window": dict(wrapped="grad-cam", window=8, stride=8),
    "smoothgrad": dict(n_samples=3),
}
# Methods defined for timm ViTs only (they trace attention blocks); every other method runs on the tiny CNN.
VIT_METHODS = {"attention-grad-cam", "attention-rollout", "partial-lrp", "transformer-attribution", "vit-lrp"}
TARGETS = [3, 0, 4]
MAP_TOLERANCE = 1e-10  # float64 maps in [0,1]: batched and single passes differ only by summation order


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_vit() -> nn.Module:
    """timm ViT on 16x16 inputs: 4x4 patches, width 16, 2 blocks of 2 heads, 5 classes; seeded N(0, 0.3)
    parameters (LayerNorm scales around 1)."""
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, num_classes=5)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3
                            + float("norm" in name and name.endswith("weight")))
    return model.double()


def images(batch: int, size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# -------------------------------------------------------------------------------------------------- methods
def hook_state(model: nn.Module) -> list:
    """Ids of every registered hook: module hook dicts, parameter tensor hooks and torch's global module hooks."""
    from torch.nn.modules import module as torch_module

    module_hooks = [(name, attribute, list(hooks)) for name, module in model.named_modules()
                    for attribute, hooks in vars(module).items() if "hook" in attribute and isinstance(hooks, dict)]
    tensor_hooks = [(name, list(p._backward_hooks or {})) for name, p in model.named_parameters()]
    global_hooks = [(attribute, list(hooks)) for attribute, hooks in vars(torch_module).items()
                    if attribute.startswith("_global_") and "hook" in attribute and isinstance(hooks, dict)]
    return module_hooks + tensor_hooks + global_hooks


def public_flags(model: nn.Module) -> list:
    """Plain public attributes of every module (``training``, ``inplace``, timm's ``fused_attn``, ...)."""
    return [(name, attribute, value) for name, module in model.named_modules()
            for attribute, value in vars(module).items()
            if not attribute.startswith("_") and isinstance(value, (bool, int, float, str, type(None)))]


def prepare_state(model: nn.Module) -> None:
    """Training mode, one frozen parameter and one stored gradient: state an explainer must leave as it was."""
    model.train()
    parameters = list(model.parameters())
    parameters[1].requires_grad_(False)
    parameters[0].grad = torch.full_like(parameters[0], 0.5)


def assert_state_unchanged(model: nn.Module, before: dict) -> None:
    after = model.state_dict()
    assert before["state"].keys() == after.keys()
    assert all(torch.equal(before["state"][key], after[key]) for key in after), "parameters or buffers changed"
    assert [p.requires_grad for p in model.parameters()] == before["requires_grad"], "requires_grad flags changed"
    first, *others = model.parameters()
    assert first.grad is before["grad"] and all(p.grad is None for p in others), "gradients changed"
    assert torch.equal(first.grad, torch.full_like(first.grad, 0.5))
    assert public_flags(model) == before["flags"], "module attributes (training flags, ...) changed"
    assert hook_state(model) == before["hooks"], "hooks left registered"


@pytest.mark.parametrize("name", available_methods())
def test_method_contract(name, tiny_cnn):
    model = tiny_vit() if name in VIT_METHODS else tiny_cnn.double()
    explainer = get_method(name, **CHEAP_PARAMS.get(name, {}))
    x = images(len(TARGETS))
    x_before = x.clone()
    prepare_state(model)
    before = dict(state={key: value.clone() for key, value in model.state_dict().items()},
                  requires_grad=[p.requires_grad for p in model.parameters()], grad=next(model.parameters()).grad,
                  flags=public_flags(model), hooks=hook_state(model))

    maps = explainer(model, x, target=TARGETS)

    assert maps.shape == (len(TARGETS), 1, *x.shape[-2:]) and maps.dtype == x.dtype
    assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    assert_state_unchanged(model, before)
    assert torch.equal(x, x_before) and not x.requires_grad and x.grad is None, "input changed"
    for index, target in enumerate(TARGETS):
        alone = explainer(model, x[index:index + 1], target=target)
        torch.testing.assert_close(alone[0], maps[index], rtol=0, atol=MAP_TOLERANCE,
                                   msg=lambda message: f"image {index}, target {target}: {message}")
    assert torch.equal(explainer(model, x, target=TARGETS), maps), "not deterministic"


# -------------------------------------------------------------------------------------------------- metrics
SIZE = 32
SPEC = ModelSpec(name="contract", input_size=SIZE, resize_size=SIZE, interpolation="bilinear", mean=(0.5,) * 3,
                 std=(0.5,) * 3, default_layer="", layer_reason="", class_names=["evidence", "rest"])


class RegionEvidenceModel(nn.Module):
    """Class 0 logit ``10 * (e - 1/2)``, class 1 logit 0, where the evidence ``e`` is the mean over a fixed region
    of the positive part of channel 0. Zeros (normalised or in [0,1]) and blurs of :func:`evidence_images` remove
    the evidence of a pixel, so the region itself is the true explanation."""

    def __init__(self, region: torch.Tensor):
        super().__init__()
        self.register_buffer("region", region)

    def forward(self, x):
        evidence = (F.relu(x[:, 0]) * self.region).flatten(1).sum(1) / self.region.sum()
        return torch.stack([10 * (evidence - 0.5), torch.zeros_like(evidence)], dim=1)


def scattered_region(fraction: float = 0.25, seed: int = 2) -> torch.Tensor:
    region = torch.zeros(SIZE * SIZE, dtype=torch.float64)
    region[torch.randperm(SIZE * SIZE, generator=torch.Generator().manual_seed(seed))[: int(fraction * SIZE ** 2)]] = 1
    return region.view(SIZE, SIZE)


def evidence_images(region: torch.Tensor, batch: int = 2) -> torch.Tensor:
    """Channel 0 is 1 on the region and in [-1, -1/2] elsewhere (evidence 1, class 0); the others are noise."""
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(batch, 3, SIZE, SIZE, generator=generator, dtype=torch.float64) * 2 - 1
    x[:, 0] = torch.where(region.bool(), 1.0, -0.5 - x[:, 0].abs() / 2)
    return x


def random_maps(batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(4), dtype=torch.float64)


def faithfulness_case(tiny_cnn):
    """The model's evidence region (with a small random tie-break) against random maps."""
    region = scattered_region()
    good = region.expand(2, 1, SIZE, SIZE) + 0.01 * random_maps()
    return attach_spec(RegionEvidenceModel(region), SPEC), evidence_images(region), good, random_maps(), {}


def localisation_case(tiny_cnn):
    """Maps peaking inside the ground-truth square (the square plus a bump at its centre) against the same maps
    mirrored to the opposite corner, more than the pointing game's 15 px tolerance away."""
    masks = torch.zeros(2, SIZE, SIZE, dtype=torch.bool)
    masks[:, 2:10, 2:10] = True
    rows = torch.arange(SIZE, dtype=torch.float64).view(-1, 1)
    cols = torch.arange(SIZE, dtype=torch.float64).view(1, -1)
    bump = torch.exp(-((rows - 5.5) ** 2 + (cols - 5.5) ** 2) / 8)
    good = (masks.double() + 0.5 * bump).unsqueeze(1)
    return tiny_cnn, images(2, size=SIZE), good, good.flip(-2, -1), dict(masks=masks)


def input_edges(model, x, targets):
    """A model-independent explainer (Adebayo et al.'s edge-detector control): the input's magnitude."""
    return x.abs().sum(dim=1, keepdim=True)


def sanity_case(tiny_cnn):
    """The gradient, which depends on the weights, against a map of the input alone."""
    return tiny_cnn.double(), images(2), "gradient", input_edges, {}


def robustness_case(tiny_cnn):
    """A map that ignores input perturbations against one that copies them."""
    fixed = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    return tiny_cnn.double(), images(2), lambda model, x, targets: fixed.expand(len(x), -1, -1, -1), input_edges, {}


CASES = {"faithfulness": faithfulness_case, "localisation": localisation_case, "sanity": sanity_case,
         "robustness": robustness_case}
# Options that make every score defined on the cases (otherwise NaN) and keep the runs short.
METRIC_OPTIONS = {"pointing-game": dict(difficult=[True, False]), "max-sensitivity": dict(samples=3, attack="fgsm")}


@pytest.mark.parametrize("name", available_metrics())
def test_metric_directions(name, tiny_cnn):
    metric = get_metric(name)
    assert metric.category in CASES, f"no direction case for category {metric.category!r}: add one to CASES"
    model, x, good, bad, options = CASES[metric.category](tiny_cnn)
    options = {**options, **METRIC_OPTIONS.get(name, {})}
    x_before = x.clone()
    scores = {}
    for label, saliency in (("good", good), ("bad", bad)):
        saliency_before = saliency.clone() if isinstance(saliency, torch.Tensor) else None
        result = metric(model, x, saliency, None, **options)
        assert isinstance(result, metric.result) and tuple(result.summary()) == metric.scores
        assert torch.equal(x, x_before) and (saliency_before is None or torch.equal(saliency, saliency_before))
        scores[label] = result.summary()
    for score, higher_is_better in metric.higher_is_better.items():
        good_score, bad_score = scores["good"][score], scores["bad"][score]
        assert math.isfinite(good_score) and math.isfinite(bad_score), f"{score} undefined on the case"
        assert (good_score > bad_score) == higher_is_better and good_score != bad_score, \
            f"{score}: good {good_score} vs bad {bad_score}, higher_is_better={higher_is_better}"


@pytest.mark.parametrize("name", [name for name in available_metrics() if get_metric(name).per_image])
def test_per_image_metric_scores_each_image_alone(name, tiny_cnn):
    model, x, saliency, _, options = CASES[get_metric(name).category](tiny_cnn)
    per_image = score_images(name, model, x, saliency, **options)
    summary = get_metric(name)(model, x, saliency, **options).summary()
    assert list(per_image) == list(summary)
    for score, values in per_image.items():
        assert len(values) == len(x) and sum(values) / len(values) == pytest.approx(summary[score], abs=1e-12)
    for index in range(len(x)):
        alone = score_images(name, model, x[index:index + 1], saliency[index:index + 1], **options)
        assert alone == {score: [values[index]] for score, values in per_image.items()}
