"""Transformer attribution, rollout, partial LRP, attention Grad-CAM and CP-LRP on a tiny timm ViT (float64),
against a direct implementation of the equations that materialises attention explicitly (no hooks, no switch)."""
from __future__ import annotations

import gc

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xaiimg
from xaiimg.methods.transformer import (
    AttentionGradCAM,
    AttentionRollout,
    PartialLRP,
    TransformerAttribution,
    ViTLRP,
    ViTTrace,
    vit_trace,
)


def tiny_vit(seed: int = 0, zero_biases: bool = False) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=5)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.1 if zero_biases and (name.endswith("bias") or name in ("pos_embed", "cls_token")) else 0.4
            p.copy_(torch.randn(p.shape, generator=generator) * scale)
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "norm.weight":
                p.add_(1.0)
            if zero_biases and (name.endswith("bias") or name in ("pos_embed", "cls_token")):
                p.zero_()
    return model.double().eval()


def images(batch: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def set_fused(model, fused: bool) -> None:
    for block in model.blocks:
        block.attn.fused_attn = fused


# --------------------------------------------------------------------------- direct implementation of the equations
def layer_norm(module, t, conservative):
    mean = t.mean(-1, keepdim=True)
    std = ((t - mean).pow(2).mean(-1, keepdim=True) + module.eps).sqrt()
    return (t - mean) / (std.detach() if conservative else std) * module.weight + module.bias


def direct_forward(model, x, conservative):
    """Literal ViT forward; returns logits and per-block attention probabilities ``A`` as used in ``A @ V``.
    ``conservative``: CP-LRP (softmax, LayerNorm std and GELU gate detached; ``A`` a leaf)."""
    batch = x.shape[0]
    tokens = F.conv2d(x, model.patch_embed.proj.weight, model.patch_embed.proj.bias, stride=8)
    tokens = tokens.flatten(2).transpose(1, 2)
    t = torch.cat([model.cls_token.expand(batch, -1, -1), tokens], dim=1) + model.pos_embed
    attentions = []
    for block in model.blocks:
        attn = block.attn
        h = layer_norm(block.norm1, t, conservative)
        qkv = (h @ attn.qkv.weight.T + attn.qkv.bias).reshape(batch, -1, 3, 2, 8).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        probabilities = torch.softmax((q * 8 ** -0.5) @ k.transpose(-2, -1), dim=-1)
        if conservative:
            probabilities = probabilities.detach().requires_grad_(True)
        attentions.append(probabilities)
        mixed = (probabilities @ v).transpose(1, 2).reshape(batch, -1, 16)
        t = t + mixed @ attn.proj.weight.T + attn.proj.bias
        h = layer_norm(block.norm2, t, conservative)
        h = h @ block.mlp.fc1.weight.T + block.mlp.fc1.bias
        gelu = F.gelu(h)
        h = h * (gelu / h).detach() if conservative else gelu
        t = t + h @ block.mlp.fc2.weight.T + block.mlp.fc2.bias
    t = layer_norm(model.norm, t, conservative)
    return t[:, 0] @ model.head.weight.T + model.head.bias, attentions


def direct_maps(model, x, target, start_layer=0):
    """Transformer attribution (Chefer eq. 13-16 with R_A = A * dR/dA / (2|y_c|)), rollout, partial LRP and
    attention Grad-CAM, each as the class token's row over the 16 patches, shape [B,1,4,4]; and the CP-LRP input
    relevance summed over channels, [B,1,32,32]."""
    x = x.detach().requires_grad_(True)
    logits, attentions = direct_forward(model, x, conservative=False)
    score = logits[torch.arange(len(target)), target]
    grads = torch.autograd.grad(score.sum(), attentions)
    cp_logits, cp_attentions = direct_forward(model, x, conservative=True)
    cp_score = cp_logits[torch.arange(len(target)), target]
    torch.testing.assert_close(cp_score, score)
    cp_grads = torch.autograd.grad(cp_score.sum(), cp_attentions, retain_graph=True)
    full_lrp = (x * torch.autograd.grad(cp_score.sum(), x)[0]).sum(1, keepdim=True).detach()
    relevances = [0.5 * a.detach() * g / score.detach().abs().view(-1, 1, 1, 1)
                  for a, g in zip(attentions, cp_grads)]
    eye = torch.eye(17, dtype=x.dtype).expand(len(target), 17, 17)
    attribution, rollout = eye, eye
    for index in range(start_layer, 2):
        a_bar = (grads[index] * relevances[index]).clamp(min=0).mean(1)
        attribution = (eye + a_bar) @ attribution
        augmented = attentions[index].detach().mean(1) + eye
        rollout = (augmented / augmented.sum(-1, keepdim=True)) @ rollout
    partial = relevances[-1].clamp(min=0).mean(1)[:, 0]
    head_weights = grads[-1][:, :, 0, 1:].mean(-1, keepdim=True)
    grad_cam = (attentions[-1].detach()[:, :, 0, 1:] * head_weights).mean(1).clamp(min=0)

    def grid(rows):
        return rows[:, -16:].reshape(-1, 1, 4, 4)

    return {"transformer-attribution": grid(attribution[:, 0]), "attention-rollout": grid(rollout[:, 0]),
            "partial-lrp": grid(partial), "attention-grad-cam": grid(grad_cam), "vit-lrp": full_lrp}


METHODS = {"transformer-attribution": TransformerAttribution, "attention-rollout": AttentionRollout,
           "partial-lrp": PartialLRP, "attention-grad-cam": AttentionGradCAM, "vit-lrp": ViTLRP}


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("batch,target", [(1, [2]), (3, [0, 4, 2])])
def test_methods_equal_direct_equations(fused, batch, target):
    model = tiny_vit()
    x = images(batch)
    set_fused(model, fused)
    expected = direct_maps(model, x, torch.tensor(target))
    for name, cls in METHODS.items():
        got = cls().attribute(model, x, target)
        assert got.shape == expected[name].shape
        torch.testing.assert_close(got, expected[name], rtol=1e-9, atol=1e-12, msg=name)
        assert (got.flatten(1).abs().sum(1) > 0).all(), name  # no degenerate all-zero case
    assert all(block.attn.fused_attn is fused for block in model.blocks)
    assert all(not m._forward_hooks for m in model.modules())


def test_start_layer_one_and_public_api():
    model = tiny_vit()
    x = images(2)
    target = torch.tensor([1, 1])
    expected = direct_maps(model, x, target, start_layer=1)
    got = TransformerAttribution(start_layer=1).attribute(model, x, 1)
    torch.testing.assert_close(got, expected["transformer-attribution"], rtol=1e-9, atol=1e-12)
    assert not torch.allclose(got, direct_maps(model, x, target)["transformer-attribution"])
    maps = xaiimg.explain("transformer-attribution", model, x, target=1, start_layer=1)
    assert maps.shape == (2, 1, 32, 32) and maps.min() >= 0 and maps.max() <= 1
    upsampled = F.interpolate(got, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(maps, (upsampled - upsampled.amin((1, 2, 3), keepdim=True))
                               / (upsampled.amax((1, 2, 3), keepdim=True) - upsampled.amin((1, 2, 3), keepdim=True)))


def test_batched_targets_match_single_images():
    model = tiny_vit(seed=3)
    x = images(3, seed=5)
    batched = TransformerAttribution().attribute(model, x, [2, 0, 2])
    singles = torch.cat([TransformerAttribution().attribute(model, x[i:i + 1], t) for i, t in enumerate([2, 0, 2])])
    torch.testing.assert_close(batched, singles)


def test_target_none_is_predicted_class():
    model = tiny_vit()
    x = images(2)
    predicted = model(x).argmax(1)
    torch.testing.assert_close(PartialLRP().attribute(model, x, None), PartialLRP().attribute(model, x, predicted))


# ------------------------------------------------------------------------------------------ CP-LRP conservation
@pytest.mark.parametrize("fused", [True, False])
def test_cp_lrp_conserves_the_logit_without_biases(fused):
    model = tiny_vit(seed=2, zero_biases=True)
    set_fused(model, fused)
    x = images(2, seed=7)
    target = [4, 1]
    logits = model(x).detach()
    relevance = xaiimg.explain("vit-lrp", model, x, target=target, normalize=False)
    assert relevance.shape == (2, 1, 32, 32)
    totals = relevance.sum(dim=(1, 2, 3))
    expected = logits[torch.arange(2), torch.tensor(target)]
    torch.testing.assert_close(totals, expected, rtol=1e-4, atol=0)
    # The rules matter: plain gradient x input does not conserve.
    x_grad = x.clone().requires_grad_(True)
    plain = (x_grad * torch.autograd.grad(model(x_grad)[torch.arange(2), torch.tensor(target)].sum(), x_grad)[0])
    assert not torch.allclose(plain.sum(dim=(1, 2, 3)), expected, rtol=1e-2)


def test_cp_lrp_with_biases_conserves_input_plus_bias_relevance():
    """With biases, class token and position embedding, the CP-linearised net is linear in all additive inputs:
    sum(x dy/dx) + sum over additive parameters p of (p dy/dp) equals the logit exactly."""
    model = tiny_vit(seed=4)
    x = images(1, seed=8).requires_grad_(True)
    additive = [p for n, p in model.named_parameters() if n.endswith("bias") or n in ("cls_token", "pos_embed")]
    with vit_trace(model) as trace:
        score = model(x)[0, 2]
        grads = trace.gradients(score, [x] + additive, conservative=True, retain_graph=False)
    total = sum((t.detach() * g).sum() for t, g in zip([x] + additive, grads))
    torch.testing.assert_close(total, score.detach(), rtol=1e-10, atol=1e-10)
    input_relevance = ViTLRP().attribute(model, x.detach(), 2).sum()
    torch.testing.assert_close(input_relevance, (x.detach() * grads[0]).sum())


# ---------------------------------------------------------------------------------------------------- bad input
def test_non_vit_model_is_refused_by_name(tiny_cnn):
    x = torch.rand(1, 3, 16, 16)
    for name in ["transformer-attribution", "attention-rollout", "partial-lrp", "attention-grad-cam", "vit-lrp"]:
        with pytest.raises(TypeError, match=rf"{name}.*TinyCNN"):
            xaiimg.explain(name, tiny_cnn, x)
    assert all(not m._forward_hooks for m in tiny_cnn.modules())


def test_state_restored_after_errors():
    model = tiny_vit()
    set_fused(model, True)
    with pytest.raises(ValueError, match="start_layer=5"):
        TransformerAttribution(start_layer=5).attribute(model, images(1), 0)
    with pytest.raises(AssertionError):  # timm's own input-size check fires inside the traced forward
        xaiimg.explain("transformer-attribution", model, torch.randn(1, 3, 48, 48, dtype=torch.float64))
    with pytest.raises(ValueError, match="out of range"):
        xaiimg.explain("partial-lrp", model, images(1), target=9)
    assert all(block.attn.fused_attn is True for block in model.blocks)
    assert all(not m._forward_hooks for m in model.modules())
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    assert not model.training
    model.train()
    xaiimg.explain("attention-grad-cam", model, images(1))
    assert model.training and model.blocks[0].training


def test_distilled_deit_two_prefix_tokens():
    """DeiT-distilled layout: class and distillation tokens (num_prefix_tokens=2); maps cover the 16 patches only,
    and CP-LRP still conserves the (averaged-heads) logit without biases."""
    from timm.models.deit import VisionTransformerDistilled

    torch.manual_seed(0)
    model = VisionTransformerDistilled(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or name in ("pos_embed", "cls_token", "dist_token"):
                p.zero_()
            else:
                p.copy_(torch.randn_like(p) * 0.4 + (1.0 if "norm" in name else 0.0))
    model = model.double().eval()
    assert model.num_prefix_tokens == 2
    x = images(2)
    for name, cls in METHODS.items():
        assert cls().attribute(model, x, [1, 2]).shape == ((2, 1, 32, 32) if name == "vit-lrp" else (2, 1, 4, 4)), name
    with vit_trace(model, conservative_rules=False) as trace, torch.no_grad():
        model(x)
    rollout = AttentionRollout().attribute(model, x)
    eye = torch.eye(18, dtype=torch.float64)
    expected = eye.expand(2, 18, 18)
    for attention in trace.attentions:
        augmented = attention.mean(1) + eye
        expected = (augmented / augmented.sum(-1, keepdim=True)) @ expected
    torch.testing.assert_close(rollout, expected[:, 0, 2:].reshape(2, 1, 4, 4))
    relevance = ViTLRP().attribute(model, x, [1, 2]).sum(dim=(1, 2, 3))
    torch.testing.assert_close(relevance, model(x)[[0, 1], [1, 2]].detach(), rtol=1e-4, atol=0)


@pytest.mark.parametrize("name,backwards", [("transformer-attribution", 2), ("attention-rollout", 0),
                                            ("partial-lrp", 1), ("attention-grad-cam", 1), ("vit-lrp", 1)])
def test_pass_counts(name, backwards):
    """One forward pass for every method; transformer attribution backpropagates twice through the same graph
    (ordinary gradient, then CP-LRP), the others at most once."""
    from xaiimg.passes import count_passes

    model = tiny_vit()
    with count_passes(model) as log:
        xaiimg.explain(name, model, images(3), target=[0, 1, 2])
    assert log.forward_batches == [3]
    assert log.backward_batches == [3] * backwards


@pytest.mark.parametrize("name", ["transformer-attribution", "attention-rollout", "partial-lrp",
                                  "attention-grad-cam", "vit-lrp"])
def test_no_trace_or_graph_outlives_a_call(name):
    """Regression: the rule switch held its trace strongly while the trace held the switch's output, a cycle
    through the autograd graph that the collector cannot see, so every call leaked its whole graph (measured on
    the synthetic ViT: +170 MB per call of 16 images)."""
    model, x = tiny_vit(), images(2)
    xaiimg.explain(name, model, x, target=[0, 1])
    gc.collect()
    assert not [obj for obj in gc.get_objects() if isinstance(obj, ViTTrace)]
