"""The thesis experiment functions on constructed cases with known answers."""
from __future__ import annotations

import pytest
import torch

from xaiimg.compare import explain_methods
from xaiimg.metrics.results import MetricResult
from xaiimg.studies.thesis import (
    centre_baseline,
    edge_map,
    imagenet_subset,
    pointing_table,
    segmentation_table,
    setting_differences,
    streamed_segmentation_table,
    table_rows,
)


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


def test_streamed_segmentation_table_equals_the_one_shot_table_on_an_imagenet_segmentation_file(tmp_path, tiny_cnn):
    """Chunks of 2 images through ImageNetSegmentation.resized give exactly the table of all maps at once."""
    import numpy as np
    from test_readers import _write_gtsegs

    from xaiimg.data.readers import ImageNetSegmentation

    rng = np.random.default_rng(0)
    items = []
    for index, (height, width) in enumerate([(20, 24), (16, 16), (30, 18), (17, 21), (22, 22)]):
        mask = np.zeros((height, width), np.uint8)
        mask[height // 4: 3 * height // 4, width // 3:] = 1
        items.append((rng.integers(0, 256, (height, width, 3), dtype=np.uint8), mask, f"n0000000{index}"))
    _write_gtsegs(tmp_path / "gtsegs_ijcv.mat", items)
    methods = {"grad-cam": {}, "gradient": {}}
    window = {"window": 8, "stride": 4, "smoothing_cutoff": 4}
    with ImageNetSegmentation(tmp_path / "gtsegs_ijcv.mat") as dataset:
        pairs = lambda index: dataset.resized(index, size=16)  # noqa: E731
        streamed, _ = streamed_segmentation_table(tiny_cnn, pairs, methods, count=5, enhance_params=window,
                                                  batch_size=2)
        images, masks = map(torch.stack, zip(*(pairs(index) for index in range(5))))
    x = tiny_cnn.spec.from_unit_range(images)
    maps = explain_methods(tiny_cnn, x, methods).maps
    enhanced = explain_methods(tiny_cnn, x, methods, enhance=True, enhance_params=window).maps
    maps.update({f"{method} + SW": enhanced[f"{method} + sliding-window"] for method in methods})
    one_shot, _ = segmentation_table(maps, masks)
    assert [row["method"] for row in streamed] == ["grad-cam", "gradient", "grad-cam + SW", "gradient + SW"]
    one_shot = {row["method"]: row for row in one_shot}
    for row in streamed:
        assert row == pytest.approx(one_shot[row["method"]], abs=1e-6)
    assert 0 < streamed[0]["pixel_accuracy"] < 1


def test_streamed_segmentation_table_needs_images(tiny_cnn):
    with pytest.raises(ValueError, match="count must be >= 1"):
        streamed_segmentation_table(tiny_cnn, lambda index: None, {"grad-cam": {}}, count=0)


def test_imagenet_subset_is_a_seeded_sample_in_dataset_order(tmp_path, tiny_cnn):
    import numpy as np
    from PIL import Image

    from xaiimg.data.readers import ImageNetVal

    root = tmp_path / "val"
    root.mkdir()
    for index in range(1, 7):
        Image.fromarray(np.full((20, 24, 3), 30 * index, np.uint8)).save(root / f"ILSVRC2012_val_{index:08d}.JPEG")
    (tmp_path / "val.txt").write_text("".join(f"ILSVRC2012_val_{i:08d}.JPEG {100 + i}\n" for i in range(1, 7)))
    dataset = ImageNetVal(root, tmp_path / "val.txt")
    x, labels = imagenet_subset(tiny_cnn, dataset, count=4, seed=3)
    chosen = sorted(torch.randperm(6, generator=torch.Generator().manual_seed(3))[:4].tolist())
    assert labels.tolist() == [101 + i for i in chosen]
    expected = torch.stack([tiny_cnn.spec.transform()(dataset[i][0]) for i in chosen])
    assert x.shape == (4, 3, 16, 16) and torch.equal(x, expected)
    assert imagenet_subset(tiny_cnn, dataset, count=10)[0].shape[0] == 6
    with pytest.raises(ValueError, match="count must be >= 1"):
        imagenet_subset(tiny_cnn, dataset, count=0)


def test_explain_methods_in_chunks_equals_one_batch(tiny_cnn):
    x = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    whole = explain_methods(tiny_cnn, x, {"grad-cam": {}, "gradient": {}}, target=[0, 1, 2, 3, 4])
    chunked = explain_methods(tiny_cnn, x, {"grad-cam": {}, "gradient": {}}, target=[0, 1, 2, 3, 4], chunk_size=2)
    assert all(torch.allclose(chunked.maps[m], whole.maps[m], atol=1e-6) for m in whole.maps)
    with pytest.raises(ValueError, match="chunk_size"):
        explain_methods(tiny_cnn, x, {"grad-cam": {}}, chunk_size=0)


def _noise_jpeg(path, width, height, seed):
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def voc_pointing(tmp_path):
    """Three VOC07-format images: a large dog and a small person (the person is a difficult entry: under a
    quarter of the image, with a distractor); a cat whose only box is PASCAL-difficult (left out); a small car
    alone (not difficult: no distractor)."""
    from test_readers import _voc_xml

    from xaiimg.data.readers import VOCDetection

    voc = tmp_path / "VOCdevkit" / "VOC2007"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "ImageSets" / "Main" / "test.txt").write_text("000001\n000002\n000003\n")
    objects = {"000001": (40, 30, [("dog", (1, 1, 30, 28), 0, 0), ("person", (31, 20, 38, 29), 0, 0)]),
               "000002": (24, 36, [("cat", (2, 2, 20, 30), 1, 0)]),
               "000003": (32, 32, [("car", (20, 20, 30, 30), 0, 0)])}
    for seed, (image_id, (width, height, boxes)) in enumerate(objects.items()):
        _noise_jpeg(voc / "JPEGImages" / f"{image_id}.jpg", width, height, seed)
        (voc / "Annotations" / f"{image_id}.xml").write_text(_voc_xml(width, height, boxes))
    return VOCDetection(tmp_path)


def rows_methods(rows):
    return [row["method"] for row in rows]


def test_streamed_pointing_game_on_voc_equals_per_entry_explanations(voc_pointing, make_tiny_cnn):
    """Every (image, class present) entry explained for its class on the whole (uncropped) image and scored at
    the image's size; all-difficult classes left out; difficult flags by Zhang et al.'s definition."""
    import xaiimg as xi
    from xaiimg.metrics import pointing_game
    from xaiimg.studies.thesis import class_regions, streamed_pointing_table, uncropped_input

    model = make_tiny_cnn(20)
    methods = {"grad-cam": {}, "gradient": {}}
    rows, results = streamed_pointing_table(model, voc_pointing, methods)
    dog, person, car = 11, 14, 6
    assert uncropped_input(model.spec, class_regions(voc_pointing, 0)[0]).shape == (1, 3, 16, 21)  # 40x30 image
    assert rows_methods(rows) == ["grad-cam", "gradient", "centre baseline"]
    for method in rows_methods(rows):
        result = results[(method, "torchray")]
        assert result.classes.tolist() == [dog, person, car]
        assert result.difficult.tolist() == [False, True, False]
        maps, masks = [], []
        for index in (0, 2):
            image, regions = class_regions(voc_pointing, index)
            x = uncropped_input(model.spec, image)
            for class_index, region in regions.items():
                maps.append(centre_baseline(1, tuple(x.shape[-2:]))[0, 0] if method == "centre baseline"
                            else xi.explain(method, model, x, target=class_index)[0, 0])
                masks.append(torch.from_numpy(region))
        for preset in ("torchray", "thesis-top100"):
            reference = pointing_game(maps, masks=masks, classes=[dog, person, car], preset=preset)
            assert torch.equal(results[(method, preset)].hits, reference.hits)
            row = next(r for r in rows if r["method"] == method)
            assert row[f"{preset} (%)"] == pytest.approx(100 * reference.summary()["accuracy"])
            assert row[f"{preset} difficult (%)"] == pytest.approx(100 * float(reference.hits[1]))


def test_streamed_pointing_game_on_coco_and_bad_settings(tmp_path, voc_pointing, make_tiny_cnn):
    """COCO: one entry per category present (union of its instances); a model whose classes are not the
    dataset's, an empty count and a non-pointing dataset are refused."""
    from test_readers import _coco_fixture

    from xaiimg.data.readers import COCOInstances
    from xaiimg.studies.thesis import streamed_pointing_table

    coco = COCOInstances(_coco_fixture(tmp_path)[0])
    rows, results = streamed_pointing_table(make_tiny_cnn(3), coco, {"grad-cam": {}}, presets=("torchray",))
    # category ids sorted: person (1) -> 0, car (3) -> 1, dog (18) -> 2; image 42 holds a person and dogs, 7 nothing
    assert results[("grad-cam", "torchray")].classes.tolist() == [0, 2]
    assert list(rows[0]) == ["method", "torchray (%)", "torchray difficult (%)"]
    assert rows_methods(rows) == ["grad-cam", "centre baseline"]
    with pytest.raises(ValueError, match="model has 3 classes but the dataset has 20"):
        streamed_pointing_table(make_tiny_cnn(3), voc_pointing, {"grad-cam": {}})
    with pytest.raises(ValueError, match="count must be >= 1"):
        streamed_pointing_table(make_tiny_cnn(20), voc_pointing, {"grad-cam": {}}, count=0)
    with pytest.raises(TypeError, match="VOCDetection or COCOInstances"):
        streamed_pointing_table(make_tiny_cnn(3), type("Folder", (), {"class_names": ["a", "b", "c"],
                                                                     "__len__": lambda self: 1})(),
                                {"grad-cam": {}})
