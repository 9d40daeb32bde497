"""LRP rules as small hooks that rewrite one layer's backward pass (zennit's ``core.py`` idea).

Convention ("modified gradient x input"): during attribution the gradient that flows backwards through the
network is a *relevance density* ``c`` with ``R = a * c`` for every activation ``a``. At the output it is the
one-hot vector of the target class, so ``R_out = logit``; at the input ``R = x * x.grad``. Each rule maps the
upper density ``c_out`` of a layer to the lower one ``c_in`` so that ``x * c_in`` is the rule's relevance:

- linear maps, sums, max-pooling, flattening, dropout: the ordinary gradient already is LRP-0 / winner-take-all
  / a split in proportion to the summands, because ``x * J^T c`` distributes ``z * c`` over the contributions;
- :class:`Epsilon` rescales the upper gradient by ``z / (z + eps*sign(z))`` before the layer's own backward;
- :class:`Pass` (ReLU, ReLU6, SiLU, GELU, ...) replaces ``f'(x)`` by ``f(x)/x``, i.e. ``R_in = R_out``;
- :class:`ZPlus`, :class:`AlphaBeta` recompute the layer with modified weights in the backward;
  :class:`Gamma` needs one modified product (``w+ x``; two for signed inputs) and reuses the layer's own
  forward and backward;
- input-layer rules (:class:`ZBox`, :class:`Flat`) distribute relevance onto input values that need not be
  proportional to ``x``; they return the relevance itself (``produces_relevance``) and must see the model input.

Rules match zennit 0.5.1's definitions (``zennit.rules``) term by term, including the stabiliser
``z + eps * sign(z)`` with ``sign(0) = 1`` (Bach et al. 2015; Montavon et al. 2019, "Layer-wise relevance
propagation: an overview"; Andeol et al. 2021 for the generalised gamma rule).
"""
from __future__ import annotations

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
    """The module's affine map ``x -> W x + b`` with ``weight`` and ``bias`` substituted, padding included."""
    if type(module).forward is nn.Linear.forward:
        return F.linear(x, weight, bias)
    if type(module).forward in _PLAIN_FORWARDS:
        return module._conv_forward(x, weight, bias)
    with substituted_parameters(module, weight=weight, bias=bias):  # e.g. timm's Conv2dSame (pads, then convs)
        return module.forward(x)


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
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"


_NO_HOOK = SimpleNamespace(remove=lambda: None)  # what ``Rule.register`` returns when no hook is needed


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
        ratio, = ctx.saved_tensors
        return c_out * ratio, None, None


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


class AlphaBeta(Rule):
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


class Gamma(Rule):
    """Generalised LRP-gamma (Montavon et al. 2019; Andeol et al. 2021; zennit's ``Gamma``): weights
    ``A = w + gamma w+`` for positive outputs and ``B = w + gamma w-`` for negative ones, on the positive and
    negative input parts: ``z_pos = A x+ + B x- + b + gamma b+``, ``z_neg = B x+ + A x- + b + gamma b-``,
    ``g_pos = [z>0] R / z_pos``, ``g_neg = [z<0] R / z_neg``, ``c_in = d z_pos/dx g_pos + d z_neg/dx g_neg``.

    Computed with one modified product instead of four (two for signed inputs). With ``z = w x + b`` from the forward
    pass and ``u = w+ |x| + w x- + b+`` (``u = w+ x + b+`` when ``x >= 0``), ``z_pos = z + gamma u`` and
    ``z_neg = z + gamma (z - u)``, so ``c_in = w^T (g_pos + (1 + gamma) g_neg) + du/dx^T gamma (g_pos - g_neg)``:
    the first term is the layer's own backward, the second the graph of ``u``. As in :class:`AlphaBeta`,
    ``c_in`` where ``x == 0`` is left unspecified (the relevance there is 0).
    """

    def __init__(self, gamma: float = 0.25, stabilizer: float = 1e-6):
        if gamma < 0:
            raise ValueError(f"gamma must be non-negative, got {gamma}")
        self.gamma, self.stabilizer = gamma, stabilizer

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

    def forward_hook(self, module, inputs, output, name=""):
        if self.model_input is not None and inputs and inputs[0] is not self.model_input:
            raise ValueError(
                f"{type(self).__name__} is an input-layer rule but module '{name}' ({type(module).__name__}) "
                "does not receive the model input; assign it to the first layer only")
        return super().forward_hook(module, inputs, output, name)


class ZBox(_InputLayerRule):
    """LRP-z^B for a bounded input layer ``low <= x <= high`` (Montavon et al. 2017):
    ``R_i = sum_j (x_i w_ij - l_i w+_ij - h_i w-_ij) / sum_i(...) R_j``. ``low``/``high`` are in the model's
    (normalised) input space: scalars or tensors broadcastable to the input, e.g. ``[1,3,1,1]``."""

    def __init__(self, low: float | torch.Tensor, high: float | torch.Tensor, stabilizer: float = 1e-6):
        super().__init__()
        self.low, self.high, self.stabilizer = low, high, stabilizer

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
