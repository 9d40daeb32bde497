"""Composites: which rule each layer gets, plus the canonizers, applied and removed as one context.

Named composites mirror zennit 0.5.1's (``zennit.composites``) so that cross-checks are one to one. Every
composite passes relevance through gating activations (:class:`~.rules.Pass`), treats average pooling as a
linear layer (:class:`~.rules.Epsilon` with ``stabilizer``, zennit's ``Norm``), merges BatchNorms into the
preceding conv/linear layer and leaves max-pooling (winner-take-all), flatten and dropout to the gradient.

=============================  ===============================  ==========================  ================
name                           first conv / linear layer        other convolutions          dense layers
=============================  ===============================  ==========================  ================
``epsilon``                    epsilon                          epsilon                     epsilon
``epsilon-plus``               z+                               z+                          epsilon
``epsilon-plus-box``           z^B                              z+                          epsilon
``epsilon-plus-flat``          flat                             z+                          epsilon
``epsilon-gamma-box``          z^B                              gamma                       epsilon
``epsilon-alpha2-beta1``       alpha2-beta1                     alpha2-beta1                epsilon
``epsilon-alpha2-beta1-flat``  flat                             alpha2-beta1                epsilon
``alpha1-beta0``               alpha1-beta0                     alpha1-beta0                alpha1-beta0
=============================  ===============================  ==========================  ================

zennit equivalents: ``EpsilonPlus``, ``EpsilonPlusFlat``, ``EpsilonGammaBox``, ``EpsilonAlpha2Beta1``,
``EpsilonAlpha2Beta1Flat``; ``epsilon`` / ``epsilon-plus-box`` / ``alpha1-beta0`` are zennit
``LayerMapComposite`` / ``SpecialFirstLayerMapComposite`` with the same rules. "First layer" is the first
module in ``named_modules()`` order of the first-layer type (convolution for z^B, conv or linear for flat),
as in zennit's ``SpecialFirstLayerMapComposite``.

Attention modules (CP-LRP, Ali et al. 2022, "XAI for Transformers: better explanations through conservative
propagation"): every module with a boolean ``detach_attention`` attribute has it set to ``True`` during
attribution, so its softmax attention weights are constants and relevance flows through the value path only;
its own parameters (e.g. DANet's scalar ``gamma``) are then plain products handled by the gradient.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from xaiimg.methods.lrp.canonizers import batch_norm_pairs, merge_batch_norms, overridden_attributes
from xaiimg.methods.lrp.rules import AlphaBeta, Epsilon, Flat, Gamma, Pass, Rule, ZBox, ZPlus

CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
DENSE = (nn.Linear,)
LINEAR_LAYERS = CONVOLUTIONS + DENSE
AVERAGE_POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                 nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)


def _gating_activations() -> tuple[type, ...]:
    """Activations ``a = x g(x)`` with a gate ``g >= 0``: relevance passes through them unchanged."""
    types = [nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.CELU, nn.SiLU, nn.GELU, nn.Hardswish, nn.Mish]
    try:
        from timm.layers import activations, activations_me
    except ImportError:
        return tuple(types)
    for module, names in ((activations, ("Swish", "Mish", "HardSwish", "HardMish", "PReLU", "GELU", "GELUTanh",
                                         "QuickGELU")),
                          (activations_me, ("SwishMe", "MishMe", "HardSwishMe", "HardMishMe"))):
        types += [getattr(module, name) for name in names if hasattr(module, name)]
    return tuple(types)


GATING_ACTIVATIONS = _gating_activations()

LayerMap = Sequence[tuple[tuple[type, ...], Rule]]


class Composite:
    """Rules by module type (``layer_map``, first match wins), a special rule for the first module matching
    ``first_map`` (zennit's ``SpecialFirstLayerMapComposite``), and the canonizers of :mod:`.canonizers`.

    ``stabilizer`` is the epsilon of the average-pooling rule.
    """

    def __init__(self, layer_map: LayerMap, first_map: LayerMap = (), stabilizer: float = 1e-6,
                 merge_batch_norm: bool = True):
        self.layer_map = [((*GATING_ACTIVATIONS,), Pass()), (AVERAGE_POOLS, Epsilon(stabilizer)), *layer_map]
        self.first_map = list(first_map)
        self.merge_batch_norm = merge_batch_norm

    def rules(self, model: nn.Module) -> dict[str, tuple[nn.Module, Rule]]:
        """``{module name: (module, rule)}`` for every module that gets a rule."""
        assigned = {}
        first_done = not self.first_map
        for name, module in model.named_modules():
            if not first_done:
                rule = next((r for types, r in self.first_map if isinstance(module, types)), None)
                if rule is not None:
                    first_done = True
                    assigned[name] = (module, rule)
                    continue
            rule = next((r for types, r in self.layer_map if isinstance(module, types)), None)
            if rule is not None:
                assigned[name] = (module, rule)
        return assigned

    def check_supported(self, model: nn.Module, assigned: dict, merged: list[nn.Module]) -> None:
        """Every module holding parameters must have a rule, be a merged BatchNorm or a CP-LRP attention module."""
        covered = {id(module) for module, _ in assigned.values()} | {id(m) for m in merged}
        for name, module in model.named_modules():
            if id(module) in covered or isinstance(getattr(module, "detach_attention", None), bool):
                continue
            if next(module.parameters(recurse=False), None) is None:
                continue
            if isinstance(module, _BatchNorm):
                raise ValueError(
                    f"LRP cannot handle BatchNorm module '{name}' ({type(module).__name__}): it does not directly "
                    "follow a conv/linear layer it could be merged into")
            raise ValueError(
                f"LRP has no rule for module '{name}' ({type(module).__name__}), which has parameters; supported "
                "are conv/linear layers, BatchNorm after them, gating activations and modules with a "
                "`detach_attention` flag")

    @contextmanager
    def context(self, model: nn.Module, model_input: torch.Tensor) -> Iterator[Attribution]:
        """Apply canonizers and rule hooks; everything is removed and restored on exit, also on error.
        Raises before changing anything if a module with parameters has no rule."""
        assigned = self.rules(model)
        pairs = batch_norm_pairs(model) if self.merge_batch_norm else []
        self.check_supported(model, assigned, [bn for _, bn in pairs])
        input_rules = [rule for _, rule in assigned.values() if rule.produces_relevance]
        with ExitStack() as stack:
            stack.enter_context(overridden_attributes(model, "inplace", False))
            stack.enter_context(overridden_attributes(model, "detach_attention", True))
            stack.enter_context(merge_batch_norms(model, pairs))
            for rule in input_rules:
                stack.enter_context(_bound_to_input(rule, model_input))
            for name, (module, rule) in assigned.items():
                stack.callback(rule.register(module, name).remove)
            yield Attribution(model_input, produces_relevance=bool(input_rules))


@contextmanager
def _bound_to_input(rule, model_input: torch.Tensor) -> Iterator[None]:
    rule.model_input = model_input
    try:
        yield
    finally:
        rule.model_input = None


@dataclass
class Attribution:
    """The model input of a composite context and how to read relevance from its modified gradient."""

    model_input: torch.Tensor
    produces_relevance: bool

    def relevance(self, input_gradient: torch.Tensor) -> torch.Tensor:
        """Input relevance: the gradient itself after an input-layer rule, else gradient x input."""
        return input_gradient if self.produces_relevance else self.model_input * input_gradient


# name -> (rule for convolutions, rule for dense layers, special first layer: None, "box" or "flat")
_TABLE = {
    "epsilon": ("epsilon", "epsilon", None),
    "epsilon-plus": ("z+", "epsilon", None),
    "epsilon-plus-box": ("z+", "epsilon", "box"),
    "epsilon-plus-flat": ("z+", "epsilon", "flat"),
    "epsilon-gamma-box": ("gamma", "epsilon", "box"),
    "epsilon-alpha2-beta1": ("alpha2-beta1", "epsilon", None),
    "epsilon-alpha2-beta1-flat": ("alpha2-beta1", "epsilon", "flat"),
    "alpha1-beta0": ("alpha1-beta0", "alpha1-beta0", None),
}
COMPOSITES = tuple(_TABLE)


def make_composite(name: str, epsilon: float = 1e-6, gamma: float = 0.25, stabilizer: float = 1e-6,
                   low: float | torch.Tensor | None = None, high: float | torch.Tensor | None = None) -> Composite:
    """A named composite (see the module docstring). ``low``/``high``: z^B input bounds in the model's input
    space, needed by the ``*-box`` composites."""
    if name not in _TABLE:
        raise ValueError(f"unknown LRP composite {name!r}; available: {', '.join(COMPOSITES)}")
    conv_rule, dense_rule, first = _TABLE[name]
    rules = {"epsilon": lambda: Epsilon(epsilon), "z+": lambda: ZPlus(stabilizer),
             "gamma": lambda: Gamma(gamma, stabilizer), "alpha2-beta1": lambda: AlphaBeta(2.0, 1.0, stabilizer),
             "alpha1-beta0": lambda: AlphaBeta(1.0, 0.0, stabilizer)}
    first_map = []
    if first == "box":
        if low is None or high is None:
            raise ValueError(f"composite {name!r} needs input bounds low/high for its z^B input layer")
        first_map = [(CONVOLUTIONS, ZBox(low, high, stabilizer))]
    elif first == "flat":
        first_map = [(LINEAR_LAYERS, Flat(stabilizer))]
    layer_map = [(CONVOLUTIONS, rules[conv_rule]()), (DENSE, rules[dense_rule]())]
    return Composite(layer_map, first_map, stabilizer=stabilizer)
