"""Model helpers shared by methods, metrics and studies: targets, layers, hooks, one layer pass, model state.

The ground floor with :mod:`xaiimg.ops` (tensor operations) and :mod:`xaiimg.passes` (pass counting): it imports
nothing else from xaiimg. Hooks live in context managers and are always removed, also on error; everything stays
in torch on the input's device.
"""
from __future__ import annotations

import difflib
import itertools
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import nn

TargetLike = int | Sequence[int] | torch.Tensor | None


# --------------------------------------------------------------------------------------------- devices
def resolve_device(name: str | torch.device) -> torch.device:
    """A torch device from ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``, refused with a clear error when this
    machine does not have it (so a run fails before its first model pass, not inside it)."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {name!r}; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {name!r}: CUDA is not available on this machine")
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {name!r}: this machine has {count} CUDA device(s), 0..{count - 1}")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {name!r}: MPS is not available on this machine")
    elif device.type != "cpu":
        raise ValueError(f"unsupported device {name!r}; use cpu, cuda, cuda:N or mps")
    return device


AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_autocast(autocast: str | torch.dtype | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype from ``None`` (off), ``"bfloat16"``/``"float16"`` or that torch dtype, refused with a
    clear error when autocast on ``device`` does not support it."""
    if autocast is None:
        return None
    dtype = AUTOCAST_DTYPES.get(autocast) if isinstance(autocast, str) else autocast
    if dtype not in AUTOCAST_DTYPES.values():
        raise ValueError(f"autocast must be None, 'bfloat16' or 'float16', got {autocast!r}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            torch.autocast(device.type, dtype=dtype)
        except RuntimeError as error:
            caught.append(error)
    if caught:
        reason = getattr(caught[0], "message", caught[0])
        raise ValueError(f"autocast {autocast!r} is not supported on device {str(device)!r}: {reason}")
    return dtype


def model_device(model: nn.Module) -> torch.device | None:
    """The one device of the model's parameters and buffers (``None`` if it has none); refused if they are spread."""
    devices = {t.device for t in itertools.chain(model.parameters(), model.buffers())}
    if len(devices) > 1:
        raise ValueError(f"the model's parameters and buffers lie on several devices {sorted(map(str, devices))}; "
                         "place them yourself and pass device=None")
    return next(iter(devices), None)


@contextmanager
def running_on(model: nn.Module | None, device: str | torch.device | None, autocast: str | torch.dtype | None = None,
               default: torch.device | None = None) -> Iterator[torch.device]:
    """Run the model's passes on ``device`` and yield that device; ``None`` moves nothing and yields ``default``
    (e.g. the inputs' device), else where the model is.

    A given ``device`` gets the model for the duration, moved back on exit, also on error, so it is left where it
    was (a model already there does not move). With ``autocast`` every forward of ``model`` runs under
    ``torch.autocast`` and returns its floating output in its input's dtype; the method's own arithmetic stays
    outside autocast.
    """
    home = model_device(model) if model is not None else None
    target = resolve_device(device) if device is not None else (default or home or torch.device("cpu"))
    dtype = resolve_autocast(autocast, target)
    moved = device is not None and home is not None and home != target
    try:
        if moved:
            model.to(target)
        if dtype is None or model is None:
            yield target
        else:
            with autocast_forwards(model, target.type, dtype):
                yield target
    finally:
        if moved:
            model.to(home)


@contextmanager
def autocast_forwards(model: nn.Module, device_type: str, dtype: torch.dtype) -> Iterator[None]:
    """Every forward of ``model`` inside the context runs under ``torch.autocast(device_type, dtype)`` and returns
    a floating output in its input's dtype; hooks removed and autocast left on exit, also on error."""
    open_contexts: list[torch.autocast] = []

    def enter(_module, _args):
        context = torch.autocast(device_type, dtype=dtype)
        context.__enter__()
        open_contexts.append(context)

    def leave(_module, args, output):
        open_contexts.pop().__exit__(None, None, None)
        wanted = args[0].dtype if args and isinstance(args[0], torch.Tensor) else None
        if isinstance(output, torch.Tensor) and output.is_floating_point() and wanted is not None \
                and wanted.is_floating_point and output.dtype != wanted:
            return output.to(wanted)
        return None

    handles = [model.register_forward_pre_hook(enter), model.register_forward_hook(leave, always_call=True)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        while open_contexts:
            open_contexts.pop().__exit__(None, None, None)


# --------------------------------------------------------------------------------------------- targets
def explicit_targets(target: int | Sequence[int] | torch.Tensor, batch: int, num_classes: int,
                     device: torch.device | str) -> torch.Tensor:
    """Per-sample class indices ``[B]`` (long, on ``device``) from an int or one int per sample; range-checked
    against ``num_classes``. An int, or a single index, applies to every sample."""
    if isinstance(target, torch.Tensor):
        targets = target.detach().to(device=device).reshape(-1)
        if targets.is_floating_point():
            raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
        targets = targets.long()
    elif isinstance(target, int):
        targets = torch.full((batch,), target, dtype=torch.long, device=device)
    else:
        values = list(target)
        if not all(isinstance(v, int) for v in values):
            raise TypeError(f"target must be None, an int or a sequence of ints, got {target!r}")
        targets = torch.tensor(values, dtype=torch.long, device=device)
    if targets.numel() == 1 and batch > 1:
        targets = targets.expand(batch).clone()
    if targets.numel() != batch:
        raise ValueError(f"got {targets.numel()} targets for a batch of {batch} images")
    out_of_range = (targets < 0) | (targets >= num_classes)
    if out_of_range.any():
        bad = targets[out_of_range].tolist()
        raise ValueError(f"target class index {bad} out of range for a model with {num_classes} classes")
    return targets


def resolve_targets(target: TargetLike, logits: torch.Tensor) -> torch.Tensor:
    """Per-sample class indices ``[B]`` (long) for ``logits`` ``[B,K]``: ``None`` -> ``argmax_k logits``, else
    :func:`explicit_targets`."""
    if target is None:
        return logits.detach().argmax(dim=-1)
    return explicit_targets(target, logits.shape[0], logits.shape[-1], logits.device)


def check_target_range(target: TargetLike, num_classes: int) -> None:
    """Raise before any model pass if an explicit target cannot be a class index."""
    if target is None:
        return
    if isinstance(target, torch.Tensor) and not target.is_floating_point():   # checked where it lies
        if ((target < 0) | (target >= num_classes)).any():
            bad = target[(target < 0) | (target >= num_classes)].tolist()
            raise ValueError(f"target class index {bad} out of range for a model with {num_classes} classes")
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
    """Class count from ``model.spec.num_classes`` (zoo models) or ``model.num_classes``; ``None`` if unknown."""
    spec = getattr(model, "spec", None)
    if spec is not None and getattr(spec, "num_classes", None):
        return spec.num_classes
    return getattr(model, "num_classes", None)


def check_input_channels(model: nn.Module, x: torch.Tensor) -> None:
    """Raise before any pass if ``x`` does not have the input channels of the model's first convolution."""
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is not None and x.shape[1] != first_conv.in_channels:
        raise ValueError(f"x has {x.shape[1]} channels but the model's first convolution expects "
                         f"{first_conv.in_channels} (shape {tuple(x.shape)})")


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
    """The dotted name of submodule ``layer`` in ``model``."""
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
def layer_output_as_leaf(layer: nn.Module, requires_grad: bool) -> Iterator[list[torch.Tensor]]:
    """Record each output of ``layer`` as a detached leaf; with ``requires_grad`` the network continues from a copy
    of that leaf, so gradients can be taken with respect to it and in-place operations downstream (e.g.
    ``ReLU(inplace=True)``) cannot alter the recorded activation. The hook is always removed."""
    recorded: list[torch.Tensor] = []

    def hook(module, _inputs, output):
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"the target layer {type(module).__name__} returns {type(output).__name__}, "
                            "not a tensor; choose a layer with a single tensor output")
        leaf = output.detach().requires_grad_(requires_grad)
        recorded.append(leaf)
        return leaf.clone() if requires_grad else None

    handle = layer.register_forward_hook(hook)
    try:
        yield recorded
    finally:
        handle.remove()


class _StopForward(Exception):
    pass


def forward_to(model: nn.Module, x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """Run ``model(x)`` until ``layer`` has produced its (first) output and return it; the rest is skipped."""
    captured: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        captured.append(output)
        raise _StopForward

    handle = layer.register_forward_hook(hook)
    try:
        model(x)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError(f"layer {type(layer).__name__} was not called by {type(model).__name__}.forward")
    if not isinstance(captured[0], torch.Tensor):
        raise TypeError(f"layer {type(layer).__name__} returns {type(captured[0]).__name__}, not a tensor")
    return captured[0]


# ------------------------------------------------------------------------------------------ layer pass
class LayerPass(NamedTuple):
    """What one forward (and backward) through a layer gives: ``activations`` ``A`` and ``gradients``
    ``dS/dA`` of the summed target logits ``S = sum_b y_b[t_b]`` (both ``[B,C,h,w]``, detached; ``gradients`` is
    ``None`` without a backward), the ``logits`` ``[B,K]`` (detached) and the per-sample ``targets`` ``[B]``."""

    activations: torch.Tensor
    gradients: torch.Tensor | None
    logits: torch.Tensor
    targets: torch.Tensor


def activations_and_gradients(model: nn.Module, x: torch.Tensor, layer: str | nn.Module | None,
                              target: TargetLike = None, with_gradient: bool = True) -> LayerPass:
    """One forward of ``x`` (and, ``with_gradient``, one backward from the raw target logits down to ``layer``).

    ``layer``: a dotted name, a submodule or ``None`` (the zoo's default layer); it must run exactly once per
    forward. Targets: ``None`` takes the argmax of this forward's logits, at no extra pass. Samples do not interact
    in an eval-mode network, so the gradient of the sum is each sample's own gradient. Parameters are frozen, so
    the network below the layer runs without an autograd graph; the layer's output is detached into a leaf and
    ``torch.autograd.grad`` stops there (as Captum's ``LayerGradCam``). ViT tokens are folded by :func:`to_spatial`.
    """
    layer = resolve_layer(model, layer)
    name = layer_name(model, layer)
    with frozen_parameters(model), torch.set_grad_enabled(with_gradient), \
            layer_output_as_leaf(layer, with_gradient) as recorded:
        logits = model(x)
        if len(recorded) != 1:
            raise ValueError(f"layer {name!r} ran {len(recorded)} times in one forward; a CAM needs a layer "
                             "that runs exactly once (pick a module on the forward path that is not shared)")
        targets = resolve_targets(target, logits)
        gradients = None
        if with_gradient:
            scores = select_scores(logits, targets).sum()
            if scores.requires_grad:
                (gradients,) = torch.autograd.grad(scores, recorded[0], allow_unused=True)
            if gradients is None:
                raise ValueError(f"the logits do not depend on layer {name!r}; choose a layer on the path "
                                 "from the input to the output")
    try:
        activations = to_spatial(recorded[0].detach(), model)
        gradients = to_spatial(gradients, model) if gradients is not None else None
    except ValueError as error:
        raise ValueError(f"layer {name!r}: {error}") from None
    return LayerPass(activations, gradients, logits.detach(), targets)


# ----------------------------------------------------------------------------------------- model state
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
