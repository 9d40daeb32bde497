"""Small seeded networks shared by the method tests."""
import torch
from torch import nn

from xaiimg.models.zoo import ModelSpec, attach_spec


class StridedCNN(nn.Module):
    """conv(3->4, stride 2) -> ReLU -> conv(4->8) -> ReLU -> GAP -> linear(8->5); the CAM layer ``features.3``
    has half the input's resolution, so upsampling conventions matter."""

    def __init__(self, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv2d(4, 8, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(8, 5)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


def strided_cnn(dtype=torch.float64, seed: int = 4) -> nn.Module:
    spec = ModelSpec(name="strided", input_size=32, resize_size=32, interpolation="bilinear", mean=(0.5,) * 3,
                     std=(0.5,) * 3, default_layer="features.3", layer_reason="last conv",
                     class_names=[f"c{i}" for i in range(5)])
    return attach_spec(StridedCNN(seed).to(dtype), spec)
