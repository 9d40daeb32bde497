"""The single-score aesthetic-quality model of paper 000 and its checkpoints.

Architecture (``AestheticModel``)::

    x -> EfficientNet-Lite features A [B,C,h,w]      (timm tf_efficientnet_lite0, real ImageNet weights;
         |                                            map = conv_head + BN + ReLU6 output, 1280x7x7 at 224 px)
         +-> PositionAttention(A) -+
         |                         +-> aggregate: concat (default, [B,2C,h,w]) or sum ([B,C,h,w])
         +-> ChannelAttention(A) --+
    -> global average pooling -> linear (10 score bins) = logits
    distribution p = softmax(logits); score = sum_i i * p_i in [1, 10]  (classify-then-regress)

``attention=False`` is the paper's "feature extraction only" branch: the aggregate is the backbone map itself.
``reduced_channels=r`` puts DANet's channel reduction in front of the aggregate in both variants (DANet's head
reduces the backbone's channels to ``in_channels // 4`` before its attention modules, ``DANetHead.conv5a/conv5c``;
here one 1x1 convolution + ReLU): the channel attention's ``C x C`` weights shrink by ``(1280 / r)^2`` and the two
variants still differ only by the attention modules.

Fine-tuning the last backbone stage from cached features: :meth:`AestheticModel.stage_input` runs the backbone up
to a stage (``"blocks.6"``, Lite0's last stage, by default), :meth:`AestheticModel.forward_from` runs the rest and
the head, and :meth:`AestheticModel.trainable_from` names the backbone modules from that stage on.
Both variants end in GAP + one linear layer, so CAM (Zhou et al., CVPR 2016) is exact at ``model.aggregate``,
the ``default_layer`` of the attached :class:`~xaiimg.models.zoo.ModelSpec`.

Attention modules follow DANet (Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019) and its
official code (junfu1115/DANet, ``PAM_Module`` / ``CAM_Module``). Each has ``detach_attention``: when ``True``
the softmax attention weights are treated as constants (detached), so the block is linear in its input; this is
the conservative propagation used for LRP through attention (CP-LRP, Ali et al., ICML 2022).

A checkpoint (:func:`save_checkpoint`, :func:`load_aesthetic`) holds the config, the head and attention, and of a
zoo backbone only its trained parts. Training is in :mod:`xaiimg.training.aesthetic`.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from xaiimg.data.ava import NUM_BINS, mean_score
from xaiimg.models.zoo import (
    CheckpointError,
    ModelSpec,
    attach_spec,
    load_model,
    read_checkpoint,
    state_dict_mismatch,
    write_checkpoint,
)

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
                 reduction: int = 8, energy_mode: str = "danet-code", dropout: float = 0.0,
                 reduced_channels: int | None = None):
        super().__init__()
        if isinstance(backbone, str):
            self.backbone = efficientnet_features(backbone, weights)
            base = self.backbone.spec
            spec = dict(input_size=base.input_size, resize_size=base.resize_size, interpolation=base.interpolation,
                        mean=base.mean, std=base.std, weights=base.weights)
            feature_channels = self.backbone.num_features
            self.config = dict(backbone=backbone, attention=attention, aggregation=aggregation,
                               reduction=reduction, energy_mode=energy_mode, dropout=dropout)
            if reduced_channels is not None:
                self.config["reduced_channels"] = reduced_channels
        elif isinstance(backbone, nn.Module):
            self.backbone = backbone
            feature_channels = feature_channels or getattr(backbone, "num_features", None)
            if not feature_channels:
                raise ValueError("a custom backbone needs feature_channels=<channels of its output map>")
            spec = dict(input_size=224, resize_size=256, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3)
            self.config = None
        else:
            raise TypeError(f"backbone must be a zoo name or an nn.Module, got {type(backbone).__name__}")
        if reduced_channels is not None:
            if reduced_channels < 1:
                raise ValueError(f"reduced_channels must be a positive channel count, got {reduced_channels}")
            self.reduce = nn.Sequential(nn.Conv2d(feature_channels, reduced_channels, 1), nn.ReLU())
            feature_channels = reduced_channels
        else:
            self.reduce = nn.Identity()
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
        pooled = self.pool(self.aggregate(self.reduce(features))).flatten(1)
        return self.classifier(self.dropout(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.backbone(x))

    def distribution(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted vote distribution ``[B,10]`` (softmax of the bin logits)."""
        return self(x).softmax(dim=-1)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted mean score ``[B]`` in ``[1,10]``."""
        return mean_score(self.distribution(x))

    def as_score_model(self) -> ScoreHead:
        return ScoreHead(self)

    def _stage_index(self, stage: str) -> int:
        blocks = getattr(self.backbone, "blocks", None)
        names = [f"blocks.{k}" for k in range(len(blocks))] if blocks is not None else []
        if stage not in names:
            raise ValueError(f"stage must name a backbone stage, one of {names or 'none (a custom backbone)'}; "
                             f"got {stage!r}")
        return names.index(stage)

    def stage_input(self, x: torch.Tensor, stage: str = "blocks.6") -> torch.Tensor:
        """The backbone's features entering ``stage`` (stem and the stages before it)."""
        index, net = self._stage_index(stage), self.backbone
        h = net.bn1(net.conv_stem(x))
        for block in net.blocks[:index]:
            h = block(h)
        return h

    def forward_from(self, h: torch.Tensor, stage: str = "blocks.6") -> torch.Tensor:
        """Bin logits from the features entering ``stage``: the remaining stages, conv_head + BN, then the head;
        ``forward_from(stage_input(x, s), s) == forward(x)``."""
        index, net = self._stage_index(stage), self.backbone
        for block in net.blocks[index:]:
            h = block(h)
        return self.forward_head(net.bn2(net.conv_head(h)))

    def trainable_from(self, stage: str = "blocks.6") -> tuple[str, ...]:
        """Backbone module names from ``stage`` on (for :meth:`freeze_backbone`): those stages, conv_head, bn2."""
        index = self._stage_index(stage)
        return (*(f"blocks.{k}" for k in range(index, len(self.backbone.blocks))), "conv_head", "bn2")

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


# ------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(model: AestheticModel, path: str | Path, **extra) -> None:
    """Save the trained state: head and attention always; of a zoo backbone only the modules with trainable
    parameters (their BatchNorm statistics included), the frozen rest being restored from its weights package.
    ``extra`` is stored alongside (JSON-able)."""
    trained_modules = {f"backbone.{name}" for name, module in model.backbone.named_modules()
                       if any(p.requires_grad for p in module.parameters(recurse=False))}
    keep_backbone = model.config is None
    state = {k: v for k, v in model.state_dict().items()
             if keep_backbone or not k.startswith("backbone.") or k.rsplit(".", 1)[0] in trained_modules}
    write_checkpoint({"config": model.config, "state": state, "extra": extra}, path)


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

