"""LRP cross-checks against zennit 0.5.1 (every composite) and Captum 0.9.0 (epsilon-LRP).

Convention mapping (xaiimg -> zennit):
- relevance at the output: xaiimg starts from the target logit (one-hot gradient, ``R_out = logit``); zennit's
  attribution is the input gradient for ``grad_outputs``, so it gets ``one_hot * logit``.
- composites: ``epsilon-gamma-box`` = ``EpsilonGammaBox``, ``epsilon-plus`` = ``EpsilonPlus``,
  ``epsilon-plus-flat`` = ``EpsilonPlusFlat``, ``epsilon-alpha2-beta1(-flat)`` = ``EpsilonAlpha2Beta1(Flat)``;
  ``epsilon`` / ``epsilon-plus-box`` / ``alpha1-beta0`` are zennit layer-map composites with the same rules.
- BatchNorm: zennit 0.5.1's ``MergeBatchNorm`` leaves the BatchNorm computing ``x / sqrt(1 + eps)`` (it sets
  ``running_var = 1``); xaiimg's merged BatchNorm is the exact identity. The zennit side here sets
  ``running_var = 1 - eps`` so that both explain the same function.
- residual additions: zennit needs canonizers that route ``a + b`` through a ``Sum`` module with its ``Norm``
  rule, ``R_a = a R / (a + b + 1e-6 sign)``; xaiimg splits exactly in proportion (the gradient of the sum, no
  stabiliser). The zennit side uses a ``Sum`` stabiliser of 1e-30 (it differs by up to 1e-5 absolute on ResNet18
  with 1e-6). For timm's EfficientNet-Lite blocks zennit has no canonizer; :class:`TimmSkipCanonizer` below is
  the equivalent of its ``ResNetBasicBlockCanonizer``, and the BatchNorm merges are named explicitly
  (timm's ``BatchNormAct2d`` is no leaf, so zennit's sequential merge would not find them).

Captum's ``EpsilonRule`` stabilises with ``z + eps * sign(z)``, ``sign(0) = 1`` -- the same as xaiimg; Captum also
applies it to max-pooling (``R = x_max R / (x_max + eps)``) where xaiimg passes the relevance to the maximum
unchanged, which differs by ``eps / x_max`` relative (here 1e-9).

VGG16 and ResNet18 are randomly initialised (no weights offline; the test is about equal propagation, not
about meaningful maps) and see 32x32 inputs; ResNet18's BatchNorms get random non-trivial statistics.
VGG16/ResNet18/Captum checks run in float64 so that the tolerance tests the rules, not rounding.
EfficientNet-Lite0 has its real weights and sees a real image at 224 in float32.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from xaiimg.methods.lrp import LRP

zennit = pytest.importorskip("zennit")
from zennit.canonizers import (  # noqa: E402
    AttributeCanonizer,
    CompositeCanonizer,
    MergeBatchNorm,
    NamedMergeBatchNorm,
    SequentialMergeBatchNorm,  # noqa: E402
)
from zennit.composites import (  # noqa: E402
    EpsilonAlpha2Beta1,
    EpsilonAlpha2Beta1Flat,
    EpsilonGammaBox,
    EpsilonPlus,
    EpsilonPlusFlat,
    LayerMapComposite,
    SpecialFirstLayerMapComposite,
    layer_map_base,
)
from zennit.layer import Sum  # noqa: E402
from zennit.rules import AlphaBeta, Epsilon, Norm, ZBox, ZPlus  # noqa: E402
from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer  # noqa: E402
from zennit.types import Convolution  # noqa: E402
from zennit.types import Linear as AnyLinear  # noqa: E402

DT = torch.float64
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406], dtype=DT).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225], dtype=DT).view(1, 3, 1, 1)
LOW, HIGH = (0 - IMAGENET_MEAN) / IMAGENET_STD, (1 - IMAGENET_MEAN) / IMAGENET_STD


def exact_sum_map():
    return [(Sum, Norm(stabilizer=1e-30))]


def zennit_composite(name: str, low, high, canonizers=()):
    """The zennit composite equal to xaiimg's composite ``name``."""
    canonizers = list(canonizers)
    named = {
        "epsilon-gamma-box": lambda: EpsilonGammaBox(low=low, high=high, layer_map=exact_sum_map(),
                                                     canonizers=canonizers),
        "epsilon-plus": lambda: EpsilonPlus(layer_map=exact_sum_map(), canonizers=canonizers),
        "epsilon-plus-flat": lambda: EpsilonPlusFlat(layer_map=exact_sum_map(), canonizers=canonizers),
        "epsilon-alpha2-beta1": lambda: EpsilonAlpha2Beta1(layer_map=exact_sum_map(), canonizers=canonizers),
        "epsilon-alpha2-beta1-flat": lambda: EpsilonAlpha2Beta1Flat(layer_map=exact_sum_map(),
                                                                    canonizers=canonizers),
        "epsilon": lambda: LayerMapComposite(exact_sum_map() + layer_map_base() + [(AnyLinear, Epsilon())],
                                             canonizers=canonizers),
        "epsilon-plus-box": lambda: SpecialFirstLayerMapComposite(
            exact_sum_map() + layer_map_base() + [(Convolution, ZPlus()), (nn.Linear, Epsilon())],
            [(Convolution, ZBox(low, high))], canonizers=canonizers),
        "alpha1-beta0": lambda: LayerMapComposite(
            exact_sum_map() + layer_map_base() + [(AnyLinear, AlphaBeta(alpha=1.0, beta=0.0))],
            canonizers=canonizers),
    }
    return named[name]()


def zennit_relevance(model, composite, x, targets):
    x = x.clone().requires_grad_()
    with composite.context(model) as modified:
        logits = modified(x)
        upper = torch.zeros_like(logits).scatter_(1, targets[:, None], 1.0) * logits.detach()
        relevance, = torch.autograd.grad(logits, x, upper)
    return relevance


class ExactMerge(MergeBatchNorm):
    """zennit's merge, but the merged BatchNorm computes the identity (``running_var = 1 - eps``)."""

    @staticmethod
    def merge_batch_norm(modules, batch_norm):
        MergeBatchNorm.merge_batch_norm(modules, batch_norm)
        batch_norm.running_var.data = batch_norm.running_var.data - batch_norm.eps


class ExactSequentialMerge(ExactMerge, SequentialMergeBatchNorm):
    pass


class ExactNamedMerge(ExactMerge, NamedMergeBatchNorm):
    pass


def assert_same_relevance(ours, theirs):
    """Equal to 1e-6 of the largest relevance (tighter than the atol 1e-5 asked for; float64 reaches ~1e-12)."""
    scale = theirs.abs().max()
    assert scale > 0 and theirs.sum().abs() > 0  # a non-trivial map
    torch.testing.assert_close(ours / scale, theirs / scale, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------------ VGG16
@pytest.fixture(scope="module")
def vgg16():
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.vgg16(weights=None).to(DT).eval()  # random init: a propagation test


# every composite is checked on VGG16 or ResNet18 (VGG16's 120M-parameter classifier makes each run costly)
@pytest.mark.parametrize("name", ["epsilon", "epsilon-plus-flat", "epsilon-gamma-box", "epsilon-alpha2-beta1"])
def test_vgg16_matches_zennit(vgg16, name):
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=DT)
    targets = torch.tensor([7])
    ours, _ = LRP(name, low=LOW, high=HIGH).relevance(vgg16, x, targets)
    theirs = zennit_relevance(vgg16, zennit_composite(name, LOW, HIGH), x, targets)
    assert_same_relevance(ours, theirs)


# --------------------------------------------------------------------------------------------- ResNet18
@pytest.fixture(scope="module")
def resnet18():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).to(DT).eval()  # random init: a propagation test
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator, dtype=DT) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator, dtype=DT) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator, dtype=DT) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator, dtype=DT) * 0.1)
    return model


@pytest.mark.parametrize("name", ["epsilon", "epsilon-plus", "epsilon-plus-box", "epsilon-gamma-box",
                                  "epsilon-alpha2-beta1-flat", "alpha1-beta0"])
def test_resnet18_matches_zennit(resnet18, name):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2), dtype=DT)
    targets = torch.tensor([3, 500])
    canonizer = CompositeCanonizer([ExactSequentialMerge(), ResNetBottleneckCanonizer(), ResNetBasicBlockCanonizer()])
    ours, _ = LRP(name, low=LOW, high=HIGH).relevance(resnet18, x, targets)
    theirs = zennit_relevance(resnet18, zennit_composite(name, LOW, HIGH, [canonizer]), x, targets)
    assert_same_relevance(ours, theirs)


# -------------------------------------------------------------------------------------- EfficientNet-Lite0
class TimmSkipCanonizer(AttributeCanonizer):
    """zennit-side canonizer for timm's ``InvertedResidual`` / ``DepthwiseSeparableConv`` with a skip: the
    residual addition goes through a zennit ``Sum`` module (as zennit's ResNet canonizers)."""

    def __init__(self):
        super().__init__(self._attribute_map)

    @staticmethod
    def _attribute_map(name, module):
        from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual

        if isinstance(module, InvertedResidual) and module.has_skip:
            forward = TimmSkipCanonizer.inverted_residual
        elif isinstance(module, DepthwiseSeparableConv) and module.has_skip:
            forward = TimmSkipCanonizer.depthwise_separable
        else:
            return None
        return {"forward": forward.__get__(module), "canonizer_sum": Sum()}

    @staticmethod
    def inverted_residual(self, x):
        out = self.bn2(self.conv_dw(self.bn1(self.conv_pw(x))))
        out = self.bn3(self.conv_pwl(self.se(self.aa(out))))
        return self.canonizer_sum(torch.stack([x, self.drop_path(out)], dim=-1))

    @staticmethod
    def depthwise_separable(self, x):
        out = self.bn2(self.conv_pw(self.se(self.aa(self.bn1(self.conv_dw(x))))))
        return self.canonizer_sum(torch.stack([x, self.drop_path(out)], dim=-1))


def lite_batch_norm_names(model) -> list[tuple[tuple[str], str]]:
    """Which conv each BatchNorm(Act2d) of timm's EfficientNet-Lite follows, read from the block definitions."""
    from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual

    pairs = [(("conv_stem",), "bn1"), (("conv_head",), "bn2")]
    order = {DepthwiseSeparableConv: [("conv_dw", "bn1"), ("conv_pw", "bn2")],
             InvertedResidual: [("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")]}
    for name, module in model.named_modules():
        for conv, norm in order.get(type(module), []):
            pairs.append(((f"{name}.{conv}",), f"{name}.{norm}"))
    return pairs


def test_lite0_matches_zennit(lite0, lite0_batch):
    """Real weights, a real image at 224, float32 (float64 depthwise convolutions are very slow on CPU), so the
    tolerance is relative to float32: 1e-5 of the largest relevance (measured: ~1e-6)."""
    lite0 = copy.deepcopy(lite0)  # zennit's canonizers edit parameters in place: keep the shared fixture safe
    x = lite0_batch[:1]
    low, high = lite0.spec.from_unit_range(torch.zeros(1, 3, 1, 1)), lite0.spec.from_unit_range(torch.ones(1, 3, 1, 1))
    targets = torch.tensor([282])  # tiger cat: Lite0's top-1 for chelsea
    canonizer = CompositeCanonizer([ExactNamedMerge(lite_batch_norm_names(lite0)), TimmSkipCanonizer()])
    ours, logits = LRP("epsilon-gamma-box").relevance(lite0, x, targets)  # bounds from model.spec
    assert logits.argmax(1).item() == 282
    theirs = zennit_relevance(lite0, zennit_composite("epsilon-gamma-box", low, high, [canonizer]), x, targets)
    scale = theirs.abs().max()
    assert scale > 0
    torch.testing.assert_close(ours / scale, theirs / scale, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------ Captum
class CaptumVGG(nn.Module):
    """VGG-like net made of Captum-supported layers only (functional flatten, non-inplace ReLU)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.conv1, self.relu1, self.pool1 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        self.conv2, self.relu2, self.pool2 = nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2)
        self.fc1, self.relu3, self.drop, self.fc2 = nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10)

    def forward(self, x):
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc2(self.drop(self.relu3(self.fc1(torch.flatten(x, 1)))))


@pytest.mark.parametrize("epsilon", [1e-9, 0.05])
def test_epsilon_matches_captum(epsilon):
    from captum.attr import LRP as CaptumLRP
    from captum.attr._utils.lrp_rules import EpsilonRule

    model = CaptumVGG().to(DT).eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5), dtype=DT)
    targets = [1, 6]
    ours, _ = LRP("epsilon", epsilon=epsilon, stabilizer=epsilon).relevance(model, x, targets)
    reference = copy.deepcopy(model)
    for module in (reference.conv1, reference.conv2, reference.pool2, reference.fc1, reference.fc2):
        module.rule = EpsilonRule(epsilon=epsilon)
    reference.pool1.rule = EpsilonRule(epsilon=1e-9)  # max-pooling: ~winner-take-all (see the module docstring)
    theirs = CaptumLRP(reference).attribute(x.clone(), target=targets)
    assert theirs.abs().max() > 0
    assert (ours - theirs).abs().max() <= 1e-5 * theirs.abs().max()  # 1e-5 relative
