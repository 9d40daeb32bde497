"""Pointing game (torchray tolerance disk, thesis-top100) and saliency-as-segmentation scores."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from xaiimg.metrics import (
    PointingGame,
    SegmentationScores,
    average_precision,
    boxes_to_mask,
    per_image_segmentation_iou,
    pointing_game,
    segmentation_scores,
)


def peak_map(size: int, row: int, col: int) -> torch.Tensor:
    saliency = torch.zeros(1, 1, size, size)
    saliency[0, 0, row, col] = 1.0
    return saliency


def single_pixel_mask(size: int, row: int, col: int) -> torch.Tensor:
    mask = torch.zeros(1, size, size, dtype=torch.bool)
    mask[0, row, col] = True
    return mask


@pytest.mark.parametrize("offset, hit", [((0, 15), False), ((9, 12), False), ((10, 11), True), ((0, 14), True),
                                         ((0, 0), True)])
def test_torchray_tolerance_boundary(offset, hit):
    """Hit iff the ground truth meets the open disk of radius 15 px: sqrt(221) = 14.87 hits, 15 = sqrt(81+144)
    misses."""
    result = pointing_game(peak_map(64, 20, 20), single_pixel_mask(64, 20 + offset[0], 20 + offset[1]))
    assert result.hits.tolist() == [hit]
    assert result.points.tolist() == [[20, 20]]


def test_point_is_first_argmax_of_the_bilinear_resized_map():
    """An 8x8 map with one peak cell (2, 3) resized to 64x64: the maximum spans rows 19-20 and cols 27-28 (the
    output pixels nearest the cell centre 19.5, 27.5); the first one in raster order is (19, 27)."""
    saliency = peak_map(8, 2, 3)
    near = single_pixel_mask(64, 19 + 14, 27)
    far = single_pixel_mask(64, 19 + 15, 27)
    result = pointing_game([saliency[0], saliency[0]], torch.cat([near, far]))
    assert result.points.tolist() == [[19, 27], [19, 27]]
    assert result.hits.tolist() == [True, False]


def test_accuracy_is_mean_over_classes_and_difficult_subset():
    saliency = peak_map(32, 5, 5).repeat(5, 1, 1, 1)
    hit_mask, miss_mask = single_pixel_mask(32, 5, 6), single_pixel_mask(32, 30, 30)
    masks = torch.cat([hit_mask, hit_mask, miss_mask, miss_mask, hit_mask])
    result = pointing_game(saliency, masks, classes=[0, 0, 0, 1, 2], difficult=[False, True, True, True, False])
    assert result.hits.tolist() == [True, True, False, False, True]
    assert result.summary()["accuracy"] == pytest.approx((2 / 3 + 0 + 1) / 3)
    assert result.summary()["accuracy_difficult"] == pytest.approx((1 / 2 + 0) / 2)
    assert result.per_class_accuracy == pytest.approx({0: 2 / 3, 1: 0.0, 2: 1.0})
    no_difficult = pointing_game(saliency[:1], masks[:1])
    assert np.isnan(no_difficult.summary()["accuracy_difficult"])


def test_boxes_are_inclusive_and_streaming_matches_one_call():
    mask = boxes_to_mask([[2, 1, 4, 3], [0, 0, 0, 0]], (6, 8))
    expected = torch.zeros(6, 8, dtype=torch.bool)
    expected[1:4, 2:5] = True
    expected[0, 0] = True
    assert torch.equal(mask, expected)
    saliency = torch.rand(4, 1, 10, 12, generator=torch.Generator().manual_seed(0))
    boxes = [[[0, 0, 3, 3]], [[6, 5, 11, 9]], [[2, 2, 2, 2]], [[0, 0, 11, 9]]]
    one_call = pointing_game(saliency, boxes=boxes, classes=[1, 2, 1, 2], tolerance=3)
    game = PointingGame(tolerance=3)
    game.update(saliency[:3], boxes=boxes[:3], classes=[1, 2, 1])
    game.update(saliency[3:], boxes=boxes[3:], classes=[2])
    assert torch.equal(game.result().hits, one_call.hits)
    masks = torch.stack([boxes_to_mask(b, (10, 12)) for b in boxes])
    assert torch.equal(pointing_game(saliency, masks, tolerance=3).hits, one_call.hits)
    assert one_call.hits[3]  # a box covering the image is always hit


def test_thesis_top100_majority_and_stable_ties():
    size = 20
    values = torch.zeros(size * size)
    region = torch.zeros(size * size, dtype=torch.bool)
    region[:200] = True
    top_inside, top_outside = torch.arange(0, 51), torch.arange(200, 249)  # 51 in, 49 out
    values[top_inside] = torch.linspace(2, 1.5, 51)
    values[top_outside] = torch.linspace(1.4, 1.01, 49)
    saliency = values.view(1, 1, size, size)
    hit = pointing_game(saliency, region.view(1, size, size), preset="thesis-top100")
    values[50] = 0  # now 50 inside, 49 outside, and the 100th point is the first tied zero in raster order: (2, 10)
    tied = pointing_game(values.view(1, 1, size, size), region.view(1, size, size), preset="thesis-top100")
    values[60] = 0.5  # a 51st point inside
    recovered = pointing_game(values.view(1, 1, size, size), region.view(1, size, size), preset="thesis-top100")
    assert hit.hits.tolist() == [True] and hit.points.tolist() == [[0, 0]]
    assert tied.hits.tolist() == [True]  # raster-first zero (pixel 50) is inside: 51 of 100
    region_without_50 = region.clone()
    region_without_50[50] = False
    assert pointing_game(values.view(1, 1, size, size) * (values.view(1, 1, size, size) != 0.5),
                         region_without_50.view(1, size, size), preset="thesis-top100").hits.tolist() == [False]
    assert recovered.hits.tolist() == [True]
    flat = torch.zeros(1, 1, size, size)  # all ties: the first 100 pixels in raster order = rows 0-4
    assert pointing_game(flat, region.view(1, size, size), preset="thesis-top100").hits.tolist() == [True]
    assert pointing_game(flat, ~region.view(1, size, size), preset="thesis-top100").hits.tolist() == [False]


def test_cross_check_quantus_pointing_game():
    """Quantus PointingGame: hit iff a maximum lies in the mask. Ours with tolerance 1 (the point's own pixel only)
    on maps with a unique maximum and masks of the map's size must agree (Quantus: normalise=False, abs=False)."""
    quantus = pytest.importorskip("quantus")
    generator = torch.Generator().manual_seed(0)
    saliency = torch.rand(12, 1, 12, 12, generator=generator, dtype=torch.float64)
    masks = torch.rand(12, 12, 12, generator=generator) > 0.6
    metric = quantus.PointingGame(normalise=False, abs=False, disable_warnings=True)
    expected = metric(model=None, x_batch=np.zeros((12, 3, 12, 12)), y_batch=np.zeros(12, int),
                      a_batch=saliency.numpy(), s_batch=masks.unsqueeze(1).double().numpy(), channel_first=True)
    ours = pointing_game(saliency, masks, tolerance=1)
    assert ours.hits.tolist() == [bool(v) for v in expected]
    assert 0 < ours.hits.sum() < 12


def test_pointing_bad_inputs():
    with pytest.raises(ValueError, match="exactly one of masks= and boxes="):
        pointing_game(torch.rand(1, 1, 4, 4))
    with pytest.raises(ValueError, match="2 saliency maps and 1"):
        pointing_game(torch.rand(2, 1, 4, 4), torch.ones(1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="unknown pointing-game preset"):
        pointing_game(torch.rand(1, 1, 4, 4), torch.ones(1, 4, 4), preset="top100")
    with pytest.raises(ValueError, match="NaN"):
        pointing_game(torch.full((1, 1, 4, 4), float("nan")), torch.ones(1, 4, 4))


def test_segmentation_hand_made():
    """Image 1: map = mask (all right). Image 2: map = inverted mask (all wrong).
    Pixel accuracy 16/32; IoU bg = fg = 8/24; AP 1 and 0.5 (all positives tied at the lowest score) -> mAP 0.75."""
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:, :2] = True
    saliency = torch.stack([mask.float(), (~mask).float()]).unsqueeze(1)
    result = segmentation_scores(saliency, torch.stack([mask, mask]))
    assert result.pixel_accuracy == pytest.approx(0.5)
    assert result.iou.tolist() == pytest.approx([1 / 3, 1 / 3])
    assert result.miou == pytest.approx(1 / 3)
    assert result.average_precisions.tolist() == pytest.approx([1.0, 0.5])
    assert result.mean_ap == pytest.approx(0.75)
    assert result.higher_is_better == {"pixel_accuracy": True, "miou": True, "mean_ap": True}


def test_segmentation_threshold_is_the_map_mean_after_resizing():
    """Map [0, 1, 2, 9] (mean 3) on a 2x2 grid: only the 9 is foreground. Streamed in two updates = one call."""
    saliency = torch.tensor([[[0.0, 1.0], [2.0, 9.0]]])
    mask = torch.tensor([[[False, False], [True, True]]])
    result = segmentation_scores(saliency, mask)
    assert result.correct_pixels == 3 and result.labelled_pixels == 4
    assert result.intersection.tolist() == [2, 1] and result.union.tolist() == [3, 2]
    generator = torch.Generator().manual_seed(0)
    maps, masks = torch.rand(5, 1, 6, 6, generator=generator), torch.rand(5, 12, 12, generator=generator) > 0.5
    streamed = SegmentationScores()
    streamed.update(maps[:2], masks[:2])
    streamed.update(list(maps[2:, 0]), list(masks[2:]))
    whole = segmentation_scores(maps, masks)
    assert streamed.result().to_dict() == whole.to_dict()


def test_per_image_iou_golden_and_equal_to_one_image_at_a_time():
    """Map = mask: IoU (1, 1); inverted mask: (0, 0); the 2x2 case above: bg 2/3, fg 1/2. Batched over images of a
    smaller map size (resized), it equals :func:`segmentation_scores` on each image alone."""
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:, :2] = True
    saliency = torch.stack([mask.float(), (~mask).float()]).unsqueeze(1)
    assert per_image_segmentation_iou(saliency, torch.stack([mask, mask])).tolist() == [[1.0, 1.0], [0.0, 0.0]]
    small = per_image_segmentation_iou(torch.tensor([[[0.0, 1.0], [2.0, 9.0]]]), torch.tensor([[[0, 0], [1, 1]]]))
    assert small[0].tolist() == pytest.approx([2 / 3, 1 / 2])
    generator = torch.Generator().manual_seed(0)
    maps, masks = torch.rand(7, 1, 6, 6, generator=generator), torch.rand(7, 12, 12, generator=generator) > 0.5
    one_at_a_time = [segmentation_scores(maps[i:i + 1], masks[i:i + 1]).iou.tolist() for i in range(7)]
    assert per_image_segmentation_iou(maps, masks).tolist() == one_at_a_time
    with pytest.raises(ValueError, match="same n"):
        per_image_segmentation_iou(maps, masks[:3])


def test_average_precision_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    generator = torch.Generator().manual_seed(1)
    scores = (torch.rand(300, generator=generator) * 10).round() / 10  # ties
    labels = torch.rand(300, generator=generator) > 0.6
    assert average_precision(scores, labels).item() == pytest.approx(
        metrics.average_precision_score(labels.numpy(), scores.numpy()), abs=1e-12)
    mask = labels.view(15, 20)
    saliency = scores.view(1, 1, 15, 20)
    chefer = metrics.average_precision_score(np.stack([~mask.numpy().ravel(), mask.numpy().ravel()], 1),
                                             np.stack([1 - scores.numpy(), scores.numpy()], 1))
    assert segmentation_scores(saliency, mask[None]).mean_ap == pytest.approx(chefer, abs=1e-6)
    assert average_precision(scores, torch.zeros(300, dtype=torch.bool)).item() == 0.0
