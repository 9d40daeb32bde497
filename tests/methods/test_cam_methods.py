"""CAM, Grad-CAM, Grad-CAM++, XGrad-CAM: hand-computed golden values, cross-checks against Captum's LayerGradCam
and pytorch-grad-cam, pass counts, bad input, batching and ViT tokens.

Real weights: EfficientNet-Lite0 (fixture ``lite0``). torchvision VGG16 / ResNet18 and timm DeiT-tiny are
randomly initialised (``weights=None``): those tests are about plumbing and equality with the anchor libraries,
not about what the maps show.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import xaiimg as xi
from xaiimg.methods.cam import CAM, GradCAM, GradCAMPlusPlus, XGradCAM
from xaiimg.nn import activations_and_gradients, frozen_parameters
from xaiimg.ops import minmax_normalize
from xaiimg.passes import count_passes

CAM_METHODS = ["cam", "grad-cam", "grad-cam++", "xgrad-cam"]
GRADIENT_CAMS = {"grad-cam": GradCAM, "grad-cam++": GradCAMPlusPlus, "xgrad-cam": XGradCAM}


# ------------------------------------------------------------------------------------ hand-built nets
class HandNet(nn.Module):
    """x [B,2,2,2] -> features (1x1 conv: A_0 = x_0, A_1 = x_0 + x_1) -> head.

    ``head="flatten"``: logits = W vec(A), so dS_k/dA is the row W_k reshaped to [2,2,2] (spatially varying).
    ``head="gap"``: logits = V mean_ij(A) + b, the CAM architecture.
    """

    def __init__(self, head: str):
        super().__init__()
        self.features = nn.Conv2d(2, 2, 1, bias=False)
        self.head = head
        with torch.no_grad():
            self.features.weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 1.0]]).view(2, 2, 1, 1))
        if head == "flatten":
            self.fc = nn.Linear(8, 3, bias=False)
            rows = torch.tensor([[0.0] * 8,
                                 [1.0, -1.0, 0.0, 2.0, 0.5, 0.0, -1.0, -1.0],   # class 1: g_0, g_1 (raster order)
                                 [0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0]])
        else:
            self.fc = nn.Linear(2, 3)
            rows = torch.tensor([[1.0, 1.0], [2.0, -1.0], [-1.0, 3.0]])
            with torch.no_grad():
                self.fc.bias.copy_(torch.tensor([0.1, 0.2, 0.3]))
        with torch.no_grad():
            self.fc.weight.copy_(rows)

    def forward(self, x):
        a = self.features(x)
        return self.fc(a.flatten(1) if self.head == "flatten" else a.mean(dim=(2, 3)))


HAND_X = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [-1.0, 2.0]]]], dtype=torch.float64)
HAND_A = [[[1.0, 2.0], [3.0, 4.0]], [[1.0, 3.0], [2.0, 6.0]]]          # A_0 = x_0, A_1 = x_0 + x_1
HAND_G = [[[1.0, -1.0], [0.0, 2.0]], [[0.5, 0.0], [-1.0, -1.0]]]       # dS_1/dA = row 1 of W


def hand_net(head):
    return HandNet(head).double().eval()


def test_hand_net_activations_and_gradients():
    model = hand_net("flatten")
    activation, gradient, logits, targets = activations_and_gradients(model, HAND_X, model.features, 1)
    assert torch.equal(activation, torch.tensor([HAND_A], dtype=torch.float64))
    assert torch.equal(gradient, torch.tensor([HAND_G], dtype=torch.float64))
    assert targets.tolist() == [1]
    # S_1 = sum(A * G) = (1 - 2 + 0 + 8) + (0.5 + 0 - 2 - 6) = -0.5
    assert logits[0, 1].item() == pytest.approx(-0.5)


# Channel weights and maps, worked out by hand from HAND_A and HAND_G (channel sums S_0 = 10, S_1 = 12):
#   Grad-CAM:  w = mean(G) = [(1-1+0+2)/4, (0.5+0-1-1)/4] = [0.5, -0.375]
#              M = ReLU(0.5 A_0 - 0.375 A_1) = ReLU([[0.125, -0.125], [0.75, -0.25]])
#   XGrad-CAM: w = sum(A G) / sum(A) = [7/10, -7.5/12] = [0.7, -0.625]
#              M = ReLU(0.7 A_0 - 0.625 A_1) = ReLU([[0.075, -0.475], [0.85, -0.95]])
#   Grad-CAM++: alpha = g^2 / (2 g^2 + S g^3) = 1 / (2 + S g) where g != 0; w = sum alpha ReLU(g)
#              w_0 = 1 * 1/(2+10) + 2 * 1/(2+20) = 1/12 + 1/11 = 23/132;  w_1 = 0.5 * 1/(2+6) = 1/16
#              M = 23/132 A_0 + 1/16 A_1
GOLDEN = {
    "grad-cam": ([0.5, -0.375], [[0.125, 0.0], [0.75, 0.0]]),
    "xgrad-cam": ([0.7, -0.625], [[0.075, 0.0], [0.85, 0.0]]),
    "grad-cam++": ([23 / 132, 1 / 16], [[23 / 132 + 1 / 16, 46 / 132 + 3 / 16],
                                        [69 / 132 + 2 / 16, 92 / 132 + 6 / 16]]),
}


@pytest.mark.parametrize("name", list(GOLDEN))
def test_gradient_cam_golden_weights_and_map(name):
    model = hand_net("flatten")
    method = GRADIENT_CAMS[name]()
    layer_pass = activations_and_gradients(model, HAND_X, model.features, 1)
    weights, expected_map = GOLDEN[name]
    torch.testing.assert_close(method.channel_weights(model, HAND_X, layer_pass),
                               torch.tensor([weights], dtype=torch.float64), rtol=0, atol=1e-7)
    method.layer = "features"
    raw = method.attribute(model, HAND_X, 1)
    torch.testing.assert_close(raw, torch.tensor([[expected_map]], dtype=torch.float64), rtol=0, atol=1e-7)
    # same resolution as the input: __call__ only min-max normalises
    expected = torch.tensor(expected_map, dtype=torch.float64)
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    torch.testing.assert_close(xi.explain(method, model, HAND_X, target=1)[0, 0], expected, rtol=0, atol=1e-7)


def test_grad_cam_plus_plus_eps_is_the_pytorch_grad_cam_stabiliser():
    """With eps, alpha = g^2 / (2 g^2 + S g^3 + eps): w_1 = 0.5 * 0.25 / (0.5 + 1.5 + eps)."""
    model = hand_net("flatten")
    layer_pass = activations_and_gradients(model, HAND_X, model.features, 1)
    weights = GradCAMPlusPlus(eps=0.5).channel_weights(model, HAND_X, layer_pass)
    w0 = 1 * 1 / (2 + 10 + 0.5) + 2 * 4 / (8 + 80 + 0.5)
    torch.testing.assert_close(weights, torch.tensor([[w0, 0.125 / 2.5]], dtype=torch.float64))


def test_cam_golden_uses_classifier_row():
    """CAM for class 1: w = V_1 = [2, -1]; M = ReLU(2 A_0 - A_1) = [[1, 1], [4, 2]]; bias plays no part."""
    model = hand_net("gap")
    method = CAM(layer="features")
    torch.testing.assert_close(method.attribute(model, HAND_X, 1),
                               torch.tensor([[[[1.0, 1.0], [4.0, 2.0]]]], dtype=torch.float64))
    # class 0: w = [1, 1] -> A_0 + A_1 = [[2, 5], [5, 10]]; fc_layer given explicitly by name
    torch.testing.assert_close(CAM(layer="features", fc_layer="fc").attribute(model, HAND_X, 0),
                               torch.tensor([[[[2.0, 5.0], [5.0, 10.0]]]], dtype=torch.float64))


def test_hand_net_per_sample_targets():
    """A batch with targets [1, 2]: the second sample's map uses row 2 of W (g = 1 at A_0[1,0] and A_1[0,1])."""
    model = hand_net("flatten")
    x = HAND_X.repeat(2, 1, 1, 1)
    raw = GradCAM(layer="features").attribute(model, x, [1, 2])
    # class 2: w = [1/4, 1/4] -> M = (A_0 + A_1) / 4 = [[0.5, 1.25], [1.25, 2.5]]
    torch.testing.assert_close(raw[1, 0], torch.tensor([[0.5, 1.25], [1.25, 2.5]], dtype=torch.float64))
    torch.testing.assert_close(raw[0, 0], torch.tensor(GOLDEN["grad-cam"][1], dtype=torch.float64))


# ------------------------------------------------------------------------------- anchor cross-checks
def captum_grad_cam(model, layer, x, targets):
    """Captum convention -> ours: LayerGradCam(relu_attributions=True), bilinear interpolate
    (align_corners=False), then per-sample min-max."""
    from captum.attr import LayerAttribution, LayerGradCam

    raw = LayerGradCam(model, layer).attribute(x, target=targets, relu_attributions=True)
    return raw, minmax_normalize(LayerAttribution.interpolate(raw, tuple(x.shape[-2:]), "bilinear"))


@pytest.fixture(scope="module")
def lite0_double(lite0):
    return copy.deepcopy(lite0).double()


@pytest.fixture(scope="module")
def resnet18_double():
    return xi.load_model("resnet18", weights=None).double()   # random init: equality test only


def test_grad_cam_equals_captum_on_lite0(lite0_double, lite0_batch):
    x = lite0_batch.double()
    targets = torch.tensor([281, 967])                         # tabby cat, espresso
    layer = lite0_double.get_submodule("bn2")
    raw_captum, maps_captum = captum_grad_cam(lite0_double, layer, x, targets)
    torch.testing.assert_close(GradCAM().attribute(lite0_double, x, targets), raw_captum, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(xi.explain("grad-cam", lite0_double, x, target=targets), maps_captum,
                               rtol=0, atol=1e-5)
    predicted = lite0_double(x).argmax(1)
    torch.testing.assert_close(xi.explain("grad-cam", lite0_double, x),
                               captum_grad_cam(lite0_double, layer, x, predicted)[1], rtol=0, atol=1e-5)


def test_grad_cam_equals_captum_on_torchvision_vgg16_and_resnet18(resnet18_double):
    """Random-init VGG16 (64 px, conv5_3 ReLU 'features.29' at 4x4) and ResNet18 (112 px, 'layer4' at 4x4)."""
    generator = torch.Generator().manual_seed(0)
    vgg = xi.load_model("vgg16", weights=None).double()
    for model, size in ((vgg, 64), (resnet18_double, 112)):
        x = torch.randn(2, 3, size, size, generator=generator, dtype=torch.float64)
        targets = torch.tensor([3, 500])
        layer = model.get_submodule(model.spec.default_layer)
        _, maps_captum = captum_grad_cam(model, layer, x, targets)
        torch.testing.assert_close(xi.explain("grad-cam", model, x, target=targets), maps_captum, rtol=0, atol=1e-5)
    del vgg


def pytorch_grad_cam_weights_and_maps(cam_class, model, layer, x, targets, reshape_transform=None):
    """pytorch-grad-cam -> ours. It hooks the layer, back-propagates ClassifierOutputTarget (= raw logit, as ours)
    to the input, and returns per-image min-max scaled float32 numpy maps resized with cv2 (HxW). We compare
    before that scaling: its ``get_cam_weights`` on the activations/gradients it recorded gives [B,C] weights,
    and ``get_cam_image`` followed by ReLU gives the raw feature-resolution map (= our ``attribute``).
    Its final output is compared too, at float32 tolerance (cv2 INTER_LINEAR = bilinear, half-pixel centres)."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = copy.deepcopy(model)                        # pytorch-grad-cam writes parameter .grad
    layer = model.get_submodule(layer)
    cam_targets = [ClassifierOutputTarget(int(t)) for t in targets]
    with cam_class(model=model, target_layers=[layer], reshape_transform=reshape_transform) as cam:
        final = cam(input_tensor=x, targets=cam_targets)
        activations = cam.activations_and_grads.activations[0].numpy()
        gradients = cam.activations_and_grads.gradients[0].numpy()
        weights = cam.get_cam_weights(x, layer, cam_targets, activations, gradients)
        raw = np.maximum(cam.get_cam_image(x, layer, cam_targets, activations, gradients), 0)
    return torch.from_numpy(np.asarray(weights)), torch.from_numpy(raw)[:, None], torch.from_numpy(final)[:, None]


PYTORCH_GRAD_CAM = {"grad-cam": ("GradCAM", GradCAM()), "grad-cam++": ("GradCAMPlusPlus", GradCAMPlusPlus(eps=1e-6)),
                    "xgrad-cam": ("XGradCAM", XGradCAM(eps=1e-7))}


@pytest.mark.parametrize("name", list(PYTORCH_GRAD_CAM))
def test_gradient_cams_equal_pytorch_grad_cam(name, lite0_double, lite0_batch, resnet18_double):
    import pytorch_grad_cam

    class_name, ours = PYTORCH_GRAD_CAM[name]
    cases = ((lite0_double, lite0_batch.double(), [281, 967]),
             (resnet18_double, torch.randn(2, 3, 112, 112, dtype=torch.float64,
                                           generator=torch.Generator().manual_seed(1)), [7, 900]))
    for model, x, target_list in cases:
        targets = torch.tensor(target_list)
        layer = model.spec.default_layer
        weights, raw, final = pytorch_grad_cam_weights_and_maps(getattr(pytorch_grad_cam, class_name), model,
                                                                layer, x, targets)
        layer_pass = activations_and_gradients(model, x, layer, targets)
        torch.testing.assert_close(ours.channel_weights(model, x, layer_pass), weights,
                                   rtol=1e-7, atol=1e-12)
        torch.testing.assert_close(ours.attribute(model, x, targets), raw, rtol=1e-7, atol=1e-12)
        torch.testing.assert_close(xi.explain(ours, model, x, target=targets).float(), final, rtol=0, atol=1e-4)


# --------------------------------------------------------------------------------------------- passes
@pytest.mark.parametrize("name", CAM_METHODS)
def test_one_forward_and_one_backward(name, tiny_cnn):
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    backwards = [] if name == "cam" else [3]               # CAM reads the classifier weights: no backward
    for target in (None, [0, 4, 2]):
        with count_passes(tiny_cnn) as log:
            xi.explain(name, tiny_cnn, x, target=target)
        assert log.forward_batches == [3] and log.backward_batches == backwards, (target, log)


def test_backward_stops_at_the_target_layer(tiny_cnn):
    """No gradient reaches the layers below the target: the first conv's output never receives one."""
    reached = []
    handle = tiny_cnn.features[0].register_full_backward_hook(lambda *args: reached.append(1))
    try:
        xi.explain("grad-cam", tiny_cnn, torch.randn(2, 3, 16, 16), target=1)
    finally:
        handle.remove()
    assert reached == []


# ----------------------------------------------------------------------------------------- batching
@pytest.mark.parametrize("name", CAM_METHODS)
def test_per_sample_targets_equal_single_images(name, lite0, lite0_batch):
    batched = xi.explain(name, lite0, lite0_batch, target=[281, 967])
    alone = torch.cat([xi.explain(name, lite0, lite0_batch[i:i + 1], target=t) for i, t in enumerate([281, 967])])
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-4)
    assert not torch.allclose(batched[0], batched[1])


def test_cam_equals_grad_cam_up_to_scale_for_gap_linear_heads(lite0_double, lite0_batch):
    """For logits = W GAP(A) + b, dS_k/dA_c,ij = W_kc / (h w): Grad-CAM weights are CAM weights / (h w), so the
    normalised maps coincide (Selvaraju et al., sec. 3.1)."""
    x = lite0_batch.double()
    torch.testing.assert_close(xi.explain("cam", lite0_double, x, target=[281, 967]),
                               xi.explain("grad-cam", lite0_double, x, target=[281, 967]), rtol=0, atol=1e-9)


def test_lite0_default_layer_has_constant_gradients_and_the_14x14_layer_does_not(lite0_double, lite0_batch):
    """At ``bn2`` (GAP -> linear follows) the gradient is constant over space, so Grad-CAM, XGrad-CAM and CAM give
    the same map; at ``blocks.4`` (14x14, the thesis's conv5_4 analogue, docs/PROTOCOLS.md) it is not, and the
    gradient-weighted variants tell apart."""
    x = lite0_batch.double()
    default = activations_and_gradients(lite0_double, x, "bn2", [281, 967], with_gradient=True)
    assert default.gradients.flatten(2).std(dim=2).max().item() < 1e-12
    fourteen = activations_and_gradients(lite0_double, x, "blocks.4", [281, 967], with_gradient=True)
    assert fourteen.activations.shape[-2:] == (14, 14) and fourteen.gradients.flatten(2).std(dim=2).min() > 1e-6
    at = {layer: {name: xi.explain(name, lite0_double, x, target=[281, 967], layer=layer)
                  for name in ("grad-cam", "xgrad-cam")} for layer in ("bn2", "blocks.4")}
    torch.testing.assert_close(at["bn2"]["grad-cam"], at["bn2"]["xgrad-cam"], rtol=0, atol=1e-7)
    assert (at["blocks.4"]["grad-cam"] - at["blocks.4"]["xgrad-cam"]).abs().flatten(1).max(1).values.min() > 0.1


# ------------------------------------------------------------------------------------------------- ViT
def vit_reshape_transform(tensor, side=14):
    """pytorch-grad-cam's documented ViT transform: drop the CLS token, tokens -> [B,C,14,14]."""
    return tensor[:, 1:, :].reshape(tensor.size(0), side, side, tensor.size(2)).permute(0, 3, 1, 2)


def test_grad_cam_on_vit_tokens_matches_pytorch_grad_cam():
    """Random-init DeiT-tiny (plumbing): tokens of blocks.11.norm1 folded onto the 14x14 grid."""
    from pytorch_grad_cam import GradCAM as ReferenceGradCAM

    torch.manual_seed(0)
    model = xi.load_model("deit_tiny_patch16_224", weights=None).double()
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    targets = torch.tensor([1, 2])
    _, raw, _ = pytorch_grad_cam_weights_and_maps(ReferenceGradCAM, model, "blocks.11.norm1", x, targets,
                                                  vit_reshape_transform)
    ours = GradCAM().attribute(model, x, targets)
    assert ours.shape == (2, 1, 14, 14) and ours.abs().max() > 0
    torch.testing.assert_close(ours, raw, rtol=1e-7, atol=1e-12)
    maps = xi.explain("grad-cam", model, x, target=targets)
    assert maps.shape == (2, 1, 224, 224) and maps.min() == 0 and maps.max() == 1


# ---------------------------------------------------------------------------------------- bad input
def model_state(model):
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
            [p.grad for p in model.parameters()])


def assert_no_hooks(model):
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks, module
        assert not module._backward_hooks and not module._backward_pre_hooks, module


def prepare_unusual_state(model):
    """Train mode, one frozen parameter, one parameter with a .grad: all must survive an error."""
    model.train()
    params = list(model.parameters())
    params[0].requires_grad_(False)
    params[-1].grad = torch.ones_like(params[-1])
    return model_state(model)


BAD_CASES = [
    ("grad-cam", dict(layer="features.33"), None, None, ValueError, "did you mean"),
    ("grad-cam", dict(layer="classifier"), None, None, ValueError, "spatial"),
    ("grad-cam", {}, None, 5, ValueError, "out of range"),
    ("grad-cam++", {}, None, [0, -1], ValueError, "out of range"),
    ("xgrad-cam", {}, "nan", None, ValueError, "NaN"),
    ("grad-cam", {}, "channels", None, ValueError, "channels"),
    ("cam", dict(layer="features.1"), None, None, ValueError, "CAM needs"),
    ("cam", dict(fc_layer="features.0"), None, None, ValueError, "nn.Linear"),
]


@pytest.mark.parametrize("name,params,bad_input,target,error,message", BAD_CASES)
def test_bad_input_errors_leave_model_clean(name, params, bad_input, target, error, message, tiny_cnn):
    x = torch.randn(2, 3, 16, 16)
    if bad_input == "nan":
        x[1, 0, 3, 3] = float("nan")
    elif bad_input == "channels":
        x = torch.randn(2, 4, 16, 16)
    before = prepare_unusual_state(tiny_cnn)
    with pytest.raises(error, match=message):
        xi.explain(name, tiny_cnn, x, target=target, **params)
    assert_no_hooks(tiny_cnn)
    after = model_state(tiny_cnn)
    assert after[0] == before[0] and after[1] == before[1]
    assert all(a is b for a, b in zip(after[2], before[2]))


def test_target_out_of_range_without_spec_is_caught_after_the_forward():
    model = hand_net("flatten")                             # no model.spec: the logits give the class count
    with pytest.raises(ValueError, match="out of range for a model with 3 classes"):
        xi.explain("grad-cam", model, HAND_X, target=3, layer="features")
    assert_no_hooks(model)


def test_cam_refuses_non_gap_heads():
    """The flatten head has 8 = 2 x 4 inputs: the channel count (2) does not match, so CAM is refused; and a
    head with matching width that is not GAP + linear is caught by the logits check."""
    with pytest.raises(ValueError, match="takes 8 features"):
        xi.explain("cam", hand_net("flatten"), HAND_X, target=1, layer="features")

    class MaxPoolHead(HandNet):
        def forward(self, x):
            return self.fc(self.features(x).amax(dim=(2, 3)))

    with pytest.raises(ValueError, match="global average pool"):
        xi.explain("cam", MaxPoolHead("gap").double().eval(), HAND_X, target=1, layer="features")


def test_shared_layer_and_layer_off_the_path_are_refused():
    class SharedReLU(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2, self.relu = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.ReLU()
            self.aux = nn.Conv2d(4, 4, 1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            a = self.relu(self.conv2(self.relu(self.conv1(x))))
            self.aux(a)                                      # computed, but unused by the logits
            return self.fc(a.mean(dim=(2, 3)))

    model = SharedReLU().eval()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="ran 2 times"):
        xi.explain("grad-cam", model, x, layer="relu")
    with pytest.raises(ValueError, match="do not depend on layer 'aux'"):
        xi.explain("grad-cam", model, x, layer="aux")
    assert_no_hooks(model)


def test_runs_under_no_grad_and_leaves_parameters_untouched(tiny_cnn):
    x = torch.randn(2, 3, 16, 16)
    reference = xi.explain("grad-cam", tiny_cnn, x, target=1)
    with torch.no_grad():
        again = xi.explain("grad-cam", tiny_cnn, x, target=1)
    torch.testing.assert_close(again, reference, rtol=0, atol=0)
    assert all(p.grad is None and p.requires_grad for p in tiny_cnn.parameters())
    with frozen_parameters(tiny_cnn):                        # a frozen model still gets its map
        torch.testing.assert_close(xi.explain("grad-cam", tiny_cnn, x, target=1), reference, rtol=0, atol=0)
