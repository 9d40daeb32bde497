"""LRP rules as small hooks that rewrite one layer's backward pass (zennit's ``core.py`` idea).

Convention ("modified gradient x input"): during attribution the gradient that flows backwards through the
network is a *relevance density* ``c`` with ``R = a * c`` for every activation ``a``. At the output it is the
one-hot vector of the target class, so ``R_out = logit``; at the input ``R = x * x.grad``. Each rule maps the
upper density ``c_out`` of a layer to the lower one ``c_in`` so that ``x * c_in`` is the rule's relevance:

- linear maps, sums, max-pooling, flattening, dropout: the ordinary gradient already is LRP-0 / winner-take-all
  / a split in proportion to the summands, because ``x * J^T c`` distributes ``z * c`` over the contributions;
- :class:`Epsilon` rescales the upper gradient by ``z / (z + eps*sign(z))`` before the layer's own backward;
- :class:`Pass` (ReLU, ReLU6, SiLU, GELU, ...) replaces ``f'(x)`` by ``f(x)/x``, i.e. ``R_in = R_out``;
- :class:`ZPlus`, :class:`Gamma` and :class:`ZBox` replace the layer's forward by one :class:`_Fused` call that
  computes the layer output and the rule's modified product (z+, gamma: one, ``w+ x`` or on ``[x+, x-]``
  stacked for signed inputs; z^B: the bounds' products at batch 1) and keeps an output-sized ratio; their
  backward multiplies ``c_out`` by it and applies the transposed weights directly (``convolution_backward`` /
  transposed convolution), without an autograd graph of a modified forward. The hook-based implementations
  (``input_gradient`` / ``forward_hook``) remain for modules the fused path does not cover and as its reference
  (``fused = False``); :class:`AlphaBeta` with ``beta > 0`` recomputes the layer with modified weights in the
  backward;
- input-layer rules (:class:`ZBox`, :class:`Flat`) distribute relevance onto input values that need not be
  proportional to ``x``; they return the relevance itself (``produces_relevance``) and must see the model input.

Rules match zennit 0.5.1's definitions (``zennit.rules``) term by term, including the stabiliser
``z + eps * sign(z)`` with ``sign(0) = 1`` (Bach et al. 2015; Montavon et al. 2019, "Layer-wise relevance
propagation: an overview"; Andeol et al. 2021 for the generalised gamma rule).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn


def stabilize(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``z + epsilon * sign(z)`` with ``sign(0) = 1`` (zennit's ``Stabilizer``, Captum's ``EpsilonRule``).

    Computed as ``(|z| + epsilon)`` with the sign of ``z``, exact in the input's dtype; ``-0.0`` gets
    ``-epsilon``, which changes nothing: a sum is ``-0.0`` only if all its terms are, so every contribution is 0."""
    return z.abs().add_(epsilon).copysign_(z)


# ------------------------------------------------------------------------------------- linear map helpers
_PLAIN_FORWARDS = {nn.Conv1d.forward, nn.Conv2d.forward, nn.Conv3d.forward}


def linear_map(module: nn.Module, x: torch.Tensor, weight: torch.Tensor,
               bias: torch.Tensor | None = None) -> torch.Tensor:
    """The module's affine map ``x -> W x + b`` with ``weight`` and ``bias`` substituted, padding included, in
    ``x``'s dtype (a backward outside autocast meets bfloat16 tensors saved under it)."""
    weight = weight.to(x.dtype)
    bias = None if bias is None else bias.to(x.dtype)
    if type(module).forward is nn.Linear.forward:
        return F.linear(x, weight, bias)
    if type(module).forward in _PLAIN_FORWARDS:
        return module._conv_forward(x, weight, bias)
    with substituted_parameters(module, weight=weight, bias=bias):  # e.g. timm's Conv2dSame (pads, then convs)
        return type(module).forward(module, x)  # the class's forward: a fused rule may replace the instance's


@contextmanager
def substituted_parameters(module: nn.Module, **tensors: torch.Tensor | None) -> Iterator[nn.Module]:
    """Temporarily replace entries of ``module._parameters`` (same objects put back, also on error)."""
    saved = {name: module._parameters[name] for name in tensors}
    try:
        module._parameters.update(tensors)
        yield module
    finally:
        module._parameters.update(saved)


def vjp(outputs: list[torch.Tensor], inputs: list[torch.Tensor], grads: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(outputs, inputs, grads)


def has_negatives(x: torch.Tensor) -> bool:
    """Whether ``x`` has a negative entry (one reduction, no boolean tensor)."""
    return x.numel() > 0 and bool(x.amin() < 0)


# ---------------------------------------------------------------------------------------------- hooks
class _Rewired(torch.autograd.Function):
    """Identity on the layer output ``z`` whose backward is ``rule(x, z, c_out) -> gradient for x``."""

    @staticmethod
    def forward(ctx, rule: Callable, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        ctx.rule = rule
        ctx.save_for_backward(x, z)
        return z.clone()  # a fresh tensor: later in-place ops in the model cannot touch the saved ``z``

    @staticmethod
    def backward(ctx, c_out: torch.Tensor):
        x, z = ctx.saved_tensors
        with torch.enable_grad():
            return None, ctx.rule(x, z, c_out), None


class Rule:
    """A hook for one module. ``register(module, name)`` attaches it; the returned handle removes it."""

    produces_relevance = False  # True: the backward yields relevance itself (input-layer rules)

    def register(self, module: nn.Module, name: str = "") -> torch.utils.hooks.RemovableHandle:
        return module.register_forward_hook(partial(self.forward_hook, name=name))

    def forward_hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor, name: str = ""):
        if not isinstance(output, torch.Tensor) or not inputs or not inputs[0].requires_grad:
            return None
        return _Rewired.apply(partial(self.input_gradient, module), inputs[0], output.detach())

    def input_gradient(self, module: nn.Module, x: torch.Tensor, z: torch.Tensor, c_out: torch.Tensor) -> torch.Tensor:
        """Lower relevance density ``c_in`` (or relevance, if ``produces_relevance``) from ``c_out``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


_NO_HOOK = SimpleNamespace(remove=lambda: None)  # what ``Rule.register`` returns when no hook is needed


# ------------------------------------------------------------------------------ fused rules (one Function per layer)
def _as_tuple(value, n: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n


def _is_conv2d_same(module: nn.Module) -> bool:
    """timm's ``Conv2dSame`` (TensorFlow "SAME" padding: an asymmetric zero pad in its forward, then the conv)."""
    try:
        from timm.layers import Conv2dSame
    except ImportError:  # pragma: no cover - timm is a dependency
        return False
    return (type(module).forward is Conv2dSame.forward and module.padding_mode == "zeros"
            and isinstance(module.padding, tuple) and not any(module.padding))


def _symmetric_padding(padding, kernel, dilation) -> tuple[int, ...] | None:
    """A convolution's padding as numbers, or None where ``"same"`` pads asymmetrically."""
    if padding == "valid":
        return (0,) * len(kernel)
    if padding == "same":
        total = [d * (k - 1) for k, d in zip(kernel, dilation)]
        return None if any(t % 2 for t in total) else tuple(t // 2 for t in total)
    return _as_tuple(padding, len(kernel))


class _AffineCall:
    """One call of a conv/linear module as an affine map ``x -> W x + b``: products with substituted weights and
    their transposes ``W^T g``, computed directly (``aten.convolution_backward`` for the input only, a transposed
    convolution for grouped ones, ``g @ W`` for linear layers) rather than through the autograd graph of a
    modified forward.

    Inputs and weights may be *stacked*: ``n`` tensors side by side in every group's channels
    (:meth:`stack_inputs`, weights ``torch.cat(ws, dim=1)``), so that one product computes ``sum_k w_k x_k`` and one
    transpose yields every ``w_k^T g`` (:meth:`split`).

    Supported (:meth:`supports`): ``nn.Linear``; ``nn.Conv1d/2d/3d`` with zero padding given as numbers,
    ``"valid"`` or a symmetric ``"same"``; timm's ``Conv2dSame``. The rules keep their hook-based path for others.
    """

    def __init__(self, module: nn.Module, x: torch.Tensor):
        self.module = module
        self.linear = type(module).forward is nn.Linear.forward
        self.groups = 1 if self.linear else module.groups
        self.channel_dim = -1 if self.linear else 1
        self.pad: tuple[int, ...] | None = None  # F.pad amounts (last dimension first), Conv2dSame only
        if self.linear:
            return
        kernel = module.weight.shape[2:]
        self.stride, self.dilation = _as_tuple(module.stride, len(kernel)), _as_tuple(module.dilation, len(kernel))
        if _is_conv2d_same(module):
            self.padding = (0,) * len(kernel)
            pads = []
            for size, k, s, d in zip(*(reversed(v) for v in (x.shape[2:], kernel, self.stride, self.dilation))):
                total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
                pads += [total // 2, total - total // 2]
            self.pad = tuple(pads) if any(pads) else None
        else:
            self.padding = _symmetric_padding(module.padding, kernel, self.dilation)

    @staticmethod
    def supports(module: nn.Module) -> bool:
        if type(module).forward is nn.Linear.forward:
            return True
        if type(module).forward in _PLAIN_FORWARDS:
            kernel = module.weight.shape[2:]
            padding = _symmetric_padding(module.padding, kernel, _as_tuple(module.dilation, len(kernel)))
            return module.padding_mode == "zeros" and padding is not None
        return _is_conv2d_same(module)

    # ---------------------------------------------------------------------------------------- products
    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The input as the convolution sees it (zero-padded for ``Conv2dSame``)."""
        return x if self.pad is None else F.pad(x, self.pad)

    def product(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``weight x + bias`` for a :meth:`prepare`-d input (plain or stacked to match ``weight``), in the input's
        dtype (a backward outside autocast meets bfloat16 tensors saved under it)."""
        weight = weight.to(x.dtype)
        bias = None if bias is None else bias.to(x.dtype)
        if self.linear:
            return F.linear(x, weight, bias)
        conv = (F.conv1d, F.conv2d, F.conv3d)[weight.ndim - 3]
        return conv(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def transpose(self, g: torch.Tensor, weight: torch.Tensor, input_shape: torch.Size, stacked: int = 1
                  ) -> torch.Tensor:
        """``weight^T g`` onto the (unpadded) input; ``stacked``: how many inputs ``weight`` stacks (the result
        has that many times the channels, see :meth:`split`); in ``g``'s dtype."""
        weight = weight.to(g.dtype)
        if self.linear:
            return g.matmul(weight)
        shape = list(input_shape)
        shape[1] *= stacked
        if self.pad is not None:
            for i in range(len(self.stride)):
                shape[-1 - i] += self.pad[2 * i] + self.pad[2 * i + 1]
        groups = self.groups
        if groups > 1:  # depthwise: the transposed convolution is 1.2-5x faster than convolution_backward (CPU)
            output_padding = [size - ((out - 1) * s - 2 * p + d * (k - 1) + 1) for size, out, s, p, d, k in zip(
                shape[2:], g.shape[2:], self.stride, self.padding, self.dilation, weight.shape[2:])]
            transposed = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[weight.ndim - 3]
            result = transposed(g, weight, None, self.stride, self.padding, output_padding, groups, self.dilation)
        else:
            dummy = g.new_empty(1).expand(shape)  # convolution_backward reads only the input's shape here
            result = torch.ops.aten.convolution_backward(
                g, dummy, weight, None, self.stride, self.padding, self.dilation, False, [0] * len(self.stride),
                groups, (True, False, False))[0]
        if self.pad is not None:  # the adjoint of zero-padding is cropping
            crop = [slice(None), slice(None)]
            for i in reversed(range(len(self.stride))):
                crop.append(slice(self.pad[2 * i], self.pad[2 * i] + input_shape[-1 - i]))
            result = result[tuple(crop)]
        return result

    # ------------------------------------------------------------------------------- stacked layouts
    def grouped(self, t: torch.Tensor) -> torch.Tensor:
        """``[B, C, ...]`` as ``[B, G, C/G, ...]`` (linear layers: unchanged), the layout of :meth:`split`'s parts."""
        if self.linear:
            return t
        return t.reshape(t.shape[0], self.groups, t.shape[1] // self.groups, *t.shape[2:])

    def ungrouped(self, t: torch.Tensor) -> torch.Tensor:
        if self.linear:
            return t
        return t.reshape(t.shape[0], t.shape[1] * t.shape[2], *t.shape[3:])

    def stack_inputs(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """``[p0, p1, ...]`` side by side in every group's channels (weights: ``torch.cat(ws, dim=1)``)."""
        if self.linear or self.groups == 1:
            return torch.cat(parts, dim=self.channel_dim)
        stacked = torch.stack([self.grouped(p) for p in parts], dim=2)
        return stacked.reshape(stacked.shape[0], -1, *stacked.shape[4:])

    def split(self, t: torch.Tensor, n: int) -> list[torch.Tensor]:
        """The ``n`` parts of a stacked input-side tensor (views, laid out as :meth:`grouped`)."""
        if self.linear:
            return list(t.chunk(n, dim=-1))
        view = t.reshape(t.shape[0], self.groups, n, t.shape[1] // (n * self.groups), *t.shape[2:])
        return [view[:, :, k] for k in range(n)]


class _Fused(torch.autograd.Function):
    """A layer's own forward together with what its rule needs for the backward (``rule.fused_forward``); the
    backward is ``rule.fused_backward``. The layer output is returned as a fresh tensor and the rule keeps only
    tensors of its own, so later in-place changes of the output are harmless and nothing is copied. The backward
    computes in place in that state and releases it, so it runs once (no ``retain_graph``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, rule: _FusedRule, module: nn.Module) -> torch.Tensor:
        call = _AffineCall(module, x)
        z, ctx.state = rule.fused_forward(call, x)
        ctx.rule, ctx.call, ctx.input_shape = rule, call, x.shape
        return z

    @staticmethod
    def backward(ctx, c_out: torch.Tensor):
        state, ctx.state = ctx.state, None
        if state is None:
            raise RuntimeError("LRP rules propagate relevance once per forward pass (no retain_graph)")
        return ctx.rule.fused_backward(ctx.call, state, c_out, ctx.input_shape), None, None


class _FusedRule(Rule):
    """A rule computed by :class:`_Fused`: :meth:`register` replaces the module's ``forward`` (an instance
    attribute, removed by the handle), so the layer output and the rule's products come from one call, without a
    copy of the output or an autograd graph of modified products. Modules :class:`_AffineCall` does not support
    (or whose ``forward`` is already replaced) keep the hook-based :meth:`input_gradient` /
    :meth:`forward_hook`, the reference the fused path is tested against (``fused = False`` forces it)."""

    fused = True

    def scratch(self, name: str, shape, like: torch.Tensor) -> torch.Tensor:
        """An uninitialised tensor of ``shape`` that is reused by every layer of this rule (one buffer per
        ``name``, grown as needed, freed when the hooks are removed): large fresh allocations cost more than the
        elementwise work itself on the CPU (each one page-faults), so temporaries that do not outlive one
        forward or backward step of one layer live here."""
        buffers = self.__dict__.setdefault("_scratch", {})
        size = math.prod(shape)
        buffer = buffers.get(name)
        if buffer is None or buffer.numel() < size or buffer.dtype != like.dtype or buffer.device != like.device:
            buffer = buffers[name] = like.new_empty(size)
        return buffer[:size].view(shape)

    def uses_fused_path(self, module: nn.Module) -> bool:
        return self.fused and _AffineCall.supports(module) and "forward" not in module.__dict__

    def register(self, module, name=""):
        if not self.uses_fused_path(module):
            return super().register(module, name)

        def forward(x, *args, **kwargs):
            if args or kwargs or not isinstance(x, torch.Tensor) or not (x.requires_grad and torch.is_grad_enabled()):
                return type(module).forward(module, x, *args, **kwargs)
            self.check_input(module, x, name)
            return _Fused.apply(x, self, module)

        object.__setattr__(module, "forward", forward)

        def remove():
            if module.__dict__.get("forward") is forward:
                object.__delattr__(module, "forward")
            self.__dict__.pop("_scratch", None)

        return SimpleNamespace(remove=remove)

    def check_input(self, module: nn.Module, x: torch.Tensor, name: str) -> None:
        """Raise if the rule cannot apply to this input (input-layer rules)."""

    def fused_forward(self, call: _AffineCall, x: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """The layer output ``z`` and the state :meth:`fused_backward` needs."""
        raise NotImplementedError

    def fused_backward(self, call: _AffineCall, state: tuple, c_out: torch.Tensor,
                       input_shape: torch.Size) -> torch.Tensor:
        """``c_in`` (or relevance, if ``produces_relevance``) from ``c_out``."""
        raise NotImplementedError


def _bias_part(module: nn.Module, z: torch.Tensor, scale: float, constant: float) -> torch.Tensor:
    """``scale * b+ + constant`` per output channel (``constant`` alone without a bias)."""
    if module.bias is None:
        return z.new_full((module.weight.shape[0],), constant)
    return module.bias.clamp(min=0).mul_(scale).add_(constant)


def _signed_input(rule: _FusedRule, call: _AffineCall, x: torch.Tensor) -> torch.Tensor:
    """``[x+, x-]`` stacked (:meth:`_AffineCall.stack_inputs`), in scratch memory, prepared for the convolution;
    it pairs with weights ``cat([w_a, w_b], dim=1)``."""
    shape = list(x.shape)
    shape[call.channel_dim] *= 2
    stacked = rule.scratch("stacked input", shape, x)
    part_pos, part_neg = call.split(stacked, 2)
    torch.clamp(call.grouped(x), min=0, out=part_pos)
    torch.clamp(call.grouped(x), max=0, out=part_neg)
    return call.prepare(stacked)


class Epsilon(Rule):
    """LRP-epsilon: ``R_i = sum_j x_i w_ij R_j / (z_j + eps sign(z_j))`` (Bach et al. 2015).

    Implemented by rescaling the gradient at the layer output by ``z / (z + eps sign z)`` before the layer's
    own backward, so it costs one elementwise product. The same rule with a tiny ``epsilon`` is zennit's
    ``Norm`` for parameter-free linear layers (average pooling, sums).
    """

    def __init__(self, epsilon: float = 1e-6):
        self.epsilon = epsilon

    def forward_hook(self, module, inputs, output, name=""):
        if not isinstance(output, torch.Tensor) or output.grad_fn is None:
            return None
        scale = output.detach().abs()  # z / (z + eps sign z) = |z| / (|z| + eps), before any later in-place op
        scale.div_(scale + self.epsilon)
        index = output.output_nr

        def rescale(grad_outputs):
            grads = list(grad_outputs)
            grads[index] = grads[index] * scale
            return tuple(grads)

        output.grad_fn.register_prehook(rescale)
        return None


class _GradientTimes(torch.autograd.Function):
    """Returns the layer output ``z`` as it is (no copy); its backward maps ``c_out`` to ``c_out * ratio`` for
    the layer input. Autograd forbids later in-place changes of the returned tensor (it is a view of ``z``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, z: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(ratio)
        return z

    @staticmethod
    def backward(ctx, c_out: torch.Tensor):
        ratio, = ctx.saved_tensors  # used up in place (a fresh tensor costs more than the product on the CPU)
        return ratio.mul_(c_out), None, None


class Pass(Rule):
    """Pass-through for gating activations ``a = x * g(x)`` (ReLU, ReLU6, SiLU, GELU, ...): ``R_in = R_out``,
    i.e. ``c_in = c_out * a / x`` (0 where ``x == 0``, where ``R_out = 0`` too).

    ReLU's own gradient ``[x > 0]`` already is ``a / x`` (0 at 0, as in torch), so ReLUs get no hook.
    """

    def register(self, module, name=""):
        if type(module) is nn.ReLU:
            return _NO_HOOK
        return super().register(module, name)

    def forward_hook(self, module, inputs, output, name=""):
        if not isinstance(output, torch.Tensor) or not inputs or not inputs[0].requires_grad:
            return None
        ratio = output.detach() / inputs[0].detach()
        ratio.nan_to_num_(0.0)  # gates have a(0) = 0, so 0/0 is the only NaN
        return _GradientTimes.apply(inputs[0], output.detach(), ratio)


def _positive_part(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.clamp(min=0)


def _negative_part(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.clamp(max=0)


class AlphaBeta(_FusedRule):
    """LRP-alpha-beta (Bach et al. 2015), ``alpha - beta = 1``:
    ``R_i = sum_j (alpha z+_ij / z+_j - beta z-_ij / z-_j) R_j`` with positive/negative contributions
    ``z+_ij`` (positive bias part counted in ``z+_j``, negative in ``z-_j``).

    With ``z_pos = w+ x+ + w- x- + b+``, ``z_neg = w- x+ + w+ x- + b-``, ``g_pos = alpha R / z_pos`` and
    ``g_neg = -beta R / z_neg``: ``c_in = w+^T g_pos + w-^T g_neg`` where ``x > 0``, ``w-^T g_pos + w+^T g_neg``
    where ``x < 0``. Where ``x == 0`` ``c_in`` is left unspecified (it may be large): the relevance ``x c_in``
    is 0 there, and every rule below maps the density at a zero output to 0.
    Products with ``x-`` are skipped when the input has no negative entries (after ReLUs), those of ``z_neg``
    when ``beta = 0`` (z+).
    """

    def __init__(self, alpha: float = 2.0, beta: float = 1.0, stabilizer: float = 1e-6):
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha and beta must be non-negative, got alpha={alpha}, beta={beta}")
        if alpha - beta != 1:
            raise ValueError(f"alpha - beta must equal 1 (conservation), got alpha={alpha}, beta={beta}")
        self.alpha, self.beta, self.stabilizer = alpha, beta, stabilizer

    def uses_fused_path(self, module):
        return self.beta == 0 and super().uses_fused_path(module)  # the fused path is z+ (alpha 1, beta 0)

    def fused_forward(self, call, x):
        """z+: ``ratio = z / (z+ + eps)`` with ``z+ = w+ x+ + w- x- + b+ >= 0`` from one product (the stabiliser
        folded into the bias; for a signed input on the stacked ``[x+, x-]`` with weights ``[w+, w-]``)."""
        weight = call.module.weight
        prepared = call.prepare(x)
        z = call.product(prepared, weight, call.module.bias)
        bias = _bias_part(call.module, z, 1.0, self.stabilizer)
        weight_pos = weight.clamp(min=0)
        if has_negatives(x):
            weights = torch.cat([weight_pos, weight.clamp(max=0)], dim=1)
            z_plus = call.product(_signed_input(self, call, x), weights, bias)
            positive = call.grouped(x > 0)
        else:
            weights, positive = weight_pos, None
            z_plus = call.product(prepared, weights, bias)
        return z, (torch.div(z, z_plus, out=z_plus), weights, positive)

    def fused_backward(self, call, state, c_out, input_shape):
        """``c_in = w+^T (c_out * ratio)`` (``w-^T`` where ``x < 0``: one transpose of the stacked weights)."""
        ratio, weights, positive = state
        g = ratio.mul_(c_out)
        if positive is None:
            return call.transpose(g, weights, input_shape)
        part_pos, part_neg = call.split(call.transpose(g, weights, input_shape, stacked=2), 2)
        return call.ungrouped(torch.where(positive, part_pos, part_neg))

    def input_gradient(self, module, x, z, c_out):
        weight_pos, weight_neg = module.weight.clamp(min=0), module.weight.clamp(max=0)
        relevance = z * c_out
        signed = has_negatives(x)
        inputs = [(x.clamp(min=0) if signed else x).detach().requires_grad_()]
        if signed:
            inputs.append(x.clamp(max=0).detach().requires_grad_())
        outputs, grads = [], []
        for factor, weights, bias in ((self.alpha, (weight_pos, weight_neg), _positive_part(module.bias)),
                                      (-self.beta, (weight_neg, weight_pos), _negative_part(module.bias))):
            if factor == 0:
                continue
            products = [linear_map(module, inputs[0], weights[0], bias)]
            if signed:
                products.append(linear_map(module, inputs[1], weights[1]))
            total = products[0] + products[1] if signed else products[0]
            grad = relevance / stabilize(total, self.stabilizer)
            grad = grad if factor == 1 else grad.mul_(factor)
            outputs += products
            grads += [grad] * len(products)
        gradients = vjp(outputs, inputs, grads)
        # where x == 0 the relevance x * c_in is 0 whatever c_in is (zennit's clamps pass gradient there too)
        return torch.where(x > 0, gradients[0], gradients[1]) if signed else gradients[0]


class ZPlus(AlphaBeta):
    """LRP-z+ (Montavon et al. 2017, deep Taylor): alpha-beta with ``alpha=1, beta=0``; negative inputs use the
    negative weights, as zennit's ``ZPlus``."""

    def __init__(self, stabilizer: float = 1e-6):
        super().__init__(alpha=1.0, beta=0.0, stabilizer=stabilizer)


class _Joined(torch.autograd.Function):
    """Identity on a layer output ``z`` (with its own graph) joined with side outputs ``extras``; the backward
    maps ``c_out`` to gradients for ``(z, *extras)`` by ``split``, which autograd then takes through the layer's
    own backward (``W^T``) and the side outputs' graphs."""

    @staticmethod
    def forward(ctx, split: Callable, z: torch.Tensor, *extras: torch.Tensor) -> torch.Tensor:
        ctx.split = split
        return z.clone()  # a fresh tensor: later in-place ops in the model cannot touch ``z``

    @staticmethod
    def backward(ctx, c_out: torch.Tensor):
        return None, *ctx.split(c_out)


class Gamma(_FusedRule):
    """Generalised LRP-gamma (Montavon et al. 2019; Andeol et al. 2021; zennit's ``Gamma``): weights
    ``A = w + gamma w+`` for positive outputs and ``B = w + gamma w-`` for negative ones, on the positive and
    negative input parts: ``z_pos = A x+ + B x- + b + gamma b+``, ``z_neg = B x+ + A x- + b + gamma b-``,
    ``g_pos = [z>0] R / z_pos``, ``g_neg = [z<0] R / z_neg``, ``c_in = d z_pos/dx g_pos + d z_neg/dx g_neg``.

    Computed with one modified product instead of four. With ``z = w x + b`` from the forward pass and
    ``u = w+ x+ + w- x- + b+ = w+ |x| + w x- + b+`` (``u = w+ x + b+`` when ``x >= 0``), ``z_pos = z + gamma u``
    and ``z_neg = z + gamma (z - u)``, so ``c_in = w^T (g_pos + (1 + gamma) g_neg) + du/dx^T gamma (g_pos - g_neg)``.
    The fused path (:meth:`fused_forward`, :meth:`fused_backward`) needs two transposes per layer, one when the
    input is non-negative and ``g_neg = 0`` (a ReLU-like activation follows); the hook-based one
    (:meth:`forward_hook`) takes the layer's own backward for the first term and the graph of ``u`` for the
    second. As in :class:`AlphaBeta`, ``c_in`` where ``x == 0`` is left unspecified (the relevance there is 0).
    """

    def __init__(self, gamma: float = 0.25, stabilizer: float = 1e-6):
        if gamma < 0:
            raise ValueError(f"gamma must be non-negative, got {gamma}")
        self.gamma, self.stabilizer = gamma, stabilizer

    def fused_forward(self, call, x):
        """Per output, with ``v = gamma u + eps`` (one product; ``u = w+ x+ + w- x- + b+ >= 0``, on the stacked
        ``[x+, x-]`` for a signed input) and ``D = a|z| + v`` (``a = 1`` where ``z > 0``, ``1 + gamma`` elsewhere:
        ``D`` is the stabilised ``|z_pos|`` or ``|z_neg|``): ``s = z / D``. Then ``g_pos + (1 + gamma) g_neg =
        c_out s1`` with ``s1 = a|z| / D = leaky_relu(s, -(1 + gamma))`` and ``g_pos - g_neg = c_out s``."""
        weight, gamma = call.module.weight, self.gamma
        prepared = call.prepare(x)
        z = call.product(prepared, weight, call.module.bias)
        bias = _bias_part(call.module, z, gamma, self.stabilizer)
        weight_pos = weight.clamp(min=0)
        signed = has_negatives(x)
        if signed:
            weights = torch.cat([weight_pos, weight.clamp(max=0)], dim=1).mul_(gamma)
            v = call.product(_signed_input(self, call, x), weights, bias)
        else:
            v = call.product(prepared, weight_pos * gamma, bias)
        scaled = torch.ops.aten.leaky_relu.out(z, -(1 + gamma), out=self.scratch("output", z.shape, z))  # a|z|
        s = torch.div(z, v.add_(scaled), out=v)
        if not signed:
            return z, (s, (weight_pos.mul_(gamma).add_(weight), weight), None)
        # du/dx^T h = (w^T h + sign(x) |w|^T h) / 2 (w+^T h where x > 0, w-^T h where x < 0): two transposes
        return z, (s, (weight, weight.abs().mul_(gamma / 2)), call.grouped(x.sign()))

    def fused_backward(self, call, state, c_out, input_shape):
        """Non-negative input: ``c_in = w^T (c s1) + gamma w+^T (c s) = (w + gamma w+)^T (c s) - (2 + gamma)
        w^T (c min(s, 0))``; the second transpose is skipped where ``c_out`` is 0 at every negative output (a
        ReLU-like activation follows: ``g_neg = 0``). Signed input: ``c_in = w^T (c t1) + sign(x)
        (gamma |w| / 2)^T (c s)`` with ``t1 = s1 + gamma s / 2``."""
        s, weights, sign = state
        slope = -(1 + self.gamma)
        if sign is None:
            negative = torch.clamp(s, max=0, out=self.scratch("output", s.shape, s)).mul_(c_out)
            c_in = call.transpose(s.mul_(c_out), weights[0], input_shape)
            if negative.any():
                c_in.add_(call.transpose(negative, weights[1], input_shape), alpha=slope - 1)
            return c_in
        t1 = torch.ops.aten.leaky_relu.out(s, slope, out=self.scratch("output", s.shape, s))
        t1.add_(s, alpha=self.gamma / 2).mul_(c_out)
        own = call.transpose(t1, weights[0], input_shape)
        modified = call.transpose(s.mul_(c_out), weights[1], input_shape)
        return call.ungrouped(call.grouped(own).addcmul_(sign, call.grouped(modified)))

    def forward_hook(self, module, inputs, output, name=""):
        if not isinstance(output, torch.Tensor) or output.grad_fn is None or not inputs:
            return None
        x, weight = inputs[0], module.weight
        signed = has_negatives(x)
        u = linear_map(module, x.abs() if signed else x, weight.clamp(min=0), _positive_part(module.bias))
        if signed:
            u = u + linear_map(module, x.clamp(max=0), weight)
        split = partial(self.split_gradient, output.detach(), u.detach())
        return _Joined.apply(split, output, u)

    def split_gradient(self, z, u, c_out) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradients ``(g_pos + (1 + gamma) g_neg, gamma (g_pos - g_neg))`` for ``z`` and ``u`` (class docstring).

        Where ``z > 0`` only ``g_pos`` is non-zero, where ``z < 0`` only ``g_neg``, and where ``z == 0`` both are 0,
        so one denominator per output (``z_pos`` or ``z_neg``) and one quotient ``q`` serve both terms:
        ``((1 + gamma) q - gamma q p, 2 gamma q p - gamma q)`` with ``p = [z > 0]``."""
        positive = (z > 0).to(z)
        denominator = torch.lerp(z - u, u, positive).mul_(self.gamma).add_(z)  # lerp is exact for weights 0 / 1
        quotient = (z * c_out).div_(stabilize(denominator, self.stabilizer))
        quotient_pos = quotient * positive
        return (torch.add(quotient.mul(1 + self.gamma), quotient_pos, alpha=-self.gamma),
                torch.add(quotient_pos.mul_(2 * self.gamma), quotient, alpha=-self.gamma))


class _InputLayerRule(Rule):
    produces_relevance = True

    def __init__(self):
        self.model_input: torch.Tensor | None = None  # set by the composite context

    def check_input(self, module, x, name=""):
        if self.model_input is not None and x is not self.model_input:
            raise ValueError(
                f"{type(self).__name__} is an input-layer rule but module '{name}' ({type(module).__name__}) "
                "does not receive the model input; assign it to the first layer only")

    def forward_hook(self, module, inputs, output, name=""):
        if inputs:
            self.check_input(module, inputs[0], name)
        return super().forward_hook(module, inputs, output, name)


class ZBox(_InputLayerRule, _FusedRule):
    """LRP-z^B for a bounded input layer ``low <= x <= high`` (Montavon et al. 2017):
    ``R_i = sum_j (x_i w_ij - l_i w+_ij - h_i w-_ij) / sum_i(...) R_j``. ``low``/``high`` are in the model's
    (normalised) input space: scalars or tensors broadcastable to the input, e.g. ``[1,3,1,1]``."""

    def __init__(self, low: float | torch.Tensor, high: float | torch.Tensor, stabilizer: float = 1e-6):
        super().__init__()
        self.low, self.high, self.stabilizer = low, high, stabilizer

    def _bounds(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The bounds as tensors shaped like ``x`` but with batch 1 unless one varies over the batch."""
        bounds = [torch.as_tensor(value, dtype=x.dtype, device=x.device) for value in (self.low, self.high)]
        batch = x.shape[0] if any(b.ndim == x.ndim and b.shape[0] != 1 for b in bounds) else 1
        return tuple(b.expand(batch, *x.shape[1:]).contiguous() for b in bounds)

    def fused_forward(self, call, x):
        """``ratio = z / stab(w x - w+ l - w- h)``; the bound products have batch 1 (constant bounds)."""
        weight, bias = call.module.weight, call.module.bias
        weight_pos, weight_neg = weight.clamp(min=0), weight.clamp(max=0)
        low, high = self._bounds(x)
        product = call.product(call.prepare(x), weight)
        if bias is not None:  # in the product's dtype, as the layer's own forward (autocast: bfloat16)
            z = product + (bias if call.linear else bias.view(-1, *([1] * (product.ndim - 2)))).to(product.dtype)
        else:
            z = product
        bounds = call.product(call.prepare(call.stack_inputs([low, high])), torch.cat([weight_pos, weight_neg], dim=1))
        ratio = torch.div(z, stabilize(product - bounds, self.stabilizer))
        return z, (ratio, torch.cat([weight, weight_pos, weight_neg], dim=1), call.grouped(x), call.grouped(low),
                   call.grouped(high))

    def fused_backward(self, call, state, c_out, input_shape):
        """``R = x (w^T g) - l (w+^T g) - h (w-^T g)``, ``g = c_out * ratio``: one transpose of the stacked weights."""
        ratio, weights, x, low, high = state
        own, pos, neg = call.split(call.transpose(c_out * ratio, weights, input_shape, stacked=3), 3)
        relevance = torch.mul(x, own).addcmul_(low, pos, value=-1).addcmul_(high, neg, value=-1)
        return call.ungrouped(relevance)

    def input_gradient(self, module, x, z, c_out):
        weight = module.weight
        x = x.detach().requires_grad_()
        low = torch.as_tensor(self.low, dtype=x.dtype, device=x.device).expand_as(x).clone().requires_grad_()
        high = torch.as_tensor(self.high, dtype=x.dtype, device=x.device).expand_as(x).clone().requires_grad_()
        outputs = [linear_map(module, x, weight), linear_map(module, low, weight.clamp(min=0)),
                   linear_map(module, high, weight.clamp(max=0))]
        upper = z * c_out / stabilize(outputs[0] - outputs[1] - outputs[2], self.stabilizer)
        grad_x, grad_low, grad_high = vjp(outputs, [x, low, high], [upper] * 3)
        return x * grad_x - low * grad_low - high * grad_high


class Flat(_InputLayerRule):
    """LRP-flat (Lapuschkin et al. 2019): relevance spread uniformly over each output's receptive field,
    ``R_i = sum_j R_j / sum_i 1`` (all weights and inputs set to one, no bias)."""

    def __init__(self, stabilizer: float = 1e-6):
        super().__init__()
        self.stabilizer = stabilizer

    def input_gradient(self, module, x, z, c_out):
        ones = torch.ones_like(x).requires_grad_()
        out = linear_map(module, ones, torch.ones_like(module.weight))
        grad, = vjp([out], [ones], [z * c_out / stabilize(out, self.stabilizer)])
        return grad
