"""LRP rules against explicit matrix-form references, composites, canonizers, conservation, bad input and state.

Reference convention: a linear layer is its dense matrix ``M`` (``z = M x + b``, built column by column from
the layer itself) and rules are written with contributions ``q_ji = M_ji x_i`` as in the LRP papers
(Bach et al. 2015; Montavon et al. 2017, 2019), independently of how :mod:`xaiimg.methods.lrp.rules` computes them.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame
from torch import nn

import xaiimg
from xaiimg.methods import available_methods, get_method
from xaiimg.methods.lrp import LRP, AlphaBeta, Epsilon, Flat, Gamma, Pass, ZBox, ZPlus, make_composite
from xaiimg.methods.lrp.canonizers import batch_norm_pairs, merge_batch_norms
from xaiimg.methods.lrp.rules import stabilize

DT = torch.float64
EPS = 1e-6


# ---------------------------------------------------------------------------------------------- helpers
def matrix_of(layer: nn.Module, in_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense ``M`` ([out, in], flattened) and bias ``b`` of an affine layer, from its responses to basis vectors."""
    with torch.no_grad():
        n = int(torch.tensor(in_shape).prod())
        zero = layer(torch.zeros((1, *in_shape), dtype=DT)).reshape(-1)
        basis = torch.eye(n, dtype=DT).reshape(n, *in_shape)
        return (layer(basis).reshape(n, -1) - zero).T, zero


def propagate(rule, layer: nn.Module, x: torch.Tensor, c_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Input relevance and upper relevance ``R_out = z * c_out`` of one layer under one rule."""
    x = x.clone().requires_grad_()
    handle = rule.register(layer, "layer")
    if rule.produces_relevance:
        rule.model_input = x
    try:
        z = layer(x)
        gradient, = torch.autograd.grad(z, x, c_out)
    finally:
        handle.remove()
    relevance = gradient if rule.produces_relevance else x * gradient
    return relevance, (z * c_out).detach()


def reference(rule: str, M, b, x, r_out, gamma=0.25, alpha=2.0, beta=1.0, low=None, high=None):
    """``R_in`` for one sample in matrix form: ``R_i = sum_j share_ji R_j``."""
    x, r_out = x.reshape(-1), r_out.reshape(-1)
    q = M * x[None, :]
    qp, qn = q.clamp(min=0), q.clamp(max=0)
    if rule == "epsilon":
        share = q / stabilize(q.sum(1) + b, EPS)[:, None]
    elif rule == "alpha-beta":
        share = (alpha * qp / stabilize(qp.sum(1) + b.clamp(min=0), EPS)[:, None]
                 - beta * qn / stabilize(qn.sum(1) + b.clamp(max=0), EPS)[:, None])
    elif rule == "gamma":
        z = q.sum(1) + b
        up, un = q + gamma * qp, q + gamma * qn
        share = ((z > 0)[:, None] * up / stabilize(up.sum(1) + b + gamma * b.clamp(min=0), EPS)[:, None]
                 + (z < 0)[:, None] * un / stabilize(un.sum(1) + b + gamma * b.clamp(max=0), EPS)[:, None])
    elif rule == "zbox":
        low, high = low.reshape(-1), high.reshape(-1)
        terms = q - M.clamp(min=0) * low[None, :] - M.clamp(max=0) * high[None, :]
        share = terms / stabilize(terms.sum(1), EPS)[:, None]
    elif rule == "flat":
        ones = (M != 0).to(DT)
        share = ones / stabilize(ones.sum(1), EPS)[:, None]
    else:
        raise ValueError(rule)
    return (share * r_out[:, None]).sum(0)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


LAYERS = {
    "linear": (lambda: nn.Linear(6, 4), (6,)),
    "conv": (lambda: nn.Conv2d(2, 3, 3, padding=1, stride=2), (2, 5, 5)),
    "depthwise": (lambda: nn.Conv2d(3, 3, 3, padding=1, groups=3), (3, 4, 4)),
    "conv-same": (lambda: Conv2dSame(2, 3, 3, stride=2), (2, 6, 6)),  # timm: pads in forward, as in Lite0
}


def make_layer(kind: str, seed: int = 0) -> tuple[nn.Module, tuple[int, ...]]:
    build, shape = LAYERS[kind]
    torch.manual_seed(seed)
    layer = build().to(DT)
    with torch.no_grad():
        layer.bias.copy_(randn(*layer.bias.shape, seed=seed + 1) * 0.3)
    return layer, shape


# ------------------------------------------------------------------------------------ rules vs matrices
@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("rule,name,kwargs", [
    (Epsilon(EPS), "epsilon", {}),
    (Epsilon(0.3), "epsilon-0.3", {}),
    (ZPlus(EPS), "alpha-beta", {"alpha": 1.0, "beta": 0.0}),
    (AlphaBeta(2.0, 1.0, EPS), "alpha-beta", {"alpha": 2.0, "beta": 1.0}),
    (AlphaBeta(3.0, 2.0, EPS), "alpha-beta", {"alpha": 3.0, "beta": 2.0}),
    (Gamma(0.25, EPS), "gamma", {"gamma": 0.25}),
    (Gamma(1.0, EPS), "gamma", {"gamma": 1.0}),
])
@pytest.mark.parametrize("signed_input", [True, False])
def test_rule_matches_matrix_form(kind, rule, name, kwargs, signed_input):
    layer, shape = make_layer(kind)
    x = randn(2, *shape, seed=3)
    if not signed_input:  # the input of a layer after a ReLU
        x = x.clamp(min=0)
    c_out = randn(*layer(x).shape, seed=4)
    relevance, r_out = propagate(rule, layer, x, c_out)
    M, b = matrix_of(layer, shape)
    for sample in range(2):
        if name.startswith("epsilon"):
            eps = rule.epsilon
            q = M * x[sample].reshape(-1)[None, :]
            expected = (q / stabilize(q.sum(1) + b, eps)[:, None] * r_out[sample].reshape(-1)[:, None]).sum(0)
        else:
            expected = reference(name, M, b, x[sample], r_out[sample], **kwargs)
        torch.testing.assert_close(relevance[sample].reshape(-1), expected, atol=1e-5, rtol=0)
        assert expected.abs().max() > 1e-2  # a non-trivial case


@pytest.mark.parametrize("kind", list(LAYERS))
def test_zbox_matches_matrix_form(kind):
    layer, shape = make_layer(kind, seed=5)
    low, high = -torch.full(shape, 1.5, dtype=DT), torch.full(shape, 2.0, dtype=DT)
    x = randn(2, *shape, seed=6).clamp(-1.5, 2.0)
    c_out = randn(*layer(x).shape, seed=7)
    relevance, r_out = propagate(ZBox(low[None], high[None], EPS), layer, x, c_out)
    M, b = matrix_of(layer, shape)
    for sample in range(2):
        expected = reference("zbox", M, b, x[sample], r_out[sample], low=low, high=high)
        torch.testing.assert_close(relevance[sample].reshape(-1), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_flat_matches_matrix_form(kind):
    layer, shape = make_layer(kind, seed=8)
    with torch.no_grad():
        layer.weight.add_(torch.sign(layer.weight) * 0.01)  # no exact zero weights: every connection counts
    x = randn(2, *shape, seed=9)
    c_out = randn(*layer(x).shape, seed=10)
    relevance, r_out = propagate(Flat(EPS), layer, x, c_out)
    M, b = matrix_of(layer, shape)
    for sample in range(2):
        expected = reference("flat", M, b, x[sample], r_out[sample])
        torch.testing.assert_close(relevance[sample].reshape(-1), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("activation", [nn.ReLU(), nn.ReLU6(), nn.SiLU(), nn.GELU(), nn.LeakyReLU(0.1)])
def test_pass_rule_keeps_relevance(activation):
    x = randn(2, 3, 4, 4, seed=11) * 5  # reaches the ReLU6 ceiling
    x[0, 0, 0, 0] = 0.0
    c_out = randn(2, 3, 4, 4, seed=12)
    relevance, r_out = propagate(Pass(), activation, x, c_out)
    torch.testing.assert_close(relevance, r_out, atol=1e-12, rtol=1e-12)


def test_average_pool_is_linear_and_max_pool_winner_takes_all():
    x = randn(1, 2, 4, 4, seed=13).abs()
    c_out = randn(1, 2, 2, 2, seed=14)
    pool = nn.AvgPool2d(2)
    relevance, r_out = propagate(Epsilon(EPS), pool, x, c_out)
    M, b = matrix_of(pool, (2, 4, 4))
    torch.testing.assert_close(relevance.reshape(-1), reference("epsilon", M, b, x[0], r_out[0]), atol=1e-12, rtol=0)
    # max pooling keeps the plain gradient: each window's relevance goes to its maximum
    x_in = x.clone().requires_grad_()
    out, index = F.max_pool2d(x_in, 2, return_indices=True)
    gradient, = torch.autograd.grad(out, x_in, c_out)
    expected = torch.zeros(1, 2, 16, dtype=DT).scatter_(2, index.flatten(2), (out * c_out).flatten(2).detach())
    torch.testing.assert_close((x * gradient).reshape(1, 2, 16), expected, atol=1e-12, rtol=0)


def test_alpha_beta_validates_parameters():
    with pytest.raises(ValueError, match="alpha - beta must equal 1"):
        AlphaBeta(2.0, 2.0)
    with pytest.raises(ValueError, match="non-negative"):
        AlphaBeta(0.0, -1.0)
    with pytest.raises(ValueError, match="gamma"):
        Gamma(-0.5)


# ------------------------------------------------------------------------------------------ tiny models
class TinyVGG(nn.Module):
    """conv-ReLU-maxpool-conv-ReLU6-avgpool-linear-ReLU-dropout-linear."""

    def __init__(self, bias: bool = True, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1, bias=bias), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 8, 3, padding=1, bias=bias), nn.ReLU6(), nn.AdaptiveAvgPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32, 16, bias=bias), nn.ReLU(), nn.Dropout(0.5),
                                        nn.Linear(16, 5, bias=bias))

    def forward(self, x):
        return self.classifier(self.features(x))


class TinyResNet(nn.Module):
    """Stem conv + BN + ReLU, two torchvision BasicBlocks (one with a downsampling shortcut), GAP, linear."""

    def __init__(self, seed: int = 0, zero_shift: bool = False):
        super().__init__()
        from torchvision.models.resnet import BasicBlock

        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        downsample = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
        self.layer1 = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 16, stride=2, downsample=downsample))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5, bias=not zero_shift)
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    n = module.num_features
                    module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                    module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                    if not zero_shift:
                        module.bias.copy_(torch.randn(n, generator=generator) * 0.2)
                        module.running_mean.copy_(torch.randn(n, generator=generator) * 0.2)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        return self.fc(self.pool(self.layer1(x)).flatten(1))


class TinyPositionAttention(nn.Module):
    """DANet position attention (Fu et al. 2019): ``gamma * V softmax(Q^T K)^T + x``; ``detach_attention`` makes
    the softmax weights constants (the contract with xaiimg.models.aesthetic)."""

    def __init__(self, channels: int):
        super().__init__()
        self.query = nn.Conv2d(channels, channels // 2, 1, bias=False)
        self.key = nn.Conv2d(channels, channels // 2, 1, bias=False)
        self.value = nn.Conv2d(channels, channels, 1, bias=False)
        self.gamma = nn.Parameter(torch.tensor(0.7))
        self.detach_attention = False

    def forward(self, x):
        b, c, h, w = x.shape
        query = self.query(x).flatten(2).transpose(1, 2)
        attention = torch.softmax(query @ self.key(x).flatten(2), dim=-1)
        if self.detach_attention:
            attention = attention.detach()
        out = (self.value(x).flatten(2) @ attention.transpose(1, 2)).view(b, c, h, w)
        return self.gamma * out + x


class TinyChannelAttention(nn.Module):
    """DANet channel attention: ``gamma * softmax(max(E) - E) X + x`` with ``E = X X^T``."""

    def __init__(self):
        super().__init__()
        self.gamma = nn.Parameter(torch.tensor(0.4))
        self.detach_attention = False

    def forward(self, x):
        b, c, h, w = x.shape
        flat = x.flatten(2)
        energy = flat @ flat.transpose(1, 2)
        attention = torch.softmax(energy.amax(-1, keepdim=True) - energy, dim=-1)
        if self.detach_attention:
            attention = attention.detach()
        return self.gamma * (attention @ flat).view(b, c, h, w) + x


class TinyAttentionNet(nn.Module):
    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU())
        self.position = TinyPositionAttention(8)
        self.channel = TinyChannelAttention()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 4, bias=False)
        with torch.no_grad():  # peaked attention, so that its gradient matters
            self.position.query.weight.mul_(3)
            self.position.key.weight.mul_(3)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([self.position(x), self.channel(x)], dim=1)
        return self.fc(self.pool(x).flatten(1))


def snapshot(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_untouched(model: nn.Module, state: dict, params: list) -> None:
    """Same parameter objects, bit-equal state_dict, no hooks, no instance overrides left."""
    assert list(model.parameters()) == params and all(a is b for a, b in zip(model.parameters(), params))
    current = model.state_dict()
    assert current.keys() == state.keys()
    assert all(torch.equal(current[k], state[k]) for k in state)
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks and not module._backward_hooks
        assert "forward" not in module.__dict__


# ------------------------------------------------------------------------------------------- composites
def test_composite_assigns_rules_like_zennit():
    model = TinyVGG()
    rules = make_composite("epsilon-gamma-box", low=-1.0, high=1.0).rules(model)
    kinds = {name: type(rule).__name__ for name, (_, rule) in rules.items()}
    assert kinds == {"features.0": "ZBox", "features.1": "Pass", "features.3": "Gamma", "features.4": "Pass",
                     "features.5": "Epsilon", "classifier.1": "Epsilon", "classifier.2": "Pass",
                     "classifier.4": "Epsilon"}
    flat = make_composite("epsilon-plus-flat").rules(model)
    assert type(flat["features.0"][1]).__name__ == "Flat" and type(flat["features.3"][1]).__name__ == "ZPlus"
    assert type(make_composite("alpha1-beta0").rules(model)["classifier.4"][1]).__name__ == "AlphaBeta"
    with pytest.raises(ValueError, match="needs input bounds"):
        make_composite("epsilon-gamma-box")
    with pytest.raises(ValueError, match="unknown LRP composite 'zplus'"):
        make_composite("zplus")


def test_registry_names_and_raw_signed_output(tiny_cnn):
    names = available_methods()
    assert "lrp" in names and {"lrp-epsilon", "lrp-epsilon-gamma-box", "lrp-alpha1-beta0"} <= set(names)
    assert get_method("lrp").composite == "epsilon-gamma-box"
    assert get_method("lrp-epsilon-plus").composite == "epsilon-plus"
    x = randn(2, 3, 16, 16, seed=20).float()
    raw = xaiimg.explain("lrp", tiny_cnn, x, target=[1, 2], normalize=False, composite="epsilon")
    relevance, _ = LRP("epsilon").relevance(tiny_cnn, x, [1, 2])
    assert raw.shape == (2, 1, 16, 16)
    torch.testing.assert_close(raw, relevance.sum(1, keepdim=True))
    assert (raw < 0).any() and (raw > 0).any()  # signed relevance kept
    normalized = xaiimg.explain("lrp-epsilon", tiny_cnn, x, target=[1, 2])
    assert normalized.min() >= 0 and normalized.max() <= 1
    with pytest.raises(ValueError, match="unknown LRP composite"):
        LRP("gamma-box")
    with pytest.raises(ValueError, match="low and high"):
        LRP(low=0.0)


def test_zbox_bounds_come_from_the_model_spec(tiny_cnn):
    x = randn(1, 3, 16, 16, seed=21).float().clamp(-1, 1)  # tiny_cnn's spec: mean = std = 0.5 -> [-1, 1]
    derived = LRP("epsilon-gamma-box").attribute(tiny_cnn, x, 0)
    explicit = LRP("epsilon-gamma-box", low=-1.0, high=1.0).attribute(tiny_cnn, x, 0)
    other = LRP("epsilon-gamma-box", low=-3.0, high=3.0).attribute(tiny_cnn, x, 0)
    torch.testing.assert_close(derived, explicit)
    assert not torch.allclose(derived, other)
    bare = TinyVGG()
    with pytest.raises(ValueError, match="needs input bounds"):
        LRP("epsilon-gamma-box").attribute(bare, x, 0)


def test_batched_targets_equal_single_runs():
    model = TinyResNet().eval()
    x = randn(3, 3, 12, 12, seed=22).float()
    explainer = LRP("epsilon-gamma-box", low=-3.0, high=3.0)
    batched, logits = explainer.relevance(model, x, [0, 3, 1])
    for i, target in enumerate([0, 3, 1]):
        single, _ = explainer.relevance(model, x[i:i + 1], target)
        torch.testing.assert_close(batched[i:i + 1], single, atol=1e-6, rtol=1e-5)
    default, _ = explainer.relevance(model, x)  # target None: the predicted class, no extra pass
    predicted = logits.argmax(1).tolist()
    torch.testing.assert_close(default, explainer.relevance(model, x, predicted)[0])


# ---------------------------------------------------------------------------------------- conservation
def assert_conserves(model: nn.Module, x: torch.Tensor, targets: list[int]) -> None:
    relevance, logits = LRP("epsilon", epsilon=1e-12, stabilizer=1e-12).relevance(model, x, targets)
    totals = relevance.sum((1, 2, 3))
    expected = logits[torch.arange(len(targets)), targets]
    torch.testing.assert_close(totals, expected, rtol=1e-4, atol=0)


def test_conservation_cnn():
    assert_conserves(TinyVGG(bias=False).to(DT).eval(), randn(2, 3, 8, 8, seed=30), [1, 4])


def test_conservation_residual_network():
    model = TinyResNet(zero_shift=True).to(DT).eval()  # BN with zero shift/mean: merged layers stay bias-free
    assert_conserves(model, randn(2, 3, 8, 8, seed=31), [0, 2])


def test_conservation_attention_needs_detached_attention():
    model = TinyAttentionNet().to(DT).eval()
    x = randn(2, 3, 6, 6, seed=32)
    assert_conserves(model, x, [0, 3])
    assert model.position.detach_attention is False and model.channel.detach_attention is False
    # the same propagation without CP-LRP's constant attention weights is not conservative: the flag matters
    attached = TinyAttentionNet().to(DT).eval()
    for name in ("position", "channel"):
        module = getattr(attached, name)
        module.__class__ = type(f"Never{type(module).__name__}", (type(module),), {
            "detach_attention": property(lambda self: False, lambda self, value: None)})
    relevance, logits = LRP("epsilon", epsilon=1e-12, stabilizer=1e-12).relevance(attached, x, [0, 3])
    selected = logits[[0, 1], [0, 3]]
    assert ((relevance.sum((1, 2, 3)) - selected).abs() / selected.abs()).max() > 1e-2


def test_residual_sum_splits_in_proportion():
    """``s = conv(x) + x``: the skip keeps ``x_i / s_i`` of ``R_s`` and the conv branch the rest (epsilon rule)."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(3)
            self.conv = nn.Conv2d(2, 2, 3, padding=1, bias=False).to(DT)

        def forward(self, x):
            return (self.conv(x) + x).flatten(1)

    block = Block()
    x = randn(1, 2, 3, 3, seed=33).abs() + 0.1
    c = randn(1, 18, seed=34)
    x_in = x.clone().requires_grad_()
    composite = make_composite("epsilon", epsilon=EPS)
    with composite.context(block, x_in) as attribution:
        gradient, = torch.autograd.grad(block(x_in), x_in, c)
    relevance = attribution.relevance(gradient).reshape(-1)
    u = block.conv(x).reshape(-1).detach()
    s = u + x.reshape(-1)
    r_s = s * c.reshape(-1)
    M, b = matrix_of(block.conv, (2, 3, 3))
    expected = r_s * x.reshape(-1) / s + reference("epsilon", M, b, x[0], r_s * u / s)
    torch.testing.assert_close(relevance, expected, atol=1e-10, rtol=0)


# --------------------------------------------------------------------------------------------- canonizers
def test_merge_batch_norm_is_exact_and_reversible():
    model = TinyResNet().to(DT).eval()
    x = randn(2, 3, 8, 8, seed=40)
    state, params = snapshot(model), list(model.parameters())
    expected = model(x)
    pairs = batch_norm_pairs(model)
    assert [(type(a).__name__, type(b).__name__) for a, b in pairs] == [("Conv2d", "BatchNorm2d")] * 6
    with merge_batch_norms(model):
        merged = model(x)
        assert model.conv1.bias is not None and model.conv1.weight is not params[0]
    torch.testing.assert_close(merged, expected, atol=1e-10, rtol=1e-10)
    assert_untouched(model, state, params)
    assert model.conv1.bias is None


def test_merge_timm_batch_norm_act():
    from timm.layers import BatchNormAct2d

    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), BatchNormAct2d(4, act_layer=nn.ReLU6)).to(DT).eval()
    with torch.no_grad():
        model[1].running_mean.copy_(randn(4, seed=41))
        model[1].running_var.copy_(randn(4, seed=42).abs() + 0.2)
        model[1].weight.copy_(randn(4, seed=43) * 3)
    x = randn(1, 3, 6, 6, seed=44)
    expected = model(x)
    state, params = snapshot(model), list(model.parameters())
    with merge_batch_norms(model) as pairs:
        assert pairs == [(model[0], model[1])]
        torch.testing.assert_close(model(x), expected, atol=1e-10, rtol=1e-10)  # ReLU6 still applied
        assert model(x).max() <= 6
    assert_untouched(model, state, params)


# ---------------------------------------------------------------------------------- bad input and state
class WithLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.rnn = nn.LSTM(4, 5, batch_first=True)

    def forward(self, x):
        features = self.bn(self.conv(x)).flatten(2).transpose(1, 2)
        return self.rnn(features)[0][:, -1]


def test_unsupported_layer_raises_naming_it_and_leaves_model_unchanged():
    model = WithLSTM().eval()
    state, params = snapshot(model), list(model.parameters())
    with pytest.raises(ValueError, match=r"no rule for module 'rnn' \(LSTM\)"):
        xaiimg.explain("lrp-epsilon", model, torch.randn(1, 3, 6, 6))
    assert_untouched(model, state, params)
    assert all(p.requires_grad for p in model.parameters())

    lone_bn = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 2, 3), nn.Flatten(), nn.LazyLinear(2)).eval()
    lone_bn(torch.randn(1, 3, 5, 5))
    with pytest.raises(ValueError, match="BatchNorm module '0'.*does not directly follow"):
        LRP("epsilon").attribute(lone_bn, torch.randn(1, 3, 5, 5))


def test_errors_during_attribution_restore_everything():
    class Failing(TinyResNet):
        def forward(self, x):
            super().forward(x)
            raise RuntimeError("boom")

    model = Failing().eval()
    state, params = snapshot(model), list(model.parameters())
    with pytest.raises(RuntimeError, match="boom"):
        LRP("epsilon-gamma-box", low=-2.0, high=2.0).attribute(model, torch.randn(1, 3, 8, 8))
    assert_untouched(model, state, params)
    assert model.relu.inplace is True


def test_in_place_change_of_an_activation_output_raises_clearly():
    class AddOneInPlace(nn.Module):
        def forward(self, x):
            return x.add_(1.0)

    for activation in (nn.SiLU(), nn.ReLU()):  # SiLU: the pass rule's output; ReLU: saved by its own backward
        model = nn.Sequential(nn.Conv2d(3, 4, 3), activation, AddOneInPlace(), nn.Flatten(), nn.Linear(144, 3))
        state, params = snapshot(model.eval()), list(model.parameters())
        with pytest.raises(ValueError, match="modifies the output of an activation in place"):
            LRP("epsilon").attribute(model, torch.randn(1, 3, 8, 8), 0)
        assert_untouched(model, state, params)


def test_zbox_on_a_non_input_layer_raises():
    model = nn.Sequential(nn.Identity(), nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).eval()
    model[0].forward = lambda x: x * 2  # the first conv no longer sees the model input
    x = torch.randn(1, 3, 6, 6)
    with pytest.raises(ValueError, match="module '1'.*does not receive the model input"):
        LRP("epsilon-gamma-box", low=-1.0, high=1.0).attribute(model, x, 0)
    assert not model[1]._forward_hooks


def test_model_state_after_explain(lite0, lite0_batch):
    model = lite0
    state, params = snapshot(model), list(model.parameters())
    modes = [m.training for m in model.modules()]
    inplace = [m.inplace for m in model.modules() if hasattr(m, "inplace")]
    maps = xaiimg.explain("lrp", model, lite0_batch[:1, :, :96, :96], normalize=False)  # a crop, for speed
    assert maps.shape == (1, 1, 96, 96) and torch.isfinite(maps).all() and maps.abs().sum() > 0
    assert_untouched(model, state, params)
    assert [m.training for m in model.modules()] == modes
    assert [m.inplace for m in model.modules() if hasattr(m, "inplace")] == inplace
    assert all(p.grad is None for p in model.parameters())


def test_relu_keeps_its_own_gradient_and_gets_no_hook():
    relu, relu6 = nn.ReLU(), nn.ReLU6()
    Pass().register(relu, "relu")
    handle = Pass().register(relu6, "relu6")
    assert not relu._forward_hooks and len(relu6._forward_hooks) == 1
    handle.remove()
    assert not relu6._forward_hooks
