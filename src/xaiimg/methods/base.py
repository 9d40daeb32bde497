"""What every saliency method shares: targets, layers, hooks, model state, batching, normalisation.

A method subclasses :class:`Explainer` and implements :meth:`Explainer.attribute`, returning raw maps
``[B,1,h,w]`` (any resolution, any sign). :meth:`Explainer.__call__` validates the input, protects the model's
state, upsamples to the input size (bilinear, align_corners=False) and min-max normalises per sample.
"""
from __future__ import annotations

import difflib
from contextlib import contextmanager
from typing import Callable, ClassVar, Iterator, Sequence

import torch
from torch import nn

from xaiimg.ops import check_images, minmax_normalize, upsample

TargetLike = int | Sequence[int] | torch.Tensor | None

_REGISTRY: dict[str, type["Explainer"]] = {}


def register(name: str) -> Callable[[type["Explainer"]], type["Explainer"]]:
    """Class decorator: make a method available by ``name`` in :func:`xaiimg.explain`, params.yaml and the CLI."""

    def decorate(cls: type[Explainer]) -> type[Explainer]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method name {name!r} is already registered to {_REGISTRY[name].__name__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def registry() -> dict[str, type["Explainer"]]:
    return _REGISTRY


# --------------------------------------------------------------------------------------------- targets
def resolve_targets(target: TargetLike, logits: torch.Tensor) -> torch.Tensor:
    """Per-sample class indices ``[B]`` (long) from ``None`` (argmax of ``logits``), an int, or one int per sample."""
    batch, num_classes = logits.shape[0], logits.shape[-1]
    if target is None:
        return logits.detach().argmax(dim=-1)
    if isinstance(target, torch.Tensor):
        targets = target.detach().to(device=logits.device).reshape(-1)
        if targets.is_floating_point():
            raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
        targets = targets.long()
    elif isinstance(target, int):
        targets = torch.full((batch,), target, dtype=torch.long, device=logits.device)
    else:
        values = list(target)
        if not all(isinstance(v, int) for v in values):
            raise TypeError(f"target must be None, an int or a sequence of ints, got {target!r}")
        targets = torch.tensor(values, dtype=torch.long, device=logits.device)
    if targets.numel() == 1 and batch > 1:
        targets = targets.expand(batch).clone()
    if targets.numel() != batch:
        raise ValueError(f"got {targets.numel()} targets for a batch of {batch} images")
    out_of_range = (targets < 0) | (targets >= num_classes)
    if out_of_range.any():
        bad = targets[out_of_range].tolist()
        raise ValueError(f"target class index {bad} out of range for a model with {num_classes} classes")
    return targets


def check_target_range(target: TargetLike, num_classes: int) -> None:
    """Raise before any model pass if an explicit target cannot be a class index."""
    if target is None:
        return
    values = target.reshape(-1).tolist() if isinstance(target, torch.Tensor) else (
        [target] if isinstance(target, int) else list(target))
    bad = [v for v in values if not isinstance(v, int) or not 0 <= v < num_classes]
    if bad:
        raise ValueError(f"target class index {bad} out of range for a model with {num_classes} classes")


def select_scores(output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``output[b, targets[b]]`` for each sample."""
    return output.gather(1, targets.view(-1, 1)).squeeze(1)


def num_classes_of(model: nn.Module) -> int | None:
    spec = getattr(model, "spec", None)
    if spec is not None and getattr(spec, "num_classes", None):
        return spec.num_classes
    return getattr(model, "num_classes", None)


# ---------------------------------------------------------------------------------------------- layers
def resolve_layer(model: nn.Module, layer: str | nn.Module | None) -> nn.Module:
    """A submodule by dotted name, a module of ``model``, or (``None``) the model zoo's default target layer."""
    if layer is None:
        spec = getattr(model, "spec", None)
        default = getattr(spec, "default_layer", None)
        if default is None:
            raise ValueError(
                "no layer given and the model has no default target layer; pass layer='<module name>' "
                "(see [n for n, _ in model.named_modules()])")
        layer = default
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            raise ValueError(f"layer {type(layer).__name__} is not a submodule of the model")
        return layer
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a module name or an nn.Module, got {type(layer).__name__}")
    try:
        return model.get_submodule(layer)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        close = difflib.get_close_matches(layer, names, n=5)
        hint = f"; did you mean {close}?" if close else ""
        raise ValueError(f"unknown layer {layer!r} in {type(model).__name__}{hint}") from None


def layer_name(model: nn.Module, layer: nn.Module) -> str:
    return next(name for name, module in model.named_modules() if module is layer)


def to_spatial(activation: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
    """Return a ``[B,C,h,w]`` view of a layer output; ViT tokens ``[B,N,C]`` drop their prefix tokens
    (CLS/distillation, ``model.num_prefix_tokens``) and fold the rest onto the square patch grid."""
    if activation.ndim == 4:
        return activation
    if activation.ndim == 3:
        prefix = getattr(model, "num_prefix_tokens", None)
        tokens = activation.shape[1]
        if prefix is None:
            prefix = tokens - int(round(tokens**0.5)) ** 2
        side = int(round((tokens - prefix) ** 0.5))
        if side * side != tokens - prefix or prefix < 0:
            raise ValueError(f"cannot fold {tokens} tokens (prefix {prefix}) onto a square grid")
        grid = activation[:, prefix:, :]
        return grid.transpose(1, 2).reshape(activation.shape[0], activation.shape[2], side, side)
    raise ValueError(
        f"layer output has shape {tuple(activation.shape)}; a CAM method needs a spatial output "
        "[B,C,h,w] or ViT tokens [B,N,C]")


# ----------------------------------------------------------------------------------------------- hooks
@contextmanager
def capture_outputs(modules: Sequence[nn.Module]) -> Iterator[list[torch.Tensor | None]]:
    """Record each module's forward output (with its autograd graph) in a list; hooks always removed."""
    outputs: list[torch.Tensor | None] = [None] * len(modules)
    handles = []

    def make_hook(index):
        def hook(_module, _inputs, output):
            outputs[index] = output

        return hook

    try:
        for index, module in enumerate(modules):
            handles.append(module.register_forward_hook(make_hook(index)))
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def preserved_state(model: nn.Module, *tensors: torch.Tensor) -> Iterator[None]:
    """Run in eval mode and leave the model's modes, ``requires_grad`` flags and ``.grad`` (and those of
    ``tensors``) exactly as found, also on error."""
    modes = [(module, module.training) for module in model.modules()]
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    tensor_state = [(t, t.requires_grad, t.grad) for t in tensors if t.is_leaf]
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode
        for p, flag, grad in zip(params, flags, grads):
            p.requires_grad_(flag)
            p.grad = grad
        for t, flag, grad in tensor_state:
            t.requires_grad_(flag)
            t.grad = grad


@contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Stop autograd from building graphs for parameter gradients (input/activation gradients only)."""
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def batches(total: int, batch_size: int) -> Iterator[slice]:
    """Slices ``[0:bs], [bs:2bs], ...`` covering ``range(total)``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, total, batch_size):
        yield slice(start, min(start + batch_size, total))


# ------------------------------------------------------------------------------------------- explainer
class Explainer:
    """Base class of every saliency method.

    Subclasses implement ``attribute(model, x, target) -> [B,1,h,w]`` raw maps, resolving ``target`` with
    :func:`resolve_targets` from logits they compute anyway (so ``target=None`` costs no extra pass).
    """

    name: ClassVar[str] = ""

    def attribute(self, model: nn.Module, x: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, model: nn.Module, x: torch.Tensor, target: TargetLike = None,
                 normalize: bool = True) -> torch.Tensor:
        """Saliency ``[B,1,H,W]`` at the input's resolution; min-max per sample in ``[0,1]`` if ``normalize``."""
        check_images(x, channels=None)
        num_classes = num_classes_of(model)
        if num_classes is not None:
            check_target_range(target, num_classes)
        with preserved_state(model, x):
            maps = self.attribute(model, x.detach(), target)
        maps = upsample(maps.detach(), x.shape[-2:])
        if maps.shape[1] != 1 or maps.shape[0] != x.shape[0]:
            raise RuntimeError(f"{type(self).__name__}.attribute returned shape {tuple(maps.shape)}")
        return minmax_normalize(maps) if normalize else maps

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"
