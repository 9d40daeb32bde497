"""Checkpoint loaders: a state_dict that does not fit names its keys and shapes; pickled Python objects and damaged
files are refused by every loader with the project's error (never torch's advice to unpickle), nothing is executed,
and neither the file nor a model passed in changes."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import torchvision
from aesthetic_nets import TinyBackbone

from xaiimg.models import CheckpointError, load_checkpoint_model, load_model
from xaiimg.models.aesthetic import AestheticModel, load_aesthetic
from xaiimg.models.synthetic import build_synthetic_model, load_synthetic_model
from xaiimg.models.synthetic import save_checkpoint as save_synthetic


class WritesAFile:
    """A pickle payload that creates ``marker`` if it is ever unpickled by a full (unsafe) load."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def file_state(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)


def tiny_aesthetic() -> AestheticModel:
    torch.manual_seed(0)
    return AestheticModel(TinyBackbone())


# ------------------------------------------------------------------------------------------ mismatched keys
def resnet18_state() -> dict[str, torch.Tensor]:
    return torchvision.models.resnet18(weights=None).state_dict()


def drop_two_bn_tensors(state):
    del state["layer4.1.bn2.weight"], state["layer4.1.bn2.bias"]
    return ["missing keys (2): layer4.1.bn2.weight, layer4.1.bn2.bias"]


def drop_layer4(state):
    dropped = [k for k in state if k.startswith("layer4.")]
    for key in dropped:
        del state[key]
    return [f"missing keys ({len(dropped)}): {', '.join(dropped[:5])}, ... ({len(dropped) - 5} more)"]


def add_unexpected(state):
    state["head.scale"], state["head.shift"] = torch.ones(3), torch.zeros(3)
    return ["unexpected keys (2): head.scale, head.shift"]


def reshape_conv1_and_fc(state):
    state["conv1.weight"] = torch.zeros(64, 3, 5, 5)
    state["fc.weight"] = torch.zeros(1000, 256)
    return ["shape mismatches (2): conv1.weight: checkpoint (64, 3, 5, 5) vs model (64, 3, 7, 7), "
            "fc.weight: checkpoint (1000, 256) vs model (1000, 512)"]


def all_three(state):
    return drop_two_bn_tensors(state) + add_unexpected(state) + reshape_conv1_and_fc(state)


@pytest.mark.parametrize("damage", [drop_two_bn_tensors, drop_layer4, add_unexpected, reshape_conv1_and_fc, all_three])
def test_mismatched_checkpoint_lists_keys_and_shapes(tmp_path, damage):
    state = resnet18_state()
    expected = damage(state)
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    before = file_state(path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint_model("resnet18", path)
    message = str(caught.value)
    assert message.startswith(f"{path} does not fit architecture 'resnet18': ")
    assert "; ".join(expected) in message and "\n" not in message
    assert file_state(path) == before


def test_zoo_weights_file_that_does_not_fit_lists_keys(tmp_path):
    state = resnet18_state()
    add_unexpected(state)
    torch.save(state, tmp_path / "r18.pth")
    with pytest.raises(CheckpointError, match=r"unexpected keys \(2\): head.scale, head.shift"):
        load_model("resnet18", weights=tmp_path / "r18.pth")


def test_synthetic_checkpoint_that_does_not_fit_lists_keys(tmp_path):
    model = build_synthetic_model("cnn", ["a", "b"], size=32)
    path = save_synthetic(model, {"kind": "cnn", "class_names": ["a", "b", "c"], "size": 32}, {}, tmp_path / "cnn.pt")
    with pytest.raises(CheckpointError, match=r"does not fit its cnn model: shape mismatches \(2\): \S+weight: "
                                              r"checkpoint \(2, \d+\) vs model \(3, \d+\)"):
        load_synthetic_model(path)


def test_aesthetic_checkpoint_that_does_not_fit_leaves_the_model_unchanged(tmp_path):
    saved = tiny_aesthetic()
    state = saved.state_dict()
    head = next(k for k, v in state.items() if k.endswith("weight") and v.ndim == 2)
    torch.save({"config": None, "state": {**state, head: torch.zeros(3, 3), "extra.bias": torch.zeros(2)},
                "extra": {}}, tmp_path / "bad.pt")
    target = tiny_aesthetic()
    with torch.no_grad():
        next(target.parameters()).add_(1.0)
    before = model_state(target)
    with pytest.raises(CheckpointError, match=rf"does not match the model: unexpected keys \(1\): extra.bias; "
                                              rf"shape mismatches \(1\): {head}: checkpoint \(3, 3\) vs model"):
        load_aesthetic(tmp_path / "bad.pt", target)
    assert_same_state(target, before)


# ---------------------------------------------------------------------------------------- refused files
def loaders(path: Path, model_for_aesthetic: torch.nn.Module):
    """Every loader that reads a checkpoint or weights file (user checkpoints, zoo weights, aesthetic, synthetic)."""
    return {"load_checkpoint_model": lambda: load_checkpoint_model("resnet18", path),
            "load_model torchvision weights": lambda: load_model("resnet18", weights=path),
            "load_model timm weights": lambda: load_model("efficientnet_lite0", weights=path),
            "load_aesthetic": lambda: load_aesthetic(path),
            "load_aesthetic into a model": lambda: load_aesthetic(path, model_for_aesthetic),
            "load_synthetic_model": lambda: load_synthetic_model(path)}


def save_pickled_state(path: Path, marker: Path) -> None:
    torch.save({"fc.weight": WritesAFile(marker)}, path)


def save_whole_module(path: Path, marker: Path) -> None:
    torch.save(torch.nn.Linear(2, 2), path)


def save_plain_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"state_dict": WritesAFile(marker)}))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("save", [save_pickled_state, save_whole_module, save_plain_pickle])
def test_pickled_objects_are_refused_by_every_loader(tmp_path, save):
    marker, path = tmp_path / "executed", tmp_path / "evil.pt"
    save(path, marker)
    before = file_state(path)
    model = tiny_aesthetic()
    state = model_state(model)
    for name, load in loaders(path, model).items():
        with pytest.raises(CheckpointError) as caught:
            load()
        message = str(caught.value)
        assert "holds pickled Python objects, not a plain state_dict; refused without executing it" in message, name
        assert "weights_only" not in message and caught.value.__suppress_context__, name
        assert not marker.exists(), name
    assert file_state(path) == before
    assert_same_state(model, state)


@pytest.mark.parametrize("content", [b"", b"not a torch file", "truncated"])
def test_damaged_files_are_refused_by_every_loader(tmp_path, content):
    path = tmp_path / "damaged.pt"
    if content == "truncated":
        torch.save(resnet18_state(), path)
        content = path.read_bytes()[:4096]
    path.write_bytes(content)
    model = tiny_aesthetic()
    state = model_state(model)
    for name, load in loaders(path, model).items():
        with pytest.raises(CheckpointError, match="not a plain state_dict") as caught:
            load()
        assert "weights_only" not in str(caught.value) and caught.value.__suppress_context__, name
    assert_same_state(model, state)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("save", [save_pickled_state, save_whole_module, save_plain_pickle])
def test_pickled_synthetic_benchmark_file_is_refused(tmp_path, save):
    from xaiimg.data.synthetic import SyntheticSet

    marker, path = tmp_path / "executed", tmp_path / "evil.pt"
    save(path, marker)
    before = file_state(path)
    with pytest.raises(ValueError, match="not a synthetic benchmark file: it holds pickled Python objects") as caught:
        SyntheticSet.load(path)
    assert "weights_only" not in str(caught.value) and not marker.exists()
    assert file_state(path) == before
