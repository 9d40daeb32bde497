"""The thesis's experiments as functions: notebooks 04-06 call these on maps from
:func:`xaiimg.compare.explain_methods`; tests check them on constructed cases.

Each ``*_table`` returns rows (one per method) ready for :func:`xaiimg.report.write_table`; the metric result
objects come along for curves and per-sample values.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from xaiimg.compare import build_explainer
from xaiimg.metrics import (
    MetricResult,
    PointingGame,
    SegmentationScores,
    insertion_deletion,
    max_sensitivity,
    model_randomisation,
    pointing_game,
    positive_negative_perturbation,
    segmentation_scores,
)
from xaiimg.ops import minmax_normalize

# TorchRay's published pointing-game accuracies (all / difficult), quoted in PROTOCOLS.md.
TORCHRAY_POINTING_REFERENCE = {
    ("grad-cam", "voc07", "vgg16"): (86.6, 74.0), ("grad-cam", "voc07", "resnet50"): (90.4, 82.3),
    ("grad-cam", "coco14", "vgg16"): (54.2, 49.0), ("grad-cam", "coco14", "resnet50"): (57.3, 52.3),
    ("centre", "voc07", None): (69.6, 42.4), ("centre", "coco14", None): (27.8, 19.5),
}


def table_rows(results: Mapping[str, MetricResult], extra: Mapping[str, Mapping[str, Any]] | None = None,
               scale: float = 1.0) -> list[dict[str, Any]]:
    """One row per method: ``method``, the result's summary scores (times ``scale``), then ``extra`` columns."""
    rows = []
    for method, result in results.items():
        row: dict[str, Any] = {"method": method}
        row.update({k: v * scale for k, v in result.summary().items()})
        row.update((extra or {}).get(method, {}))
        rows.append(row)
    return rows


def faithfulness_table(model, x: torch.Tensor, maps: Mapping[str, torch.Tensor], protocol: str = "thesis",
                       target=None, batch_size: int = 64):
    """Insertion/deletion AUC per method (thesis table 3-2: ``overall = ins - del``); rows and results. Measured
    times belong in :func:`xaiimg.report.write_timings`, not in the rows (they change on every run)."""
    results = {m: insertion_deletion(model, x, s, target=target, protocol=protocol, batch_size=batch_size)
               for m, s in maps.items()}
    return table_rows(results), results


def imagenet_subset(model, dataset, count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Model inputs ``[n,3,H,W]`` (``model.spec``'s preprocessing) and labels ``[n]`` of ``n = min(count, len)``
    images drawn without replacement by a seeded permutation of ``dataset``, in dataset order (``count >= len``: every
    image, as the thesis scores all 50,000 ImageNet val images)."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    chosen = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count].sort().values
    transform = model.spec.transform()
    images, labels = zip(*(dataset[int(index)] for index in chosen))
    return torch.stack([transform(image) for image in images]), torch.tensor(labels)


CENTRE = "centre baseline"


def centre_baseline(count: int, size: tuple[int, int], sigma_fraction: float = 0.25) -> torch.Tensor:
    """TorchRay's centre baseline: a Gaussian bump at the image centre, ``[count,1,H,W]`` in [0,1]."""
    height, width = size
    ys = torch.arange(height, dtype=torch.float64) - (height - 1) / 2
    xs = torch.arange(width, dtype=torch.float64) - (width - 1) / 2
    bump = torch.exp(-(ys[:, None] ** 2 / (2 * (sigma_fraction * height) ** 2)
                       + xs[None, :] ** 2 / (2 * (sigma_fraction * width) ** 2)))
    return bump.expand(count, 1, height, width).clone()


def pointing_table(maps: Mapping[str, torch.Tensor], masks: torch.Tensor, classes: Sequence[int],
                   presets: Sequence[str] = ("torchray", "thesis-top100"), tolerance: float = 15):
    """Pointing-game accuracy (%) per method and preset (thesis table 3-3); ``masks`` ``[n,H,W]`` per entry."""
    results = {(method, preset): pointing_game(saliency, masks=masks, classes=list(classes), preset=preset,
                                               tolerance=tolerance)
               for method, saliency in maps.items() for preset in presets}
    return pointing_rows(results, list(maps), presets), results


def pointing_rows(results: Mapping[tuple[str, str], Any], methods: Sequence[str], presets: Sequence[str],
                  difficult: bool = False) -> list[dict[str, Any]]:
    """One row per method: accuracy (%) per preset, and on the difficult subset too with ``difficult``."""
    rows = []
    for method in methods:
        row: dict[str, Any] = {"method": method}
        for preset in presets:
            summary = results[(method, preset)].summary()
            row[f"{preset} (%)"] = 100 * summary["accuracy"]
            if difficult:
                row[f"{preset} difficult (%)"] = 100 * summary["accuracy_difficult"]
        rows.append(row)
    return rows


def class_regions(dataset, index: int) -> tuple[Any, dict[int, Any]]:
    """``(PIL image, {class index: [H,W] bool region})`` of item ``index`` of a pointing-game dataset: VOC07
    (union of the class's boxes; classes whose boxes are all PASCAL-difficult are left out, as TorchRay does)
    or COCO (union of the class's instance masks)."""
    from xaiimg.data.readers import COCOInstances, VOCDetection

    if isinstance(dataset, VOCDetection):
        image, annotation = dataset[index]
        return image, {c: annotation.class_mask(c) for c in annotation.classes if not annotation.all_difficult(c)}
    if isinstance(dataset, COCOInstances):
        return dataset[index]
    raise TypeError(f"pointing game datasets are VOCDetection or COCOInstances, got {type(dataset).__name__}")


def is_difficult_entry(regions: Mapping[int, Any], class_index: int) -> bool:
    """The rule of Zhang et al. (2016, excitation backprop) for their difficult subset: the class's region covers
    less than a quarter of the image and another class is present (a distractor). TorchRay ships the resulting
    list of image/class pairs; that file is not available offline, so the rule stands in for it."""
    return float(regions[class_index].mean()) < 0.25 and len(regions) > 1


def uncropped_input(spec, image) -> torch.Tensor:
    """``[1,3,h,w]`` model input of the whole image: shorter side resized to ``spec.input_size`` (the model's
    interpolation), no crop, so the map covers every ground-truth pixel (TorchRay's benchmark transform)."""
    from xaiimg.data.images import to_rgb

    return spec.transform(crop=False)(to_rgb(image))[None]


def streamed_pointing_table(model, dataset, methods: Mapping[str, Mapping[str, Any]], count: int | None = None,
                            presets: Sequence[str] = ("torchray", "thesis-top100"), tolerance: float = 15):
    """Table 3-3 on VOC07 test or COCO val2014 (:class:`~xaiimg.data.readers.VOCDetection`,
    :class:`~xaiimg.data.readers.COCOInstances`) with a classifier trained on the dataset's classes (e.g.
    TorchRay's VGG16/ResNet50 weights through :func:`xaiimg.models.zoo.load_checkpoint_model`).

    Each of the first ``count`` images (all by default) is fed whole (:func:`uncropped_input`) and explained once
    per class present (:func:`class_regions`), for that class; each map is scored at the image's own size
    against the class's region, entries flagged by :func:`is_difficult_entry`. Rows: accuracy (%) per method
    and preset, all entries and the difficult subset, plus TorchRay's model-independent ``"centre baseline"``
    (:func:`centre_baseline`; TorchRay reports 69.6 / 42.4 on VOC07, 27.8 / 19.5 on COCO14, so this row checks
    the protocol even without a trained classifier); the :class:`PointingGameResult` objects come along.
    """
    num_classes = len(dataset.class_names)
    if len(model.spec.class_names) != num_classes:
        raise ValueError(f"the model has {len(model.spec.class_names)} classes but the dataset has {num_classes}; "
                         "the pointing game needs a classifier trained on the dataset's classes")
    count = len(dataset) if count is None else min(count, len(dataset))
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    explainers: dict[str, Callable] = {method: build_explainer(method, params) for method, params in methods.items()}
    explainers[CENTRE] = lambda _model, x, _target: centre_baseline(len(x), tuple(x.shape[-2:]))
    games = {(method, preset): PointingGame(preset=preset, tolerance=tolerance)
             for method in explainers for preset in presets}
    for index in range(count):
        image, regions = class_regions(dataset, index)
        if not regions:
            continue
        classes = list(regions)
        x = uncropped_input(model.spec, image).repeat(len(classes), 1, 1, 1)
        masks = [torch.from_numpy(regions[c]) for c in classes]
        difficult = [is_difficult_entry(regions, c) for c in classes]
        for method, explainer in explainers.items():
            saliency = explainer(model, x, torch.tensor(classes))
            for preset in presets:
                games[(method, preset)].update(saliency, masks=masks, classes=classes, difficult=difficult)
    results = {key: game.result() for key, game in games.items()}
    return pointing_rows(results, list(explainers), presets, difficult=True), results


def perturbation_table(model, x: torch.Tensor, maps: Mapping[str, torch.Tensor], labels=None,
                       batch_size: int = 64):
    """Positive/negative perturbation AUC per method, predicted and (with ``labels``) target class (table 4-2)."""
    rows, results = [], {}
    for method, saliency in maps.items():
        row: dict[str, Any] = {"method": method}
        for reference in ("predicted", "label") if labels is not None else ("predicted",):
            result = positive_negative_perturbation(model, x, saliency, labels=labels, reference=reference,
                                                    batch_size=batch_size)
            results[(method, reference)] = result
            row.update({f"{k} ({reference})": v for k, v in result.summary().items()})
        rows.append(row)
    return rows, results


def segmentation_table(maps: Mapping[str, torch.Tensor], masks: torch.Tensor):
    """Pixel accuracy, mIoU and mAP of mean-thresholded maps against ``masks`` ``[n,H,W]`` (table 4-4)."""
    results = {m: segmentation_scores(s, masks) for m, s in maps.items()}
    return table_rows(results), results


def streamed_segmentation_table(model, pairs, methods: Mapping[str, Mapping[str, Any]], count: int,
                                enhance_params: Mapping[str, Any] | None = None, batch_size: int = 16):
    """Table 4-4 on a dataset too large to hold its maps: ``pairs(index) -> (image [3,H,W] in [0,1], mask [H,W])``
    for ``index < count`` (e.g. :meth:`xaiimg.data.readers.ImageNetSegmentation.resized`, Chefer et al.'s
    Resize((224,224)) protocol). Each method explains the predicted class with and, when ``enhance_params`` is
    given, without the sliding-window enhancement (label ``"<method> + SW"``); the scores accumulate in a
    :class:`SegmentationScores` per label, ``batch_size`` images at a time."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    variants = {method: build_explainer(method, params, False, None) for method, params in methods.items()}
    if enhance_params is not None:
        variants.update({f"{method} + SW": build_explainer(method, params, True, enhance_params)
                         for method, params in methods.items()})
    scores = {label: SegmentationScores() for label in variants}
    for start in range(0, count, batch_size):
        images, masks = zip(*(pairs(index) for index in range(start, min(start + batch_size, count))))
        x = model.spec.from_unit_range(torch.stack(images))
        for label, explainer in variants.items():
            scores[label].update(explainer(model, x), torch.stack(masks))
    results = {label: accumulator.result() for label, accumulator in scores.items()}
    return table_rows(results), results


def edge_map(image01: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of the grey image: a model-independent "explanation" (sanity-check control)."""
    grey = image01.mean(dim=1, keepdim=True)
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=grey.dtype)
    gx = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), sobel.view(1, 1, 3, 3))
    gy = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), sobel.t().contiguous().view(1, 1, 3, 3))
    return minmax_normalize(torch.sqrt(gx**2 + gy**2))


def edge_explainer(model) -> Callable:
    """``f(model, x, targets)`` returning :func:`edge_map` of the image behind ``x`` (ignores the model)."""
    to_unit = model.spec.to_unit_range
    return lambda _model, x, _targets: edge_map(to_unit(x))


def sanity_results(model, x: torch.Tensor, methods: Mapping[str, Mapping[str, Any]], mode: str = "cascading",
                   target=None, layers: Sequence[str] | None = None, seed: int = 0,
                   with_edge_control: bool = True) -> dict[str, MetricResult]:
    """Model-randomisation similarities per method (thesis fig. 3-6), plus the edge-detector control."""
    results = {method: model_randomisation(model, build_explainer(method, params), x, target=target, mode=mode,
                                           layers=layers, seed=seed)
               for method, params in methods.items()}
    if with_edge_control:
        results["edge detector (control)"] = model_randomisation(model, edge_explainer(model), x, target=target,
                                                                 mode=mode, layers=layers, seed=seed)
    return results


def stability_table(model, x: torch.Tensor, methods: Mapping[str, Mapping[str, Any]], radius: float = 0.02,
                    samples: int = 5, seed: int = 0, attack: str | None = None):
    """Max-sensitivity (Yeh et al. 2019; lower is more stable) per method under uniform L-inf noise of ``radius``."""
    results = {method: max_sensitivity(build_explainer(method, params), model, x, radius=radius, samples=samples,
                                       seed=seed, attack=attack)
               for method, params in methods.items()}
    return table_rows(results), results


def setting_differences(profile: str, model_name: str, num_images: int, paper: Mapping[str, Any]) -> list[str]:
    """Sentences stating where this run's setting differs from the paper's (computed from the parameters)."""
    lines = []
    if model_name != paper["model"]:
        lines.append(f"model: {model_name} here, {paper['model']} in the paper")
    if num_images != paper["images"]:
        lines.append(f"images: {num_images} here, {paper['images']} in the paper ({paper['data']})")
    if profile != "full":
        lines.append(f"profile '{profile}': offline sample images and synthetic ground truth stand in for "
                     f"{paper['data']}")
    return lines
