"""The single-score aesthetic-quality model of paper 000 and its training.

Architecture (``AestheticModel``)::

    x -> EfficientNet-Lite features A [B,C,h,w]      (timm tf_efficientnet_lite0, real ImageNet weights;
         |                                            map = conv_head + BN + ReLU6 output, 1280x7x7 at 224 px)
         +-> PositionAttention(A) -+
         |                         +-> aggregate: concat (default, [B,2C,h,w]) or sum ([B,C,h,w])
         +-> ChannelAttention(A) --+
    -> global average pooling -> linear (10 score bins) = logits
    distribution p = softmax(logits); score = sum_i i * p_i in [1, 10]  (classify-then-regress)

``attention=False`` is the paper's "feature extraction only" branch: the aggregate is the backbone map itself.
Both variants end in GAP + one linear layer, so CAM (Zhou et al., CVPR 2016) is exact at ``model.aggregate``,
the ``default_layer`` of the attached :class:`~xaiimg.models.zoo.ModelSpec`.

Attention modules follow DANet (Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019) and its
official code (junfu1115/DANet, ``PAM_Module`` / ``CAM_Module``). Each has ``detach_attention``: when ``True``
the softmax attention weights are treated as constants (detached), so the block is linear in its input; this is
the conservative propagation used for LRP through attention (CP-LRP, Ali et al., ICML 2022).

Training (``train_aesthetic``) minimises EMD (r=2, Talebi & Milanfar, NIMA, TIP 2018) between the predicted and
the target vote distribution plus ``score_weight`` x MSE of the regressed score; a frozen backbone's features are
computed once and cached. ``python -m xaiimg.models.aesthetic train --out artifacts/aesthetic --seed 0`` trains
both variants on the synthetic composition benchmark (:mod:`xaiimg.data.composition`); ``train-ava`` trains them
on AVA with the standard test split (:func:`train_on_ava`).
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from xaiimg.data.ava import NUM_BINS, mean_score
from xaiimg.models.zoo import (CheckpointError, ModelSpec, attach_spec, load_model, read_checkpoint,
                               state_dict_mismatch)

BACKBONES = ("efficientnet_lite0", "efficientnet_lite2")


# ------------------------------------------------------------------------------------------ attention
class PositionAttention(nn.Module):
    """DANet position attention module (PAM; Fu et al. 2019, Eq. 1-2).

    For ``A`` of shape ``[B,C,H,W]`` and ``N = H*W`` positions: ``Q = conv1x1(A)``, ``K = conv1x1(A)``
    (``C -> C/reduction``), ``V = conv1x1(A)`` (``C -> C``), all with bias as in DANet's code;
    ``S[j,i] = softmax_i(Q_j . K_i)`` (how much source position ``i`` contributes to output position ``j``);
    ``E = gamma * V S^T + A``, i.e. ``E_j = gamma * sum_i S[j,i] V_i + A_j``.
    In the paper's letters ``K`` is ``B``, ``Q`` is ``C`` and ``V`` is ``D``: ``s_ji = softmax_i(B_i . C_j)``.
    ``gamma`` starts at ``init_scale`` (0 in DANet, so training starts from the identity).
    """

    def __init__(self, channels: int, reduction: int = 8, init_scale: float = 0.0):
        super().__init__()
        if channels < reduction or channels % reduction:
            raise ValueError(f"channels ({channels}) must be a positive multiple of reduction ({reduction})")
        self.query = nn.Conv2d(channels, channels // reduction, 1)
        self.key = nn.Conv2d(channels, channels // reduction, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.full((1,), float(init_scale)))
        self.detach_attention = False

    def attention_weights(self, a: torch.Tensor) -> torch.Tensor:
        """``S`` of shape ``[B,N,N]``, rows (output positions) summing to 1."""
        query = self.query(a).flatten(2)                       # [B,C',N]
        key = self.key(a).flatten(2)                           # [B,C',N]
        energy = torch.bmm(query.transpose(1, 2), key)         # [B,N,N]: Q_j . K_i
        return energy.softmax(dim=-1)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        weights = self.attention_weights(a)
        if self.detach_attention:
            weights = weights.detach()
        value = self.value(a).flatten(2)                       # [B,C,N]
        out = torch.bmm(value, weights.transpose(1, 2))        # [B,C,N]: sum_i V_i S[j,i]
        return self.gamma * out.view_as(a) + a


class ChannelAttention(nn.Module):
    """DANet channel attention module (CAM; Fu et al. 2019, Eq. 3-4), without convolutions.

    With ``A`` reshaped to ``[B,C,N]``: ``energy = A A^T`` (``[B,C,C]``), ``X = softmax`` over the last axis,
    ``E = beta * X A + A``.

    ``energy_mode="danet-code"`` (default) is what DANet's official ``CAM_Module`` computes:
    ``softmax(rowmax(energy) - energy)``. Softmax is shift-invariant, so this equals ``softmax(-energy)``: the
    code attends most to the *least* similar channels, unlike the paper's Eq. 3 ``x_ji = softmax_i(A_i . A_j)``,
    which ``energy_mode="paper"`` computes. Published DANet models were trained with the code's form.
    ``beta`` starts at ``init_scale`` (0 in DANet).
    """

    ENERGY_MODES = ("danet-code", "paper")

    def __init__(self, energy_mode: str = "danet-code", init_scale: float = 0.0):
        super().__init__()
        if energy_mode not in self.ENERGY_MODES:
            raise ValueError(f"energy_mode must be one of {self.ENERGY_MODES}, got {energy_mode!r}")
        self.energy_mode = energy_mode
        self.beta = nn.Parameter(torch.full((1,), float(init_scale)))
        self.detach_attention = False

    def attention_weights(self, a: torch.Tensor) -> torch.Tensor:
        """``X`` of shape ``[B,C,C]``, rows summing to 1."""
        flat = a.flatten(2)
        energy = torch.bmm(flat, flat.transpose(1, 2))
        if self.energy_mode == "danet-code":
            energy = energy.max(dim=-1, keepdim=True).values.expand_as(energy) - energy
        return energy.softmax(dim=-1)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        weights = self.attention_weights(a)
        if self.detach_attention:
            weights = weights.detach()
        out = torch.bmm(weights, a.flatten(2))
        return self.beta * out.view_as(a) + a


class DualAttention(nn.Module):
    """Position and channel attention in parallel on the same map, then aggregated.

    ``aggregation="concat"`` stacks the two outputs along channels (``[B,2C,h,w]``; DESIGN.md's choice, keeps
    the branches apart so CAM/LRP can tell them apart); ``"sum"`` adds them (``[B,C,h,w]``; DANet's fusion).
    """

    AGGREGATIONS = ("concat", "sum")

    def __init__(self, channels: int, aggregation: str = "concat", reduction: int = 8,
                 energy_mode: str = "danet-code", init_scale: float = 0.0):
        super().__init__()
        if aggregation not in self.AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {self.AGGREGATIONS}, got {aggregation!r}")
        self.aggregation = aggregation
        self.position = PositionAttention(channels, reduction, init_scale)
        self.channel = ChannelAttention(energy_mode, init_scale)
        self.out_channels = 2 * channels if aggregation == "concat" else channels

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        position, channel = self.position(a), self.channel(a)
        return torch.cat([position, channel], dim=1) if self.aggregation == "concat" else position + channel


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """Every module of ``model`` that has a ``detach_attention`` switch."""
    return [m for m in model.modules() if hasattr(m, "detach_attention")]


@contextmanager
def attention_detached(model: nn.Module, detach: bool = True) -> Iterator[nn.Module]:
    """Set ``detach_attention`` on every attention module of ``model``; restore the previous flags on exit."""
    modules = attention_modules(model)
    previous = [m.detach_attention for m in modules]
    try:
        for m in modules:
            m.detach_attention = detach
        yield model
    finally:
        for m, flag in zip(modules, previous):
            m.detach_attention = flag


# -------------------------------------------------------------------------------------------- the model
def efficientnet_features(name: str = "efficientnet_lite0", weights="default") -> nn.Module:
    """A zoo EfficientNet-Lite (real weights through :func:`load_model`) whose forward returns the unpooled
    conv_head + BN + ReLU6 map ``[B,1280,h,w]`` (classifier and pooling removed with timm's ``reset_classifier``)."""
    if name not in BACKBONES:
        raise ValueError(f"unknown aesthetic backbone {name!r}; available: {', '.join(BACKBONES)}")
    net = load_model(name, weights=weights)
    net.reset_classifier(0, "")
    return net


class AestheticModel(nn.Module):
    """EfficientNet features -> (position || channel attention -> aggregate) -> GAP -> linear(10 bins).

    ``forward(x)`` returns the 10 bin logits, so class-explaining methods work with target = bin index (0 = score
    1); :meth:`as_score_model` gives a one-logit module for explaining the mean score.

    ``backbone``: a zoo name (``"efficientnet_lite0"``, ``"efficientnet_lite2"``; ``weights`` as in
    :func:`load_model`) or any module mapping ``[B,3,H,W]`` to ``[B,C,h,w]`` (then give ``feature_channels`` or
    let the module carry ``num_features``). ``dropout`` applies to the pooled features before the linear head.
    """

    def __init__(self, backbone: str | nn.Module = "efficientnet_lite0", attention: bool = True,
                 aggregation: str = "concat", weights="default", feature_channels: int | None = None,
                 reduction: int = 8, energy_mode: str = "danet-code", dropout: float = 0.0):
        super().__init__()
        if isinstance(backbone, str):
            self.backbone = efficientnet_features(backbone, weights)
            base = self.backbone.spec
            spec = dict(input_size=base.input_size, resize_size=base.resize_size, interpolation=base.interpolation,
                        mean=base.mean, std=base.std, weights=base.weights)
            feature_channels = self.backbone.num_features
            self.config = dict(backbone=backbone, attention=attention, aggregation=aggregation,
                               reduction=reduction, energy_mode=energy_mode, dropout=dropout)
        elif isinstance(backbone, nn.Module):
            self.backbone = backbone
            feature_channels = feature_channels or getattr(backbone, "num_features", None)
            if not feature_channels:
                raise ValueError("a custom backbone needs feature_channels=<channels of its output map>")
            spec = dict(input_size=224, resize_size=256, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3)
            self.config = None
        else:
            raise TypeError(f"backbone must be a zoo name or an nn.Module, got {type(backbone).__name__}")
        if attention:
            self.aggregate = DualAttention(feature_channels, aggregation, reduction, energy_mode)
            pooled_channels = self.aggregate.out_channels
        else:
            self.aggregate = nn.Identity()
            pooled_channels = feature_channels
        self.attention = attention
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(pooled_channels, NUM_BINS)
        attach_spec(self, ModelSpec(
            name=f"aesthetic-{'attention' if attention else 'plain'}", default_layer="aggregate",
            layer_reason="aggregated feature map (attention output, or the backbone map without attention) "
                         "feeding global average pooling and the linear bin head, so CAM is exact there",
            class_names=[f"score {i}" for i in range(1, NUM_BINS + 1)], **spec))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Bin logits from backbone features ``[B,C,h,w]`` (training on cached features uses this)."""
        pooled = self.pool(self.aggregate(features)).flatten(1)
        return self.classifier(self.dropout(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.backbone(x))

    def distribution(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted vote distribution ``[B,10]`` (softmax of the bin logits)."""
        return self(x).softmax(dim=-1)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted mean score ``[B]`` in ``[1,10]``."""
        return mean_score(self.distribution(x))

    def as_score_model(self) -> "ScoreHead":
        return ScoreHead(self)

    def freeze_backbone(self, trainable: Sequence[str] = ()) -> None:
        """Freeze the backbone except the named submodules (e.g. ``("blocks.6", "conv_head", "bn2")``)."""
        for name in trainable:
            self.backbone.get_submodule(name)  # raises on an unknown name before anything changes
        for name, parameter in self.backbone.named_parameters():
            parameter.requires_grad_(any(name == t or name.startswith(t + ".") for t in trainable))

    def frozen_backbone(self) -> bool:
        return not any(p.requires_grad for p in self.backbone.parameters())


class ScoreHead(nn.Module):
    """One-logit view of an :class:`AestheticModel`: output ``[B,1]`` = mean score, so explaining ``target=0``
    explains the score. Layer names gain the prefix ``model.`` (default layer ``model.aggregate``)."""

    def __init__(self, model: AestheticModel):
        super().__init__()
        self.model = model
        base = model.spec
        attach_spec(self, ModelSpec(
            name=f"{base.name}-score", input_size=base.input_size, resize_size=base.resize_size,
            interpolation=base.interpolation, mean=base.mean, std=base.std, default_layer="model.aggregate",
            layer_reason=base.layer_reason, class_names=["mean score"], weights=base.weights))
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.score(x).unsqueeze(1)


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


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 1..N of a 1-D tensor, ties sharing their average rank (float64)."""
    order = torch.argsort(values, stable=True)
    _, group, counts = torch.unique_consecutive(values[order], return_inverse=True, return_counts=True)
    ends = counts.cumsum(0)
    group_rank = (ends - counts + ends + 1).double() / 2   # mean of positions start+1 .. end
    ranks = torch.empty(values.shape, dtype=torch.float64, device=values.device)
    ranks[order] = group_rank[group]
    return ranks


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation (SRCC): Pearson correlation of average ranks."""
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


# -------------------------------------------------------------------------------------------- training
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
def predict(model: AestheticModel, dataset: Dataset, batch_size: int = 32,
            cached: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted and target distributions ``[N,10]`` in eval mode (``cached``: items hold backbone features)."""
    was_training = model.training
    model.eval()
    try:
        predicted, targets = [], []
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            logits = model.forward_head(batch[0]) if cached else model(batch[0])
            predicted.append(logits.softmax(-1))
            targets.append(batch[1].float())
    finally:
        model.train(was_training)
    return torch.cat(predicted), torch.cat(targets)


def evaluate_aesthetic(model: AestheticModel, dataset: Dataset, batch_size: int = 32, cached: bool = False,
                       score_weight: float = 0.0) -> dict[str, float]:
    """Loss terms and score metrics (SRCC, PLCC, MSE, binary accuracy at 5) of ``model`` on ``dataset``."""
    predicted, targets = predict(model, dataset, batch_size, cached)
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


def save_checkpoint(model: AestheticModel, path: str | Path, **extra) -> None:
    """Save the trained state: head and attention always; of a zoo backbone only the modules with trainable
    parameters (their BatchNorm statistics included), the frozen rest being restored from its weights package.
    ``extra`` is stored alongside (JSON-able)."""
    trained_modules = {f"backbone.{name}" for name, module in model.backbone.named_modules()
                       if any(p.requires_grad for p in module.parameters(recurse=False))}
    keep_backbone = model.config is None
    state = {k: v for k, v in model.state_dict().items()
             if keep_backbone or not k.startswith("backbone.") or k.rsplit(".", 1)[0] in trained_modules}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": model.config, "state": state, "extra": extra}, path)


def load_aesthetic(path: str | Path, model: AestheticModel | None = None) -> AestheticModel:
    """An :class:`AestheticModel` from :func:`save_checkpoint` (rebuilt from the stored config, real backbone
    weights, unless ``model`` is given), in eval mode. Missing keys may only be backbone tensors."""
    checkpoint = read_checkpoint(path)
    if model is None:
        if checkpoint["config"] is None:
            raise ValueError(f"{path} was saved from a custom backbone; pass the model to load it into")
        model = AestheticModel(**checkpoint["config"])
    state = checkpoint["state"]
    expected = {k: v for k, v in model.state_dict().items() if k in state or not k.startswith("backbone.")}
    mismatch = state_dict_mismatch(expected, state)
    if mismatch:
        raise CheckpointError(f"checkpoint {path} does not match the model: {mismatch}")
    model.load_state_dict(state, strict=False)
    return model.eval()


def train_aesthetic(model: AestheticModel, train_set: Dataset, val_set: Dataset | None = None,
                    out_dir: str | Path | None = None, *, epochs: int = 20, batch_size: int = 32, lr: float = 1e-3,
                    weight_decay: float = 1e-4, score_weight: float = 0.1, trainable_backbone: Sequence[str] = (),
                    inputs: str = "images", cache: bool = True, seed: int = 0, log=None) -> dict:
    """Train with Adam on EMD + ``score_weight`` x MSE; returns (and writes) per-epoch metrics.

    Items of ``train_set``/``val_set`` are ``(image [3,H,W], distribution [10])``, or with
    ``inputs="features"`` ``(backbone features [C,h,w], distribution)`` from :func:`cache_features`. The backbone
    is frozen except ``trainable_backbone``; when fully frozen and ``cache``, its features are computed once and
    held in memory (Lite0 at 224 px: 1280x7x7 floats, 251 KB an image) and only the attention + head train; the
    result equals running the frozen backbone every step (``cache=False``, for sets that do not fit in memory):
    it is in eval mode either way.
    Shuffling and dropout use ``seed``; on CPU the run is deterministic given the model's initial weights (seed
    torch before constructing the model). ``out_dir`` receives ``last.pt``, ``best.pt`` (lowest validation loss,
    or the last epoch without ``val_set``) and ``metrics.json``.
    """
    _check_pairs(train_set, "training")
    if val_set is not None:
        _check_pairs(val_set, "validation")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    if inputs not in ("images", "features"):
        raise ValueError(f"inputs must be 'images' or 'features', got {inputs!r}")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model.freeze_backbone(trainable_backbone)
    if inputs == "features" and not model.frozen_backbone():
        raise ValueError("cached features need a fully frozen backbone; drop trainable_backbone or pass images")
    cached = model.frozen_backbone() and (cache or inputs == "features")
    started = time.perf_counter()
    if cached and inputs == "images":
        train_set = cache_features(model, train_set, batch_size)
        val_set = cache_features(model, val_set, batch_size) if val_set is not None else None
    cache_seconds = time.perf_counter() - started
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)
    out_dir = Path(out_dir) if out_dir is not None else None
    history, best = [], (math.inf, 0)
    for epoch in range(1, epochs + 1):
        _set_train_mode(model)
        total, count = 0.0, 0
        for batch in DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=generator):
            inputs, targets = batch[0], batch[1].float()
            logits = model.forward_head(inputs) if cached else model(inputs)
            loss = aesthetic_loss(logits, targets, score_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(inputs)
            count += len(inputs)
        record = {"epoch": epoch, "train_loss": total / count}
        if val_set is not None:
            record["val"] = evaluate_aesthetic(model, val_set, batch_size, cached, score_weight)
        history.append(record)
        if log is not None:
            log(record)
        selection = record["val"]["loss"] if val_set is not None else -epoch
        if out_dir is not None:
            save_checkpoint(model, out_dir / "last.pt", epoch=epoch)
            if selection < best[0]:
                save_checkpoint(model, out_dir / "best.pt", epoch=epoch)
        if selection < best[0]:
            best = (selection, epoch)
    model.eval()
    result = {"config": model.config, "seed": seed, "epochs": epochs, "batch_size": batch_size, "lr": lr,
              "weight_decay": weight_decay, "score_weight": score_weight,
              "trainable_backbone": list(trainable_backbone), "cached_features": cached,
              "cache_seconds": cache_seconds, "train_seconds": time.perf_counter() - started - cache_seconds,
              "best_epoch": best[1], "history": history}
    if out_dir is not None:
        (out_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    return result


# ------------------------------------------------------------------------------------------------ CLI
def train_on_composition(out: str | Path, seed: int = 0, size: int = 224, train: int = 384, val: int = 96,
                         test: int = 160, epochs: int = 20, backbone: str = "efficientnet_lite0",
                         aggregation: str = "concat", score_weight: float = 0.1, lr: float = 1e-3,
                         log=functools.partial(print, flush=True)) -> dict:
    """Train the attention and plain variants on the composition benchmark (frozen backbone, features cached
    once and shared); write ``<out>/{attention,plain}/`` checkpoints + metrics and ``<out>/summary.json`` with
    held-out (test split) SRCC/PLCC/accuracy of the best-on-validation checkpoint of each."""
    from xaiimg.data.composition import CompositionConfig, make_composition_set

    out = Path(out)
    config = CompositionConfig(size=size)
    splits = {name: make_composition_set(count, config, seed=seed + offset)
              for offset, (name, count) in enumerate((("train", train), ("val", val), ("test", test)))}
    summary = {"benchmark": {"config": config.as_dict(), "seeds": {"train": seed, "val": seed + 1, "test": seed + 2},
                             "sizes": {"train": train, "val": val, "test": test}}, "variants": {}}
    torch.manual_seed(seed)
    plain = AestheticModel(backbone, attention=False)
    plain.freeze_backbone()
    started = time.perf_counter()
    features = {name: cache_features(plain, split.dataset(plain.spec)) for name, split in splits.items()}
    summary["feature_cache_seconds"] = time.perf_counter() - started
    for variant in ("attention", "plain"):
        torch.manual_seed(seed)
        model = AestheticModel(backbone, attention=variant == "attention", aggregation=aggregation)
        metrics = train_aesthetic(model, features["train"], features["val"], out / variant, inputs="features",
                                  epochs=epochs, lr=lr, score_weight=score_weight, seed=seed,
                                  log=(lambda r, v=variant: log(f"{v} epoch {r['epoch']}: train {r['train_loss']:.4f}"
                                                                f" val srcc {r['val']['srcc']:.3f}")) if log else None)
        best = load_aesthetic(out / variant / "best.pt", model)
        held_out = evaluate_aesthetic(best, features["test"], cached=True, score_weight=score_weight)
        summary["variants"][variant] = {"test": held_out, "best_epoch": metrics["best_epoch"],
                                        "train_seconds": metrics["train_seconds"]}
        if log:
            log(f"{variant}: held-out SRCC {held_out['srcc']:.3f}, PLCC {held_out['plcc']:.3f}, "
                f"accuracy {held_out['accuracy']:.3f}")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def train_on_ava(out: str | Path, labels: str | Path, images: str | Path, test_labels: str | Path, seed: int = 0,
                 val_fraction: float = 0.05, epochs: int = 10, batch_size: int = 32, lr: float = 1e-3,
                 score_weight: float = 0.1, backbone: str = "efficientnet_lite0", aggregation: str = "concat",
                 variants: Sequence[str] = ("attention", "plain"), cache: bool = False, missing: str = "skip",
                 log=functools.partial(print, flush=True)) -> dict:
    """Train the model variants on AVA (frozen backbone): ``labels`` (AVA.txt rows or an idealo/NIMA JSON split)
    minus the ids of ``test_labels`` (the standard split, e.g. ``idealo_ava_labels_test.json``) is split, seeded,
    into training and ``val_fraction`` validation (checkpoint selection); ``<out>/<variant>/`` gets checkpoints and
    metrics, ``<out>/summary.json`` the held-out SRCC/PLCC/accuracy at 5 of each variant's best checkpoint.
    ``missing="skip"`` trains on the labelled images present in ``images``; ``cache`` holds backbone features in
    memory (251 KB an image at 224 px)."""
    from xaiimg.data.ava import AVADataset, read_ava_labels, split_by_ids

    unknown = sorted(set(variants) - {"attention", "plain"})
    if unknown or not variants:
        raise ValueError(f"variants must be a non-empty subset of ('attention', 'plain'), got {list(variants)}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    out = Path(out)
    test_ids = [r.image_id for r in read_ava_labels(test_labels)]
    train_records, test_records = split_by_ids(read_ava_labels(labels), test_ids)
    order = torch.randperm(len(train_records), generator=torch.Generator().manual_seed(seed)).tolist()
    val_count = max(1, round(val_fraction * len(train_records)))
    records = {"train": [train_records[i] for i in sorted(order[val_count:])],
               "val": [train_records[i] for i in sorted(order[:val_count])], "test": test_records}
    transform = AestheticModel(backbone, attention=False).spec.transform()
    splits = {name: AVADataset(rows, images, transform, missing=missing) for name, rows in records.items()}
    summary = {"data": {"labels": str(labels), "images": str(images), "test_labels": str(test_labels),
                        "seed": seed, "sizes": {name: len(split) for name, split in splits.items()}}, "variants": {}}
    for variant in variants:
        torch.manual_seed(seed)
        model = AestheticModel(backbone, attention=variant == "attention", aggregation=aggregation)
        metrics = train_aesthetic(model, splits["train"], splits["val"], out / variant, epochs=epochs,
                                  batch_size=batch_size, lr=lr, score_weight=score_weight, cache=cache, seed=seed,
                                  log=(lambda r, v=variant: log(f"{v} epoch {r['epoch']}: train {r['train_loss']:.4f}"
                                                                f" val srcc {r['val']['srcc']:.3f}")) if log else None)
        best = load_aesthetic(out / variant / "best.pt", model)
        held_out = evaluate_aesthetic(best, splits["test"], batch_size, score_weight=score_weight)
        summary["variants"][variant] = {"test": held_out, "best_epoch": metrics["best_epoch"],
                                        "train_seconds": metrics["train_seconds"]}
        if log:
            log(f"{variant}: held-out SRCC {held_out['srcc']:.3f}, PLCC {held_out['plcc']:.3f}, "
                f"accuracy {held_out['accuracy']:.3f}")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m xaiimg.models.aesthetic", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train both variants on the synthetic composition benchmark")
    train.add_argument("--out", required=True, help="output folder (checkpoints, metrics.json, summary.json)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--size", type=int, default=224)
    train.add_argument("--train", type=int, default=384, help="training images")
    train.add_argument("--val", type=int, default=96, help="validation images (checkpoint selection)")
    train.add_argument("--test", type=int, default=160, help="held-out images (reported metrics)")
    train.add_argument("--epochs", type=int, default=20)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--score-weight", type=float, default=0.1)
    train.add_argument("--backbone", default="efficientnet_lite0", choices=BACKBONES)
    train.add_argument("--aggregation", default="concat", choices=DualAttention.AGGREGATIONS)
    ava = commands.add_parser("train-ava", help="train the variants on AVA (data/README.md), frozen backbone")
    ava.add_argument("--out", required=True, help="output folder (checkpoints, metrics.json, summary.json)")
    ava.add_argument("--labels", required=True, help="AVA.txt (or an idealo/NIMA JSON split) with the vote counts")
    ava.add_argument("--images", required=True, help="folder of <image id>.jpg")
    ava.add_argument("--test-labels", required=True, help="label file whose ids form the held-out test split")
    ava.add_argument("--seed", type=int, default=0)
    ava.add_argument("--val-fraction", type=float, default=0.05)
    ava.add_argument("--epochs", type=int, default=10)
    ava.add_argument("--batch-size", type=int, default=32)
    ava.add_argument("--lr", type=float, default=1e-3)
    ava.add_argument("--score-weight", type=float, default=0.1)
    ava.add_argument("--backbone", default="efficientnet_lite0", choices=BACKBONES)
    ava.add_argument("--aggregation", default="concat", choices=DualAttention.AGGREGATIONS)
    ava.add_argument("--variant", action="append", choices=("attention", "plain"),
                     help="train only this variant (repeatable; default both)")
    ava.add_argument("--cache", action="store_true", help="hold backbone features in memory (251 KB an image)")
    args = parser.parse_args(argv)
    if args.command == "train-ava":
        train_on_ava(args.out, args.labels, args.images, args.test_labels, seed=args.seed,
                     val_fraction=args.val_fraction, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                     score_weight=args.score_weight, backbone=args.backbone, aggregation=args.aggregation,
                     variants=args.variant or ("attention", "plain"), cache=args.cache)
        return
    train_on_composition(args.out, seed=args.seed, size=args.size, train=args.train, val=args.val, test=args.test,
                         epochs=args.epochs, backbone=args.backbone, aggregation=args.aggregation,
                         score_weight=args.score_weight, lr=args.lr)


if __name__ == "__main__":
    main()
