"""Attention-based explanations of Vision Transformers (timm ``VisionTransformer`` / DeiT).

Every method reads the attention probabilities ``A`` (``[B, heads, N, N]``) of each block ``model.blocks[i].attn``
through :func:`vit_trace`, a context manager that switches timm's fused attention off for its duration (timm's
``F.scaled_dot_product_attention`` path never materialises ``A``), records ``A`` where timm applies
``attn.attn_drop`` to it, and restores ``fused_attn`` and removes every hook on exit, also on error.

Relevance of attention maps, ``R_A``, comes from conservative propagation (CP-LRP; Ali et al., "XAI for
Transformers: Better Explanations through Conservative Propagation", ICML 2022): gradient x input through the ViT
with the softmax attention weights, the LayerNorm standard deviations and the MLP activation gates ``act(z)/z``
held constant. With those constants the network is linear in its additive inputs (pixels, biases, class token,
position embedding), so input relevance plus bias relevance sums to the logit exactly; this is the "full LRP" of the
ViT (method ``"vit-lrp"``). One forward pass serves both the ordinary gradient and the CP-LRP backward: each
LayerNorm, activation and softmax output goes through :class:`_RuleSwitch`, whose backward takes the exact or the
conservative branch as :attr:`ViTTrace.conservative` says.

Difference from Chefer et al.'s code (Transformer-Explainability, ``modules/layers_ours.py``): there every
Linear/Conv layer uses LRP-alpha1-beta0 (z^B at the input), LayerNorm, GELU and softmax have their own relprop
rules, and relevance flows into ``Q`` and ``K`` through the softmax. Here every layer uses the LRP-0 rule
(gradient x input) and ``Q``/``K`` receive no relevance; the relevance of ``A`` itself is taken, as in their
``matmul2.relprop`` for ``A @ V``, as the gradient x input of the factor ``A`` halved between ``A`` and ``V``:
``R_A = 1/2 * A * dR/dA`` with the propagation seeded by 1 at the target logit (their one-hot seed; here divided by
``|logit|`` so that the sign of the relevance does not flip with the sign of the logit).
"""
from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from xaiimg.methods.base import Explainer, register
from xaiimg.nn import TargetLike, frozen_parameters, preserved_state, resolve_targets, select_scores

SEED_EPS = 1e-12


class _RuleSwitch(torch.autograd.Function):
    """Forward: the value of ``exact``. Backward: to ``exact`` (ordinary gradient) or to ``conservative`` (the
    CP-LRP branch, same value, some factors detached), as ``trace.conservative`` says when the backward runs.
    The trace is held by a weak reference: it holds this node's output, and a strong one would make a cycle through
    the autograd graph that Python's collector cannot see (the whole graph leaked on every call)."""

    @staticmethod
    def forward(ctx, exact, conservative, trace):
        ctx.trace = weakref.ref(trace)
        return exact.clone()

    @staticmethod
    def backward(ctx, grad):
        trace = ctx.trace()
        return (None, grad, None) if trace is not None and trace.conservative else (grad, None, None)


class ViTTrace:
    """What :func:`vit_trace` records during one forward pass: each block's attention probabilities (as used in
    ``A @ V``) and the switch between the ordinary and the conservative (CP-LRP) backward rules."""

    def __init__(self, depth: int):
        self.attentions: list[torch.Tensor | None] = [None] * depth
        self.conservative = False

    def gradients(self, score: torch.Tensor, tensors, conservative: bool, retain_graph: bool = True):
        """``d score / d tensors`` with the ordinary (``conservative=False``) or CP-LRP backward rules."""
        self.conservative = conservative
        try:
            return torch.autograd.grad(score, tensors, retain_graph=retain_graph)
        finally:
            self.conservative = False


def vit_blocks(model: nn.Module, method: str) -> list[nn.Module]:
    """The transformer blocks of a timm ``VisionTransformer``-like model; a clear error for anything else."""
    blocks = getattr(model, "blocks", None)
    usable = (isinstance(blocks, nn.Sequential | nn.ModuleList) and len(blocks) > 0
              and all(hasattr(b, "attn") and hasattr(b.attn, "attn_drop") and hasattr(b.attn, "fused_attn")
                      for b in blocks)
              and isinstance(getattr(model, "num_prefix_tokens", None), int))
    if not usable:
        raise TypeError(
            f"{method!r} explains timm Vision Transformers (VisionTransformer / DeiT: model.blocks[i].attn with "
            f"attn_drop and fused_attn, model.num_prefix_tokens); got {type(model).__name__}")
    if getattr(model, "cls_token", None) is None:
        raise TypeError(f"{method!r} reads the class token's attention row, but this {type(model).__name__} has no "
                        "class token (class_token=False)")
    return list(blocks)


def _check_conservative_support(model: nn.Module, blocks: list[nn.Module], method: str) -> None:
    """CP-LRP covers LayerNorm, elementwise MLP activations and softmax attention; refuse what it does not."""
    if getattr(model, "attn_pool", None) is not None:
        raise TypeError(f"{method!r}: attention-pooling heads (global_pool='map') are not supported by CP-LRP")
    for index, block in enumerate(blocks):
        if getattr(block.attn, "gate", None) is not None or not hasattr(getattr(block, "mlp", None), "act"):
            raise TypeError(f"{method!r}: block {index} has a gated attention or an MLP without a single "
                            "elementwise activation (.mlp.act); CP-LRP is implemented for timm's standard ViT block")


def _layer_norm_conservative(module: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm with its standard deviation held constant (Ali et al. 2022, LN rule)."""
    dims = tuple(range(-len(module.normalized_shape), 0))
    centred = x - x.mean(dim=dims, keepdim=True)
    std = (x.var(dim=dims, keepdim=True, unbiased=False) + module.eps).sqrt()
    out = centred / std.detach()
    if module.weight is not None:
        out = out * module.weight
    if module.bias is not None:
        out = out + module.bias
    return out


def _activation_conservative(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x * g`` with the gate ``g = act(x)/x`` held constant (identity rule: relevance passes through)."""
    gate = torch.where(x != 0, y / torch.where(x != 0, x, torch.ones_like(x)), torch.zeros_like(x))
    return x * gate.detach()


@contextmanager
def vit_trace(model: nn.Module, method: str = "vit_trace", conservative_rules: bool = True) -> Iterator[ViTTrace]:
    """Record attention probabilities of every block during the forward passes run inside the context.

    ``conservative_rules``: also route LayerNorms and MLP activations through the CP-LRP switch (needed by the
    relevance-based methods). Fused attention is off inside the context; ``fused_attn``, hooks and module flags are
    restored on exit, also on error.
    """
    blocks = vit_blocks(model, method)
    if conservative_rules:
        _check_conservative_support(model, blocks, method)
    trace = ViTTrace(len(blocks))

    def record_attention(index):
        def hook(_module, _inputs, probabilities):
            switched = _RuleSwitch.apply(probabilities, probabilities.detach(), trace)
            trace.attentions[index] = switched
            return switched
        return hook

    def layer_norm_hook(module, inputs, output):
        return _RuleSwitch.apply(output, _layer_norm_conservative(module, inputs[0]), trace)

    def activation_hook(_module, inputs, output):
        return _RuleSwitch.apply(output, _activation_conservative(inputs[0], output), trace)

    with ExitStack() as stack:
        for block in blocks:
            stack.enter_context(_fused_attention_off(block.attn))
        for index, block in enumerate(blocks):
            stack.callback(block.attn.attn_drop.register_forward_hook(record_attention(index)).remove)
        if conservative_rules:
            for module in model.modules():
                if isinstance(module, nn.LayerNorm):
                    stack.callback(module.register_forward_hook(layer_norm_hook).remove)
            for block in blocks:
                stack.callback(block.mlp.act.register_forward_hook(activation_hook).remove)
        yield trace


@contextmanager
def _fused_attention_off(attention: nn.Module) -> Iterator[None]:
    had_own_flag = "fused_attn" in vars(attention)
    previous = attention.fused_attn
    attention.fused_attn = False
    try:
        yield
    finally:
        if had_own_flag:
            attention.fused_attn = previous
        else:
            del attention.fused_attn


def _check_recorded(trace: ViTTrace, model: nn.Module) -> None:
    missing = [i for i, a in enumerate(trace.attentions) if a is None]
    if missing:
        raise RuntimeError(
            f"attention probabilities of blocks {missing} were not observed in {type(model).__name__}: their "
            "attention module does not pass them through attn.attn_drop (unsupported attention implementation)")


def patch_grid(model: nn.Module, x: torch.Tensor, num_tokens: int) -> tuple[int, int]:
    """Rows and columns of the patch grid for input ``x`` (from ``patch_embed.patch_size``)."""
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if patch is None:
        side = int(round((num_tokens - model.num_prefix_tokens) ** 0.5))
        grid = (side, side)
    else:
        grid = (x.shape[-2] // patch[0], x.shape[-1] // patch[1])
    if grid[0] * grid[1] != num_tokens - model.num_prefix_tokens:
        raise ValueError(f"{num_tokens} tokens with {model.num_prefix_tokens} prefix tokens do not form the "
                         f"{grid[0]}x{grid[1]} patch grid of a {tuple(x.shape[-2:])} input")
    return grid


def class_token_row_to_grid(rows: torch.Tensor, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``[B, N]`` scores of the class token's row -> ``[B, 1, h, w]`` over the patch tokens (prefix tokens dropped)."""
    grid = patch_grid(model, x, rows.shape[-1])
    return rows[:, model.num_prefix_tokens:].reshape(rows.shape[0], 1, *grid)


def attention_relevance(attention: torch.Tensor, conservative_grad: torch.Tensor,
                        score: torch.Tensor) -> torch.Tensor:
    """``R_A = 1/2 * A * dR/dA / |logit|``: CP-LRP relevance of the factor ``A`` of ``A @ V`` for a unit seed,
    halved between ``A`` and ``V`` as in Chefer et al.'s relprop of ``A @ V`` (see the module docstring)."""
    seed = 0.5 / score.detach().abs().clamp_min(SEED_EPS)
    return seed.view(-1, 1, 1, 1) * attention.detach() * conservative_grad


class _ViTExplainer(Explainer):
    """Shared by the ViT methods: one traced forward pass, target logits, the class-token row on the grid."""

    conservative_rules: bool = True

    @contextmanager
    def _traced_forward(self, model, x, target, needs_grad=True):
        with ExitStack() as stack:
            trace = stack.enter_context(vit_trace(model, self.name, self.conservative_rules))
            if needs_grad:
                stack.enter_context(frozen_parameters(model))
                x = x.detach().requires_grad_(True)
                logits = model(x)
            else:
                stack.enter_context(torch.no_grad())
                logits = model(x)
            _check_recorded(trace, model)
            targets = resolve_targets(target, logits)
            yield trace, x, select_scores(logits, targets)

    def _check_start_layer(self, depth: int) -> None:
        if not 0 <= self.start_layer < depth:
            raise ValueError(f"start_layer={self.start_layer} is out of range for a ViT with {depth} blocks")


@register("transformer-attribution")
class TransformerAttribution(_ViTExplainer):
    """Chefer, Gur & Wolf, "Transformer Interpretability Beyond Attention Visualization", CVPR 2021, eq. 13-16.

    Per block ``b``: ``A_bar_b = E_h[(grad A_b * R_A_b)^+]`` (mean over heads after clamping), ``R_A`` from CP-LRP
    (module docstring); ``C = (I + A_bar_{L-1}) ... (I + A_bar_start)``, i.e. ``R <- R + A_bar_b @ R`` from
    ``R = I``; the class token's row over the patch tokens, on the patch grid.

    ``start_layer``: first block included. 0 (default) is the paper's equation; Chefer's evaluation scripts
    (perturbation and segmentation tests) call ``generate_LRP(..., start_layer=1)``.
    """

    def __init__(self, start_layer: int = 0):
        self.start_layer = start_layer

    def attribute(self, model, x, target: TargetLike = None):
        with self._traced_forward(model, x, target) as (trace, _, score):
            self._check_start_layer(len(trace.attentions))
            grads = trace.gradients(score.sum(), trace.attentions, conservative=False)
            cp_grads = trace.gradients(score.sum(), trace.attentions, conservative=True, retain_graph=False)
            attentions = [a.detach() for a in trace.attentions]
        batch, _, tokens, _ = attentions[0].shape
        rollout = torch.eye(tokens, dtype=x.dtype, device=x.device).expand(batch, tokens, tokens)
        for index in range(self.start_layer, len(attentions)):
            relevance = attention_relevance(attentions[index], cp_grads[index], score)
            mixed = (grads[index] * relevance).clamp(min=0).mean(dim=1)
            rollout = rollout + mixed @ rollout
        return class_token_row_to_grid(rollout[:, 0], model, x)


@register("attention-rollout")
class AttentionRollout(_ViTExplainer):
    """Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020.

    ``A_hat_b = rownorm(E_h[A_b] + I)``; ``R = A_hat_{L-1} ... A_hat_start``; the class token's row over the patch
    tokens (as Chefer et al.'s ``generate_rollout``). The target is ignored (rollout is class-agnostic).
    """

    conservative_rules = False

    def __init__(self, start_layer: int = 0):
        self.start_layer = start_layer

    def attribute(self, model, x, target: TargetLike = None):
        with self._traced_forward(model, x, target, needs_grad=False) as (trace, _, _score):
            self._check_start_layer(len(trace.attentions))
            attentions = [a.detach() for a in trace.attentions]
        tokens = attentions[0].shape[-1]
        identity = torch.eye(tokens, dtype=x.dtype, device=x.device)
        rollout = identity.expand(x.shape[0], tokens, tokens)
        for attention in attentions[self.start_layer:]:
            augmented = attention.mean(dim=1) + identity
            rollout = (augmented / augmented.sum(dim=-1, keepdim=True)) @ rollout
        return class_token_row_to_grid(rollout[:, 0], model, x)


@register("partial-lrp")
class PartialLRP(_ViTExplainer):
    """Partial LRP (Voita et al., ACL 2019, as Chefer et al.'s ``method="last_layer"`` baseline): the relevance
    ``R_A`` of the last block's attention map (CP-LRP, module docstring), ``E_h[R_A^+]``, class token's row."""

    def attribute(self, model, x, target: TargetLike = None):
        with self._traced_forward(model, x, target) as (trace, _, score):
            last = trace.attentions[-1]
            (cp_grad,) = trace.gradients(score.sum(), [last], conservative=True, retain_graph=False)
            relevance = attention_relevance(last, cp_grad, score)
        return class_token_row_to_grid(relevance.clamp(min=0).mean(dim=1)[:, 0], model, x)


@register("attention-grad-cam")
class AttentionGradCAM(_ViTExplainer):
    """Grad-CAM on the last block's attention (Chefer et al.'s baseline, ``GradCam.generate_cam_attn``):
    head weights ``w_h`` = mean of ``dy_c/dA_h`` over the class token's row at the patch tokens;
    map = ``(E_h[w_h * A_h[cls, patches]])^+``."""

    conservative_rules = False

    def attribute(self, model, x, target: TargetLike = None):
        with self._traced_forward(model, x, target) as (trace, _, score):
            last = trace.attentions[-1]
            (grad,) = trace.gradients(score.sum(), [last], conservative=False, retain_graph=False)
        prefix = model.num_prefix_tokens
        weights = grad[:, :, 0, prefix:].mean(dim=-1, keepdim=True)
        rows = (last.detach()[:, :, 0] * weights).mean(dim=1).clamp(min=0)
        return class_token_row_to_grid(rows, model, x)


@register("vit-lrp")
class ViTLRP(_ViTExplainer):
    """Full LRP of the ViT by conservative propagation (CP-LRP, Ali et al. 2022): input relevance
    ``x * dR/dx`` summed over colour channels (Chefer et al.'s ``method="full"`` reads the same place: the patch
    tokens' relevance, class token and position embedding excluded, through the patch embedding to the pixels).
    Raw maps sum to the target logit minus what biases, class token and position embedding absorb."""

    def relevance(self, model, x, target: TargetLike = None) -> torch.Tensor:
        """Per-channel input relevance ``[B, C, H, W]``."""
        with preserved_state(model), self._traced_forward(model, x, target) as (trace, inputs, score):
            (grad,) = trace.gradients(score.sum(), [inputs], conservative=True, retain_graph=False)
        return inputs.detach() * grad

    def attribute(self, model, x, target: TargetLike = None):
        return self.relevance(model, x, target).sum(dim=1, keepdim=True)
