"""Training of the aesthetic model (:class:`~xaiimg.models.aesthetic.AestheticModel`): objectives, score
metrics, prediction, evaluation and the training loop.

:func:`train_aesthetic` minimises EMD (r=2, Talebi & Milanfar, NIMA, TIP 2018) between the predicted and the
target vote distribution plus ``score_weight`` x MSE of the regressed score; a frozen backbone's features are
computed once and cached (:func:`cache_features`). To fine-tune the last backbone stage, the features entering it
are cached instead (:func:`cache_stage_inputs`, ``start_stage=``) and the stage, conv_head and the head train on them.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from xaiimg.data.ava import NUM_BINS, mean_score
from xaiimg.models.aesthetic import AestheticModel, save_checkpoint
from xaiimg.ops import average_ranks


# ------------------------------------------------------------------------------------------ objectives
def emd_loss(predicted: torch.Tensor, target: torch.Tensor, r: float = 2.0) -> torch.Tensor:
    """Earth mover's distance between 10-bin distributions, mean over the batch (NIMA, Eq. 1):
    ``EMD = (1/N sum_k |CDF_p(k) - CDF_t(k)|^r)^(1/r)``."""
    if predicted.shape != target.shape:
        raise ValueError(f"predicted {tuple(predicted.shape)} and target {tuple(target.shape)} shapes differ")
    cdf_gap = (predicted.cumsum(-1) - target.cumsum(-1)).abs()
    per_sample = cdf_gap.pow(r).mean(-1).clamp_min(1e-12).pow(1.0 / r)  # clamp: finite gradient at EMD = 0
    return per_sample.mean()


def aesthetic_loss(logits: torch.Tensor, target: torch.Tensor, score_weight: float) -> torch.Tensor:
    """EMD(r=2) on the distribution + ``score_weight`` x MSE between predicted and target mean scores."""
    predicted = logits.softmax(-1)
    return emd_loss(predicted, target) + score_weight * F.mse_loss(mean_score(predicted), mean_score(target))


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation (SRCC): Pearson correlation of average ranks (0 for a constant input, where
    :func:`xaiimg.ops.spearman_correlation` gives NaN)."""
    return linear_correlation(average_ranks(a.flatten()), average_ranks(b.flatten()))


def linear_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson's linear correlation (PLCC)."""
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-300))


def score_metrics(predicted: torch.Tensor, target: torch.Tensor, threshold: float = 5.0) -> dict[str, float]:
    """SRCC, PLCC, MSE of mean scores, and binary accuracy with "high quality" = score >= ``threshold``
    (AVA convention, Murray et al. 2012, with delta = 0)."""
    return {"srcc": rank_correlation(predicted, target), "plcc": linear_correlation(predicted, target),
            "mse": float(F.mse_loss(predicted.double(), target.double())),
            "accuracy": float(((predicted >= threshold) == (target >= threshold)).double().mean())}




# ------------------------------------------------------------------------------------- training
def _check_pairs(dataset: Dataset, name: str) -> None:
    if len(dataset) == 0:
        raise ValueError(f"{name} set is empty")
    image, distribution = dataset[0][:2]
    if distribution.shape[-1] != NUM_BINS:
        raise ValueError(f"{name} set items must be (image, {NUM_BINS}-bin distribution), "
                         f"got {tuple(distribution.shape)}")


@torch.no_grad()
def cache_features(model: AestheticModel, dataset: Dataset, batch_size: int = 32) -> TensorDataset:
    """``(backbone features, distribution)`` pairs for every item: the frozen backbone runs once, in eval mode."""
    was_training = model.backbone.training
    model.backbone.eval()
    try:
        features, targets = [], []
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            features.append(model.backbone(batch[0]))
            targets.append(batch[1])
    finally:
        model.backbone.train(was_training)
    return TensorDataset(torch.cat(features), torch.cat(targets).float())


@torch.no_grad()
def cache_stage_inputs(model: AestheticModel, dataset: Dataset, stage: str = "blocks.6",
                       batch_size: int = 32) -> TensorDataset:
    """``(features entering stage, distribution)`` pairs: the backbone's frozen stem and stages before ``stage``
    run once, in eval mode (Lite0 at 128 px before ``blocks.6``: 192x4x4 floats, 12 KB an image)."""
    was_training = model.backbone.training
    model.backbone.eval()
    try:
        features, targets = [], []
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            features.append(model.stage_input(batch[0], stage))
            targets.append(batch[1])
    finally:
        model.backbone.train(was_training)
    return TensorDataset(torch.cat(features), torch.cat(targets).float())


def _forward(model: AestheticModel, inputs: torch.Tensor, cached: bool, start_stage: str | None) -> torch.Tensor:
    if start_stage is not None:
        return model.forward_from(inputs, start_stage)
    return model.forward_head(inputs) if cached else model(inputs)


@torch.no_grad()
def predict(model: AestheticModel, dataset: Dataset, batch_size: int = 32,
            cached: bool = False, start_stage: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted and target distributions ``[N,10]`` in eval mode (``cached``: items hold backbone features;
    ``start_stage``: items hold the features entering that stage, :func:`cache_stage_inputs`)."""
    was_training = model.training
    model.eval()
    try:
        predicted, targets = [], []
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            logits = _forward(model, batch[0], cached, start_stage)
            predicted.append(logits.softmax(-1))
            targets.append(batch[1].float())
    finally:
        model.train(was_training)
    return torch.cat(predicted), torch.cat(targets)


def evaluate_aesthetic(model: AestheticModel, dataset: Dataset, batch_size: int = 32, cached: bool = False,
                       score_weight: float = 0.0, start_stage: str | None = None) -> dict[str, float]:
    """Loss terms and score metrics (SRCC, PLCC, MSE, binary accuracy at 5) of ``model`` on ``dataset``."""
    predicted, targets = predict(model, dataset, batch_size, cached, start_stage)
    metrics = score_metrics(mean_score(predicted), mean_score(targets))
    metrics["emd"] = float(emd_loss(predicted, targets))
    metrics["loss"] = metrics["emd"] + score_weight * metrics["mse"]
    return metrics


def _set_train_mode(model: AestheticModel) -> None:
    """Train mode for the head and the unfrozen backbone parts; frozen backbone parts (BN statistics) stay in eval."""
    model.train()
    for module in model.backbone.modules():
        parameters = list(module.parameters(recurse=False))
        if parameters and not any(p.requires_grad for p in parameters):
            module.eval()
    if model.frozen_backbone():
        model.backbone.eval()


@dataclass(frozen=True)
class TrainingOutputs:
    """Where :func:`train_aesthetic` writes: the checkpoint of the last epoch, of the best one, and the metrics."""

    last_checkpoint: Path
    best_checkpoint: Path
    metrics: Path


def train_aesthetic(model: AestheticModel, train_set: Dataset, val_set: Dataset | None = None,
                    outputs: TrainingOutputs | None = None, *, epochs: int = 20, batch_size: int = 32, lr: float = 1e-3,
                    weight_decay: float = 1e-4, score_weight: float = 0.1, trainable_backbone: Sequence[str] = (),
                    inputs: str = "images", cache: bool = True, seed: int = 0, start_stage: str | None = None,
                    log=None) -> dict:
    """Train with Adam on EMD + ``score_weight`` x MSE; returns (and writes) per-epoch metrics.

    Items of ``train_set``/``val_set`` are ``(image [3,H,W], distribution [10])``, or with
    ``inputs="features"`` ``(backbone features [C,h,w], distribution)`` from :func:`cache_features`. The backbone
    is frozen except ``trainable_backbone``; when fully frozen and ``cache``, its features are computed once and
    held in memory (Lite0 at 224 px: 1280x7x7 floats, 251 KB an image) and only the attention + head train; the
    result equals running the frozen backbone every step (``cache=False``, for sets that do not fit in memory):
    it is in eval mode either way.
    ``start_stage`` (e.g. ``"blocks.6"``, Lite0's last stage) fine-tunes the backbone from that stage on
    (``trainable_backbone`` defaults to :meth:`AestheticModel.trainable_from`; it may not reach before the stage):
    the features entering the stage are cached once (:func:`cache_stage_inputs`; or given, ``inputs="stage-inputs"``)
    and the stage, conv_head, BN and the head train on them, the frozen stages before it in eval mode.
    Shuffling and dropout use ``seed``; on CPU the run is deterministic given the model's initial weights (seed
    torch before constructing the model). ``outputs`` receive, every epoch, the last checkpoint and the best one
    (lowest validation loss, or the last epoch without ``val_set``), and at the end the metrics (JSON).
    """
    _check_pairs(train_set, "training")
    if val_set is not None:
        _check_pairs(val_set, "validation")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    if inputs not in ("images", "features", "stage-inputs"):
        raise ValueError(f"inputs must be 'images', 'features' or 'stage-inputs', got {inputs!r}")
    if inputs == "stage-inputs" and start_stage is None:
        raise ValueError("inputs='stage-inputs' needs start_stage (the stage the cached features enter)")
    if inputs == "features" and start_stage is not None:
        raise ValueError("start_stage trains from the features entering a stage: pass images or stage-inputs")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    if start_stage is not None:
        suffix = model.trainable_from(start_stage)
        trainable_backbone = tuple(trainable_backbone) or suffix
        early = [name for name in trainable_backbone
                 if not any(name == s or name.startswith(s + ".") for s in suffix)]
        if early:
            raise ValueError(f"trainable_backbone {early} lies before start_stage {start_stage!r}, whose inputs "
                             "are cached; train from an earlier stage instead")
    model.freeze_backbone(trainable_backbone)
    if inputs == "features" and not model.frozen_backbone():
        raise ValueError("cached features need a fully frozen backbone; drop trainable_backbone or pass images")
    cached = start_stage is None and model.frozen_backbone() and (cache or inputs == "features")
    started = time.perf_counter()
    if start_stage is not None and inputs == "images":
        train_set = cache_stage_inputs(model, train_set, start_stage, batch_size)
        val_set = cache_stage_inputs(model, val_set, start_stage, batch_size) if val_set is not None else None
    elif cached and inputs == "images":
        train_set = cache_features(model, train_set, batch_size)
        val_set = cache_features(model, val_set, batch_size) if val_set is not None else None
    cache_seconds = time.perf_counter() - started
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)
    history, best = [], (math.inf, 0)
    for epoch in range(1, epochs + 1):
        _set_train_mode(model)
        total, count = 0.0, 0
        for batch in DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=generator):
            inputs, targets = batch[0], batch[1].float()
            logits = _forward(model, inputs, cached, start_stage)
            loss = aesthetic_loss(logits, targets, score_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(inputs)
            count += len(inputs)
        record = {"epoch": epoch, "train_loss": total / count}
        if val_set is not None:
            record["val"] = evaluate_aesthetic(model, val_set, batch_size, cached, score_weight, start_stage)
        history.append(record)
        if log is not None:
            log(record)
        selection = record["val"]["loss"] if val_set is not None else -epoch
        if outputs is not None:
            save_checkpoint(model, outputs.last_checkpoint, epoch=epoch)
            if selection < best[0]:
                save_checkpoint(model, outputs.best_checkpoint, epoch=epoch)
        if selection < best[0]:
            best = (selection, epoch)
    model.eval()
    result = {"config": model.config, "seed": seed, "epochs": epochs, "batch_size": batch_size, "lr": lr,
              "weight_decay": weight_decay, "score_weight": score_weight,
              "trainable_backbone": list(trainable_backbone), "cached_features": cached,
              "cache_seconds": cache_seconds, "train_seconds": time.perf_counter() - started - cache_seconds,
              "best_epoch": best[1], "history": history}
    if start_stage is not None:
        result["start_stage"] = start_stage
    if outputs is not None:
        outputs.metrics.parent.mkdir(parents=True, exist_ok=True)
        # measured durations differ between reruns: returned, not written beside the checkpoints
        outputs.metrics.write_text(json.dumps({k: v for k, v in result.items() if not k.endswith("_seconds")},
                                              indent=2))
    return result

