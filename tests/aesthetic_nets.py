"""A tiny stand-in backbone for the aesthetic-model tests."""
from torch import nn


class TinyBackbone(nn.Module):
    """Bias-free conv(3->8, s2) -> ReLU -> conv(8->16, s2) -> ReLU: a stand-in for the EfficientNet features."""

    num_features = 16

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.ReLU())

    def forward(self, x):
        return self.features(x)
