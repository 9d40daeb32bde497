"""Input checks and model-scoring loops shared by the metrics."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from xaiimg.nn import check_target_range, num_classes_of, resolve_targets
from xaiimg.ops import batches, check_images, upsample


def prepare_saliency(saliency: torch.Tensor, x: torch.Tensor, name: str = "saliency") -> torch.Tensor:
    """``[B,1,H,W]`` maps at the resolution of ``x`` (bilinear, align_corners=False) from ``[B,1,h,w]`` or
    ``[B,h,w]``, on ``x``'s device in their own floating dtype; raises on a batch mismatch or non-finite values."""
    if not isinstance(saliency, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [B,1,h,w], got {type(saliency).__name__}")
    if saliency.ndim == 3:
        saliency = saliency.unsqueeze(1)
    if saliency.ndim != 4 or saliency.shape[1] != 1:
        raise ValueError(f"{name} must have shape [B,1,h,w] or [B,h,w], got {tuple(saliency.shape)}")
    if saliency.shape[0] != x.shape[0]:
        raise ValueError(f"{name} has {saliency.shape[0]} maps for a batch of {x.shape[0]} images")
    if not saliency.is_floating_point():
        saliency = saliency.float()
    if not torch.isfinite(saliency).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return upsample(saliency.detach().to(device=x.device), x.shape[-2:])  # own dtype: ranking keeps its precision


def check_metric_inputs(model: nn.Module, x: torch.Tensor, target, batch_size: int) -> None:
    """Validate what every model-based metric receives, before any pass."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_images(x, channels=None)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    num_classes = num_classes_of(model)
    if num_classes:
        check_target_range(target, num_classes)


@torch.no_grad()
def forward_in_chunks(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``model(x)`` evaluated ``batch_size`` images at a time (the caller holds ``preserved_state``)."""
    return torch.cat([model(x[chunk]) for chunk in batches(x.shape[0], batch_size)])


@torch.no_grad()
def score_jobs(model: nn.Module, num_jobs: int, build: Callable[[slice], torch.Tensor],
               read: Callable[[slice, torch.Tensor], torch.Tensor], batch_size: int, progress: bool,
               description: str) -> torch.Tensor:
    """Run ``num_jobs`` perturbed images through the model ``batch_size`` at a time.

    ``build(chunk)`` makes the images of the jobs in ``chunk`` (only that chunk exists in memory at once);
    ``read(chunk, logits)`` turns the chunk's logits into one value per job. Returns the ``[num_jobs]`` values.
    """
    from tqdm.auto import tqdm

    values = []
    with tqdm(total=num_jobs, disable=not progress, desc=description, unit="img") as bar:
        for chunk in batches(num_jobs, batch_size):
            values.append(read(chunk, model(build(chunk))))
            bar.update(chunk.stop - chunk.start)
    return torch.cat(values) if values else torch.empty(0)


def original_logits_and_targets(model: nn.Module, x: torch.Tensor, target, batch_size: int
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of the unperturbed images and the per-sample classes (``None`` -> argmax on the original)."""
    logits = forward_in_chunks(model, x, batch_size)
    return logits, resolve_targets(target, logits)


def as_index_tensor(values: Sequence[int] | torch.Tensor, length: int, name: str, device) -> torch.Tensor:
    """One integer per sample as a long tensor, or a clear error."""
    tensor = torch.as_tensor(values, device=device)
    if tensor.is_floating_point() or tensor.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class indices, got dtype {tensor.dtype}")
    tensor = tensor.reshape(-1).long()
    if tensor.numel() != length:
        raise ValueError(f"got {tensor.numel()} {name} for {length} samples")
    return tensor


def one_per_sample(targets, count: int) -> torch.Tensor:
    """Class indices ``targets`` (an int, or one per sample) as ``[count]`` values (length checked by the callee)."""
    values = torch.as_tensor(targets).reshape(-1)
    return values.expand(count) if values.numel() == 1 else values


def resolve_explainer(explainer) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]:
    """``explain(model, x, targets) -> [B,1,H,W]`` from a registered method name, an ``Explainer`` or a callable
    with that signature."""
    if isinstance(explainer, str):
        from xaiimg.methods import get_method

        explainer = get_method(explainer)
    if not callable(explainer):
        raise TypeError(f"explainer must be a method name, an Explainer or a callable, got {type(explainer).__name__}")
    return lambda model, x, targets: explainer(model, x, targets)


def check_maps(maps, x: torch.Tensor, who: str) -> torch.Tensor:
    """The explainer's output as ``[B,1,H,W]`` maps matching ``x``, or a clear error."""
    if not isinstance(maps, torch.Tensor) or maps.ndim != 4 or maps.shape[0] != x.shape[0] or maps.shape[1] != 1:
        shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ValueError(f"{who} must return maps [B,1,H,W] for a batch of {x.shape[0]}, got {shape}")
    return maps.detach()

