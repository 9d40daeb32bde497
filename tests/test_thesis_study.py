"""The thesis study (xaiimg.studies.thesis_study): golden values of its measures and controls on constructed cases,
the sliding window's components/fuse split, centred scenes, and a small end-to-end run that writes claims."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from xaiimg.data import sample_images
from xaiimg.data.synthetic import CENTRED_JITTER, SyntheticBenchmark
from xaiimg.methods import get_method
from xaiimg.methods.base import Explainer
from xaiimg.methods.sliding_window import SlidingWindow
from xaiimg.models.synthetic import build_synthetic_model, save_checkpoint
from xaiimg.nn import activations_and_gradients
from xaiimg.studies import reproduction as rp
from xaiimg.studies import thesis_study as ts
from xaiimg.studies.runs import SyntheticRun


class ConstantExplainer(Explainer):
    """A map of ones everywhere (raw), the case whose fusions are known by hand."""

    def attribute(self, model, x, target=None):
        return torch.ones(x.shape[0], 1, *x.shape[-2:], dtype=x.dtype)


class ConstantLogits(torch.nn.Module):
    """Logits that ignore the image: every window gets the same alpha."""

    def __init__(self):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor([0.5, 1.5, -1.0]))

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1) + 0 * x.mean(dim=(1, 2, 3))[:, None]


def test_enhancement_maps_of_a_constant_method_are_known_by_hand():
    """S0 = 1 and s_k = 1 with one alpha for all windows: literal = (1 + alpha) n, windows = alpha n, normalised =
    alpha + 1 (constant, so min-max gives zeros), S0 x coverage = n, all with n the coverage count."""
    x = torch.randn(2, 3, 16, 16)
    sliding = SlidingWindow(ConstantExplainer(), window=8, stride=4, smoothing_cutoff=None, batch_size=5,
                            normalize_wrapped=False)
    maps = ts.enhancement_maps(sliding, ConstantLogits(), x, torch.tensor([0, 1]), chunk=1, cutoffs=(3,))
    coverage = sliding.coverage(16, 16)
    expected = ((coverage - coverage.min()) / (coverage.max() - coverage.min())).expand(2, 16, 16)
    for name in ("literal", "windows", "coverage", "S0 x coverage"):
        torch.testing.assert_close(maps[name][:, 0].float(), expected, msg=name)
    assert maps["normalised"].abs().max() == 0 and maps["plain"].abs().max() == 0     # flat maps become zeros
    assert set(maps) == {"plain", "literal", "normalised", "windows", "centre prior", "coverage", "S0 x coverage",
                         "literal D0=3"}
    assert all(m.shape == (2, 1, 16, 16) and m.min() >= 0 and m.max() <= 1 for m in maps.values())


@pytest.mark.parametrize("fusion", ["literal", "normalised", "windows", "s0-coverage"])
def test_components_then_fuse_equals_attribute(tiny_cnn, fusion):
    x = torch.randn(2, 3, 16, 16)
    sliding = SlidingWindow("grad-cam", window=8, stride=4, smoothing_cutoff=5, fusion=fusion, batch_size=3)
    full, windows = sliding.components(tiny_cnn, x, torch.tensor([1, 2]))
    torch.testing.assert_close(sliding.fuse(full, windows), sliding.attribute(tiny_cnn, x, torch.tensor([1, 2])))


def test_localisation_values_of_the_mask_itself_are_perfect():
    masks = torch.zeros(3, 32, 32, dtype=torch.bool)
    masks[0, 4:12, 4:12], masks[1, 10:30, 2:20], masks[2, 0:5, 25:32] = True, True, True
    values = ts.localisation_values(masks[:, None].double(), masks)
    assert values["pointing"] == [1.0, 1.0, 1.0]
    assert values["energy_pointing"] == [1.0, 1.0, 1.0]
    assert values["miou"] == [1.0, 1.0, 1.0]
    assert values["boundary_f"] == [1.0, 1.0, 1.0]
    inverse = ts.localisation_values((~masks)[:, None].double(), masks)
    assert inverse["energy_pointing"] == [0.0, 0.0, 0.0] and inverse["miou"] == [0.0, 0.0, 0.0]


def test_per_item_summary_is_paired_and_reports_n():
    summary = ts.per_item_summary({"a": [1.0, 2.0, 3.0, 4.0], "b": [0.0, 1.0, 2.0, 3.0]})
    assert summary["a"]["n"] == 4 and summary["a"]["mean"] == 2.5 and summary["b"]["mean"] == 1.5
    assert summary["a"]["ci_low"] - summary["b"]["ci_low"] == pytest.approx(1.0)   # same resamples: shift by 1


def test_sanity_claims_read_flat_maps_as_zero_and_state_the_defined_correlations_alone():
    def run(row):   # layers in randomisation order: the output layer first, every layer randomised last
        return {"layers": ["classifier", "features.0"], "spearman": [row, row], "ssim": [row, row],
                "flat_maps": 2 * row.count(None)}

    sanity = {"model": "m", "data": "d", "runs": {"msg-cam/cascading": run([None, None, 0.2, 0.4]),
                                                  "msg-cam/independent": run([None, 0.9, 0.9, 0.9])}}
    cascading, independent = ts.sanity_claims(sanity)
    assert (cascading.n, cascading.mean) == (4, pytest.approx(0.15))             # (0 + 0 + 0.2 + 0.4) / 4
    assert cascading.verdict == rp.REPRODUCED
    assert "4 undefined correlations" in cascading.note
    assert "2 of 4 maps are flat at this layer, and the 2 defined correlations alone average 0.3 [" in cascading.note
    assert independent.mean == pytest.approx(0.675)
    assert "1 of 4 maps are flat at this layer, and the 3 defined correlations alone average 0.9 [0.9, 0.9]" \
        in independent.note
    flat = ts.sanity_claims({"model": "m", "data": "d", "runs": {key: run([None, None]) for key in sanity["runs"]}})
    assert flat[0].mean == 0.0 and "every map is flat at this layer" in flat[0].note


def test_centred_placement():
    uniform = SyntheticBenchmark(size=64, num_classes=3)
    centred = SyntheticBenchmark(size=64, num_classes=3, placement="centred")
    assert "placement" not in uniform.config and centred.config["placement"] == "centred"
    scenes = centred.generate(30, split="test")
    centres = scenes.params[:, 0, :2]
    assert (centres - 32).abs().max() <= CENTRED_JITTER * 64 + 1e-9
    assert (uniform.generate(30, split="test").params[:, 0, :2] - 32).abs().max() > CENTRED_JITTER * 64
    with pytest.raises(ValueError, match="one object per scene"):
        centred.generate(2, multi_object=True)
    with pytest.raises(ValueError, match="unknown placement"):
        SyntheticBenchmark(placement="corner")


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    """Untrained synthetic CNN and ViT checkpoints at 64 px (the study's code paths, not its numbers)."""
    run = SyntheticRun(tmp_path_factory.mktemp("synthetic"))
    benchmark = SyntheticBenchmark(size=64, num_classes=4, scale=(0.25, 0.4))
    for kind in ("cnn", "vit"):
        model = build_synthetic_model(kind, benchmark.class_names, size=64)
        config = {"kind": kind, "class_names": benchmark.class_names, "size": 64, "benchmark": benchmark.config}
        save_checkpoint(model, config, {"test_accuracy": 0.0}, run.checkpoint(kind))
    return run.root


def test_synthetic_parts_write_claims_and_summaries(synthetic_run, tmp_path, one_thread):
    config = ts.ThesisStudyConfig(
        synthetic_dir=str(synthetic_run), scenes=4, pointing_scenes=3, discrimination_scenes=2, sanity_scenes=2,
        small_scale=(0.15, 0.25), synthetic_window={"window": 32, "stride": 16, "smoothing_cutoff": 8},
        cutoffs=(8, None), msg_cam={"num_scales": 2, "zeta_max": 32}, cameras={"resolutions": [64, 96]},
        parts=("pointing", "enhancement", "enhancement_vit", "discrimination", "sanity"), batch_size=8)
    claims = ts.run_thesis_study(config, tmp_path, log=lambda line: None)
    stored = rp.read_claims(rp.claim_files(tmp_path))
    assert stored == claims
    assert {c.verdict for c in claims} <= set(rp.VERDICTS)
    measured = [c for c in claims if c.n is not None]
    assert {c.n for c in measured if c.where == "Table 3-3"} == {6}        # 3 scenes x 2 objects
    assert any(c.id.endswith("beyond-centre-weighting") for c in claims)
    assert any(c.verdict == rp.NOT_TESTABLE for c in claims)
    with open(tmp_path / "thesis_study" / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and all(float(r["ci_low"]) <= float(r["mean"]) <= float(r["ci_high"]) for r in rows)
    enhancement = json.loads((tmp_path / "thesis_study" / "enhancement.json").read_text())
    assert set(enhancement["runs"]) == {"uniform/CNN/grad-cam", "uniform/CNN/gradient", "uniform/CNN/lrp",
                                        "centred/CNN/grad-cam", "small/CNN/grad-cam"}
    vit = json.loads((tmp_path / "thesis_study" / "enhancement_vit.json").read_text())
    assert set(vit["runs"]) == {f"uniform/ViT/{m}" for m in ts.ThesisStudyConfig().vit_methods}
    variants = enhancement["runs"]["uniform/CNN/grad-cam"]["values"]["miou"]
    assert {"plain", "literal", "normalised", "windows", "centre prior", "coverage", "S0 x coverage",
            "literal D0=8", "literal D0=None"} == set(variants)


def test_parts_are_seeded_alone_and_summary_only_rebuilds_the_claims(synthetic_run, tmp_path, one_thread):
    """A part's values do not depend on which parts ran before it in the process (DVC runs one per stage), and
    ``--summary-only`` recomputes the same claims from the stored part files."""
    small = dict(synthetic_dir=str(synthetic_run), scenes=2, pointing_scenes=2, sanity_scenes=2, batch_size=8,
                 msg_cam={"num_scales": 2, "zeta_max": 32}, cameras={"resolutions": [64, 96]})
    alone, after = tmp_path / "alone", tmp_path / "after"
    ts.run_thesis_study(ts.ThesisStudyConfig(**small, parts=("sanity",)), alone, log=lambda line: None,
                        summarise=False)
    assert not (alone / "claims").exists() and not (alone / "thesis_study" / "summary.csv").exists()
    claims = ts.run_thesis_study(ts.ThesisStudyConfig(**small, parts=("pointing", "sanity")), after,
                                 log=lambda line: None)
    part = Path("thesis_study") / "sanity.json"
    assert (alone / part).read_bytes() == (after / part).read_bytes()
    (after / "claims" / "thesis.json").unlink()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"thesis_study": small}))
    from xaiimg.cli import main

    assert main(["thesis-study", "--params", str(tmp_path / "params.yaml"), "--results", str(after),
                 "--summary-only"]) == 0
    assert rp.read_claims(rp.claim_files(after)) == claims


def test_photos_part_on_lite0(lite0, tmp_path, one_thread):
    """Two foolbox photographs, fewer MSG-CAM / CAMERAS scales: every map is scored, the kept-scale counts are
    recorded."""
    config = ts.ThesisStudyConfig(photo_count=2, insertion_step_factor=32, step_check_images=1,
                                  msg_cam={"num_scales": 2, "zeta_max": 64}, cameras={"resolutions": [224, 256]},
                                  parts=("photos",), batch_size=16)
    photos = ts.photos_part(config, log=lambda line: None)
    assert photos["n"] == 2
    assert set(photos["overall"]) >= {f"{m} @blocks.4" for m in ts.CAM_BASELINES} | {"msg-cam @blocks.4"}
    assert all(len(v) == 2 for v in photos["overall"].values())
    assert all(1 <= k <= 2 for k in photos["kept_scales"]["msg-cam @blocks.4"])
    assert photos["kept_scales"]["msg-cam @blocks.4 (keep all scales)"] == [2, 2]
    claims = ts.photo_claims(photos, config)
    assert len([c for c in claims if c.where == "Table 3-2"]) == len(ts.CAM_BASELINES)


def test_second_model_part_scores_its_own_model_and_layer_without_ablations(lite0, one_thread):
    """The second-model part runs :func:`photos_part` on ``second_model`` at ``second_model_layer`` (here Lite0 at
    ``blocks.5``, the code path; the committed run uses Lite2): no MSG-CAM ablations, no step check, and its claims
    carry their own ids so both models' verdicts stand side by side."""
    config = ts.ThesisStudyConfig(photo_count=2, insertion_step_factor=32, second_model="efficientnet_lite0",
                                  second_model_layer="blocks.5", msg_cam={"num_scales": 2, "zeta_max": 64},
                                  cameras={"resolutions": [224, 256]}, batch_size=16)
    photos = ts.photos_second_model_part(config, log=lambda line: None)
    assert photos["model"] == "efficientnet_lite0" and photos["step_check"]["images"] == 0
    assert set(photos["kept_scales"]) == {"msg-cam @blocks.5", "msg-cam @bn2"}
    assert "grad-cam @blocks.5 + SW literal" in photos["overall"] and "grad-cam @blocks.4" not in photos["overall"]
    claims = ts.CLAIM_FUNCTIONS["photos_second_model"](photos, config)
    assert all(c.id.endswith("/second-model") and c.where.endswith("(second model)") for c in claims)
    assert "layer blocks.5" in claims[0].model and not claims[0].details
    assert len([c for c in claims if c.where == "Table 3-2 (second model)"]) == len(ts.CAM_BASELINES)


def test_lite2_blocks4_is_the_thesis_analogous_layer():
    """EfficientNet-Lite2 (offline ImageNet weights) at its 260 px input: ``blocks.4`` is a stride-16 map (17x17)
    whose gradient varies over positions, while at ``bn2`` (fed to GAP and the classifier) it is constant."""
    from xaiimg.models import load_model

    lite2 = load_model("efficientnet_lite2")
    x = lite2.preprocess(sample_images(["coffee"]))
    assert tuple(x.shape[-2:]) == (260, 260)
    spread = {}
    for layer in ("blocks.4", "bn2"):
        layer_pass = activations_and_gradients(lite2, x, layer, [967])
        spread[layer] = ts.gradient_spatial_spread(layer_pass).item()
        if layer == "blocks.4":
            assert tuple(layer_pass.activations.shape[-2:]) == (17, 17)
    assert spread["blocks.4"] > 0.1 and spread["bn2"] < 1e-5


def test_gradient_is_spatially_constant_at_the_gap_layer_only(tiny_cnn):
    """TinyCNN's ``features.3`` feeds GAP then a linear layer: dy/dA = w_c / hw everywhere, so Grad-CAM (mean
    gradient) and XGrad-CAM (sum A*g / sum A) give the same weights; at ``features.1`` the gradient varies."""
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    spread = {layer: ts.gradient_spatial_spread(activations_and_gradients(tiny_cnn, x, layer, [0, 1, 2]))
              for layer in ("features.3", "features.1")}
    assert spread["features.3"].abs().max() < 1e-6 and (spread["features.1"] > 0.05).all()
    maps = {layer: [get_method(name, layer=layer)(tiny_cnn, x, target=[0, 1, 2]) for name in ("grad-cam", "xgrad-cam")]
            for layer in ("features.3", "features.1")}
    assert ts.relative_map_difference(*maps["features.3"]).max() < 1e-5
    assert ts.relative_map_difference(*maps["features.1"]).max() > 1e-3
    a = torch.tensor([[[0.0, 2.0]]])
    assert ts.relative_map_difference(a, a / 2).item() == pytest.approx(0.5)


def test_layers_part_on_lite0(lite0, one_thread):
    config = ts.ThesisStudyConfig(photo_count=2, parts=("layers",))
    layers = ts.layers_part(config, log=lambda line: None)["layers"]
    assert max(layers["bn2"]["gradient_spatial_spread"]) < 1e-5 and max(layers["bn2"]["grad_cam_vs_xgrad_cam"]) < 1e-4
    assert min(layers["blocks.4"]["gradient_spatial_spread"]) > 0.1
    assert min(layers["blocks.4"]["grad_cam_vs_xgrad_cam"]) > 0.01


def test_config_is_validated():
    with pytest.raises(ValueError, match="unknown study parts"):
        ts.ThesisStudyConfig(parts=("photos", "tables"))
    with pytest.raises(ValueError, match="scenes must be a positive integer"):
        ts.ThesisStudyConfig(scenes=0)


def test_msg_cam_study_settings_are_the_thesis_literal_ones():
    explainer = get_method("msg-cam", **ts.MSG_CAM_LITERAL)
    assert (explainer.image_mode, explainer.alpha_score, explainer.keep_scales) == ("bilinear", "logit", "top1")


def test_cli_offers_exactly_the_study_parts():
    """cli.py lists the parts literally (its --help must not import torch); they must stay the study's own."""
    from xaiimg.cli import build_parser

    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    parts = next(a for a in commands["thesis-study"]._actions if a.dest == "parts")
    assert tuple(parts.choices) == ts.PART_NAMES


def test_config_defaults_are_the_committed_run():
    """``ThesisStudyConfig()`` is the run params.yaml commits (its docstring says so): a size changed in one place
    only fails here."""
    block = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())["thesis_study"]
    config = ts.ThesisStudyConfig()
    assert {key: getattr(config, key) for key in block} == block
