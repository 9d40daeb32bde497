"""Aesthetic model: DANet attention equations, detach contract (CP-LRP), head, training, checkpoints, the training
runs and their CLI commands."""
from __future__ import annotations

import json
import math

import pytest
import torch
from aesthetic_nets import TinyBackbone
from torch import nn
from torch.utils.data import TensorDataset

from xaiimg.cli import main
from xaiimg.data.ava import read_ava_txt
from xaiimg.data.composition import CompositionConfig, make_composition_set
from xaiimg.data.images import load_image
from xaiimg.models.aesthetic import (
    AestheticModel,
    ChannelAttention,
    DualAttention,
    PositionAttention,
    attention_detached,
    load_aesthetic,
    save_checkpoint,
)
from xaiimg.ops import average_ranks
from xaiimg.studies.aesthetic import load_ava_run, load_composition_run, train_on_ava
from xaiimg.training.aesthetic import TrainingOutputs, emd_loss, rank_correlation, score_metrics, train_aesthetic


def tiny_model(attention=True, aggregation="concat", seed=0, init_scale=0.0, dtype=torch.float32):
    torch.manual_seed(seed)
    model = AestheticModel(TinyBackbone(), attention=attention, aggregation=aggregation)
    if attention and init_scale:
        with torch.no_grad():
            model.aggregate.position.gamma.fill_(init_scale)
            model.aggregate.channel.beta.fill_(init_scale)
    return model.to(dtype)


def conv1x1(conv: nn.Conv2d, a: torch.Tensor) -> torch.Tensor:
    """Literal 1x1 convolution at one position: W a + b."""
    return conv.weight[:, :, 0, 0] @ a + conv.bias


# ------------------------------------------------------------------------------- attention equations
def test_position_attention_matches_paper_equations():
    torch.manual_seed(0)
    module = PositionAttention(8, reduction=4, init_scale=0.7).double()
    a = torch.randn(2, 8, 3, 4, dtype=torch.float64)
    with torch.no_grad():
        out = module(a)
    for b in range(2):
        positions = a[b].flatten(1).T                                        # [N,C]
        with torch.no_grad():
            B = [conv1x1(module.key, p) for p in positions]                  # paper's B (key)
            C = [conv1x1(module.query, p) for p in positions]                # paper's C (query)
            D = [conv1x1(module.value, p) for p in positions]
        for j in range(len(positions)):
            energies = [float(B[i] @ C[j]) for i in range(len(positions))]
            top = max(energies)
            s = [math.exp(e - top) for e in energies]
            s = [v / sum(s) for v in s]                                      # s_ji, Eq. 1
            expected = 0.7 * sum(s[i] * D[i] for i in range(len(positions))) + positions[j]  # Eq. 2
            assert torch.allclose(out[b].flatten(1)[:, j], expected, atol=1e-12)
    weights = module.attention_weights(a)
    assert weights.shape == (2, 12, 12) and torch.allclose(weights.sum(-1), torch.ones(2, 12, dtype=torch.float64))


@pytest.mark.parametrize("energy_mode", ["danet-code", "paper"])
def test_channel_attention_matches_equations(energy_mode):
    torch.manual_seed(1)
    module = ChannelAttention(energy_mode, init_scale=0.3).double()
    a = torch.randn(2, 5, 2, 3, dtype=torch.float64) * 0.5
    out = module(a)
    for b in range(2):
        rows = a[b].flatten(1)                                               # [C,N]
        channels = len(rows)
        for j in range(channels):
            energies = [float(rows[j] @ rows[i]) for i in range(channels)]
            if energy_mode == "danet-code":                                  # CAM_Module: max(energy) - energy
                energies = [max(energies) - e for e in energies]
            x = [math.exp(e) for e in energies]
            x = [v / sum(x) for v in x]                                      # Eq. 3
            expected = 0.3 * sum(x[i] * rows[i] for i in range(channels)) + rows[j]  # Eq. 4
            assert torch.allclose(out[b].flatten(1)[j], expected, atol=1e-12)
    if energy_mode == "danet-code":  # documented identity: softmax(max - E) == softmax(-E)
        flat = a.flatten(2)
        assert torch.allclose(module.attention_weights(a), (-flat @ flat.transpose(1, 2)).softmax(-1), atol=1e-12)


def test_attention_modules_reject_bad_settings():
    with pytest.raises(ValueError, match="multiple of reduction"):
        PositionAttention(12, reduction=8)
    with pytest.raises(ValueError, match="energy_mode"):
        ChannelAttention("softmax")
    with pytest.raises(ValueError, match="aggregation"):
        DualAttention(16, aggregation="mean")


# ------------------------------------------------------------------------------ detach (CP-LRP contract)
def test_detach_attention_makes_weights_constants():
    torch.manual_seed(2)
    position = PositionAttention(8, reduction=4, init_scale=0.5)
    channel = ChannelAttention(init_scale=0.5)
    a = torch.randn(1, 8, 3, 3, requires_grad=True)
    readout = torch.randn(1, 8, 3, 3)
    for detach in (False, True):
        position.zero_grad(set_to_none=True)
        position.detach_attention = detach
        (position(a) * readout).sum().backward()
        reached_softmax = position.query.weight.grad is not None and position.key.weight.grad is not None
        assert reached_softmax != detach
        assert position.value.weight.grad is not None
    # channel attention with constant X: d(r.E)/dA = beta X^T r + r
    channel.detach_attention = True
    a.grad = None
    (channel(a) * readout).sum().backward()
    x = channel.attention_weights(a.detach())[0]
    expected = 0.5 * (x.T @ readout[0].flatten(1)) + readout[0].flatten(1)
    assert torch.allclose(a.grad[0].flatten(1), expected, atol=1e-5)
    channel.detach_attention = False
    a.grad = None
    (channel(a) * readout).sum().backward()
    assert not torch.allclose(a.grad[0].flatten(1), expected, atol=1e-3)


@pytest.mark.parametrize("module_name", ["position", "channel", "model"])
def test_gradient_times_input_is_conserved_only_with_detach(module_name):
    """With constant attention weights and bias-free layers the block is linear, so sum(grad * input) equals the
    output (the conservation CP-LRP relies on); with the softmax in the graph it does not."""
    model = tiny_model(init_scale=0.8, dtype=torch.float64)
    with torch.no_grad():
        model.aggregate.position.value.bias.zero_()
        model.classifier.bias.zero_()
    torch.manual_seed(3)
    if module_name == "model":
        x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
        subject, readout = model, torch.randn(2, 10, dtype=torch.float64)
    else:
        x = torch.rand(2, 16, 3, 3, dtype=torch.float64) * 3
        subject = getattr(model.aggregate, module_name)
        readout = torch.randn(2, 16, 3, 3, dtype=torch.float64)
    for detach in (True, False):
        with attention_detached(model, detach):
            inputs = x.clone().requires_grad_(True)
            output = (subject(inputs) * readout).flatten(1).sum(1)
            (gradient,) = torch.autograd.grad(output.sum(), inputs)
        relevance = (gradient * inputs).flatten(1).sum(1)
        conserved = torch.allclose(relevance, output.detach(), rtol=1e-9, atol=1e-9)
        assert conserved == detach, (module_name, detach, relevance, output)


def test_attention_detached_restores_flags_on_error():
    model = tiny_model()
    model.aggregate.channel.detach_attention = True
    with pytest.raises(RuntimeError):
        with attention_detached(model):
            assert model.aggregate.position.detach_attention and model.aggregate.channel.detach_attention
            raise RuntimeError("inside")
    assert (model.aggregate.position.detach_attention, model.aggregate.channel.detach_attention) == (False, True)


# ------------------------------------------------------------------------------------------ model
@pytest.mark.parametrize("attention,aggregation,channels", [(True, "concat", 32), (True, "sum", 16),
                                                            (False, "concat", 16)])
def test_forward_distribution_score_and_head_shape(attention, aggregation, channels):
    model = tiny_model(attention, aggregation, init_scale=0.5)
    x = torch.randn(3, 3, 64, 64)
    logits = model(x)
    assert logits.shape == (3, 10)
    distribution = model.distribution(x)
    assert torch.allclose(distribution.sum(1), torch.ones(3))
    score = model.score(x)
    assert ((score >= 1) & (score <= 10)).all()
    assert torch.allclose(score, (distribution * torch.arange(1, 11)).sum(1))
    assert torch.allclose(model.as_score_model()(x), score.unsqueeze(1))
    assert model.classifier.in_features == channels and model.classifier.out_features == 10
    assert model.get_submodule(model.spec.default_layer)(model.backbone(x)).shape == (3, channels, 16, 16)
    assert model.as_score_model().spec.default_layer == "model.aggregate"
    assert not model.training


def test_model_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown aesthetic backbone"):
        AestheticModel("resnet18")
    with pytest.raises(ValueError, match="feature_channels"):
        AestheticModel(nn.Conv2d(3, 4, 3))
    with pytest.raises(TypeError, match="backbone"):
        AestheticModel(3)
    with pytest.raises(AttributeError):
        tiny_model().freeze_backbone(["nonexistent"])


def test_real_lite0_backbone(lite0, lite0_batch, tmp_path):
    """The zoo backbone carries the real ImageNet weights; the aggregated map is the concat of both branches."""
    model = AestheticModel("efficientnet_lite0")
    assert model.spec.input_size == 224 and model.spec.weights == lite0.spec.weights
    with torch.no_grad():
        features = model.backbone(lite0_batch)
        assert torch.allclose(features, lite0.forward_features(lite0_batch), atol=1e-5)
        logits = model(lite0_batch)
    assert features.shape == (2, 1280, 7, 7) and logits.shape == (2, 10)
    assert model.classifier.in_features == 2560
    assert model.aggregate.position.query.out_channels == 160
    model.freeze_backbone(("bn2",))                      # a partly frozen checkpoint keeps bn2's statistics
    save_checkpoint(model, tmp_path / "partly.pt")
    saved = torch.load(tmp_path / "partly.pt", weights_only=True)["state"]
    assert {"backbone.bn2.weight", "backbone.bn2.running_mean", "classifier.weight"} <= set(saved)
    assert not any(k.startswith(("backbone.conv_head", "backbone.blocks")) for k in saved)


# --------------------------------------------------------------------------------------- objectives
def test_emd_loss_golden_values():
    first, second, last = torch.eye(10)[0:1], torch.eye(10)[1:2], torch.eye(10)[9:10]
    assert emd_loss(first, second).item() == pytest.approx(math.sqrt(1 / 10))
    assert emd_loss(first, last).item() == pytest.approx(math.sqrt(9 / 10))
    assert emd_loss(torch.cat([first, first]), torch.cat([second, last])).item() == pytest.approx(
        (math.sqrt(0.1) + math.sqrt(0.9)) / 2)
    uniform = torch.full((1, 10), 0.1, requires_grad=True)
    loss = emd_loss(uniform, uniform.detach())
    loss.backward()
    assert loss.item() == pytest.approx(1e-6) and torch.isfinite(uniform.grad).all()
    with pytest.raises(ValueError, match="shapes differ"):
        emd_loss(first, torch.ones(1, 9))


def test_score_metrics_golden_values():
    predicted = torch.tensor([2.0, 4.0, 6.0, 8.0])
    target = torch.tensor([1.0, 5.0, 4.0, 9.0])
    metrics = score_metrics(predicted, target)
    assert metrics["srcc"] == pytest.approx(0.8)          # ranks 1,2,3,4 vs 1,3,2,4: 1 - 6*2/(4*15)
    pc, tc = predicted - 5, target - 4.75
    assert metrics["plcc"] == pytest.approx(float((pc * tc).sum() / (pc.norm() * tc.norm())))
    assert metrics["accuracy"] == pytest.approx(0.5)      # >= 5: F,F,T,T vs F,T,F,T
    assert metrics["mse"] == pytest.approx((1 + 1 + 4 + 1) / 4)
    assert average_ranks(torch.tensor([3.0, 1.0, 3.0, 2.0])).tolist() == [2.5, 0.0, 2.5, 1.0]
    assert score_metrics(torch.tensor([1.0, 1.0, 2.0]), torch.tensor([1.0, 2.0, 3.0]))["srcc"] == pytest.approx(
        math.sqrt(3) / 2)                                   # ranks 1.5,1.5,3 vs 1,2,3


# ------------------------------------------------------------------------------------------ training
def tiny_dataset(n=24, seed=5):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=generator)
    brightness = images.mean(dim=(1, 2, 3))
    bins = torch.arange(1, 11, dtype=torch.float32)
    centres = 5.5 + 12 * brightness                          # a learnable target: score follows brightness
    targets = (-(bins - centres.view(-1, 1)) ** 2 / 2).softmax(-1)
    return TensorDataset(images, targets)


@pytest.mark.parametrize("trainable", [(), ("features.2",)])
def test_training_lowers_loss_and_is_deterministic(trainable, tmp_path):
    runs = []
    for repeat in range(2):
        model = tiny_model(seed=0)
        folder = tmp_path / str(repeat)
        outputs = TrainingOutputs(folder / "last.pt", folder / "best.pt", folder / "metrics.json")
        metrics = train_aesthetic(model, tiny_dataset(), tiny_dataset(8, seed=6), outputs, epochs=6, batch_size=8,
                                  lr=3e-2, trainable_backbone=trainable, seed=0)
        runs.append((model, metrics))
    (model, metrics), (twin, twin_metrics) = runs
    losses = [record["train_loss"] for record in metrics["history"]]
    assert losses[-1] < 0.8 * losses[0]
    assert [r["train_loss"] for r in twin_metrics["history"]] == losses
    assert all(torch.equal(p, q) for p, q in zip(model.state_dict().values(), twin.state_dict().values()))
    assert metrics["cached_features"] == (not trainable)
    frozen_weight = model.backbone.features[0].weight
    assert torch.equal(frozen_weight, tiny_model(seed=0).backbone.features[0].weight)
    unchanged = torch.equal(model.backbone.features[2].weight, tiny_model(seed=0).backbone.features[2].weight)
    assert unchanged != bool(trainable)
    written = json.loads((tmp_path / "0" / "metrics.json").read_text())
    assert written["history"][-1]["val"]["srcc"] == metrics["history"][-1]["val"]["srcc"]
    assert set(written["history"][-1]["val"]) >= {"srcc", "plcc", "accuracy", "emd", "mse", "loss"}
    restored = load_aesthetic(tmp_path / "0" / "last.pt", tiny_model(seed=1))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(restored(x), model(x))


def test_training_rejects_bad_inputs():
    model = tiny_model()
    with pytest.raises(ValueError, match="empty"):
        train_aesthetic(model, TensorDataset(torch.zeros(0, 3, 8, 8), torch.zeros(0, 10)))
    with pytest.raises(ValueError, match="10-bin"):
        train_aesthetic(model, TensorDataset(torch.zeros(2, 3, 8, 8), torch.zeros(2, 5)))
    with pytest.raises(ValueError, match="fully frozen"):
        train_aesthetic(model, tiny_dataset(4), inputs="features", trainable_backbone=("features.2",))


def test_cli_trains_both_variants(tmp_path):
    """The DVC entry point end to end on a miniature benchmark (real Lite0 backbone at 64 px)."""
    assert main(["train-aesthetic", "--out", str(tmp_path), "--seed", "0", "--size", "64", "--train", "12",
                 "--val", "6", "--test", "6", "--epochs", "2"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["variants"]) == {"attention", "plain"}
    for variant in ("attention", "plain"):
        assert -1 <= summary["variants"][variant]["test"]["srcc"] <= 1
        assert (tmp_path / variant / "best.pt").is_file() and (tmp_path / variant / "metrics.json").is_file()
    checkpoint = torch.load(tmp_path / "attention" / "best.pt", weights_only=True)
    assert not any(k.startswith("backbone.") for k in checkpoint["state"])  # frozen backbone not duplicated
    with_attention, plain, held_out = load_composition_run(tmp_path)
    assert with_attention.attention and not plain.attention
    assert torch.equal(held_out.images, make_composition_set(6, CompositionConfig(size=64), seed=2).images)
    with torch.no_grad():
        predicted = with_attention.score(plain.spec.from_unit_range(held_out.images))
    reported = summary["variants"]["attention"]["test"]["srcc"]
    assert reported == pytest.approx(rank_correlation(predicted, held_out.scores))
    assert main(["focus-report", "--run", str(tmp_path), "--out", str(tmp_path / "focus.json")]) == 0
    focus = json.loads((tmp_path / "focus.json").read_text())
    assert set(focus) == {"score", "predicted-bin"}
    shares = focus["score"]["attention"]["shares"]
    assert len(shares) == 6 and all(0 <= v <= 1 for v in shares)
    assert focus["score"]["area"] == pytest.approx(float(held_out.masks.float().mean()))


def test_training_without_the_feature_cache_gives_the_same_model():
    """A frozen backbone is in eval mode either way, so caching its features changes memory, not the result."""
    runs = []
    for cache in (True, False):
        model = tiny_model(seed=0)
        metrics = train_aesthetic(model, tiny_dataset(), tiny_dataset(8, seed=6), epochs=3, batch_size=8, lr=3e-2,
                                  cache=cache, seed=0)
        runs.append((model, metrics))
    (cached, cached_metrics), (streamed, streamed_metrics) = runs
    assert cached_metrics["cached_features"] and not streamed_metrics["cached_features"]
    assert [r["train_loss"] for r in streamed_metrics["history"]] == pytest.approx(
        [r["train_loss"] for r in cached_metrics["history"]], rel=1e-5)
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(cached.state_dict().values(),
                                                                streamed.state_dict().values()))


def _write_ava_fixture(root, ids, test_ids):
    """JPEGs ``<id>.jpg`` (all but the last id) and AVA.txt-format label files for ``ids`` and ``test_ids``."""
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    (root / "images").mkdir()
    rows = []
    for index, image_id in enumerate(ids):
        votes = torch.randint(0, 20, (10,), generator=generator).tolist()
        votes[index % 10] += 1
        rows.append(" ".join(map(str, [index + 1, image_id, *votes, 0, 0, 1])))
        if image_id != ids[-1]:
            pixels = torch.randint(0, 256, (40, 48, 3), generator=generator, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(root / "images" / f"{image_id}.jpg")
    (root / "AVA.txt").write_text("\n".join(rows) + "\n")
    (root / "test.txt").write_text("\n".join(row for row in rows if row.split()[1] in test_ids) + "\n")


def test_cli_trains_on_ava(tmp_path):
    """``train-ava`` end to end on an AVA.txt fixture (real Lite0 backbone): standard split by the test file's
    ids, seeded validation split, images without a file skipped, both variants with checkpoints and metrics."""
    ids = [str(1000 + i) for i in range(14)]
    _write_ava_fixture(tmp_path, ids, test_ids=ids[:4])
    out = tmp_path / "run"
    arguments = ["train-ava", "--out", str(out), "--labels", str(tmp_path / "AVA.txt"), "--images",
                 str(tmp_path / "images"), "--test-labels", str(tmp_path / "test.txt"), "--epochs", "2",
                 "--batch-size", "4", "--val-fraction", "0.2"]
    assert main(arguments) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["sizes"] == {"train": 7, "val": 2, "test": 4}   # 10 non-test ids, one without image
    for variant in ("attention", "plain"):
        held_out = summary["variants"][variant]["test"]
        assert -1 <= held_out["srcc"] <= 1 and 0 <= held_out["accuracy"] <= 1
        history = json.loads((out / variant / "metrics.json").read_text())["history"]
        assert len(history) == 2 and (out / variant / "best.pt").is_file()
    model = load_aesthetic(out / "plain" / "best.pt")
    assert not model.attention
    assert main(arguments[:2] + [str(tmp_path / "again")] + arguments[3:]) == 0
    again = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert again["variants"]["attention"]["test"] == summary["variants"]["attention"]["test"]   # seeded

    # read back for the notebooks: checkpoints and the held-out images the run recorded, in test-file order
    with_attention, plain, x, scores = load_ava_run(out, count=3)
    assert with_attention.attention and not plain.attention and x.shape == (3, 3, 224, 224)
    records = read_ava_txt(tmp_path / "test.txt")[:3]
    torch.testing.assert_close(scores, torch.tensor([r.mean_score for r in records], dtype=scores.dtype))
    first = with_attention.spec.transform()(load_image(tmp_path / "images" / f"{records[0].image_id}.jpg"))
    torch.testing.assert_close(x[0], first)
    assert len(load_ava_run(out)[2]) == 4
    with pytest.raises(FileNotFoundError, match="train-ava"):
        load_ava_run(tmp_path / "no-run")
    with pytest.raises(FileNotFoundError, match="none of the 4 test images"):
        load_ava_run(out, images=tmp_path)


def test_ava_training_rejects_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="variants"):
        train_on_ava(tmp_path, "AVA.txt", tmp_path, "test.txt", variants=("both",))
    with pytest.raises(ValueError, match="val_fraction"):
        train_on_ava(tmp_path, "AVA.txt", tmp_path, "test.txt", val_fraction=1.0)
    with pytest.raises(FileNotFoundError, match="AVA label file not found"):
        train_on_ava(tmp_path, tmp_path / "AVA.txt", tmp_path, tmp_path / "test.txt")
