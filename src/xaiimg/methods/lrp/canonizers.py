"""Canonizers: temporary, exactly reversible rewrites that put a model in a form the LRP rules apply to.

Each canonizer is a context manager over the model; leaving it restores the very same parameter objects,
attributes and forward methods (state_dict bit-equal), also on error.

- :func:`merge_batch_norms`: fold every BatchNorm that directly follows a conv/linear layer into that layer
  (zennit's ``SequentialMergeBatchNorm``), including timm's ``BatchNormAct2d`` (BN + dropout + activation in one
  module: only its BN part is folded; its activation keeps its own pass rule).
- :func:`overridden_attributes`: set an attribute on every module that has it, e.g. ``inplace=False`` (the rules
  save layer inputs/outputs) and ``detach_attention=True`` (attention weights treated as constants, CP-LRP).

Residual additions need no canonizer here: in the "gradient x input" convention of :mod:`.rules` the gradient
of ``a + b`` splits the relevance ``(a + b) * c`` into ``a * c`` and ``b * c``, i.e. in proportion to the summands
(zennit needs its ``ResNetCanonizer`` Sum modules for the same result).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from xaiimg.methods.lrp.rules import substituted_parameters

LINEAR_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def execution_units(model: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """Leaves in registration order (depth first), with every BatchNorm (even one holding an activation
    child, as timm's ``BatchNormAct2d``) taken as one unit. Like zennit, this assumes modules are registered in
    the order they run."""
    children = list(model.named_children())
    if not children or isinstance(model, _BatchNorm):
        yield prefix, model
        return
    for name, child in children:
        yield from execution_units(child, f"{prefix}.{name}" if prefix else name)


def batch_norm_pairs(model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """``(linear, batch_norm)`` pairs where the BatchNorm directly follows a conv/linear layer with matching
    channels (the BatchNorm must use running statistics)."""
    pairs = []
    previous = None
    for _, unit in execution_units(model):
        if (isinstance(unit, _BatchNorm) and isinstance(previous, LINEAR_TYPES)
                and unit.num_features == previous.weight.shape[0] and unit.running_mean is not None):
            pairs.append((previous, unit))
        previous = unit
    return pairs


def _after_norm(batch_norm: nn.Module):
    """What a merged BatchNorm still computes: nothing, or timm ``BatchNormAct2d``'s dropout + activation."""
    if not list(batch_norm.children()):
        return lambda x: x
    if set(dict(batch_norm.named_children())) <= {"drop", "act"}:
        def dropout_activation(x):
            if hasattr(batch_norm, "drop"):
                x = batch_norm.drop(x)
            if hasattr(batch_norm, "act"):
                x = batch_norm.act(x)
            return x

        return dropout_activation
    children = list(dict(batch_norm.named_children()))
    raise ValueError(f"cannot merge {type(batch_norm).__name__}: unknown children {children}")


def merged_parameters(linear: nn.Module, batch_norm: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """``W' = W * s``, ``b' = (b - mean) * s + beta`` with ``s = gamma / sqrt(var + eps)`` per output channel."""
    with torch.no_grad():
        scale = 1.0 / torch.sqrt(batch_norm.running_var + batch_norm.eps)
        if batch_norm.weight is not None:
            scale = scale * batch_norm.weight
        shift = batch_norm.bias if batch_norm.bias is not None else torch.zeros_like(scale)
        bias = linear.bias if linear.bias is not None else torch.zeros_like(scale)
        weight = linear.weight * scale.view(-1, *([1] * (linear.weight.ndim - 1)))
        return weight.detach(), ((bias - batch_norm.running_mean) * scale + shift).detach()


@contextmanager
def merge_batch_norms(model: nn.Module, pairs: list[tuple[nn.Module, nn.Module]] | None = None) -> Iterator[list]:
    """Fold each BatchNorm of ``pairs`` (default :func:`batch_norm_pairs`) into its preceding layer for the
    duration of the context; yields the pairs. The original parameter objects are put back afterwards."""
    pairs = batch_norm_pairs(model) if pairs is None else pairs
    with ExitStack() as stack:
        for linear, batch_norm in pairs:
            if batch_norm.training:
                raise ValueError(f"cannot merge {type(batch_norm).__name__} in training mode (uses batch statistics)")
            weight, bias = merged_parameters(linear, batch_norm)
            after = _after_norm(batch_norm)
            stack.enter_context(substituted_parameters(linear, weight=weight, bias=bias))
            stack.enter_context(_overridden(batch_norm, "forward", after))
        yield pairs


_MISSING = object()


@contextmanager
def _overridden(module: nn.Module, name: str, value: Any) -> Iterator[None]:
    """Set an instance attribute; afterwards restore the previous instance attribute or remove it."""
    previous = module.__dict__.get(name, _MISSING)
    object.__setattr__(module, name, value)
    try:
        yield
    finally:
        if previous is _MISSING:
            object.__delattr__(module, name)
        else:
            object.__setattr__(module, name, previous)


@contextmanager
def overridden_attributes(model: nn.Module, name: str, value: Any) -> Iterator[list[nn.Module]]:
    """Set attribute ``name`` to ``value`` on every submodule that has it (e.g. ``inplace``,
    ``detach_attention``); restore the old values afterwards. Yields the modules changed."""
    modules = [m for m in model.modules() if isinstance(getattr(m, name, None), bool)]
    saved = [getattr(m, name) for m in modules]
    try:
        for module in modules:
            setattr(module, name, value)
        yield modules
    finally:
        for module, old in zip(modules, saved):
            setattr(module, name, old)
