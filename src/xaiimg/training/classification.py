"""A small, seeded classification training loop for in-memory uint8 image tensors (CPU-friendly).

It trains the synthetic-benchmark models (:mod:`xaiimg.models.synthetic`); deterministic for a given seed,
thread count and machine: the parameters are initialised under ``torch.manual_seed(seed)`` by the caller, and
batch order and augmentation come from one ``torch.Generator`` seeded here.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TrainConfig:
    """AdamW with linear warm-up then cosine decay to zero, cross-entropy with label smoothing.

    ``augment``: a random element of the dihedral group (rot90 x horizontal flip) per image, valid when
    classes are invariant to it (true for the synthetic shapes).
    """

    epochs: int = 4
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1
    label_smoothing: float = 0.05
    augment: bool = True
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def dihedral_augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Rotate each image by a random multiple of 90 degrees and flip half of them horizontally."""
    turns = torch.randint(0, 4, (len(images),), generator=generator)
    flips = torch.randint(0, 2, (len(images),), generator=generator).bool()
    out = torch.empty_like(images)
    for k in range(4):
        picked = turns == k
        if picked.any():
            out[picked] = torch.rot90(images[picked], k, dims=(-2, -1))
    out[flips] = out[flips].flip(-1)
    return out


def _learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    warmup = max(1, int(config.warmup_fraction * total_steps))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))


def fit(model: nn.Module, images_uint8: torch.Tensor, labels: torch.Tensor, config: TrainConfig,
        normalize: Callable[[torch.Tensor], torch.Tensor], log: Callable[[str], None] | None = None,
        max_steps: int | None = None) -> dict:
    """Train ``model`` in place on ``images_uint8`` ``[N,3,H,W]`` and ``labels`` ``[N]``.

    ``normalize`` maps float images in [0,1] to model input. ``max_steps`` stops early (tests).
    Returns the per-step losses, the number of steps, images seen, the wall time and the process CPU time (all
    threads: on a busy machine, CPU time / threads estimates the wall time on an idle one); the model is left in
    eval mode.
    """
    if images_uint8.dtype != torch.uint8 or images_uint8.ndim != 4:
        raise ValueError(f"images must be a [N,3,H,W] uint8 tensor, got {tuple(images_uint8.shape)} "
                         f"{images_uint8.dtype}")
    if len(labels) != len(images_uint8):
        raise ValueError(f"{len(images_uint8)} images but {len(labels)} labels")
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss_function = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    steps_per_epoch = math.ceil(len(labels) / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    if max_steps is not None:
        total_steps = min(max_steps, total_steps)
    losses: list[float] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    model.train()
    step = seen = 0
    while step < total_steps:
        order = torch.randperm(len(labels), generator=generator)
        for batch in order.split(config.batch_size):
            if step == total_steps:
                break
            x = images_uint8[batch].float().div_(255.0)
            if config.augment:
                x = dihedral_augment(x, generator)
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(config, step, total_steps)
            loss = loss_function(model(normalize(x)), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
            seen += len(batch)
            if log is not None and (step % max(1, steps_per_epoch // 4) == 0 or step == total_steps):
                log(f"step {step}/{total_steps} loss {sum(losses[-20:]) / len(losses[-20:]):.4f} "
                    f"({time.perf_counter() - start:.0f} s)")
    model.eval()
    return {"losses": losses, "steps": step, "images_seen": seen,
            "train_seconds": time.perf_counter() - start, "train_cpu_seconds": time.process_time() - cpu_start}


@torch.no_grad()
def predict(model: nn.Module, images_uint8: torch.Tensor, normalize: Callable[[torch.Tensor], torch.Tensor],
            batch_size: int = 128) -> torch.Tensor:
    """``[N, classes]`` logits of ``model`` (in its current mode) on uint8 images."""
    return torch.cat([model(normalize(chunk.float().div_(255.0))) for chunk in images_uint8.split(batch_size)])
