"""The fused LRP rules (one autograd Function per layer, :class:`xaiimg.methods.lrp.rules._Fused`) against the
hook-based reference implementations of the same rules (``_FusedRule.fused = False``), which the matrix-form
tests of ``test_lrp.py`` and the zennit cross-checks of ``test_lrp_reference.py`` pin down independently.

The model is a small MobileNet-like net with everything the fused path has special cases for: timm's
``Conv2dSame`` (asymmetric padding) on the signed model input, BatchNorms merged by the canonizer, ReLU6
(outputs gated: the gamma rule's single-transpose path), a depthwise conv (grouped transposes), a linear
bottleneck with a signed output (the gamma rule's two-transpose path), an expansion conv on a signed input (the
stacked ``[x+, x-]`` product), a strided depthwise ``Conv2dSame``, a residual sum, a ``padding="same"`` conv and
a dense head.
"""
from __future__ import annotations

import pytest
import torch
from timm.layers import Conv2dSame
from torch import nn

from xaiimg.methods.lrp import COMPOSITES, LRP, Gamma, ZPlus
from xaiimg.methods.lrp import rules as lrp_rules


class TinyMobile(nn.Module):
    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Sequential(Conv2dSame(3, 8, 3, stride=2, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(8, 6, 1, bias=False), nn.BatchNorm2d(6))  # linear bottleneck
        self.expand = nn.Sequential(nn.Conv2d(6, 12, 1, bias=False), nn.BatchNorm2d(12), nn.ReLU6())  # signed in
        self.dw2 = nn.Sequential(Conv2dSame(12, 12, 3, stride=2, groups=12, bias=False), nn.BatchNorm2d(12),
                                 nn.ReLU6())
        self.project2 = nn.Sequential(nn.Conv2d(12, 6, 1, bias=False), nn.BatchNorm2d(6))
        self.mix = nn.Conv2d(6, 6, 3, padding="same")  # signed input and output, with a bias
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(6, 5)
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    n = module.num_features
                    module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                    module.bias.copy_(torch.randn(n, generator=generator) * 0.3)
                    module.running_mean.copy_(torch.randn(n, generator=generator) * 0.3)
                    module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)

    def forward(self, x):
        x = self.project(self.dw(self.stem(x)))
        x = self.project2(self.dw2(self.expand(x))) + x[:, :, ::2, ::2]
        x = self.mix(x) + x
        return self.head(self.pool(x).flatten(1))


@pytest.fixture
def reference_rules(monkeypatch):
    """A context that switches every fused rule to its hook-based reference implementation."""
    def use_reference():
        monkeypatch.setattr(lrp_rules._FusedRule, "fused", False)
    return use_reference


def fused_calls(monkeypatch) -> list:
    calls = []
    original = lrp_rules._Fused.forward

    def counting(ctx, x, rule, module):
        calls.append(type(rule).__name__)
        return original(ctx, x, rule, module)

    monkeypatch.setattr(lrp_rules._Fused, "forward", staticmethod(counting))
    return calls


@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("name", COMPOSITES)
def test_fused_rules_equal_the_reference_on_a_tiny_mobile_net(name, dtype, tolerance, monkeypatch, reference_rules):
    model = TinyMobile().to(dtype).eval()
    x = torch.randn(3, 3, 17, 17, generator=torch.Generator().manual_seed(2), dtype=dtype)  # odd: asymmetric pads
    targets = torch.tensor([0, 3, 4])
    calls = fused_calls(monkeypatch)
    fused, logits = LRP(name, low=-2.5, high=2.5).relevance(model, x, targets)
    expected_fused = {"epsilon-plus": 7, "epsilon-plus-box": 7, "epsilon-plus-flat": 6, "epsilon-gamma-box": 7,
                      "alpha1-beta0": 8}.get(name, 0)  # the 7 convs (flat: 6; alpha1-beta0: and the head)
    assert len(calls) == expected_fused
    reference_rules()
    reference, reference_logits = LRP(name, low=-2.5, high=2.5).relevance(model, x, targets)
    torch.testing.assert_close(logits, reference_logits, rtol=0, atol=tolerance)
    scale = reference.abs().max()
    assert scale > 0 and torch.isfinite(fused).all()
    torch.testing.assert_close(fused / scale, reference / scale, rtol=0, atol=tolerance)


def gated_case(kind: str, signed: bool):
    """A layer, its input, and an upper density that is 0 wherever the output is <= 0 (a ReLU follows)."""
    torch.manual_seed(5)
    layer, shape = {"conv": (nn.Conv2d(4, 6, 3, padding=1), (4, 7, 7)),
                    "depthwise": (nn.Conv2d(4, 4, 3, padding=1, groups=4), (4, 7, 7)),
                    "conv-same": (Conv2dSame(4, 6, 3, stride=2), (4, 7, 7)),
                    "linear": (nn.Linear(6, 5), (6,))}[kind]
    layer = layer.double()
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    if not signed:
        x = x.clamp(min=0)
    with torch.no_grad():
        z = layer(x)
    c_out = torch.randn(z.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64) * (z > 0)
    return layer, x, c_out


def layer_relevance(rule, layer, x, c_out):
    x = x.clone().requires_grad_()
    handle = rule.register(layer, "layer")
    try:
        gradient, = torch.autograd.grad(layer(x), x, c_out)
    finally:
        handle.remove()
    assert "forward" not in layer.__dict__
    return x * gradient


@pytest.mark.parametrize("kind", ["conv", "depthwise", "conv-same", "linear"])
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("rule", [Gamma(0.25), Gamma(1.0), ZPlus()], ids=repr)
def test_gated_upper_density_equals_the_reference(kind, signed, rule, monkeypatch, reference_rules):
    """Gamma on a non-negative input needs one transpose here (``g_neg = 0``) instead of two."""
    layer, x, c_out = gated_case(kind, signed)
    calls, transposes = fused_calls(monkeypatch), []
    original = lrp_rules._AffineCall.transpose
    monkeypatch.setattr(lrp_rules._AffineCall, "transpose",
                        lambda self, *args, **kwargs: transposes.append(1) or original(self, *args, **kwargs))
    fused = layer_relevance(rule, layer, x, c_out)
    assert len(calls) == 1 and len(transposes) == (2 if signed and isinstance(rule, Gamma) else 1)
    reference_rules()
    reference = layer_relevance(rule, layer, x, c_out)
    assert len(calls) == 1 and reference.abs().max() > 1e-3
    torch.testing.assert_close(fused, reference, rtol=0, atol=1e-12)


def test_ungated_gamma_takes_both_transposes(monkeypatch):
    layer, x, c_out = gated_case("conv", signed=False)
    c_out = torch.randn(c_out.shape, generator=torch.Generator().manual_seed(8), dtype=c_out.dtype)
    transposes = []
    original = lrp_rules._AffineCall.transpose
    monkeypatch.setattr(lrp_rules._AffineCall, "transpose",
                        lambda self, *args, **kwargs: transposes.append(1) or original(self, *args, **kwargs))
    layer_relevance(Gamma(), layer, x, c_out)
    assert len(transposes) == 2


def test_unsupported_convolutions_keep_the_hook_based_path(monkeypatch):
    layer = nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect").double()
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64).requires_grad_()
    calls = fused_calls(monkeypatch)
    handle = Gamma().register(layer, "reflect")
    assert layer._forward_hooks and "forward" not in layer.__dict__
    torch.autograd.grad(layer(x).sum(), x)
    handle.remove()
    assert not calls and not layer._forward_hooks


def test_a_second_backward_through_a_fused_rule_raises():
    layer = nn.Conv2d(3, 4, 3).double()
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64).requires_grad_()
    handle = ZPlus().register(layer, "conv")
    try:
        out = layer(x)
        torch.autograd.grad(out.sum(), x, retain_graph=True)
        with pytest.raises(RuntimeError, match="once per forward pass"):
            torch.autograd.grad(out.sum(), x)
    finally:
        handle.remove()


def test_rule_repr_hides_scratch_buffers():
    rule = Gamma(0.5)
    rule.scratch("output", (4, 4), torch.zeros(1))
    assert repr(rule) == "Gamma(gamma=0.5, stabilizer=1e-06)"


@pytest.mark.parametrize("name", ["epsilon-plus", "epsilon-gamma-box"])
def test_fused_rules_equal_the_reference_on_lite0(name, lite0, lite0_batch, reference_rules):
    """Real weights and images in float32 (a 128-pixel crop, for speed); measured on full 224 images: 3-4e-7 of
    the largest relevance, below the reference's own float32 error against float64 (1-5e-6)."""
    x = lite0_batch[:, :, :128, :128]
    fused, _ = LRP(name).relevance(lite0, x)
    reference_rules()
    reference, _ = LRP(name).relevance(lite0, x)
    scale = reference.abs().max()
    assert scale > 0
    torch.testing.assert_close(fused / scale, reference / scale, rtol=0, atol=1e-5)
