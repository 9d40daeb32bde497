"""Tiny CNN with its model spec, shared by fixtures and by tests that build models per parameter."""
from __future__ import annotations

import torch
from torch import nn

from xaiimg.models.zoo import ModelSpec


def tiny_spec(num_classes: int, default_layer: str, size: int = 16) -> ModelSpec:
    return ModelSpec(name="tiny", input_size=size, resize_size=size, interpolation="bilinear",
                     mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), default_layer=default_layer,
                     layer_reason="last conv feature map", class_names=[f"c{i}" for i in range(num_classes)])


class TinyCNN(nn.Module):
    """conv(3->4) -> ReLU -> conv(4->6) -> ReLU -> GAP -> linear(6->num_classes): CAM applies at ``features.3``."""

    def __init__(self, seed: int = 0, num_classes: int = 5):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(4, 6, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(6, num_classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))
