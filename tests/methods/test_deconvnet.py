"""Deconvnet (Zeiler & Fergus 2014): literal layer-by-layer references, receptive-field support, the rectification
rule vs plain gradients, and Captum's Deconvolution as the anchor."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xaiimg
from xaiimg.methods.deconvnet import DeconvProjection, deconvnet_rules, feature_maps


class TinyVGG(nn.Module):
    """conv3-ReLU-conv3-ReLU-maxpool2-conv3-ReLU-maxpool2-GAP-linear on 16x16 inputs."""

    def __init__(self, seed=0, positive=False):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True),
                                      nn.Conv2d(4, 5, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                                      nn.Conv2d(5, 6, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.5)
                if positive:
                    p.abs_()
        self.double().eval()

    def forward(self, x):
        return self.head(self.features(x))


class TinyLite(nn.Module):
    """EfficientNet-Lite-like: conv3 s2 + BN + ReLU6, inverted-residual-like block (depthwise 3x3 + BN + ReLU6,
    pointwise 1x1 + BN) with a skip connection, conv3 s2 + BN + ReLU6, GAP, linear. No pooling."""

    def __init__(self, seed=0):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(4), nn.ReLU6())
        self.pw = nn.Sequential(nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4))
        self.down = nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU6())
        self.head = nn.Linear(6, 4)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                bn_weight = 1.0 if name.endswith("1.weight") else 0.0  # BatchNorm scales around 1
                p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.5 + bn_weight)
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
                    m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
        self.double().eval()

    def forward(self, x):
        h = self.stem(x)
        h = h + self.pw(self.dw(h))
        return self.head(self.down(h).mean(dim=(2, 3)))


def images(batch, seed=0, size=16):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --------------------------------------------------------------------------------------- literal references
def literal_vgg_projection(net, x, seed):
    """Z&F deconvnet written out: forward with recorded pool switches; backward: unpool, rectify, transposed conv."""
    convs = [net.features[0], net.features[2], net.features[5]]
    h1 = F.relu(F.conv2d(x, convs[0].weight, convs[0].bias, padding=1))
    h2 = F.relu(F.conv2d(h1, convs[1].weight, convs[1].bias, padding=1))
    p2, switches = F.max_pool2d(h2, 2, return_indices=True)
    signal = seed.clamp(min=0)                                   # unit's own ReLU (features.6)
    signal = F.conv_transpose2d(signal, convs[2].weight, padding=1)
    signal = F.max_unpool2d(signal, switches, 2, output_size=h2.shape[-2:])
    signal = F.conv_transpose2d(signal.clamp(min=0), convs[1].weight, padding=1)
    return F.conv_transpose2d(signal.clamp(min=0), convs[0].weight, padding=1)


def bn_scale(bn):
    return (bn.weight / (bn.running_var + bn.eps).sqrt()).view(1, -1, 1, 1)


def literal_lite_projection(net, x, seed):
    """Deconvnet of TinyLite written out: transposed strided/depthwise convs, BN transposed as its scale,
    rectified signals at ReLU6, and the skip transposed into the sum of both paths' signals."""
    stem_out = (x.shape[-1] + 1) // 2
    signal = seed.clamp(min=0) * bn_scale(net.down[1])
    signal = F.conv_transpose2d(signal, net.down[0].weight, stride=2, padding=1,
                                output_padding=stem_out - (2 * (seed.shape[-1] - 1) - 2 + 3))
    block = signal * bn_scale(net.pw[1])
    block = F.conv_transpose2d(block, net.pw[0].weight)
    block = block.clamp(min=0) * bn_scale(net.dw[1])
    block = F.conv_transpose2d(block, net.dw[0].weight, padding=1, groups=4)
    signal = signal + block
    signal = signal.clamp(min=0) * bn_scale(net.stem[1])
    return F.conv_transpose2d(signal, net.stem[0].weight, stride=2, padding=1,
                              output_padding=x.shape[-1] - (2 * (stem_out - 1) - 2 + 3))


def unit_seed(activation, channel, row, col):
    seed = torch.zeros_like(activation)
    seed[:, channel, row, col] = activation[:, channel, row, col]
    return seed


def test_vgg_projection_equals_literal_deconvnet():
    net = TinyVGG()
    x = images(2)
    activation = net.features[:7](x)
    channel, row, col = 2, 3, 4
    assert (activation[:, channel, row, col] > 0).all()
    expected = literal_vgg_projection(net, x, unit_seed(activation, channel, row, col))
    got = DeconvProjection(layer="features.6", channel=channel, location=(row, col)).project(net, x)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    assert got.abs().sum() > 0
    assert all(m.inplace for m in net.modules() if isinstance(m, nn.ReLU))
    assert all(not m._forward_hooks for m in net.modules())


def test_strided_net_projection_equals_literal_deconvnet():
    net = TinyLite()
    x = images(2, seed=3)
    h = net.stem(x)
    activation = net.down(h + net.pw(net.dw(h)))
    channel, row, col = 3, 1, 1
    assert (activation[:, channel, row, col] > 0).all()
    expected = literal_lite_projection(net, x, unit_seed(activation, channel, row, col))
    got = DeconvProjection(layer="down.2", channel=channel, location=(row, col)).project(net, x)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------- receptive fields
def receptive_box(layers, row, col, size):
    """Analytic receptive field of unit (row, col) after a chain of (kernel, stride, padding) layers:
    r_l = r_{l-1} + (k-1) j_{l-1}, j_l = j_{l-1} s, c_l = c_{l-1} + ((k-1)/2 - p) j_{l-1}; the unit covers
    centre c + index*j +- (r-1)/2, clipped to the image."""
    r, j, c = 1, 1, 0.0
    for k, s, p in layers:
        r, c, j = r + (k - 1) * j, c + ((k - 1) / 2 - p) * j, j * s
    half = (r - 1) / 2

    def span(index):
        return max(0, int(c + index * j - half)), min(size - 1, int(c + index * j + half))

    return span(row), span(col)


def support_box(projection):
    nonzero = projection.abs().sum(dim=(0, 1)) > 0
    rows, cols = nonzero.nonzero(as_tuple=True)
    return (rows.min().item(), rows.max().item()), (cols.min().item(), cols.max().item())


@pytest.mark.parametrize("row,col", [(3, 4), (0, 7), (7, 0)])
def test_vgg_unit_support_within_receptive_field(row, col):
    net = TinyVGG()
    x = images(1, seed=4)
    got = DeconvProjection(layer="features.6", location=(row, col)).project(net, x)  # strongest channel there
    rows, cols = receptive_box([(3, 1, 1), (3, 1, 1), (2, 2, 0), (3, 1, 1)], row, col, 16)
    assert got.abs().sum() > 0
    (r0, r1), (c0, c1) = support_box(got)
    assert rows[0] <= r0 and r1 <= rows[1] and cols[0] <= c0 and c1 <= cols[1]
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[rows[0]:rows[1] + 1, cols[0]:cols[1] + 1] = True
    assert got[..., ~inside].abs().max() == 0


@pytest.mark.parametrize("row,col", [(1, 2), (0, 0), (3, 3)])
def test_strided_unit_support_within_receptive_field(row, col):
    net = TinyLite()
    x = images(1, seed=5)
    got = DeconvProjection(layer="down.2", location=(row, col)).project(net, x)  # strongest channel there
    # main path stem(3,s2,p1) -> dw(3,1,1) -> pw(1,1,0) -> down(3,s2,p1); the skip path's field lies inside it.
    rows, cols = receptive_box([(3, 2, 1), (3, 1, 1), (1, 1, 0), (3, 2, 1)], row, col, 16)
    assert got.abs().sum() > 0
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[rows[0]:rows[1] + 1, cols[0]:cols[1] + 1] = True
    assert got[..., ~inside].abs().max() == 0
    (r0, r1), (c0, c1) = support_box(got)
    assert rows[0] <= r0 and r1 <= rows[1] and cols[0] <= c0 and c1 <= cols[1]


# ------------------------------------------------------------------------------------- rule vs plain gradient
def plain_gradient(net, x, layer, channel, row, col):
    x = x.clone().requires_grad_(True)
    activation = layer(x)
    return torch.autograd.grad(activation, x, unit_seed(activation.detach(), channel, row, col))[0]


def test_differs_from_gradient_where_relu_masks_matter():
    net = TinyVGG()
    x = images(1, seed=6)
    got = DeconvProjection(layer="features.6", channel=1, location=(3, 4)).project(net, x)
    gradient = plain_gradient(net, x, net.features[:7], 1, 3, 4)
    assert (got - gradient).norm() > 0.1 * gradient.norm()
    assert gradient.abs().sum() > 0


def test_saturated_relu6_passes_signal_unlike_gradient():
    """Unit (channel 4, 0, 0) of TinyLite sits at the ReLU6 cap: its gradient is zero, its projection is not."""
    net = TinyLite()
    x = images(1, seed=5)
    got = DeconvProjection(layer="down.2", channel=4, location=(0, 0)).project(net, x)
    gradient = plain_gradient(net, x, lambda t: net.down(net.stem(t) + net.pw(net.dw(net.stem(t)))), 4, 0, 0)
    assert gradient.abs().max() == 0 and got.abs().sum() > 0


def test_equals_gradient_when_no_mask_or_sign_intervenes():
    """Positive weights and inputs: every ReLU is active and every backward signal positive, so the deconvnet's
    rectification and the gradient's masks are both no-ops and the two coincide."""
    net = TinyVGG(positive=True)
    x = images(1, seed=7).abs()
    got = DeconvProjection(layer="features.6", channel=0, location=(2, 5)).project(net, x)
    torch.testing.assert_close(got, plain_gradient(net, x, net.features[:7], 0, 2, 5))


def test_default_unit_is_the_maximal_activation_per_sample():
    net = TinyVGG()
    x = images(2, seed=8)
    activation = net.features[:7](x).detach()
    got = DeconvProjection(layer="features.6").project(net, x)
    for b in range(2):
        flat = activation[b].argmax().item()  # over 6 channels x 8 x 8
        channel, row, col = flat // 64, (flat % 64) // 8, flat % 8
        single = DeconvProjection(layer="features.6", channel=channel, location=(row, col)).project(net, x[b:b + 1])
        torch.testing.assert_close(got[b:b + 1], single)


def test_feature_maps_returns_layer_activations():
    net = TinyVGG()
    x = images(2)
    torch.testing.assert_close(feature_maps(net, x, "features.3"), net.features[:4](x))
    assert all(not m._forward_hooks for m in net.modules())


# ----------------------------------------------------------------------------------------------- anchor: Captum
def test_class_projection_matches_captum_deconvolution_tiny_vgg():
    from captum.attr import Deconvolution

    net = TinyVGG()
    for m in net.modules():  # Captum's backward hooks need out-of-place ReLUs
        if isinstance(m, nn.ReLU):
            m.inplace = False
    x = images(3, seed=9)
    target = [0, 3, 1]
    expected = Deconvolution(net).attribute(x, target=target)
    got = DeconvProjection().project(net, x, target)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    maps = xaiimg.explain("deconvnet", net, x, target=target, normalize=False)
    torch.testing.assert_close(maps, expected.abs().amax(dim=1, keepdim=True))


def test_class_projection_matches_captum_on_efficientnet_lite0(lite0, lite0_batch):
    """Real Lite0 (ReLU6). Captum's Deconvolution hooks only nn.ReLU; the deconvnet rule of ReLU6 is the same
    ``ReLU(signal)``, and Lite0's deconvnet signal does not depend on forward values (no pooling switches, BN in
    eval is affine), so Captum on a copy with ReLU6 -> ReLU must give the same projection."""
    from captum.attr import Deconvolution

    reference = copy.deepcopy(lite0)
    for parent in list(reference.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU6):
                setattr(parent, name, nn.ReLU())
    x = lite0_batch[:1]  # chelsea (tabby cat); one image keeps the test fast
    target = [281]
    expected = Deconvolution(reference).attribute(x.clone(), target=target)
    got = DeconvProjection().project(lite0, x, target)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    assert got.abs().sum() > 0


# -------------------------------------------------------------------------------------------------- bad input
def test_bad_inputs_leave_no_hooks(tiny_cnn):
    net = TinyVGG()
    x = images(1)
    with pytest.raises(ValueError, match="channel 9 out of range"):
        DeconvProjection(layer="features.6", channel=9).project(net, x)
    with pytest.raises(ValueError, match=r"location \(8, 0\) outside"):
        DeconvProjection(layer="features.6", location=(8, 0)).project(net, x)
    with pytest.raises(ValueError, match="unknown layer 'features.60'"):
        DeconvProjection(layer="features.60").project(net, x)
    with pytest.raises(ValueError, match="channel_reduction"):
        DeconvProjection(channel_reduction="mean")
    with pytest.raises(ValueError, match="no nn.ReLU"):
        DeconvProjection().project(nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten()), torch.randn(1, 3, 4, 4))
    assert all(not m._forward_hooks for m in net.modules())
    assert all(m.inplace for m in net.modules() if isinstance(m, nn.ReLU))
    assert all(p.grad is None and p.requires_grad for p in net.parameters())


def test_rules_context_restores_on_error():
    net = TinyVGG()
    with pytest.raises(RuntimeError, match="boom"):
        with deconvnet_rules(net):
            raise RuntimeError("boom")
    assert all(m.inplace and not m._forward_hooks for m in net.modules() if isinstance(m, nn.ReLU))


def test_class_projection_pass_count():
    from xaiimg.passes import count_passes

    net = TinyVGG()
    with count_passes(net) as log:
        xaiimg.explain("deconvnet", net, images(2), target=[0, 1])
    assert log.forward_batches == [2] and log.backward_batches == [2]


# ------------------------------------------------------------------------------------- guided rule (issue 16)
def test_without_pooling_the_deconvnet_projection_ignores_the_image_and_the_guided_one_does_not():
    """TinyLite has no max-pooling, so no switches: the deconvnet projection of a unit divided by the unit's value
    is the same on every image (the motivation of Springenberg et al. 2015); the guided rule's follows the image."""
    net = TinyLite()
    x = images(3, seed=11)
    value = feature_maps(net, x, "down.2")[:, 2, 1, 2]
    assert ((value > 0) & (value < 6)).all()
    deconvnet = DeconvProjection(layer="down.2", channel=2, location=(1, 2)).project(net, x) / value.view(-1, 1, 1, 1)
    guided = DeconvProjection(layer="down.2", channel=2, location=(1, 2), rule="guided").project(net, x)
    guided = guided / value.view(-1, 1, 1, 1)
    torch.testing.assert_close(deconvnet[1:], deconvnet[:1].expand(2, -1, -1, -1))
    assert (guided[1:] - guided[:1]).flatten(1).norm(dim=1).min() > 0.1 * guided[0].norm()


def test_guided_rule_of_the_logit_matches_captum_guided_backprop_on_relu_net():
    from captum.attr import GuidedBackprop

    net = TinyVGG()
    for m in net.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    x = images(3, seed=11)
    expected = GuidedBackprop(net).attribute(x, target=[1, 0, 2])
    torch.testing.assert_close(DeconvProjection(rule="guided").project(net, x, [1, 0, 2]), expected,
                               rtol=1e-10, atol=1e-12)


def test_guided_rule_projects_a_unit_at_the_relu6_cap():
    """The unit of test_saturated_relu6_passes_signal_unlike_gradient sits at the cap (gradient 0); counted as
    active, it still projects under the guided rule, and only through paths the image switched on."""
    net = TinyLite()
    x = images(1, seed=5)
    guided = DeconvProjection(layer="down.2", channel=4, location=(0, 0), rule="guided").project(net, x)
    deconvnet = DeconvProjection(layer="down.2", channel=4, location=(0, 0)).project(net, x)
    assert guided.abs().sum() > 0 and not torch.allclose(guided, deconvnet)
    with pytest.raises(ValueError, match="rule must be one of"):
        DeconvProjection(layer="down.2", rule="switches")
