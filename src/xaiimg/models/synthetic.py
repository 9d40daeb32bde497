"""Models for the synthetic ground-truth benchmark: a VGG-style CNN with GAP (CAM is exact) and a tiny ViT
(timm's VisionTransformer, 4 blocks of width 96 with 4 heads on a 14x14 token grid at 224 px, patch embedding by a
small convolutional stem).

:mod:`xaiimg.studies.synthetic` trains both on :class:`xaiimg.data.synthetic.SyntheticBenchmark` scenes. A
checkpoint (:func:`save_checkpoint`) holds ``state_dict``, ``config`` (model, benchmark and training settings) and
``metrics``; :func:`load_synthetic_model` reads it with ``weights_only=True``.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from xaiimg.models.zoo import ModelSpec, attach_spec, load_fitting_state_dict, read_checkpoint, write_checkpoint

KINDS = ("cnn", "vit")
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
# VGG-style configuration (torchvision's notation: channels, "M" = 2x2 max-pool), after a stride-2 stem conv.
CNN_LAYERS = (16, "M", 32, "M", 64, "M", 128, 128)
VIT_CONFIG = {"patch_size": 16, "embed_dim": 96, "depth": 4, "num_heads": 4, "mlp_ratio": 2.0}
VIT_STEM = (16, 32, 64, 96)  # channels of the stride-2 convolutions that replace the 16x16 patch projection


class SyntheticCNN(nn.Module):
    """``features`` (conv3x3-BN-ReLU blocks and max-pools, VGG style; the first conv has stride 2), global
    average pooling, one linear layer: logits are linear in the pooled last-conv activations, so CAM
    (Zhou et al. 2016) is exact at the last ReLU (``spec.default_layer``). ReLUs are not in-place, so backward
    hooks (Captum, LRP, guided backpropagation) see every activation."""

    def __init__(self, num_classes: int, layers=CNN_LAYERS):
        super().__init__()
        modules: list[nn.Module] = []
        channels, stride = 3, 2
        for item in layers:
            if item == "M":
                modules.append(nn.MaxPool2d(2))
                continue
            modules += [nn.Conv2d(channels, item, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(item),
                        nn.ReLU()]
            channels, stride = item, 1
        self.features = nn.Sequential(*modules)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    @property
    def last_relu(self) -> str:
        return f"features.{len(self.features) - 1}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def conv_stem(out_channels: int, channels=VIT_STEM) -> nn.Sequential:
    """Convolutional patch embedding (Xiao et al. 2021, "Early convolutions help transformers see better"):
    stride-2 conv3x3-BN-ReLU blocks (total stride 16 = the patch size) and a 1x1 projection to the token width."""
    layers: list[nn.Module] = []
    previous = 3
    for width in channels:
        layers += [nn.Conv2d(previous, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width),
                   nn.ReLU()]
        previous = width
    return nn.Sequential(*layers, nn.Conv2d(previous, out_channels, 1))


def _vit(num_classes: int, size: int, config: dict) -> nn.Module:
    """timm's VisionTransformer (CLS token, CLS-token head) whose patch projection is :func:`conv_stem`: the
    transformer blocks, attention and token grid are timm's own, so attention-based explainers apply as is."""
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(img_size=size, num_classes=num_classes, class_token=True, global_pool="token",
                              **config)
    model.patch_embed.proj = conv_stem(config["embed_dim"])
    return model


def build_synthetic_model(kind: str, class_names: list[str], size: int = 224, seed: int = 0) -> nn.Module:
    """An untrained ``"cnn"`` or ``"vit"`` with ``spec``; its parameters are drawn under ``torch.manual_seed(seed)``
    inside ``torch.random.fork_rng``, so the caller's global random state is left as it was."""
    if kind not in KINDS:
        raise ValueError(f"unknown synthetic model kind {kind!r}; use 'cnn' or 'vit'")
    if kind == "vit" and size % VIT_CONFIG["patch_size"]:
        raise ValueError(f"the ViT needs a size divisible by {VIT_CONFIG['patch_size']}, got {size}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SyntheticCNN(len(class_names)) if kind == "cnn" else _vit(len(class_names), size, VIT_CONFIG)
    if kind == "cnn":
        layer, reason = model.last_relu, ("last conv ReLU, 128 channels at input/16, feeding global average "
                                          "pooling and the linear classifier, so CAM is exact there")
    else:
        layer = f"blocks.{VIT_CONFIG['depth'] - 1}.norm1"
        reason = "LayerNorm before the last block's attention; its patch tokens fold to the patch grid"
    spec = ModelSpec(name=f"synthetic_{kind}", input_size=size, resize_size=size, interpolation="bilinear",
                     mean=MEAN, std=STD, default_layer=layer, layer_reason=reason, class_names=list(class_names))
    return attach_spec(model, spec)


def save_checkpoint(model: nn.Module, config: dict, metrics: dict, path: str | Path) -> Path:
    """Write ``model``'s state with the ``config`` that rebuilds it and its ``metrics``; returns the path."""
    return write_checkpoint({"state_dict": model.state_dict(), "config": config, "metrics": metrics}, path)


def load_synthetic_model(path: str | Path) -> nn.Module:
    """A trained synthetic-benchmark model in eval mode with ``spec`` (weights read with ``weights_only=True``);
    ``model.synthetic_config`` and ``model.synthetic_metrics`` hold what the checkpoint recorded."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"synthetic model checkpoint not found: {path}; train one with "
                                f"`xaiimg train-synthetic --out {path.parent}` (or `dvc repro`)")
    checkpoint = read_checkpoint(path)
    if not isinstance(checkpoint, dict) or not {"state_dict", "config", "metrics"} <= set(checkpoint):
        raise ValueError(f"{path} is not a synthetic model checkpoint (needs state_dict, config and metrics)")
    config = checkpoint["config"]
    model = build_synthetic_model(config["kind"], config["class_names"], config["size"])
    load_fitting_state_dict(model, checkpoint["state_dict"], f"{path} does not fit its {config['kind']} model")
    model.spec.weights = str(path)
    model.synthetic_config, model.synthetic_metrics = config, checkpoint["metrics"]
    return model.eval()
