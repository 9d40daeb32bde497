"""Foundation: package import time, model zoo, weights errors, top-1 on the sample ImageNet images."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import xaiimg as xi
from xaiimg.data import ImageFolder
from xaiimg.models import WeightsNotFoundError, load_model
from xaiimg.models.zoo import load_state_dict_in_order, verify_sha256_prefix


def test_import_is_fast_and_light():
    code = "import time; t = time.perf_counter(); import xaiimg, sys; " \
           "print(time.perf_counter() - t, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert float(out[0]) < 2.0
    assert out[1] == "False", "import xaiimg must not import torch"


def test_lite0_spec_and_preprocessing(lite0):
    spec = lite0.spec
    assert (spec.input_size, spec.resize_size, spec.interpolation) == (224, 256, "bicubic")
    assert spec.num_classes == 1000 and spec.class_names[285] == "Egyptian cat"
    assert not lite0.training
    x = lite0.preprocess(xi.data.sample_images(["coffee"]))
    assert x.shape == (1, 3, 224, 224)
    assert torch.allclose(spec.from_unit_range(spec.to_unit_range(x)), x, atol=1e-6)
    assert lite0.get_submodule(spec.default_layer)(torch.zeros(1, 1280, 7, 7)).shape == (1, 1280, 7, 7)


@pytest.mark.parametrize("name,minimum", [("efficientnet_lite0", 0.70), ("efficientnet_lite2", 0.70)])
def test_top1_on_imagenet_samples(name, minimum, shared_data):
    model = load_model(name)
    folder = ImageFolder(shared_data / "imagenet-samples" / "images", shared_data / "imagenet-samples" / "labels.csv")
    assert len(folder) == 131
    correct = 0
    with torch.no_grad():
        for start in range(0, len(folder), 32):
            items = [folder[i] for i in range(start, min(start + 32, len(folder)))]
            x = model.preprocess([image for image, _ in items])
            predictions = model(x).argmax(1)
            correct += sum(int(p) == label for p, (_, label) in zip(predictions, items))
    accuracy = correct / len(folder)
    print(f"{name} top-1 on imagenet-samples: {correct}/{len(folder)} = {accuracy:.3f}")
    assert accuracy >= minimum


@pytest.mark.parametrize("name", ["vgg16", "vgg19", "resnet18", "resnet50"])
def test_torchvision_weights_missing_offline_error(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError) as error:
        load_model(name)
    message = str(error.value)
    assert name in message and str(tmp_path) in message and "weights=" in message


@pytest.mark.parametrize("name", ["vit_base_patch16_224", "deit_tiny_patch16_224"])
def test_timm_weights_missing_offline_error(name, tmp_path, monkeypatch):
    import huggingface_hub.constants as constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsNotFoundError) as error:
        load_model(name)
    assert name in str(error.value) and "cache" in str(error.value)


def test_random_init_only_when_asked():
    model = load_model("resnet18", weights=None)
    assert model.spec.weights is None and model.spec.default_layer == "layer4"


def test_weights_from_a_local_file(tmp_path):
    reference = load_model("resnet18", weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    loaded = load_model("resnet18", weights=path)
    assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), loaded.state_dict().values()))


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model 'lenet'"):
        load_model("lenet")


def test_sha256_prefix_mismatch_is_refused(tmp_path):
    bad = tmp_path / "efficientnet-lite0-00000000.pth"
    bad.write_bytes(b"not the weights")
    with pytest.raises(ValueError, match="corrupt"):
        verify_sha256_prefix(bad)


def test_in_order_loading_checks_shapes():
    model = torch.nn.Linear(2, 3)
    with pytest.raises(ValueError, match="shape mismatch"):
        load_state_dict_in_order(model, {"a": torch.zeros(3, 3), "b": torch.zeros(3)})


class _WritesAFile:
    """A pickle payload that would create a file if it were ever unpickled by a full (unsafe) load."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_user_checkpoint_loads_state_dict(tmp_path):
    import torchvision

    from xaiimg.models import load_checkpoint_model

    reference = torchvision.models.resnet18(num_classes=7)
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    model = load_checkpoint_model("resnet18", tmp_path / "r18.pth")
    assert model.spec.num_classes == 7 and model.spec.default_layer == "layer4" and not model.training
    assert torch.equal(model.fc.weight, reference.fc.weight)


def test_pickled_checkpoint_is_refused_without_executing(tmp_path):
    from xaiimg.models import CheckpointError, load_checkpoint_model

    marker = tmp_path / "executed"
    torch.save({"fc.weight": _WritesAFile(marker)}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="refused without executing"):
        load_checkpoint_model("resnet18", tmp_path / "evil.pth")
    assert not marker.exists()


@pytest.mark.parametrize("arch,problem", [("resnet18", "does not fit"), ("no_such_net", "unknown architecture")])
def test_checkpoint_mismatch_errors(arch, problem, tmp_path):
    from xaiimg.models import CheckpointError, load_checkpoint_model

    torch.save(torch.nn.Linear(3, 4).state_dict(), tmp_path / "small.pth")
    with pytest.raises(CheckpointError, match=problem):
        load_checkpoint_model(arch, tmp_path / "small.pth")


def test_resolve_device_accepts_this_machines_devices_and_names_the_rest():
    from xaiimg.nn import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    for name, message in (("tpu", "unknown device 'tpu'"), ("cuda:99", "device 'cuda:99': "),
                          ("meta", "unsupported device 'meta'")):
        with pytest.raises(ValueError, match=message):
            resolve_device(name)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
