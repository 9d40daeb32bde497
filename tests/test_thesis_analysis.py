"""The thesis experiment functions on constructed cases with known answers."""
from __future__ import annotations

import pytest
import torch

from xaiimg.analysis.thesis import (centre_baseline, edge_map, pointing_table, segmentation_table,
                                    setting_differences, table_rows)
from xaiimg.compare import explain_methods
from xaiimg.metrics.results import MetricResult


def test_centre_baseline_peaks_in_the_middle():
    maps = centre_baseline(2, (5, 7))
    assert maps.shape == (2, 1, 5, 7) and maps[0, 0].argmax() == 2 * 7 + 3 and maps.max() == 1


def test_edge_map_is_a_vertical_line_for_a_step_image():
    image = torch.zeros(1, 3, 6, 6, dtype=torch.float64)
    image[..., 3:] = 1
    edges = edge_map(image)[0, 0]
    assert torch.equal(edges[:, 2:4], torch.ones(6, 2, dtype=torch.float64))
    assert torch.equal(edges[:, [0, 1, 4, 5]], torch.zeros(6, 4, dtype=torch.float64))


def test_pointing_table_hits_and_misses():
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[0, :10, :10] = True
    masks[1, 40:, 40:] = True
    good = torch.zeros(2, 1, 64, 64)
    good[0, 0, 5, 5] = 1
    good[1, 0, 50, 50] = 1
    bad = good.flip(-1).flip(-2)
    rows, _ = pointing_table({"good": good, "bad": bad}, masks, classes=[0, 1], presets=("torchray",))
    assert rows == [{"method": "good", "torchray (%)": 100.0}, {"method": "bad", "torchray (%)": 0.0}]


def test_segmentation_table_of_a_perfect_map():
    masks = torch.zeros(1, 8, 8, dtype=torch.bool)
    masks[0, 2:6, 2:6] = True
    rows, _ = segmentation_table({"exact": masks[:, None].float()}, masks)
    assert rows[0]["method"] == "exact" and all(v == pytest.approx(1.0) for k, v in rows[0].items() if k != "method")


def test_table_rows_scale_and_extra():
    class Fake(MetricResult):
        def summary(self):
            return {"auc": 0.5}

    assert table_rows({"m": Fake()}, {"m": {"seconds": 2.0}}, scale=100) == [{"method": "m", "auc": 50.0,
                                                                               "seconds": 2.0}]


def test_setting_differences_are_computed():
    paper = {"model": "vgg19", "images": 2000, "data": "ImageNet val"}
    assert setting_differences("full", "vgg19", 2000, paper) == []
    lines = setting_differences("default", "efficientnet_lite0", 2, paper)
    assert len(lines) == 3 and "efficientnet_lite0 here, vgg19" in lines[0] and "2 here, 2000" in lines[1]


def test_explain_methods_times_each_method(tiny_cnn):
    x = torch.randn(2, 3, 16, 16)
    result = explain_methods(tiny_cnn, x, {"grad-cam": {}, "gradient": {}})
    assert list(result.maps) == ["grad-cam", "gradient"] and all(t > 0 for t in result.seconds.values())
    assert result.maps["grad-cam"].shape == (2, 1, 16, 16)
