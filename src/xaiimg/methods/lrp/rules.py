"""LRP rules as small hooks that rewrite one layer's backward pass (zennit's ``core.py`` idea).

Convention ("modified gradient x input"): during attribution the gradient that flows backwards through the
network is a *relevance density* ``c`` with ``R = a * c`` for every activation ``a``. At the output it is the
one-hot vector of the target class, so ``R_out = logit``; at the input ``R = x * x.grad``. Each rule maps the
upper density ``c_out`` of a layer to the lower one ``c_in`` so that ``x * c_in`` is the rule's relevance:

- linear maps, sums, max-pooling, flattening, dropout: the ordinary gradient already is LRP-0 / winner-take-all
  / a split in proportion to the summands, because ``x * J^T c`` distributes ``z * c`` over the contributions;
- :class:`Epsilon` rescales the upper gradient by ``z / (z + eps*sign(z))`` before the layer's own backward;
- :class:`Pass` (ReLU, ReLU6, SiLU, GELU, ...) replaces ``f'(x)`` by ``f(x)/x``, i.e. ``R_in = R_out``;
- :class:`ZPlus`, :class:`AlphaBeta`, :class:`Gamma` recompute the layer with modified weights in the backward;
- input-layer rules (:class:`ZBox`, :class:`Flat`) distribute relevance onto input values that need not be
  proportional to ``x``; they return the relevance itself (``produces_relevance``) and must see the model input.

Rules match zennit 0.5.1's definitions (``zennit.rules``) term by term, including the stabiliser
``z + eps * sign(z)`` with ``sign(0) = 1`` (Bach et al. 2015; Montavon et al. 2019, "Layer-wise relevance
propagation: an overview"; Andeol et al. 2021 for the generalised gamma rule).
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn


def stabilize(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``z + epsilon * sign(z)`` with ``sign(0) = 1`` (zennit's ``Stabilizer``, Captum's ``EpsilonRule``)."""
    return z + torch.where(z >= 0, epsilon, -epsilon).to(z)


# ------------------------------------------------------------------------------------- linear map helpers
_PLAIN_FORWARDS = {nn.Conv1d.forward, nn.Conv2d.forward, nn.Conv3d.forward}


def linear_map(module: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The module's linear map ``x -> W x`` (no bias) with ``weight`` substituted, padding included."""
    if type(module).forward is nn.Linear.forward:
        return F.linear(x, weight)
    if type(module).forward in _PLAIN_FORWARDS:
        return module._conv_forward(x, weight, None)
    with substituted_parameters(module, weight=weight, bias=None):  # e.g. timm's Conv2dSame (pads, then convs)
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


def add_bias(module: nn.Module, z: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if bias is None:
        return z
    if isinstance(module, nn.Linear):
        return z + bias
    return z + bias.view(1, -1, *([1] * (z.ndim - 2)))


def vjp(outputs: list[torch.Tensor], inputs: list[torch.Tensor], grads: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(outputs, inputs, grads)


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
        scale = output.detach() / stabilize(output.detach(), self.epsilon)  # before any later in-place op
        index = output.output_nr

        def rescale(grad_outputs):
            grads = list(grad_outputs)
            grads[index] = grads[index] * scale
            return tuple(grads)

        output.grad_fn.register_prehook(rescale)
        return None


class Pass(Rule):
    """Pass-through for gating activations ``a = x * g(x)`` (ReLU, ReLU6, SiLU, GELU, ...): ``R_in = R_out``,
    i.e. ``c_in = c_out * a / x`` (0 where ``x == 0``, where ``R_out = 0`` too)."""

    def input_gradient(self, module, x, z, c_out):
        return c_out * torch.nan_to_num_(z / x, nan=0.0)  # gates have a(0) = 0, so 0/0 is the only NaN


def _positive_part(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.clamp(min=0)


def _negative_part(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.clamp(max=0)


class _TwoWeightRule(Rule):
    """Rules built from two modified weight sets ``A`` (for positive contributions) and ``B``:

    ``z_pos = A x+ + b_A + B x-``, ``z_neg = B x+ + b_B + A x-`` and
    ``c_in = [x>0] (A^T g_pos + B^T g_neg) + [x<0] (B^T g_pos + A^T g_neg)`` with ``g_pos``, ``g_neg`` from
    :meth:`positive_gradient` / :meth:`negative_gradient`. ``x-`` terms are skipped when the input has no
    negative entries (after ReLUs), and the ``z_neg`` products when there is no negative term (z+): each
    product is computed only where it is used (no concatenated double batch).
    """

    negative_term = True

    def __init__(self, stabilizer: float = 1e-6):
        self.stabilizer = stabilizer

    def weights(self, module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        raise NotImplementedError

    def positive_gradient(self, z, z_pos, relevance) -> torch.Tensor:
        raise NotImplementedError

    def negative_gradient(self, z, z_neg, relevance) -> torch.Tensor:
        raise NotImplementedError

    def input_gradient(self, module, x, z, c_out):
        weight_a, weight_b, bias_a, bias_b = self.weights(module)
        relevance = z * c_out
        if not bool((x < 0).any()):
            inputs = x.clamp(min=0).detach().requires_grad_()
            out_a = linear_map(module, inputs, weight_a)
            g_pos = self.positive_gradient(z, add_bias(module, out_a, bias_a), relevance)
            if not self.negative_term:
                return vjp([out_a], [inputs], [g_pos])[0] * (x > 0)
            out_b = linear_map(module, inputs, weight_b)
            g_neg = self.negative_gradient(z, add_bias(module, out_b, bias_b), relevance)
            return vjp([out_a, out_b], [inputs], [g_pos, g_neg])[0] * (x > 0)
        positive = x.clamp(min=0).detach().requires_grad_()
        negative = x.clamp(max=0).detach().requires_grad_()
        a_pos, b_neg = linear_map(module, positive, weight_a), linear_map(module, negative, weight_b)
        g_pos = self.positive_gradient(z, add_bias(module, a_pos, bias_a) + b_neg, relevance)
        if not self.negative_term:
            grad_pos, grad_neg = vjp([a_pos, b_neg], [positive, negative], [g_pos, g_pos])
        else:
            b_pos, a_neg = linear_map(module, positive, weight_b), linear_map(module, negative, weight_a)
            g_neg = self.negative_gradient(z, add_bias(module, b_pos, bias_b) + a_neg, relevance)
            grad_pos, grad_neg = vjp([a_pos, b_neg, b_pos, a_neg], [positive, negative], [g_pos, g_pos, g_neg, g_neg])
        return grad_pos * (x > 0) + grad_neg * (x < 0)


class AlphaBeta(_TwoWeightRule):
    """LRP-alpha-beta (Bach et al. 2015), ``alpha - beta = 1``:
    ``R_i = sum_j (alpha z+_ij / z+_j - beta z-_ij / z-_j) R_j`` with positive/negative contributions
    ``z+_ij`` (positive bias part counted in ``z+_j``, negative in ``z-_j``)."""

    def __init__(self, alpha: float = 2.0, beta: float = 1.0, stabilizer: float = 1e-6):
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha and beta must be non-negative, got alpha={alpha}, beta={beta}")
        if alpha - beta != 1:
            raise ValueError(f"alpha - beta must equal 1 (conservation), got alpha={alpha}, beta={beta}")
        super().__init__(stabilizer)
        self.alpha, self.beta = alpha, beta
        self.negative_term = beta != 0

    def weights(self, module):
        return (module.weight.clamp(min=0), module.weight.clamp(max=0),
                _positive_part(module.bias), _negative_part(module.bias))

    def positive_gradient(self, z, z_pos, relevance):
        return self.alpha * relevance / stabilize(z_pos, self.stabilizer)

    def negative_gradient(self, z, z_neg, relevance):
        return -self.beta * relevance / stabilize(z_neg, self.stabilizer)


class ZPlus(AlphaBeta):
    """LRP-z+ (Montavon et al. 2017, deep Taylor): alpha-beta with ``alpha=1, beta=0``; negative inputs use the
    negative weights, as zennit's ``ZPlus``."""

    def __init__(self, stabilizer: float = 1e-6):
        super().__init__(alpha=1.0, beta=0.0, stabilizer=stabilizer)


class Gamma(_TwoWeightRule):
    """Generalised LRP-gamma (Montavon et al. 2019; Andeol et al. 2021): weights ``w + gamma w+`` for positive
    outputs and ``w + gamma w-`` for negative ones, i.e. ``A = w + gamma w+``, ``B = w + gamma w-`` and
    ``g_pos = [z>0] R / z_pos``, ``g_neg = [z<0] R / z_neg`` (zennit's ``Gamma``)."""

    def __init__(self, gamma: float = 0.25, stabilizer: float = 1e-6):
        if gamma < 0:
            raise ValueError(f"gamma must be non-negative, got {gamma}")
        super().__init__(stabilizer)
        self.gamma = gamma

    def weights(self, module):
        weight, bias = module.weight, module.bias
        return (weight + self.gamma * weight.clamp(min=0), weight + self.gamma * weight.clamp(max=0),
                None if bias is None else bias + self.gamma * bias.clamp(min=0),
                None if bias is None else bias + self.gamma * bias.clamp(max=0))

    def positive_gradient(self, z, z_pos, relevance):
        return (z > 0) * relevance / stabilize(z_pos, self.stabilizer)

    def negative_gradient(self, z, z_neg, relevance):
        return (z < 0) * relevance / stabilize(z_neg, self.stabilizer)


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
