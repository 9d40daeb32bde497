"""The metric registry: listing, lookup errors, declared directions, and the uniform call order
``metric(model, inputs, saliency_or_explainer, targets, **options)`` against the functions it adapts."""
from __future__ import annotations

import pytest
import torch

from xaiimg.compare import EXPERIMENT_METRICS, score_images
from xaiimg.metrics import (
    InsertionDeletionResult,
    MetricResult,
    available_metrics,
    get_metric,
    insertion_deletion,
    max_sensitivity,
    model_randomisation,
    pointing_game,
    positive_negative_perturbation,
    register_metric,
    segmentation_scores,
)
from xaiimg.metrics.registry import CATEGORIES

PAPER_METRICS = {"insertion-deletion": "faithfulness", "positive-negative-perturbation": "faithfulness",
                 "pointing-game": "localisation", "segmentation": "localisation", "model-randomisation": "sanity",
                 "max-sensitivity": "robustness"}


def images(batch: int = 2, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def maps(batch: int = 2, size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(seed))


def corner_masks(batch: int = 2, size: int = 16) -> torch.Tensor:
    masks = torch.zeros(batch, size, size, dtype=torch.bool)
    masks[0, :5, :6] = True
    masks[1:, 9:, 4:12] = True
    return masks


def assert_same_result(ours: MetricResult, reference: MetricResult) -> None:
    """Same class and the same fields and summary (compared through ``repr``, so NaN equals NaN)."""
    assert type(ours) is type(reference)
    assert repr(ours.to_dict()) == repr(reference.to_dict())


def test_available_metrics_sorted_with_the_papers_metrics():
    names = available_metrics()
    assert names == sorted(names) and set(PAPER_METRICS) <= set(names)
    for name, category in PAPER_METRICS.items():
        assert get_metric(name).name == name and get_metric(name).category == category


@pytest.mark.parametrize("name", available_metrics())
def test_declarations(name):
    metric = get_metric(name)
    assert metric.category in CATEGORIES and metric.paper
    assert issubclass(metric.result, MetricResult)
    assert metric.higher_is_better == metric.result.higher_is_better and metric.scores == tuple(metric.higher_is_better)
    assert metric.scores and all(isinstance(direction, bool) for direction in metric.higher_is_better.values())
    assert metric.per_image == (not metric.explains and not metric.ground_truth)


def test_directions_follow_the_papers():
    assert get_metric("insertion-deletion").higher_is_better == {"insertion_auc": True, "deletion_auc": False,
                                                                 "overall": True}
    assert get_metric("positive-negative-perturbation").higher_is_better == {"positive_auc": False,
                                                                             "negative_auc": True, "overall": True}
    for name, higher in [("pointing-game", True), ("segmentation", True), ("model-randomisation", False),
                         ("max-sensitivity", False)]:
        assert set(get_metric(name).higher_is_better.values()) == {higher}


def test_needs_declared():
    assert {name for name in available_metrics() if get_metric(name).explains} >= {"model-randomisation",
                                                                                     "max-sensitivity"}
    assert get_metric("pointing-game").ground_truth == ("masks", "boxes")
    assert get_metric("segmentation").ground_truth == ("masks",)


def test_unknown_metric_suggests_close_names():
    with pytest.raises(ValueError, match=r"'insertion-delection'; did you mean \['insertion-deletion'\]"):
        get_metric("insertion-delection")
    with pytest.raises(ValueError, match=r"unknown metric 'zzz' \(available: boundary-f-score, "
                                         r"energy-pointing-game, insertion-deletion, "):
        get_metric("zzz")
    with pytest.raises(TypeError, match="registered name"):
        get_metric(insertion_deletion)


def test_register_rejects_a_taken_name_and_an_unknown_category():
    with pytest.raises(ValueError, match="already registered"):
        register_metric("insertion-deletion", category="faithfulness", paper="x",
                        result=InsertionDeletionResult)(lambda *args, **options: None)
    with pytest.raises(ValueError, match="category must be one of"):
        register_metric("new-metric", category="speed", paper="x", result=InsertionDeletionResult)
    assert "new-metric" not in available_metrics()


# ------------------------------------------------------------------ uniform order == the adapted function's result
def test_insertion_deletion_uniform_order(tiny_cnn):
    x, saliency = images(), maps()
    assert_same_result(get_metric("insertion-deletion")(tiny_cnn, x, saliency, [1, 3], batch_size=5),
                       insertion_deletion(tiny_cnn, x, saliency, target=[1, 3], batch_size=5))


@pytest.mark.parametrize("targets, reference", [(None, {}), ([2, 0], dict(labels=[2, 0], reference="label")),
                                                (4, dict(labels=[4, 4], reference="label"))])
def test_perturbation_targets_are_the_labels(tiny_cnn, targets, reference):
    x, saliency = images(), maps()
    assert_same_result(get_metric("positive-negative-perturbation")(tiny_cnn, x, saliency, targets, fractions=[0.5]),
                       positive_negative_perturbation(tiny_cnn, x, saliency, fractions=[0.5], **reference))


def test_pointing_game_targets_are_classes_and_boxes_are_in_input_pixels(tiny_cnn):
    x, saliency, masks = images(), maps(), corner_masks()
    metric = get_metric("pointing-game")
    assert_same_result(metric(tiny_cnn, x, saliency, [3, 1], masks=masks, tolerance=3),
                       pointing_game(saliency, masks=masks, classes=[3, 1], tolerance=3))
    boxes = [[[0, 0, 5, 4]], [[4, 9, 11, 15]]]
    small = torch.nn.functional.interpolate(saliency, size=(8, 8), mode="bilinear", align_corners=False)
    assert_same_result(metric(tiny_cnn, x, small, boxes=boxes),
                       pointing_game(small, boxes=boxes, image_sizes=[(16, 16)] * 2))


def test_segmentation_uniform_order(tiny_cnn):
    x, saliency, masks = images(), maps(), corner_masks()
    assert_same_result(get_metric("segmentation")(tiny_cnn, x, saliency, masks=masks, ap_average="foreground"),
                       segmentation_scores(saliency, masks, ap_average="foreground"))
    with pytest.raises(TypeError, match="masks"):
        get_metric("segmentation")(tiny_cnn, x, saliency)


def test_explainer_metrics_uniform_order(tiny_cnn):
    x = images()
    assert_same_result(get_metric("model-randomisation")(tiny_cnn, x, "gradient", [0, 2], mode="independent", seed=3),
                       model_randomisation(tiny_cnn, "gradient", x, target=[0, 2], mode="independent", seed=3))
    assert_same_result(get_metric("max-sensitivity")(tiny_cnn, x, "gradient", 1, samples=2, seed=5),
                       max_sensitivity("gradient", tiny_cnn, x, target=1, samples=2, seed=5))


# ------------------------------------------------------------------------------------------- experiments
def test_experiment_metrics_are_the_per_image_ones():
    assert EXPERIMENT_METRICS == tuple(name for name in available_metrics() if get_metric(name).per_image)
    assert {"insertion-deletion", "positive-negative-perturbation"} <= set(EXPERIMENT_METRICS)
    assert not {"pointing-game", "segmentation", "model-randomisation", "max-sensitivity"} & set(EXPERIMENT_METRICS)


def test_score_images_insertion_deletion_as_before(tiny_cnn):
    x, saliency = images(3), maps(3)
    result = insertion_deletion(tiny_cnn, x, saliency, target=2, protocol="rise")
    assert score_images("insertion-deletion", tiny_cnn, x, saliency, protocol="rise", target=2) == {
        "insertion_auc": result.insertion_auc.tolist(), "deletion_auc": result.deletion_auc.tolist(),
        "overall": result.overall.tolist()}


def test_score_images_refuses_metrics_that_need_more_than_maps(tiny_cnn):
    x, saliency = images(), maps()
    with pytest.raises(ValueError, match=r"'pointing-game' needs ground truth \(masks or boxes\)"):
        score_images("pointing-game", tiny_cnn, x, saliency)
    with pytest.raises(ValueError, match="'max-sensitivity' needs an explainer"):
        score_images("max-sensitivity", tiny_cnn, x, saliency)
    with pytest.raises(ValueError, match="did you mean"):
        score_images("insertion_deletion", tiny_cnn, x, saliency)
