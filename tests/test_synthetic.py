"""Synthetic ground-truth benchmark: determinism, exact masks and boxes, multi-object scenes, storage; the
synthetic-benchmark models: CAM structure, a few training steps, determinism, checkpoints and the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from xaiimg.cli import main
from xaiimg.data.synthetic import (
    CROSS_HALF_WIDTH,
    RING_INNER_RADIUS,
    SHAPES,
    STAR_INNER_RADIUS,
    SyntheticBenchmark,
    SyntheticSet,
    shape_mask,
)
from xaiimg.models.synthetic import build_synthetic_model, load_synthetic_model, save_checkpoint
from xaiimg.training.classification import TrainConfig, fit, predict


@pytest.fixture(scope="module")
def singles():
    return SyntheticBenchmark(size=64, seed=3).generate(12, with_backgrounds=True)


@pytest.fixture(scope="module")
def pairs():
    return SyntheticBenchmark(size=64, seed=3).generate(12, multi_object=True, with_backgrounds=True)


def _assert_same(a: SyntheticSet, b: SyntheticSet):
    for name in ("images_uint8", "labels", "masks", "boxes", "params"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


# ------------------------------------------------------------------------------------------- generator
def test_same_seed_same_scenes(singles):
    again = SyntheticBenchmark(size=64, seed=3).generate(12, with_backgrounds=True)
    _assert_same(singles, again)
    assert torch.equal(singles.backgrounds_uint8, again.backgrounds_uint8)
    _assert_same(SyntheticBenchmark(size=64, seed=3).generate(5), singles[:5])  # scene i does not depend on n
    _assert_same(SyntheticBenchmark(size=64, seed=3).generate(4, start=8), singles[8:])
    other_seed = SyntheticBenchmark(size=64, seed=4).generate(12)
    other_split = SyntheticBenchmark(size=64, seed=3).generate(12, split="test")
    for other in (other_seed, other_split):
        assert (other.images_uint8 != singles.images_uint8).flatten(1).any(1).all()


def test_shapes_and_types(singles, pairs):
    assert singles.images_uint8.shape == (12, 3, 64, 64) and singles.images_uint8.dtype == torch.uint8
    assert singles.images.dtype == torch.float32 and 0 <= singles.images.min() and singles.images.max() <= 1
    assert singles.labels.shape == (12, 1) and pairs.labels.shape == (12, 2)
    assert singles.masks.shape == (12, 1, 64, 64) and singles.masks.dtype == torch.bool
    assert pairs.boxes.shape == (12, 2, 4) and pairs.params.shape == (12, 2, 4)
    assert singles.class_names == list(SHAPES) and torch.equal(singles.targets, singles.labels[:, 0])
    assert singles.meta["multi_object"] is False and pairs.meta["multi_object"] is True


@pytest.mark.parametrize("scenes", ["singles", "pairs"])
def test_masks_are_exactly_the_painted_pixels(scenes, request):
    data = request.getfixturevalue(scenes)
    objects = data.masks.any(dim=1)                                       # [N,H,W]
    changed = (data.images_uint8 != data.backgrounds_uint8).any(dim=1)   # pixels that differ from the background
    assert not (changed & ~objects).any()  # nothing outside the masks was touched
    # inside, the paint differs from the background (colours are random, so an exact match is possible but rare)
    assert changed[objects].float().mean() > 0.99


def test_masks_match_shape_equations(singles):
    """Every shape recomputed from the stored parameters by an independent formula (random parameters put no
    pixel centre exactly on a boundary, where two implementations could disagree)."""
    ys, xs = torch.meshgrid(torch.arange(64, dtype=torch.float64) + 0.5, torch.arange(64, dtype=torch.float64) + 0.5,
                            indexing="ij")
    checked = set()
    generator = SyntheticBenchmark(size=64, seed=3)
    data = generator.generate(60)
    for label, mask, (cx, cy, r, angle) in zip(data.labels[:, 0], data.masks[:, 0], data.params[:, 0]):
        name = SHAPES[label]
        dx, dy = xs - cx, ys - cy
        u = (dx * torch.cos(angle) + dy * torch.sin(angle)) / r
        v = (-dx * torch.sin(angle) + dy * torch.cos(angle)) / r
        if name == "disc":
            expected = dx ** 2 + dy ** 2 <= r ** 2
        elif name == "ring":
            expected = (dx ** 2 + dy ** 2 <= r ** 2) & (dx ** 2 + dy ** 2 >= (RING_INNER_RADIUS * r) ** 2)
        elif name == "square":
            expected = (u.abs() <= 2 ** -0.5) & (v.abs() <= 2 ** -0.5)
        elif name == "cross":
            arm = (1 - CROSS_HALF_WIDTH ** 2) ** 0.5
            expected = ((u.abs() <= CROSS_HALF_WIDTH) & (v.abs() <= arm)) | ((v.abs() <= CROSS_HALF_WIDTH) &
                                                                              (u.abs() <= arm))
        elif name == "triangle":  # vertex up (0, 1); inradius 1/2; edge normals at 30, 150, 270 degrees
            expected = torch.ones_like(mask)
            for degrees in (30, 150, 270):
                t = np.radians(degrees)
                expected &= u * np.cos(t) + v * np.sin(t) <= 0.5
        else:  # star: matplotlib's point-in-polygon test on the 10 vertices (outer radius 1, inner 0.45)
            from matplotlib.path import Path

            angles = np.pi / 2 + np.pi * np.arange(10) / 5
            radii = np.where(np.arange(10) % 2 == 0, 1.0, STAR_INNER_RADIUS)
            star = Path(np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1))
            expected = torch.from_numpy(star.contains_points(np.stack([u.ravel(), v.ravel()], axis=1))).view(64, 64)
        assert torch.equal(mask, expected), name
        checked.add(name)
    assert checked == set(SHAPES)


def test_boxes_are_tight(pairs):
    for masks, boxes in zip(pairs.masks, pairs.boxes):
        for mask, (x0, y0, x1, y1) in zip(masks, boxes.tolist()):
            assert mask[y0:y1, x0:x1].sum() == mask.sum() > 0
            assert mask[y0].any() and mask[y1 - 1].any() and mask[:, x0].any() and mask[:, x1 - 1].any()


def test_objects_fit_and_scale(pairs):
    cx, cy, r = pairs.params[..., 0], pairs.params[..., 1], pairs.params[..., 2]
    assert ((cx - r) >= 0).all() and ((cx + r) <= 64).all() and ((cy - r) >= 0).all() and ((cy + r) <= 64).all()
    assert ((2 * r / 64) >= 0.15).all() and ((2 * r / 64) <= 0.35).all()


def test_multi_object_scenes_are_class_discriminative(pairs):
    assert (pairs.labels[:, 0] != pairs.labels[:, 1]).all()
    assert not (pairs.masks[:, 0] & pairs.masks[:, 1]).any()  # disjoint by construction (enclosing discs apart)
    distance = torch.hypot(pairs.params[:, 0, 0] - pairs.params[:, 1, 0], pairs.params[:, 0, 1] - pairs.params[:, 1, 1])
    assert (distance >= pairs.params[:, 0, 2] + pairs.params[:, 1, 2] + 4).all()
    second = pairs.class_masks(pairs.labels[:, 1])
    assert torch.equal(second, pairs.masks[:, 1]) and torch.equal(pairs.class_masks(), pairs.masks[:, 0])
    absent = next(c for c in range(6) if c not in pairs.labels[0].tolist())
    assert not pairs[0].class_masks(absent).any()


def _object_colours(data: SyntheticSet) -> torch.Tensor:
    """``[N,3]`` mean colour of each scene's (first) object."""
    return torch.stack([data.images[n][:, data.masks[n, 0]].mean(dim=1) for n in range(len(data))])


def test_shape_only_classes_come_in_every_colour():
    data = SyntheticBenchmark(size=48, seed=1, class_hues=False).generate(120)
    colours = _object_colours(data)
    for label in range(6):
        picked = colours[data.targets == label]
        assert len(picked) >= 8, "every class occurs"
        assert picked.std(dim=0).min() > 0.1  # each class comes in many colours


def test_class_hues_stay_in_their_sector():
    import colorsys

    data = SyntheticBenchmark(size=48, seed=1).generate(60)
    for label, colour in zip(data.targets.tolist(), _object_colours(data).tolist()):
        hue = colorsys.rgb_to_hsv(*colour)[0]  # texture shading scales all channels: the hue survives
        assert label + 0.1 - 0.02 <= hue * 6 <= label + 0.9 + 0.02, (label, hue)


def test_save_load_round_trip(pairs, tmp_path):
    path = pairs.save(tmp_path / "set.pt")
    loaded = SyntheticSet.load(path)
    _assert_same(pairs, loaded)
    assert torch.equal(loaded.backgrounds_uint8, pairs.backgrounds_uint8)
    assert loaded.class_names == pairs.class_names and loaded.meta == pairs.meta
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a synthetic benchmark file"):
        SyntheticSet.load(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="not found"):
        SyntheticSet.load(tmp_path / "missing.pt")


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticBenchmark(num_classes=7)
    with pytest.raises(ValueError, match="scale"):
        SyntheticBenchmark(scale=(0.3, 0.6))
    with pytest.raises(ValueError, match="unknown split"):
        SyntheticBenchmark(size=32).generate(1, split="validation")
    with pytest.raises(ValueError, match="unknown shape"):
        shape_mask("hexagon", 8, 4, 4, 3, 0)
    with pytest.raises(ValueError, match="without backgrounds"):
        SyntheticBenchmark(size=32).generate(1).backgrounds


# ---------------------------------------------------------------------------------------------- models
def test_cnn_is_cam_ready():
    state = torch.random.get_rng_state()
    model = build_synthetic_model("cnn", list(SHAPES), size=64)
    assert torch.equal(torch.random.get_rng_state(), state)  # seeded without touching the global generator
    layer = model.get_submodule(model.spec.default_layer)
    assert isinstance(layer, torch.nn.ReLU)
    assert not any(getattr(m, "inplace", False) for m in model.modules())  # hooks need out-of-place activations
    captured = []
    handle = layer.register_forward_hook(lambda module, inputs, output: captured.append(output.clone()))
    try:
        x = torch.randn(2, 3, 64, 64)
        logits = model(x)
    finally:
        handle.remove()
    features = captured[0]
    assert features.shape == (2, 128, 4, 4)
    # CAM identity: logit_c = mean over positions of sum_k w_ck A_k + b_c
    cam = torch.einsum("ck,bkhw->bchw", model.classifier.weight, features).mean(dim=(2, 3)) + model.classifier.bias
    torch.testing.assert_close(cam, logits)
    assert model.spec.class_names == list(SHAPES) and not model.training


def test_vit_builds():
    model = build_synthetic_model("vit", ["a", "b", "c"], size=32)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    assert model.patch_embed(torch.randn(2, 3, 32, 32)).shape == (2, 4, 96)  # conv stem keeps the 2x2 token grid
    assert model.spec.default_layer == "blocks.3.norm1" and model.get_submodule("blocks.3.norm1") is not None
    with pytest.raises(ValueError, match="divisible by 16"):
        build_synthetic_model("vit", ["a", "b"], size=40)
    with pytest.raises(ValueError, match="unknown synthetic model kind"):
        build_synthetic_model("mlp", ["a", "b"])


def _short_training(seed: int):
    data = SyntheticBenchmark(size=32, num_classes=3, seed=0, scale=(0.3, 0.45)).generate(32)
    model = build_synthetic_model("cnn", data.class_names, size=32, seed=seed)
    config = TrainConfig(epochs=12, batch_size=32, lr=3e-3, weight_decay=0.0, warmup_fraction=0.0,
                         label_smoothing=0.0, augment=True, seed=seed)
    history = fit(model, data.images_uint8, data.targets, config, model.spec.from_unit_range)
    return model, history, data


@pytest.fixture(scope="module")
def trained():
    return _short_training(seed=0)


def test_training_lowers_loss_and_is_deterministic(trained):
    model, history, data = trained
    assert history["steps"] == 12 and len(history["losses"]) == 12 and not model.training
    assert np.mean(history["losses"][-3:]) < 0.7 * history["losses"][0]
    again, history_again, _ = _short_training(seed=0)
    assert history_again["losses"] == history["losses"]
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    other = build_synthetic_model("cnn", data.class_names, size=32, seed=1)
    assert not torch.equal(other.classifier.weight, build_synthetic_model("cnn", data.class_names, size=32,
                                                                          seed=0).classifier.weight)
    logits = predict(model, data.images_uint8, model.spec.from_unit_range, batch_size=5)
    assert logits.shape == (32, 3)


def test_fit_rejects_bad_input():
    model = build_synthetic_model("cnn", ["a", "b"], size=32)
    with pytest.raises(ValueError, match="uint8"):
        fit(model, torch.rand(4, 3, 32, 32), torch.zeros(4, dtype=torch.long), TrainConfig(), lambda x: x)
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        fit(model, torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.zeros(3, dtype=torch.long), TrainConfig(),
            lambda x: x)


def test_checkpoint_round_trip(trained, tmp_path):
    model, _, data = trained
    config = {"kind": "cnn", "size": 32, "class_names": data.class_names}
    path = save_checkpoint(model, config, {"test_accuracy": 0.5}, tmp_path / "cnn.pt")
    loaded = load_synthetic_model(path)
    x = model.spec.from_unit_range(data.images[:4])
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert loaded.spec.weights == str(path) and loaded.synthetic_metrics == {"test_accuracy": 0.5}
    with pytest.raises(FileNotFoundError, match="xaiimg train-synthetic"):
        load_synthetic_model(tmp_path / "missing.pt")
    torch.save({"weights": 1}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a synthetic model checkpoint"):
        load_synthetic_model(tmp_path / "bad.pt")


def test_command_line_entry(tmp_path, capsys):
    assert main(["train-synthetic", "--out", str(tmp_path), "--models", "cnn", "--size", "32", "--train-size", "48",
                 "--epochs", "1", "--test-size", "16"]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())["cnn"]
    assert metrics["train_size"] == 48 and metrics["test_size"] == 16 and 0 <= metrics["test_accuracy"] <= 1
    assert metrics["steps"] == 1 and len(metrics["losses"]) == 1
    model = load_synthetic_model(tmp_path / "cnn.pt")
    assert model.spec.input_size == 32 and model.synthetic_config["benchmark"]["seed"] == 0
    assert "test accuracy" in capsys.readouterr().out
