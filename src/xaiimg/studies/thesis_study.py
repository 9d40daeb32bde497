"""The thesis's claims (chapters 3-4) measured with n, 95% intervals, paired tests and controls.

``run_thesis_study(config, results_dir)`` writes ``results_dir/thesis_study/*.json|csv`` (per-item values and their
summaries) and ``results_dir/claims/thesis.json`` (one :class:`~xaiimg.studies.reproduction.Claim` per claim), from
which ``xaiimg reproduction`` renders docs/REPRODUCTION.md. Parts:

- **photos** (table 3-2 and the enhancement on photographs): EfficientNet-Lite0 with its ImageNet weights on the 20
  labelled ImageNet validation images of the ``foolbox`` wheel (or any labelled folder). The CAM family at the
  14x14 layer ``blocks.4`` (docs/PROTOCOLS.md: the analogue of VGG19's conv5_4) and at ``bn2`` (where Grad-CAM,
  XGrad-CAM and CAM coincide); insertion/deletion (thesis preset) and Chefer's positive/negative perturbation per
  image; MSG-CAM ablations (keep rule, upsampling, alpha score, scale range) and its kept-scale histogram; the
  sliding window's fusions and controls.
- **photos_second_model**: the same on ``second_model`` (EfficientNet-Lite2, ImageNet weights, 260 px) at
  ``second_model_layer``, without MSG-CAM's ablations and the step check: does the photographs' verdict depend on
  the model?
- **layers**: at ``bn2`` the target's gradient is constant over positions, so Grad-CAM == XGrad-CAM == CAM up to
  rounding; at ``blocks.4`` it is not (the spread and the two maps' difference per photograph; ``study.json``'s
  ``layer_check`` holds the largest of each).
- **pointing** (table 3-3, "finer detail"): the synthetic CNN on two-object scenes with exact masks, every object
  explained for its class: pointing game (TorchRay, 15 px) and the energy-based pointing game.
- **enhancement** (tables 4-2, 4-4, fig. 4-4): the sliding window around CNN and ViT methods on single-object
  scenes placed uniformly, and around ``control_methods`` (Grad-CAM) also on centred and on small objects;
  fusions ``literal`` (eq. 4-8), ``normalised``, ``windows``; controls
  (a centre-prior map, the window-coverage count alone, ``S0`` x coverage); a D0 sweep; segmentation (per-image
  mIoU), energy pointing, boundary F-score, positive/negative perturbation.
- **discrimination** (fig. 4-5): on two-object scenes, the share of map energy on the explained class's object
  minus the share on the other object, with and without the enhancement.
- **sanity** (fig. 3-6): cascading and independent parameter randomisation of the synthetic CNN.

Every deviation from the thesis's literal setting is a named field of :class:`ThesisStudyConfig` and is reported
in the claim notes; ``insertion_step_factor`` (the thesis preset's 0.89% step times this factor) is the one cost
deviation, with the ablation "factor 1 vs factor k" measured on ``step_check_images`` photographs.
"""
from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from xaiimg.data.images import ImageFolder, foolbox_imagenet_samples
from xaiimg.data.synthetic import SyntheticBenchmark
from xaiimg.methods import get_method
from xaiimg.methods.sliding_window import SlidingWindow
from xaiimg.metrics.detail import boundary_f_score, energy_pointing_game
from xaiimg.metrics.faithfulness import InsertionDeletionProtocol, get_protocol, insertion_deletion
from xaiimg.metrics.localisation import per_image_segmentation_iou, pointing_game
from xaiimg.metrics.perturbation import positive_negative_perturbation
from xaiimg.metrics.sanity import model_randomisation
from xaiimg.models.zoo import load_model
from xaiimg.nn import LayerPass, activations_and_gradients
from xaiimg.ops import minmax_normalize
from xaiimg.report import to_json, write_atomic
from xaiimg.stats import Estimate, bootstrap_mean, paired_bootstrap, paired_difference, sign_flip_test
from xaiimg.studies.reproduction import Claim, measured_claim, untestable_claim, write_claims
from xaiimg.studies.synthetic import synthetic_model
from xaiimg.studies.thesis import centre_baseline

PAPER = "thesis"
CAM_BASELINES = ("grad-cam", "grad-cam++", "xgrad-cam", "score-cam", "group-cam", "cameras")
MSG_CAM_LITERAL = {"image_mode": "bilinear", "alpha_score": "logit", "keep_scales": "top1"}
MSG_CAM_ABLATIONS = {"keep all scales": {"keep_scales": "all"}, "bicubic": {"image_mode": "bicubic"},
                     "softmax alpha": {"alpha_score": "probability"}, "scales to 1.5x": {"zeta_max": 128}}
CONTROLS = ("centre prior", "coverage", "S0 x coverage")
PART_NAMES = ("photos", "photos_second_model", "layers", "pointing", "enhancement", "enhancement_vit", "discrimination",
              "sanity")
FUSIONS = ("literal", "normalised", "windows")


@dataclass
class ThesisStudyConfig:
    """The study's settings; the defaults are the committed (default-profile) run.

    ``photos``: ``"foolbox"`` (the 20 labelled images of the foolbox wheel) or a folder with ``labels.csv``
    (``ImageFolder(photos/images, photos/labels.csv)`` layout of ../shared/data/imagenet-samples).
    ``insertion_step_factor``: pixels per insertion/deletion step = the thesis's 448 x factor (a cost deviation;
    ``step_check_images`` photographs are scored at factor 1 too and the difference is reported).
    ``second_model`` / ``second_model_layer``: the second ImageNet model of the photographs part and its
    thesis-analogous layer (EfficientNet-Lite2's ``blocks.4``: stride 16, 17x17 at 260 px, like Lite0's 14x14).
    ``window``: the enhancement's parameters on photographs (the thesis's 96/32, D0 = 35); ``synthetic_window`` on
    the synthetic scenes (same; the scenes are 224 px like the photographs). ``msg_cam`` / ``cameras``: parameters
    laid over MSG-CAM's literal settings and CAMERAS's defaults (empty in the study; tests use fewer scales).
    """

    photos: str = "foolbox"
    photo_count: int = 20
    model: str = "efficientnet_lite0"
    layer: str = "blocks.4"
    gap_layer: str = "bn2"
    second_model: str = "efficientnet_lite2"
    second_model_layer: str = "blocks.4"
    insertion_step_factor: int = 8
    step_check_images: int = 2
    window: dict = field(default_factory=lambda: {"window": 96, "stride": 32, "smoothing_cutoff": 35})
    synthetic_window: dict = field(default_factory=lambda: {"window": 96, "stride": 32, "smoothing_cutoff": 35})
    cutoffs: tuple = (10, 20, 35, 50, None)
    synthetic_dir: str = "artifacts/synthetic"
    scenes: int = 500
    pointing_scenes: int = 250
    discrimination_scenes: int = 250
    sanity_scenes: int = 500
    small_scale: tuple = (0.06, 0.12)
    cnn_methods: dict = field(default_factory=lambda: {"grad-cam": {}, "gradient": {}, "lrp": {}})
    vit_methods: dict = field(default_factory=lambda: {"transformer-attribution": {}, "attention-rollout": {},
                                                        "attention-grad-cam": {}, "partial-lrp": {}})
    control_methods: tuple = ("grad-cam",)
    msg_cam: dict = field(default_factory=dict)
    cameras: dict = field(default_factory=dict)
    batch_size: int = 32
    seed: int = 0
    parts: tuple = PART_NAMES

    def __post_init__(self):
        unknown = sorted(set(self.parts) - set(PART_NAMES))
        if unknown:
            raise ValueError(f"unknown study parts {unknown}")
        for name in ("photo_count", "insertion_step_factor", "scenes", "pointing_scenes", "discrimination_scenes",
                     "sanity_scenes", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        self.cutoffs, self.small_scale, self.parts = tuple(self.cutoffs), tuple(self.small_scale), tuple(self.parts)
        self.control_methods = tuple(self.control_methods)


# ------------------------------------------------------------------------------------------------ values
def per_item_summary(values: Mapping[str, Sequence[float]], seed: int = 0) -> dict[str, dict]:
    """``{method: {n, mean, ci_low, ci_high}}`` from per-item values aligned across methods (paired bootstrap)."""
    return {name: estimate.as_row(4) for name, estimate in paired_bootstrap(values, seed=seed).items()}


def _rows(table: str, metric: str, values: Mapping[str, Sequence[float]], **extra) -> list[dict]:
    return [{"table": table, "metric": metric, "method": method, **extra, **row}
            for method, row in per_item_summary(values).items()]


def per_image_miou(maps: torch.Tensor, masks: torch.Tensor) -> list[float]:
    """Each image's mean of foreground and background IoU of its mean-thresholded map (Chefer et al.'s
    segmentation test, pooled over one image; batched by :func:`per_image_segmentation_iou`)."""
    return per_image_segmentation_iou(maps, masks).mean(1).tolist()


def localisation_values(maps: torch.Tensor, masks: torch.Tensor) -> dict[str, list[float]]:
    """Per-item pointing hit (TorchRay, 15 px), energy inside the mask, mIoU and boundary F-score."""
    classes = torch.zeros(len(maps), dtype=torch.long)
    return {"pointing": pointing_game(maps, masks=masks, classes=classes).hits.double().tolist(),
            "energy_pointing": energy_pointing_game(maps, masks).energy_inside.tolist(),
            "miou": per_image_miou(maps, masks),
            "boundary_f": boundary_f_score(maps, masks).f_score.tolist()}


def explain_in_chunks(explainer, model: nn.Module, x: torch.Tensor, targets: torch.Tensor, chunk: int
                      ) -> tuple[torch.Tensor, list[int] | None]:
    """``explainer``'s maps of ``x``, ``chunk`` images at a time (bounds memory), and for MSG-CAM the number of
    scales each image kept (``last_kept_scales``; ``None`` for other methods)."""
    maps, kept = [], []
    for start in range(0, len(x), chunk):
        maps.append(explainer(model, x[start:start + chunk], target=targets[start:start + chunk]).detach())
        if getattr(explainer, "last_kept_scales", None) is not None:
            kept += explainer.last_kept_scales.sum(1).tolist()
    return torch.cat(maps), kept or None


def enhancement_maps(sliding: SlidingWindow, model: nn.Module, x: torch.Tensor, targets: torch.Tensor,
                     chunk: int, cutoffs: Sequence[float | None] = ()) -> dict[str, torch.Tensor]:
    """The wrapped method's plain map, the fusions of eq. 4-8 (``literal`` and its ablations), the controls and
    the literal fusion at each D0 in ``cutoffs``; each min-max normalised like ``Explainer.__call__``.

    Controls (no window explained): ``centre prior`` (TorchRay's centre Gaussian), ``coverage`` (the number of
    windows covering each pixel, the weight eq. 4-8 gives ``S0``), ``S0 x coverage`` (fusion ``s0-coverage``)."""
    parts = [sliding.components(model, x[start:start + chunk], targets[start:start + chunk])
             for start in range(0, len(x), chunk)]
    full_maps = torch.cat([full for full, _ in parts])
    window_sum = torch.cat([windows for _, windows in parts])
    size = tuple(x.shape[-2:])
    maps = {"plain": minmax_normalize(full_maps)}
    maps.update({fusion: minmax_normalize(sliding.fuse(full_maps, window_sum, fusion)) for fusion in FUSIONS})
    maps["centre prior"] = centre_baseline(len(x), size).to(full_maps)
    maps["coverage"] = minmax_normalize(sliding.coverage(*size).to(full_maps).expand(len(x), 1, *size).clone())
    maps["S0 x coverage"] = minmax_normalize(sliding.fuse(full_maps, window_sum, "s0-coverage"))
    for cutoff in cutoffs:
        maps[f"literal D0={cutoff}"] = minmax_normalize(sliding.fuse(full_maps, window_sum, "literal", cutoff))
    return maps


# ------------------------------------------------------------------------------------------------ photos
def load_photos(model: nn.Module, source: str, count: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``(inputs, labels, description)`` of the first ``count`` labelled photographs of ``source``."""
    if source == "foolbox":
        folder, description = foolbox_imagenet_samples(), "ImageNet val images shipped in the foolbox wheel"
    else:
        root = Path(source)
        folder, description = ImageFolder(root / "images", root / "labels.csv"), f"labelled folder {root.name}"
    if len(folder) < count:
        raise ValueError(f"{source}: {len(folder)} labelled images, the study asks for {count}")
    images, labels = zip(*(folder[i] for i in range(count)))
    if any(label is None for label in labels):
        raise ValueError(f"{source}: every photograph needs a label")
    return model.preprocess(list(images)), torch.tensor(labels), description


def step_protocol(factor: int) -> InsertionDeletionProtocol:
    """The thesis preset with ``factor`` times its pixels per step (factor 1 is the preset itself)."""
    thesis = get_protocol("thesis")
    return InsertionDeletionProtocol(f"thesis x{factor}" if factor != 1 else "thesis", thesis.insertion_canvas,
                                     thesis.deletion_canvas, step_fraction=thesis.step_fraction * factor)


def photo_methods(config: ThesisStudyConfig, layer: str | None = None, ablations: bool = True
                  ) -> dict[str, tuple[str, dict]]:
    """Registry name and parameters of every map scored on the photographs (label -> (method, params)): the CAM
    family and MSG-CAM at ``layer`` (default ``config.layer``), MSG-CAM's ablations when ``ablations``, and
    Grad-CAM and MSG-CAM at ``config.gap_layer``."""
    layer, gap = layer or config.layer, config.gap_layer
    msg_cam = {**MSG_CAM_LITERAL, **config.msg_cam}
    methods = {f"{name} @{layer}": (name, {"layer": layer}) for name in CAM_BASELINES}
    methods[f"cameras @{layer}"] = ("cameras", {"layer": layer, **config.cameras})
    methods[f"msg-cam @{layer}"] = ("msg-cam", {"layer": layer, **msg_cam})
    for label, change in MSG_CAM_ABLATIONS.items() if ablations else ():
        methods[f"msg-cam @{layer} ({label})"] = ("msg-cam", {"layer": layer, **msg_cam, **change})
    methods[f"grad-cam @{gap}"] = ("grad-cam", {"layer": gap})
    methods[f"msg-cam @{gap}"] = ("msg-cam", {"layer": gap, **msg_cam})
    return methods


def photos_part(config: ThesisStudyConfig, log, model_name: str | None = None, layer: str | None = None,
                ablations: bool = True) -> dict:
    """Table 3-2 and the enhancement on the labelled photographs for ``model_name`` (default ``config.model``) at
    ``layer`` (default ``config.layer``); MSG-CAM's ablations and the step check only when ``ablations``."""
    model_name, layer = model_name or config.model, layer or config.layer
    model = load_model(model_name)
    x, labels, description = load_photos(model, config.photos, config.photo_count)
    with torch.no_grad():
        top1 = model(x).argmax(1)
    maps, kept = {}, {}
    for label, (name, params) in photo_methods(config, layer, ablations).items():
        maps[label], kept_scales = explain_in_chunks(get_method(name, **params), model, x, labels, 4)
        if kept_scales is not None:
            kept[label] = kept_scales
        log(f"photos ({model_name}): {label}")
    sliding = SlidingWindow(get_method("grad-cam", layer=layer), **config.window)
    enhanced = enhancement_maps(sliding, model, x, labels, 4)
    enhanced = {f"grad-cam @{layer} + SW {name}": value for name, value in enhanced.items() if name != "plain"}
    log(f"photos ({model_name}): sliding window")
    protocol = step_protocol(config.insertion_step_factor)
    scored = {**maps, f"grad-cam @{layer} + SW literal": enhanced[f"grad-cam @{layer} + SW literal"]}
    faithfulness = {label: insertion_deletion(model, x, saliency, target=labels, protocol=protocol,
                                              batch_size=config.batch_size) for label, saliency in scored.items()}
    perturbed = {f"grad-cam @{layer}": maps[f"grad-cam @{layer}"], **enhanced}
    perturbation = {label: positive_negative_perturbation(model, x, saliency, labels=labels, reference="label",
                                                          batch_size=config.batch_size).per_sample()
                    for label, saliency in perturbed.items()}
    check = min(config.step_check_images, len(x)) if ablations else 0
    checked = (f"grad-cam @{layer}", f"msg-cam @{layer}") if check else ()
    literal_step = {label: insertion_deletion(model, x[:check], maps[label][:check], target=labels[:check],
                                              protocol="thesis", batch_size=config.batch_size).overall.tolist()
                    for label in checked}
    log(f"photos ({model_name}): scored")
    return {"model": model_name, "data": f"{len(x)} {description}", "n": len(x),
            "top1_correct": int((top1 == labels).sum()), "labels": labels.tolist(),
            "protocol": {"name": protocol.name, "pixels_per_step": protocol.pixels_per_step(x.shape[-1] ** 2)},
            "insertion": {k: r.insertion_auc.tolist() for k, r in faithfulness.items()},
            "deletion": {k: r.deletion_auc.tolist() for k, r in faithfulness.items()},
            "overall": {k: r.overall.tolist() for k, r in faithfulness.items()},
            "perturbation_overall": {k: v["overall"] for k, v in perturbation.items()},
            "step_check": {"images": check, "literal": literal_step,
                           "coarse": {k: faithfulness[k].overall[:check].tolist() for k in literal_step}},
            "kept_scales": kept}


def photos_second_model_part(config: ThesisStudyConfig, log) -> dict:
    """:func:`photos_part` on ``config.second_model`` at ``config.second_model_layer`` (no ablations)."""
    return photos_part(config, log, config.second_model, config.second_model_layer, ablations=False)


def gradient_spatial_spread(layer_pass: LayerPass) -> torch.Tensor:
    """Per sample ``max_c (max_hw g - min_hw g) / max |g|``: 0 when every channel's gradient ``g = dy_t/dA`` is
    constant over the positions (a layer that global average pooling feeds straight to a linear classifier)."""
    g = layer_pass.gradients.flatten(2)
    spread = (g.amax(-1) - g.amin(-1)).amax(-1)
    return spread / g.abs().flatten(1).amax(-1).clamp_min(torch.finfo(g.dtype).tiny)


def relative_map_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per sample ``max |a - b| / max(|a|, |b|)`` (0: the same map up to rounding; 1: nothing in common)."""
    scale = torch.maximum(a.abs().flatten(1).amax(-1), b.abs().flatten(1).amax(-1))
    return (a - b).abs().flatten(1).amax(-1) / scale.clamp_min(torch.finfo(a.dtype).tiny)


def layers_part(config: ThesisStudyConfig, log) -> dict:
    """Why the CAM family is evaluated at the 14x14 layer as well as at the GAP layer: per photograph, the spatial
    spread of the target's gradient and the relative difference of Grad-CAM (eq. 2-4 weights: the mean gradient)
    and XGrad-CAM (activation-weighted gradient) at ``gap_layer`` and at ``layer``."""
    model = load_model(config.model)
    x, labels, description = load_photos(model, config.photos, config.photo_count)
    layers = {}
    for layer in (config.gap_layer, config.layer):
        spread = gradient_spatial_spread(activations_and_gradients(model, x, layer, labels))
        difference = relative_map_difference(get_method("grad-cam", layer=layer)(model, x, target=labels),
                                             get_method("xgrad-cam", layer=layer)(model, x, target=labels))
        layers[layer] = {"gradient_spatial_spread": spread.tolist(), "grad_cam_vs_xgrad_cam": difference.tolist()}
        log(f"layers: {layer}")
    return {"model": config.model, "data": f"{len(x)} {description}", "n": len(x), "layers": layers}


# --------------------------------------------------------------------------------------------- synthetic
def study_scenes(model, n: int, multi_object: bool = False, placement: str = "uniform", scale: tuple | None = None,
                 start: int = 0):
    """``n`` held-out scenes (``split="test"``, from index ``start``) of the benchmark ``model`` was trained on,
    with its objects placed by ``placement`` and, when given, sized by ``scale``."""
    benchmark = dict(model.synthetic_config["benchmark"], placement=placement)
    if scale is not None:
        benchmark["scale"] = list(scale)
    return SyntheticBenchmark(**benchmark).generate(n, multi_object=multi_object, split="test", start=start)


def pointing_part(config: ThesisStudyConfig, log) -> dict:
    cnn = synthetic_model(config.synthetic_dir, "cnn")
    scenes = study_scenes(cnn, config.pointing_scenes, multi_object=True)
    x = cnn.spec.from_unit_range(scenes.images.float())
    targets = scenes.labels.T.reshape(-1)            # every scene's first objects, then its second ones
    inputs = x.repeat(2, 1, 1, 1)
    masks = torch.cat([scenes.masks[:, slot] for slot in range(2)])
    values: dict[str, dict[str, list[float]]] = {}
    methods = {name: (name, {}) for name in CAM_BASELINES}
    methods["cameras"] = ("cameras", dict(config.cameras))
    methods["msg-cam"] = ("msg-cam", {**MSG_CAM_LITERAL, **config.msg_cam})
    for label, (name, params) in methods.items():
        maps, _ = explain_in_chunks(get_method(name, **params), cnn, inputs, targets, config.batch_size)
        for metric, per_item in localisation_values(maps, masks).items():
            values.setdefault(metric, {})[label] = per_item
        log(f"pointing: {label}")
    centre = centre_baseline(len(masks), tuple(masks.shape[-2:]))
    for metric, per_item in localisation_values(centre, masks).items():
        values[metric]["centre prior"] = per_item
    area = masks.double().mean(dim=(1, 2)).tolist()
    return {"model": "synthetic CNN", "data": f"{len(scenes)} two-object synthetic scenes ({len(masks)} objects)",
            "n": len(masks), "values": values, "mask_area": area}


ENHANCEMENT_SETS = {"uniform": {}, "centred": {"placement": "centred"}, "small": "small_scale"}


def _enhancement_runs(config: ThesisStudyConfig, kind: str, methods: Mapping[str, dict], sets: Sequence[str],
                      log) -> dict:
    """The enhancement scored per scene for ``methods`` on the synthetic ``kind`` model and the scene ``sets``."""
    model = synthetic_model(config.synthetic_dir, kind)
    model_name = kind.upper() if kind == "cnn" else "ViT"
    runs = {}
    for set_name in sets:
        options = ENHANCEMENT_SETS[set_name]
        options = {"scale": config.small_scale} if options == "small_scale" else options
        scenes = study_scenes(model, config.scenes, **options)
        x = model.spec.from_unit_range(scenes.images.float())
        targets, masks = scenes.targets, scenes.class_masks(scenes.targets)
        chosen = methods if set_name == "uniform" else {name: params for name, params in methods.items()
                                                        if name in config.control_methods}
        for method, params in chosen.items():
            sliding = SlidingWindow(get_method(method, **params), **config.synthetic_window)
            maps = enhancement_maps(sliding, model, x, targets, config.batch_size,
                                    config.cutoffs if set_name == "uniform" else ())
            values: dict[str, dict[str, list[float]]] = {}
            for variant, saliency in maps.items():
                for metric, per_item in localisation_values(saliency, masks).items():
                    values.setdefault(metric, {})[variant] = per_item
            if set_name == "uniform":
                values["perturbation_overall"] = {
                    variant: positive_negative_perturbation(model, x, saliency, labels=targets, reference="label",
                                                            batch_size=config.batch_size).per_sample()["overall"]
                    for variant, saliency in maps.items() if not variant.startswith("literal D0")}
            runs[f"{set_name}/{model_name}/{method}"] = {"set": set_name, "model": model_name, "method": method,
                                                         "n": len(x), "values": values}
            log(f"enhancement: {set_name} {model_name} {method}")
    return runs


def enhancement_part(config: ThesisStudyConfig, log) -> dict:
    """The synthetic CNN: ``cnn_methods`` on uniform scenes, ``control_methods`` also on centred and small ones."""
    return {"sets": list(ENHANCEMENT_SETS), "runs": _enhancement_runs(config, "cnn", config.cnn_methods,
                                                                      list(ENHANCEMENT_SETS), log)}


def enhancement_vit_part(config: ThesisStudyConfig, log) -> dict:
    """The synthetic ViT (table 4-2's transformer rows): ``vit_methods`` on uniform scenes."""
    return {"sets": ["uniform"], "runs": _enhancement_runs(config, "vit", config.vit_methods, ["uniform"], log)}


def discrimination_part(config: ThesisStudyConfig, log) -> dict:
    cnn = synthetic_model(config.synthetic_dir, "cnn")
    scenes = study_scenes(cnn, config.discrimination_scenes, multi_object=True, start=config.pointing_scenes)
    x = cnn.spec.from_unit_range(scenes.images.float())
    inputs, targets = x.repeat(2, 1, 1, 1), scenes.labels.T.reshape(-1)
    own = torch.cat([scenes.masks[:, slot] for slot in range(2)])
    other = torch.cat([scenes.masks[:, 1 - slot] for slot in range(2)])
    values = {}
    for method in ("grad-cam", "lrp"):
        sliding = SlidingWindow(get_method(method), **config.synthetic_window)
        maps = enhancement_maps(sliding, cnn, inputs, targets, config.batch_size)
        for variant in ("plain", "literal", "normalised"):
            margin = (energy_pointing_game(maps[variant], own).energy_inside
                      - energy_pointing_game(maps[variant], other).energy_inside)
            values[f"{method} {variant}"] = margin.tolist()
        log(f"discrimination: {method}")
    return {"model": "synthetic CNN", "n": len(inputs),
            "data": f"{len(scenes)} two-object synthetic scenes, each object explained", "margin": values}


def sanity_part(config: ThesisStudyConfig, log) -> dict:
    cnn = synthetic_model(config.synthetic_dir, "cnn")
    scenes = study_scenes(cnn, config.sanity_scenes, start=config.scenes)
    x = cnn.spec.from_unit_range(scenes.images.float())
    out = {}
    for method, params in {"grad-cam": {}, "group-cam": {}, "msg-cam": {**MSG_CAM_LITERAL, **config.msg_cam}}.items():
        for mode in ("cascading", "independent"):
            result = model_randomisation(cnn, get_method(method, **params), x, target=scenes.targets, mode=mode,
                                         seed=config.seed)
            out[f"{method}/{mode}"] = {"layers": result.layers, "spearman": result.spearman.tolist(),
                                       "ssim": result.ssim.tolist(),
                                       "flat_maps": int(result.spearman.isnan().sum())}
        log(f"sanity: {method}")
    return {"model": "synthetic CNN", "n": len(x), "data": f"{len(x)} synthetic scenes", "runs": out}


# ------------------------------------------------------------------------------------------------ claims
def _undefined_as_zero(correlations: Sequence[float | None]) -> list[float]:
    """Spearman correlations with the undefined ones (a flat randomised map has no ranking; stored as null) read as
    0: a flat map keeps none of the original map's ordering."""
    return [0.0 if value is None or not math.isfinite(value) else float(value) for value in correlations]


def _difference(values: Mapping[str, Sequence[float]], a: str, b: str, seed: int = 0) -> Estimate:
    return paired_difference(values[a], values[b], seed=seed)


def photo_claims(photos: dict, config: ThesisStudyConfig, layer: str | None = None, second_model: bool = False
                 ) -> list[Claim]:
    """Table 3-2 (MSG-CAM against each CAM baseline), MSG-CAM's kept scales and the enhancement on photographs;
    with ``second_model`` the claims of the second ImageNet model (ids end in ``/second-model``)."""
    layer, overall = layer or config.layer, photos["overall"]
    model, data = f"{photos['model']} (ImageNet weights), layer {layer}", photos["data"]
    step = photos["protocol"]["pixels_per_step"]
    suffix, where_suffix = ("/second-model", " (second model)") if second_model else ("", "")
    claims = []
    for baseline in CAM_BASELINES:
        a, b = f"msg-cam @{layer}", f"{baseline} @{layer}"
        estimate = _difference(overall, a, b)
        claims.append(measured_claim(
            f"thesis/table3-2/msg-cam-vs-{baseline}{suffix}", PAPER, f"Table 3-2{where_suffix}",
            f"MSG-CAM has a higher overall insertion-deletion AUC than {baseline}",
            "MSG-CAM best overall on ImageNet val (VGG19, 50,000 images)",
            "per-image overall AUC(ins)-AUC(del), MSG-CAM minus baseline", model, data, estimate, "greater",
            note=f"thesis preset with {step} px per step (x{config.insertion_step_factor}); "
                 f"sign-flip p = {sign_flip_test(overall[a], overall[b]):.3g}"))
    literal = photos["step_check"]
    if literal["images"]:
        worst = max(abs(x - y) for k in literal["literal"] for x, y in zip(literal["literal"][k], literal["coarse"][k]))
        claims[0] = Claim(**{**asdict(claims[0]), "details": {"step_check_max_abs_difference": worst,
                                                               "step_check_images": literal["images"]}})
    kept = photos["kept_scales"].get(f"msg-cam @{layer}", [])
    if kept:
        fallback = [1.0 if count <= 1 else 0.0 for count in kept]
        estimate = bootstrap_mean(fallback)
        claims.append(measured_claim(
            f"thesis/sec3-2/msg-cam-scales-kept{suffix}", PAPER, f"Sec. 3.2, Algorithm 1{where_suffix}",
            "upscaled inputs keep the class, so MSG-CAM fuses several scales",
            "multi-scale fusion (no number given)", "share of images where MSG-CAM keeps only the original scale",
            model, data, estimate, "less", null=0.5,
            note=f"kept scales per image (of 8): {kept}"))
    plain, literal_sw = f"grad-cam @{layer}", f"grad-cam @{layer} + SW literal"
    for metric, where, text in (("perturbation_overall", "Table 4-2", "positive/negative perturbation overall"),
                                ("overall", "Table 4-2 (as insertion/deletion)", "insertion-deletion overall")):
        estimate = _difference(photos[metric], literal_sw, plain)
        claims.append(measured_claim(
            f"thesis/{where.split()[1].lower()}/sw-photos-{metric}{suffix}", PAPER, f"{where}{where_suffix}",
            f"the sliding-window enhancement improves Grad-CAM's {text} on photographs",
            "gains for every wrapped method (VGG19 / ViT-B on ImageNet)",
            f"per-image {text}, Grad-CAM + SW (eq. 4-8) minus Grad-CAM", model, data, estimate, "greater"))
    return claims


def pointing_claims(pointing: dict) -> list[Claim]:
    values, claims = pointing["values"], []
    for baseline in ("grad-cam", "group-cam", "score-cam", "cameras"):
        for metric, where, text in (("pointing", "Table 3-3", "pointing-game hit rate"),
                                    ("energy_pointing", "Sec. 3.3.5 (finer detail)", "energy inside the object")):
            estimate = _difference(values[metric], "msg-cam", baseline)
            claims.append(measured_claim(
                f"thesis/{'table3-3' if metric == 'pointing' else 'detail'}/msg-cam-vs-{baseline}", PAPER, where,
                f"MSG-CAM localises better than {baseline} ({text})",
                "MSG-CAM highest pointing accuracy (VOC07, COCO14)", f"per-object {text}, MSG-CAM minus {baseline}",
                pointing["model"], pointing["data"], estimate, "greater"))
    return claims


def enhancement_claims(enhancement: dict) -> list[Claim]:
    claims = []
    for key, run in enhancement["runs"].items():
        if run["set"] == "small":
            estimate = _difference(run["values"]["energy_pointing"], "literal", "plain")
            claims.append(measured_claim(
                f"thesis/ch4/sw-small-objects-{run['method']}", PAPER, "Ch. 4 (finer detail)",
                f"the enhancement concentrates {run['method']}'s map on small objects", "higher-resolution maps",
                f"per-scene energy inside the object, {run['method']} + SW (eq. 4-8) minus {run['method']}",
                f"synthetic {run['model']}", f"{run['n']} synthetic scenes, small objects placed uniformly",
                estimate, "greater"))
        if run["set"] != "uniform":
            continue
        values, model, method = run["values"], run["model"], run["method"]
        data = f"{run['n']} synthetic scenes, objects placed uniformly"
        for metric, where, text in (("miou", "Table 4-4", "segmentation mIoU"),
                                    ("perturbation_overall", "Table 4-2", "perturbation overall AUC"),
                                    ("boundary_f", "Ch. 4 (finer detail)", "boundary F-score")):
            estimate = _difference(values[metric], "literal", "plain")
            centred = enhancement["runs"].get(f"centred/{model}/{method}")
            note = ""
            if centred is not None and metric == "miou":
                gain = _difference(centred["values"]["miou"], "literal", "plain")
                control = _difference(centred["values"]["miou"], "S0 x coverage", "plain")
                note = (f"centred objects: SW gain {gain.mean:+.3f} [{gain.low:+.3f}, {gain.high:+.3f}], "
                        f"centre weighting alone (S0 x coverage) {control.mean:+.3f} "
                        f"[{control.low:+.3f}, {control.high:+.3f}]")
            claims.append(measured_claim(
                f"thesis/{where.split()[1].lower()}/sw-{model.lower()}-{method}-{metric}", PAPER, where,
                f"the enhancement improves {method}'s {text} ({model})", "gains for every wrapped method",
                f"per-scene {text}, {method} + SW (eq. 4-8) minus {method}", f"synthetic {model}", data, estimate,
                "greater", note=note))
        estimate = _difference(values["miou"], "literal", "S0 x coverage")
        claims.append(measured_claim(
            f"thesis/ch4/sw-{model.lower()}-{method}-beyond-centre-weighting", PAPER, "Ch. 4, eq. 4-8",
            f"the windows add detail beyond the centre weighting of S0 ({method}, {model})",
            "the gain comes from the windows' finer maps",
            "per-scene mIoU, eq. 4-8 minus the control S0 x coverage (no window explained)",
            f"synthetic {model}", data, estimate, "greater"))
    return claims


def discrimination_claims(discrimination: dict) -> list[Claim]:
    claims = []
    for method in ("grad-cam", "lrp"):
        estimate = bootstrap_mean(discrimination["margin"][f"{method} literal"])
        claims.append(measured_claim(
            f"thesis/fig4-5/{method}-class-discrimination", PAPER, "Fig. 4-5",
            f"{method} + SW stays class-discriminative on two-class images",
            "the enhanced map highlights the explained class only",
            "energy share on the explained object minus on the other object (+SW, eq. 4-8)",
            discrimination["model"], discrimination["data"], estimate, "greater"))
    return claims


def sanity_claims(sanity: dict) -> list[Claim]:
    """Fig. 3-6 for MSG-CAM: undefined correlations read as 0 (:func:`_undefined_as_zero`); the note gives the mean
    over the defined correlations alone, the verdict's sensitivity to that reading."""
    claims = []
    for mode in ("cascading", "independent"):
        run = sanity["runs"][f"msg-cam/{mode}"]
        correlations = run["spearman"][-1 if mode == "cascading" else 0]
        estimate = bootstrap_mean(_undefined_as_zero(correlations))
        defined = [value for value in correlations if value is not None and math.isfinite(value)]
        alone = bootstrap_mean(defined) if defined else None
        sensitivity = (f"; {len(correlations) - len(defined)} of {len(correlations)} maps are flat at this layer, and"
                       f" the {len(defined)} defined correlations alone average {alone.mean:.3g} [{alone.low:.3g},"
                       f" {alone.high:.3g}]" if alone else "; every map is flat at this layer")
        claims.append(measured_claim(
            f"thesis/fig3-6/msg-cam-{mode}", PAPER, "Fig. 3-6",
            f"MSG-CAM passes the {mode} randomisation sanity check",
            "similarity to the original map falls as layers are randomised",
            "|Spearman| between original and randomised maps "
            + ("(all layers randomised)" if mode == "cascading" else "(output layer randomised alone)"),
            sanity["model"], sanity["data"], estimate, "less", null=0.5,
            note=f"{run['flat_maps']} undefined correlations (flat randomised maps, all layers) counted as 0"
                 + sensitivity))
    return claims


def offline_claims() -> list[Claim]:
    return [
        untestable_claim("thesis/table3-2/imagenet-50000", PAPER, "Table 3-2",
                         "insertion/deletion AUCs on all 50,000 ImageNet val images with VGG19",
                         "MSG-CAM best overall", "ImageNet val and VGG19 weights cannot be downloaded offline; "
                         "the photographs rows above test the ranking on 20 images"),
        untestable_claim("thesis/fig3-5/confidence-groups", PAPER, "Fig. 3-5",
                         "MSG-CAM's insertion/deletion advantage across 11 confidence groups",
                         "advantage in every group", "11 confidence groups need the 50,000-image run "
                         "(20 photographs give fewer than 2 per group); the full profile computes it"),
        untestable_claim("thesis/table3-3/voc07-coco14", PAPER, "Table 3-3",
                         "pointing accuracy on VOC07 test and COCO14 val with TorchRay's VGG16/ResNet50",
                         "MSG-CAM highest", "needs VOC07/COCO14 and TorchRay's classifiers (not offline); the "
                         "synthetic rows test the ranking on exact masks"),
        untestable_claim("thesis/table4-4/imagenet-segmentation", PAPER, "Table 4-4",
                         "segmentation on 4,276 ImageNet-Segmentation images", "gains for every wrapped method",
                         "needs gtsegs_ijcv.mat (not offline); the synthetic rows test it on exact masks"),
    ]


# --------------------------------------------------------------------------------------------- summaries
def summary_tables(parts: Mapping[str, dict]) -> list[dict]:
    """One row per (table, metric, method/variant): n, mean, 95% interval (paired within each group)."""
    rows = []
    for name in ("photos", "photos_second_model"):
        for metric in ("insertion", "deletion", "overall", "perturbation_overall") if name in parts else ():
            rows += _rows(f"photos/{parts[name]['model']}", metric, parts[name][metric])
    if "pointing" in parts:
        for metric, values in parts["pointing"]["values"].items():
            rows += _rows("pointing", metric, values)
    for name in ("enhancement", "enhancement_vit"):
        for key, run in parts.get(name, {}).get("runs", {}).items():
            for metric, values in run["values"].items():
                rows += _rows(f"enhancement/{key}", metric, values)
    if "discrimination" in parts:
        rows += _rows("discrimination", "margin", parts["discrimination"]["margin"])
    if "sanity" in parts:
        for key, run in parts["sanity"]["runs"].items():
            final = _undefined_as_zero(run["spearman"][-1])
            rows += _rows(f"sanity/{key}", "spearman (last layer)", {key.split("/")[0]: final})
    return rows


def kept_scale_histogram(photos: dict) -> dict[str, dict[int, int]]:
    """For each MSG-CAM variant, how many images kept 1..N scales."""
    return {label: {count: counts.count(count) for count in sorted(set(counts))}
            for label, counts in photos["kept_scales"].items()}


def _rounded(value, digits: int = 5):
    if isinstance(value, float):
        return round(value, digits) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): _rounded(item, digits) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(item, digits) for item in value]
    return value


def compact_json(value) -> str:
    """One line of JSON, floats rounded to 5 decimals (per-item values of thousands of scenes stay small)."""
    return json.dumps(_rounded(json.loads(to_json(value))), separators=(",", ":"), sort_keys=True) + "\n"


def _write_csv(path: Path, rows: Sequence[dict]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)


PART_FUNCTIONS = {"photos": photos_part, "photos_second_model": photos_second_model_part, "layers": layers_part,
                  "pointing": pointing_part, "enhancement": enhancement_part, "enhancement_vit": enhancement_vit_part,
                  "discrimination": discrimination_part, "sanity": sanity_part}
CLAIM_FUNCTIONS = {"photos": lambda part, config: photo_claims(part, config),
                   "photos_second_model": lambda part, config: photo_claims(part, config, config.second_model_layer,
                                                                            second_model=True),
                   "layers": lambda part, config: [],
                   "pointing": lambda part, config: pointing_claims(part),
                   "enhancement": lambda part, config: enhancement_claims(part),
                   "enhancement_vit": lambda part, config: enhancement_claims(part),
                   "discrimination": lambda part, config: discrimination_claims(part),
                   "sanity": lambda part, config: sanity_claims(part)}


def run_thesis_study(config: ThesisStudyConfig, results_dir: str | Path, log=print, summarise: bool = True
                     ) -> list[Claim] | None:
    """Run the study's ``config.parts`` into ``results_dir/thesis_study/<part>.json`` and, with ``summarise``,
    :func:`summarise_thesis_study`. Each part is seeded with ``config.seed`` before it runs, so a part's values do
    not depend on which parts ran before it in the same process (DVC runs each part as its own stage)."""
    out = Path(results_dir) / "thesis_study"
    for name in config.parts:
        torch.manual_seed(config.seed)
        write_atomic(out / f"{name}.json", compact_json(PART_FUNCTIONS[name](config, log)))
    return summarise_thesis_study(config, results_dir) if summarise else None


def summarise_thesis_study(config: ThesisStudyConfig, results_dir: str | Path) -> list[Claim]:
    """Write ``summary.csv``, ``study.json`` and ``claims/thesis.json`` from every part file present in
    ``results_dir/thesis_study`` (parts run earlier, e.g. with ``--parts``, are kept). Claims are computed from the
    stored (rounded) values, so they are the same however the parts were run."""
    out = Path(results_dir) / "thesis_study"
    parts = {name: json.loads((out / f"{name}.json").read_text()) for name in PART_FUNCTIONS
             if (out / f"{name}.json").is_file()}
    claims = [claim for name, part in parts.items() for claim in CLAIM_FUNCTIONS[name](part, config)]
    claims += offline_claims()
    _write_csv(out / "summary.csv", summary_tables(parts))
    extra = {"config": asdict(config), "parts": sorted(parts)}
    if "photos" in parts:
        extra["kept_scale_histogram"] = kept_scale_histogram(parts["photos"])
        extra["step_check"] = parts["photos"]["step_check"]
    if "photos_second_model" in parts:
        extra["kept_scale_histogram_second_model"] = kept_scale_histogram(parts["photos_second_model"])
    if "layers" in parts:
        extra["layer_check"] = {layer: {measure: max(values) for measure, values in measures.items()}
                                for layer, measures in parts["layers"]["layers"].items()}
    write_atomic(out / "study.json", to_json(extra))
    write_claims(Path(results_dir) / "claims" / "thesis.json", claims)
    return claims
