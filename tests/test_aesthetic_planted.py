"""The planted study's parts: the backbone split at a stage, last-stage fine-tuning from cached stage inputs, CAM
from the cache, the subject-mass measures on constructed models whose answer is known, rows and claims."""
import json

import pytest
import torch
from torch import nn

from xaiimg.models.aesthetic import AestheticModel
from xaiimg.studies.aesthetic_planted import (
    cam_from_stage_inputs,
    contour_band,
    explanation_measures,
    explanation_rows,
    planted_claims,
    quality_rows,
    run_planted_study,
)
from xaiimg.training.aesthetic import cache_stage_inputs, train_aesthetic


@pytest.fixture(scope="module")
def lite0_aesthetic():
    torch.manual_seed(0)
    return AestheticModel("efficientnet_lite0", attention=True, reduced_channels=32).eval()


def test_stage_split_reproduces_the_forward_pass(lite0_aesthetic):
    model, x = lite0_aesthetic, torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for stage in ("blocks.6", "blocks.4"):
            assert torch.allclose(model.forward_from(model.stage_input(x, stage), stage), model(x), atol=1e-5)
    assert model.trainable_from("blocks.5") == ("blocks.5", "blocks.6", "conv_head", "bn2")
    with pytest.raises(ValueError, match="stage must name a backbone stage"):
        model.stage_input(x, "blocks.9")
    with pytest.raises(ValueError, match="reduced_channels"):
        AestheticModel(nn.Conv2d(3, 8, 3), feature_channels=8, reduced_channels=0)


def test_cam_from_the_cache_equals_cam_on_the_images(lite0_aesthetic):
    from xaiimg.studies.aesthetic import class_activation_maps

    model, x = lite0_aesthetic, torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        h = model.stage_input(x, "blocks.6")
    assert torch.allclose(cam_from_stage_inputs(model, h, "blocks.6", (64, 64)),
                          class_activation_maps(model, x, "score"), atol=1e-5)


def test_last_stage_fine_tuning_from_cached_stage_inputs(one_thread):
    torch.manual_seed(0)
    model = AestheticModel("efficientnet_lite0", attention=True, reduced_channels=16)
    images = torch.randn(8, 3, 64, 64)
    targets = torch.softmax(torch.randn(8, 10), -1)
    data = torch.utils.data.TensorDataset(images, targets)
    cached = cache_stage_inputs(model, data, "blocks.6")
    assert cached.tensors[0].shape == (8, 192, 2, 2)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    history = train_aesthetic(model, cached, cached, inputs="stage-inputs", start_stage="blocks.6", epochs=3,
                              batch_size=4, lr=1e-3)
    assert history["trainable_backbone"] == ["blocks.6", "conv_head", "bn2"]
    assert history["history"][-1]["train_loss"] < history["history"][0]["train_loss"]
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert any(name.startswith("backbone.blocks.6.") for name in changed)
    assert any(name.startswith("backbone.conv_head.") for name in changed)
    assert not any(name.startswith(("backbone.blocks.5.", "backbone.conv_stem.")) for name in changed)
    with pytest.raises(ValueError, match="lies before start_stage"):
        train_aesthetic(model, cached, inputs="stage-inputs", start_stage="blocks.6",
                        trainable_backbone=("blocks.5",))
    with pytest.raises(ValueError, match="needs start_stage"):
        train_aesthetic(model, cached, inputs="stage-inputs")


class MaskedBackbone(nn.Module):
    """Non-negative features (conv 3x3, stride 4, on a 32 px image: 8x8 cells, cell i sees pixels 4i-1..4i+1) kept
    only on the feature ``cells`` ``[1,1,8,8]``: the model sees only the pixels under those cells' receptive fields."""

    num_features = 8

    def __init__(self, cells: torch.Tensor):
        super().__init__()
        self.register_buffer("cells", cells)
        self.conv = nn.Conv2d(3, 8, 3, stride=4, padding=1, bias=False)
        self.relu = nn.ReLU()
        with torch.no_grad():
            self.conv.weight.abs_()

    def forward(self, x):
        return self.relu(self.conv(x)) * self.cells


def constructed_model(region: torch.Tensor) -> AestheticModel:
    """Score rising with every feature: CAM weights for the score are positive."""
    model = AestheticModel(MaskedBackbone(region), attention=False)
    with torch.no_grad():
        model.classifier.weight.copy_((torch.arange(10.0) - 4.5).view(10, 1).expand(10, 8) * 0.05)
        model.classifier.bias.zero_()
    return model.eval()


def test_subject_measures_rank_the_subject_only_model_first(one_thread):
    torch.manual_seed(0)
    size = 32
    subject = torch.zeros(1, 1, size, size)
    subject[..., 8:24, 8:24] = 1.0
    inside = torch.zeros(1, 1, 8, 8)
    inside[..., 3:6, 3:6] = 1.0              # receptive fields within pixels 11..21: inside the subject
    outside = torch.ones(1, 1, 8, 8)
    outside[..., 2:7, 2:7] = 0.0             # receptive fields within pixels 0..5 or 27..31: background only
    x = torch.rand(4, 3, size, size) + 0.1
    masks = subject.bool().expand(4, 1, size, size)
    area = subject.mean().item()
    looks_at_subject = explanation_measures(constructed_model(inside), x, masks)
    looks_at_background = explanation_measures(constructed_model(outside), x, masks)
    for method in ("cam", "lrp"):
        for quantity in ("subject_share", "energy_pointing_box"):
            top = looks_at_subject[method][quantity]
            bottom = looks_at_background[method][quantity]
            assert (top > area).all() and (bottom < area).all() and (top > bottom).all(), (method, quantity)
    assert torch.allclose(looks_at_subject["lrp"]["subject_share"], torch.ones(4, dtype=torch.float64))


def test_contour_band_golden():
    masks = torch.zeros(1, 1, 7, 7, dtype=torch.bool)
    masks[..., 2:5, 2:5] = True
    band = contour_band(masks, 1)
    expected = torch.zeros_like(masks)
    expected[..., 1:6, 1:6] = True
    expected[..., 3, 3] = False
    assert torch.equal(band, expected)


def fake_measures(attention_share: float, plain_share: float, scenes: int = 30, seeds=(0, 1, 2)) -> dict:
    generator = torch.Generator().manual_seed(0)

    def per_seed(share):
        noise = 0.01 * torch.randn(scenes, generator=generator, dtype=torch.float64)
        cam = {"subject_share": share + noise, "energy_pointing_box": share + noise}
        lrp = {**cam, "contour_share": 0.3 + noise, "contour_area": torch.full((scenes,), 0.2, dtype=torch.float64),
               "cam_spearman": 0.5 + noise}
        return {"cam": cam, "lrp": lrp}

    return {"attention": {s: per_seed(attention_share) for s in seeds},
            "plain": {s: per_seed(plain_share) for s in seeds}}


@pytest.mark.parametrize("attention_share, plain_share, verdict", [
    (0.6, 0.4, "reproduced"), (0.3, 0.5, "not reproduced")])
def test_rows_and_claims_follow_the_measures(attention_share, plain_share, verdict):
    measures = fake_measures(attention_share, plain_share)
    areas = {"mask": torch.full((30,), 0.2, dtype=torch.float64), "box": torch.full((30,), 0.3, dtype=torch.float64)}
    quality = {v: {s: {"srcc": 0.9 + 0.01 * s, "plcc": 0.9, "accuracy": 0.9} for s in (0, 1, 2)}
               for v in ("attention", "plain")}
    claims = {c.id: c for c in planted_claims(quality, measures, areas, "data", "model", "note.")}
    assert claims["aesthetic-claim2-cam-attention"].verdict == verdict
    assert claims["aesthetic-claim2-cam-attention"].mean == pytest.approx(attention_share - plain_share, abs=0.01)
    assert claims["aesthetic-model-quality-plain"].verdict == "reproduced"  # SRCC 0.90-0.92 > 0.8
    assert claims["aesthetic-claim3-lrp-subject"].verdict == ("reproduced" if attention_share > 0.2 else verdict)
    rows = explanation_rows(measures, areas)
    pooled = [r for r in rows if r["table"] == "attention-minus-plain" and r["seed"] == "pooled"
              and r["method"] == "cam" and r["quantity"] == "subject_share"]
    assert len(pooled) == 1 and pooled[0]["difference"] == pytest.approx(attention_share - plain_share, abs=0.01)
    assert {r["seed"] for r in quality_rows(quality)} == {"0", "1", "2", "pooled"}


def test_study_writes_run_folder_results_and_claims(tmp_path, one_thread):
    record = run_planted_study(tmp_path / "run", tmp_path / "results", seeds=(0, 1), size=64, train=8, val=4,
                               test=4, epochs=1, lrp_scenes=2, log=None)
    results = json.loads((tmp_path / "results" / "aesthetic_planted.json").read_text())
    assert results["note"] == record["note"] and "CAM and LRP" in results["note"]
    assert (tmp_path / "results" / "aesthetic_planted.csv").read_text().count("\n") == len(results["rows"]) + 1
    claims = json.loads((tmp_path / "results" / "claims" / "aesthetic.json").read_text())["claims"]
    assert {c["id"] for c in claims} == {"aesthetic-model-quality-attention", "aesthetic-model-quality-plain",
                                         "aesthetic-claim2-cam-attention", "aesthetic-claim3-lrp-subject"}
    for variant in ("attention", "plain"):
        for seed in (0, 1):
            assert (tmp_path / "run" / variant / f"seed{seed}" / "best.pt").is_file()
    summary = (tmp_path / "run" / "summary.json").read_text() + (tmp_path / "run" / "measures.json").read_text()
    assert "_seconds" not in summary and "_seconds" in (tmp_path / "run" / "timings.json").read_text()
    with pytest.raises(ValueError, match="seeds must be distinct"):
        run_planted_study(tmp_path / "run", tmp_path / "results", seeds=(0, 0), log=None)
