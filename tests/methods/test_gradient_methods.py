"""Gradient, SmoothGrad, Integrated Gradients, Guided Backprop, Occlusion: golden values on hand-built nets,
equality with Captum's direct calls (float64), pass counts, seeding, batching, ViT, bad input.

Real weights: EfficientNet-Lite0 (fixture ``lite0``). torchvision ResNet18 and timm DeiT-tiny are randomly
initialised (``weights=None``) and used only for plumbing and equality with Captum.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import xaiimg as xi
from xaiimg.methods.gradient import Gradient, GuidedBackprop, IntegratedGradients, Occlusion, SmoothGrad
from xaiimg.methods.input_attribution_base import reduce_channels
from xaiimg.ops import minmax_normalize
from xaiimg.passes import count_passes

GRADIENT_METHODS = ["gradient", "smoothgrad", "integrated-gradients", "guided-backprop", "occlusion"]
FAST = {"smoothgrad": dict(n_samples=4, batch_size=2), "integrated-gradients": dict(n_steps=4),
        "occlusion": dict(window=8, stride=8)}


# ------------------------------------------------------------------------------------ hand-built nets
class LinearNet(nn.Module):
    """S_k(x) = sum_{c,i,j} W[k,c,i,j] x[c,i,j] on 2x2x2 inputs: dS_k/dx = W_k everywhere."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 2, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, -2.0, 0.5, 0.0, -1.0, 1.0, 3.0, -0.5],
                                               [0.0, 1.0, 0.0, 1.0, 2.0, 0.0, 0.0, 0.0]]))

    def forward(self, x):
        return self.fc(x.flatten(1))


X = torch.tensor([[[[1.0, 2.0], [-1.0, 0.5]], [[2.0, 0.0], [1.0, -3.0]]]], dtype=torch.float64)
W0 = torch.tensor([[[1.0, -2.0], [0.5, 0.0]], [[-1.0, 1.0], [3.0, -0.5]]], dtype=torch.float64)


def linear_net():
    return LinearNet().double().eval()


def raw(method, model, x, target):
    return method(model, x, target, normalize=False)


def test_channel_reductions_by_hand():
    a = torch.tensor([[[[1.0, -4.0]], [[-3.0, 2.0]]]])        # [1,2,1,2]
    assert reduce_channels(a, "abs-max").flatten().tolist() == [3.0, 4.0]
    assert reduce_channels(a, "sum").flatten().tolist() == [-2.0, -2.0]
    assert reduce_channels(a, "abs-sum").flatten().tolist() == [4.0, 6.0]


def test_gradient_golden_on_linear_net():
    """dS_0/dx = W_0: abs-max over the two channels = [[1, 2], [3, 0.5]]; sum = [[0, -1], [3.5, -0.5]]."""
    model = linear_net()
    assert raw(Gradient(), model, X, 0).flatten().tolist() == [1.0, 2.0, 3.0, 0.5]
    assert raw(Gradient("sum"), model, X, 0).flatten().tolist() == [0.0, -1.0, 3.5, -0.5]


def test_integrated_gradients_golden_on_linear_net():
    """For a linear S, IG = (x - 0) * W_0 exactly for any quadrature (the weights sum to 1)."""
    model = linear_net()
    expected = reduce_channels(X * W0, "sum")                # [[1-2, -4+0], [-0.5+3, 0+1.5]] = [[-1,-4],[2.5,1.5]]
    assert expected.flatten().tolist() == [-1.0, -4.0, 2.5, 1.5]
    torch.testing.assert_close(raw(IntegratedGradients(n_steps=3, channel_reduction="sum"), model, X, 0), expected)


def test_occlusion_golden_on_linear_net():
    """Window 1 = stride 1 over all channels: the drop at pixel (i,j) is sum_c W_0[c,i,j] x[c,i,j]
    (the logit score of a linear model): [[1-2, -4+0], [-0.5+3, 0+1.5]]."""
    model = linear_net()
    occlusion = Occlusion(window=1, stride=1, score="logit")
    expected = torch.tensor([[[[-1.0, -4.0], [2.5, 1.5]]]], dtype=torch.float64) * 2   # "sum" of 2 equal channels
    # Captum averages over windows in float32: float32 tolerance
    torch.testing.assert_close(raw(occlusion, model, X, 0), expected, rtol=1e-6, atol=1e-6)


def test_smoothgrad_of_a_linear_net_is_its_gradient():
    model = linear_net()
    torch.testing.assert_close(raw(SmoothGrad(n_samples=7, batch_size=3), model, X, 0),
                               raw(Gradient(), model, X, 0))


class HalfSquaredNorm(nn.Module):
    """S_0(x) = 0.5 |x|^2, S_1 = 0: dS_0/dx = x, so SmoothGrad - x is the mean of the noise."""

    def forward(self, x):
        s = 0.5 * x.pow(2).flatten(1).sum(1)
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def test_smoothgrad_noise_level_is_relative_to_the_input_range():
    """Smilkov et al.: sigma = noise_level * (max - min). With dS/dx = x, (SmoothGrad - x) * sqrt(n) has
    standard deviation sigma over the pixels (6,144 values: the estimate is within ~2%)."""
    first = torch.linspace(-1.0, 3.0, 3 * 32 * 32, dtype=torch.float64).reshape(3, 32, 32)   # range 4
    x = torch.stack([first, 0.5 * first])                   # second image: half the range, half the sigma
    n = 16
    smooth = SmoothGrad(n_samples=n, noise_level=0.1, channel_reduction="sum").input_attributions(
        HalfSquaredNorm(), x.clone().requires_grad_(), 0)
    for index, expected_sigma in ((0, 0.1 * 4.0), (1, 0.1 * 2.0)):
        measured = ((smooth[index] - x[index]) * n ** 0.5).std().item()
        assert measured == pytest.approx(expected_sigma, rel=0.05)


class ReLUNet(nn.Module):
    """x [1,1,1,2] -> h = ReLU(U x) -> S = V h.  U = [[1, -1], [-1, 1], [2, 1]], V = [[1, -1, -0.5]].
    At x = (2, 1): pre-activations (1, -1, 5), active units 0 and 2.
    Gradient: sum over active units of V_u U_u = 1*(1, -1) + (-0.5)*(2, 1) = (0, -1.5).
    Guided backprop also zeroes negative gradients arriving at a ReLU: unit 2 (V = -0.5) drops out, leaving
    unit 0 alone: 1 * (1, -1) = (1, -1)."""

    def __init__(self):
        super().__init__()
        self.hidden, self.relu, self.out = nn.Linear(2, 3, bias=False), nn.ReLU(), nn.Linear(3, 1, bias=False)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.tensor([[1.0, -1.0], [-1.0, 1.0], [2.0, 1.0]]))
            self.out.weight.copy_(torch.tensor([[1.0, -1.0, -0.5]]))

    def forward(self, x):
        return self.out(self.relu(self.hidden(x.flatten(1))))


def test_guided_backprop_golden_on_relu_net():
    model = ReLUNet().double().eval()
    x = torch.tensor([[[[2.0, 1.0]]]], dtype=torch.float64)
    assert raw(Gradient("sum"), model, x, 0).flatten().tolist() == [0.0, -1.5]
    assert raw(GuidedBackprop("sum"), model, x, 0).flatten().tolist() == [1.0, -1.0]


class ReLU6Net(nn.Module):
    """x [1,1,1,2] -> h = ReLU6(U x) -> S = V h.  U = [[3.5, 0], [0, 1], [1, -1]], V = [[1, 2, -1]].
    At x = (2, 1): pre-activations (7, 1, 1); unit 0 is saturated (7 > 6: derivative 0), units 1, 2 linear.
    Gradient: 2*(0, 1) + (-1)*(1, -1) = (-1, 3). Guided: unit 2's negative gradient (-1) is dropped as well,
    leaving 2*(0, 1) = (0, 2)."""

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.hidden, self.out = nn.Linear(2, 3, bias=False), nn.Linear(3, 1, bias=False)
        self.relu6 = nn.ReLU6(inplace=inplace)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.tensor([[3.5, 0.0], [0.0, 1.0], [1.0, -1.0]]))
            self.out.weight.copy_(torch.tensor([[1.0, 2.0, -1.0]]))

    def forward(self, x):
        return self.out(self.relu6(self.hidden(x.flatten(1))))


@pytest.mark.parametrize("inplace", [False, True])
def test_guided_backprop_golden_on_relu6_net(inplace):
    model = ReLU6Net(inplace).double().eval()
    x = torch.tensor([[[[2.0, 1.0]]]], dtype=torch.float64)
    assert raw(Gradient("sum"), model, x, 0).flatten().tolist() == [-1.0, 3.0]
    assert raw(GuidedBackprop("sum"), model, x, 0).flatten().tolist() == [0.0, 2.0]
    assert all(not m._forward_hooks for m in model.modules())


# ---------------------------------------------------------------------------------- Captum equality
@pytest.fixture(scope="module")
def lite0_double(lite0):
    return copy.deepcopy(lite0).double()


def captum_reference(name, model, x, targets):
    """The direct Captum call each adapter stands for, with our documented settings, then the same channel
    reduction and min-max."""
    from captum import attr

    if name == "gradient":
        a = attr.Saliency(model).attribute(x, target=targets, abs=False)
        return minmax_normalize(reduce_channels(a, "abs-max"))
    if name == "integrated-gradients":
        a = attr.IntegratedGradients(model).attribute(x, baselines=0.0, target=targets, n_steps=4)
        return minmax_normalize(reduce_channels(a, "abs-max"))
    if name == "occlusion":
        a = attr.Occlusion(lambda inputs: model(inputs).softmax(-1)).attribute(
            x, sliding_window_shapes=(3, 56, 56), strides=(3, 56, 56), baselines=0.0, target=targets)
        return minmax_normalize(reduce_channels(a.double(), "sum"))   # Captum returns float32 here; ours casts back
    if name == "smoothgrad":
        maps = []
        for i in range(x.shape[0]):                          # per-image sigma; RNG seeded as in SmoothGrad
            torch.manual_seed(3)
            sigma = 0.15 * float(x[i].max() - x[i].min())
            maps.append(attr.NoiseTunnel(attr.Saliency(model)).attribute(
                x[i:i + 1], nt_type="smoothgrad", nt_samples=4, nt_samples_batch_size=4, stdevs=sigma,
                target=targets[i:i + 1], abs=False))
        return minmax_normalize(reduce_channels(torch.cat(maps), "abs-max"))
    if name == "guided-backprop":
        return minmax_normalize(reduce_channels(attr.GuidedBackprop(model).attribute(x, target=targets), "abs-max"))
    raise AssertionError(name)


OURS = {"gradient": Gradient(), "integrated-gradients": IntegratedGradients(n_steps=4),
        "occlusion": Occlusion(window=56, stride=56), "smoothgrad": SmoothGrad(n_samples=4, seed=3),
        "guided-backprop": GuidedBackprop()}


@pytest.mark.parametrize("name", ["gradient", "integrated-gradients", "occlusion", "smoothgrad"])
def test_equals_captum_on_lite0(name, lite0_double, lite0_batch):
    # 112 px keeps the float64 passes cheap (float64 depthwise convolutions have no fast CPU kernel)
    x = torch.nn.functional.interpolate(lite0_batch.double(), size=(112, 112), mode="bilinear", align_corners=False)
    targets = torch.tensor([281, 967])
    torch.testing.assert_close(xi.explain(OURS[name], lite0_double, x, target=targets),
                               captum_reference(name, lite0_double, x, targets), rtol=0, atol=1e-6)


def test_guided_backprop_equals_captum_on_resnet18():
    """Random-init ResNet18 (its activations are nn.ReLU modules, which Captum's GuidedBackprop modifies)."""
    model = xi.load_model("resnet18", weights=None).double()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([5, 10])
    ours = xi.explain("guided-backprop", model, x, target=targets)
    torch.testing.assert_close(ours, captum_reference("guided-backprop", model, x, targets), rtol=0, atol=1e-6)
    assert not torch.allclose(ours, xi.explain("gradient", model, x, target=targets), atol=1e-3)


# --------------------------------------------------------------------------------------------- passes
@pytest.mark.parametrize("name,forwards,backwards,extra_for_none", [
    ("gradient", [2], [2], []),
    ("guided-backprop", [2], [2], []),
    ("smoothgrad", [2, 2, 2, 2], [2, 2, 2, 2], [2]),          # per image: 4 noisy copies in batches of 2
    ("integrated-gradients", [8], [8], [2]),                 # 4 steps x 2 images in one batch
    ("occlusion", [2, 8], [], [2]),                         # Captum's clean forward + 2x2 windows x 2 images
])
def test_pass_counts(name, forwards, backwards, extra_for_none, tiny_cnn):
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for target, extra in (([1, 3], []), (None, extra_for_none)):
        with count_passes(tiny_cnn) as log:
            xi.explain(name, tiny_cnn, x, target=target, **FAST[name] if name in FAST else {})
        assert log.forward_batches == extra + forwards and log.backward_batches == backwards, (target, log)


def test_target_none_is_the_predicted_class(tiny_cnn):
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    predicted = tiny_cnn(x).argmax(1)
    for name in GRADIENT_METHODS:
        params = FAST.get(name, {})
        torch.testing.assert_close(xi.explain(name, tiny_cnn, x, **params),
                                   xi.explain(name, tiny_cnn, x, target=predicted, **params), rtol=0, atol=0)


# ------------------------------------------------------------------------------ seeding and batching
def test_smoothgrad_seed_is_bit_identical_and_leaves_the_global_rng_alone(lite0, lite0_batch):
    method = SmoothGrad(n_samples=3, seed=11)
    state = torch.get_rng_state()
    first = xi.explain(method, lite0, lite0_batch, target=[281, 967])
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, xi.explain(method, lite0, lite0_batch, target=[281, 967]))
    alone = xi.explain(method, lite0, lite0_batch[1:], target=967)
    assert torch.equal(first[1:], alone)                    # noise depends on the image and the seed only
    other = xi.explain(SmoothGrad(n_samples=3, seed=12), lite0, lite0_batch, target=[281, 967])
    assert not torch.equal(first, other)


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_per_sample_targets_equal_single_images(name, tiny_cnn):
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    model = tiny_cnn.double()
    targets = [4, 0, 2]
    params = FAST.get(name, {})
    batched = xi.explain(name, model, x, target=targets, **params)
    alone = torch.cat([xi.explain(name, model, x[i:i + 1], target=t, **params) for i, t in enumerate(targets)])
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-10)


# ------------------------------------------------------------------------------------------------- ViT
def test_gradient_methods_run_on_vit():
    """Random-init DeiT-tiny (plumbing): input gradients of a token model; equal to Captum's Saliency."""
    torch.manual_seed(0)
    model = xi.load_model("deit_tiny_patch16_224", weights=None)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(6))
    for name, params in (("gradient", {}), ("smoothgrad", dict(n_samples=2)), ("integrated-gradients",
                                                                               dict(n_steps=2))):
        maps = xi.explain(name, model, x, target=3, **params)
        assert maps.shape == (1, 1, 224, 224) and maps.min() == 0 and maps.max() == 1
    torch.testing.assert_close(xi.explain("gradient", model, x, target=3),
                               captum_reference("gradient", model, x, torch.tensor([3])), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="GELU"):
        xi.explain("guided-backprop", model, x, target=3)


# ---------------------------------------------------------------------------------------- bad input
def test_guided_backprop_runs_on_lite0_relu6_and_leaves_no_hooks(lite0, lite0_batch):
    """EfficientNet-Lite0's activations are ReLU6: guided, not refused; the map differs from the plain gradient."""
    assert any(isinstance(m, nn.ReLU6) for m in lite0.modules())
    guided = xi.explain("guided-backprop", lite0, lite0_batch, target=[281, 967])
    assert guided.shape == (2, 1, 224, 224) and torch.isfinite(guided).all()
    assert (guided - xi.explain("gradient", lite0, lite0_batch, target=[281, 967])).abs().max() > 0.1
    for module in lite0.modules():
        assert not module._forward_hooks and not module._backward_hooks and not module._forward_pre_hooks


@pytest.mark.parametrize("make,message", [
    (lambda: Gradient(channel_reduction="max"), "channel_reduction"),
    (lambda: Occlusion(score="softmax"), "score"),
    (lambda: Occlusion(window=0), "window"),
    (lambda: SmoothGrad(n_samples=0), "n_samples"),
    (lambda: IntegratedGradients(batch_size=0), "batch_size"),
])
def test_bad_parameters(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("name", GRADIENT_METHODS)
@pytest.mark.parametrize("case,message", [("channels", "channels"), ("nan", "NaN"), ("target", "out of range")])
def test_bad_input_errors_leave_model_clean(name, case, message, tiny_cnn):
    x = torch.randn(2, 4 if case == "channels" else 3, 16, 16)
    if case == "nan":
        x[0, 0, 0, 0] = float("nan")
    target = [1, 5] if case == "target" else None
    tiny_cnn.train()
    flags = [p.requires_grad for p in tiny_cnn.parameters()]
    with pytest.raises(ValueError, match=message):
        xi.explain(name, tiny_cnn, x, target=target, **FAST.get(name, {}))
    assert all(m.training for m in tiny_cnn.modules())
    assert [p.requires_grad for p in tiny_cnn.parameters()] == flags
    assert all(p.grad is None for p in tiny_cnn.parameters())
    for module in tiny_cnn.modules():
        assert not module._forward_hooks and not module._backward_hooks and not module._forward_pre_hooks


def test_target_out_of_range_without_spec_is_caught():
    for name in GRADIENT_METHODS:
        if name == "guided-backprop":
            continue                                          # LinearNet has no ReLU: refused earlier
        with pytest.raises(ValueError, match="out of range for a model with 2 classes"):
            xi.explain(name, linear_net(), X, target=2, **({"window": 1, "stride": 1} if name == "occlusion" else {}))


def test_occlusion_window_larger_than_image():
    with pytest.raises(ValueError, match="larger than the image"):
        xi.explain(Occlusion(window=4, stride=1), linear_net(), X, target=0)


def test_input_gradient_is_not_left_on_the_input(tiny_cnn):
    x = torch.randn(1, 3, 16, 16, requires_grad=True)
    xi.explain("gradient", tiny_cnn, x, target=0)
    assert x.grad is None and x.requires_grad
