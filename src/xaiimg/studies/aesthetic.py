"""The interpretability study of paper 000 on the aesthetic model, as functions notebooks call.

1. :func:`feature_maps_by_stage`: what shallow vs deep backbone stages respond to, projected back to pixels
   (Zeiler & Fergus deconvnet when the ``"deconvnet"`` method is registered, else upsampled feature maps).
2. :func:`cam_with_without_attention`: CAM (Zhou et al., CVPR 2016) of the model with attention vs the
   backbone-only model; :func:`subject_focus_study` quantifies "attention moves focus onto the subject" as the
   share of CAM mass inside the subject mask (:func:`subject_mass_share`) over a held-out set.
3. :func:`lrp_through_attention`: LRP with the attention weights held constant (conservative propagation).

The models come from training runs (folder layout: :class:`~xaiimg.studies.runs.AestheticRun`):
:func:`train_on_composition` (``xaiimg train-aesthetic``, the DVC ``aesthetic`` stage) trains both variants on the
synthetic composition benchmark (:mod:`xaiimg.data.composition`), :func:`train_on_ava` (``xaiimg train-ava``) on
AVA with the standard test split. Runs are read back by :func:`load_composition_run` (synthetic scenes with
subject masks) and :func:`load_ava_run` (AVA photographs, full profile).
"""
from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from xaiimg.data.ava import NUM_BINS, AVADataset, mean_score, read_ava_labels, split_by_ids
from xaiimg.data.composition import CompositionConfig, make_composition_set
from xaiimg.methods.base import Explainer
from xaiimg.models.aesthetic import AestheticModel, ScoreHead, attention_detached, load_aesthetic
from xaiimg.nn import TargetLike, capture_outputs, preserved_state, resolve_layer, resolve_targets
from xaiimg.ops import check_images, minmax_normalize, upsample
from xaiimg.studies.runs import VARIANTS, AestheticRun, split_timings
from xaiimg.training.aesthetic import cache_features, evaluate_aesthetic, train_aesthetic

DEFAULT_STAGES = {"shallow": "backbone.blocks.1", "middle": "backbone.blocks.3", "deep": "backbone.bn2"}
PROJECTIONS = ("auto", "deconvnet", "upsample")


def _aesthetic(model: nn.Module) -> AestheticModel:
    model = model.model if isinstance(model, ScoreHead) else model
    if not isinstance(model, AestheticModel):
        raise TypeError(f"expected an AestheticModel (or its ScoreHead), got {type(model).__name__}")
    return model


# ------------------------------------------------------------------------------------ 1. feature maps
@dataclass
class StageMaps:
    """``maps[stage]``: ``[B,1,H,W]`` in [0,1]; ``channels[stage]``: the channel shown per sample;
    ``projection``: ``"deconvnet"`` or ``"upsample"`` (which one produced the maps)."""

    maps: dict[str, torch.Tensor]
    channels: dict[str, torch.Tensor]
    projection: str


def _deconvnet_available() -> bool:
    from xaiimg.methods import available_methods

    return "deconvnet" in available_methods()


def feature_maps_by_stage(model: nn.Module, x: torch.Tensor, stages: dict[str, str] | None = None,
                          projection: str = "auto") -> StageMaps:
    """For each stage (name -> layer, default :data:`DEFAULT_STAGES`: Lite0 blocks 1 (56x56), 3 (14x14) and the
    conv_head map (7x7)), the channel whose activation peaks highest in each image, shown in pixel space.

    ``projection="deconvnet"``: the registered ``"deconvnet"`` method (Zeiler & Fergus 2014) projects that
    channel's peak activation alone back to the pixels; ``"upsample"``: the channel's whole feature map,
    bilinearly upsampled; ``"auto"``: deconvnet when registered, else upsample. Maps are min-max normalised
    per image.
    """
    check_images(x)
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
    stages = DEFAULT_STAGES if stages is None else stages
    modules = {name: resolve_layer(model, layer) for name, layer in stages.items()}
    if projection == "auto":
        projection = "deconvnet" if _deconvnet_available() else "upsample"
    with preserved_state(model, x), torch.no_grad(), capture_outputs(list(modules.values())) as outputs:
        model(x)
    channels = {name: out.amax(dim=(2, 3)).argmax(dim=1) for name, out in zip(modules, outputs)}
    maps = {}
    for (name, layer), out in zip(stages.items(), outputs):
        if projection == "deconvnet":
            from xaiimg.methods import get_method

            maps[name] = get_method("deconvnet", layer=layer)(model, x)  # default unit: the layer's peak
        else:
            selected = out.gather(1, channels[name].view(-1, 1, 1, 1).expand(-1, 1, *out.shape[2:]))
            maps[name] = minmax_normalize(upsample(selected, x.shape[-2:]))
    return StageMaps(maps=maps, channels=channels, projection=projection)


# ---------------------------------------------------------------------------------------------- 2. CAM
@torch.no_grad()
def class_activation_maps(model: nn.Module, x: torch.Tensor, target: TargetLike | str = "score") -> torch.Tensor:
    """CAM at the aggregated map ``F`` (``model.aggregate``), exact because the head is GAP + linear:
    ``CAM = sum_k w_k F_k`` (Zhou et al. 2016; bias dropped, min-max per image as in the official code).

    ``target``: a bin index (0 = score 1) or one per sample, ``None`` (predicted bin), or ``"score"`` (default):
    the mean score, whose weights are ``w = sum_c dscore/dlogit_c W_c = sum_c p_c (c - score) W_c`` (score
    linearised at the image, i.e. Grad-CAM of the score, which equals CAM for a GAP + linear head).
    Returns ``[B,1,H,W]`` in [0,1].
    """
    check_images(x)
    aesthetic = _aesthetic(model)
    with preserved_state(aesthetic, x), capture_outputs([aesthetic.aggregate]) as outputs:
        logits = aesthetic(x)
    features, head = outputs[0], aesthetic.classifier.weight
    if isinstance(target, str):
        if target != "score":
            raise ValueError(f"target must be a bin index, a list of them, None or 'score', got {target!r}")
        probabilities = logits.softmax(-1)
        bins = torch.arange(1, NUM_BINS + 1, dtype=logits.dtype, device=logits.device)
        weights = (probabilities * (bins - mean_score(probabilities).unsqueeze(1))) @ head
    else:
        weights = head[resolve_targets(target, logits)]
    cam = torch.einsum("bk,bkhw->bhw", weights, features).unsqueeze(1)
    return minmax_normalize(upsample(cam, x.shape[-2:]))


def cam_with_without_attention(model_attention: nn.Module, model_plain: nn.Module, x: torch.Tensor,
                               target: TargetLike | str = "score") -> dict[str, torch.Tensor]:
    """``{"attention": CAM of the attention model, "plain": CAM of the backbone-only model}``, each ``[B,1,H,W]``."""
    if not _aesthetic(model_attention).attention or _aesthetic(model_plain).attention:
        raise ValueError("pass the model with attention first and the model without attention second")
    return {"attention": class_activation_maps(model_attention, x, target),
            "plain": class_activation_maps(model_plain, x, target)}


def subject_mass_share(saliency: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Share of saliency mass inside the subject: ``sum(s * m) / sum(s)`` per image, ``[B]`` in [0,1]
    (higher = more focus on the subject; a uniform map scores the mask's area fraction).

    ``saliency``: non-negative ``[B,1,H,W]`` or ``[B,H,W]``; ``masks``: same shape, boolean or 0/1. An all-zero
    map has no mass to share: its entry is NaN.
    """
    if saliency.shape != masks.shape or saliency.ndim not in (3, 4):
        raise ValueError(f"saliency {tuple(saliency.shape)} and masks {tuple(masks.shape)} must both be "
                         "[B,1,H,W] (or [B,H,W]) of the same shape")
    if not saliency.is_floating_point() or not torch.isfinite(saliency).all():
        raise ValueError("saliency must be a finite floating-point tensor")
    if (saliency < 0).any():
        raise ValueError("saliency has negative values; clamp or min-max normalise it first")
    inside = masks.bool() if masks.dtype == torch.bool else masks == 1
    if masks.dtype != torch.bool and not ((masks == 0) | (masks == 1)).all():
        raise ValueError("masks must be boolean or hold only 0 and 1")
    flat, inside = saliency.flatten(1), inside.flatten(1)
    total = flat.sum(1)
    share = (flat * inside).sum(1) / total.clamp_min(torch.finfo(flat.dtype).tiny)
    return torch.where(total > 0, share, torch.full_like(share, float("nan")))


def subject_focus_study(model_attention: nn.Module, model_plain: nn.Module, x: torch.Tensor, masks: torch.Tensor,
                        target: TargetLike | str = "score", batch_size: int = 16) -> dict:
    """Subject mass share of CAM with vs without attention over a set of images with subject masks.

    Returns per-variant ``shares`` (``[N]``) with their ``mean`` and ``std``, the masks' mean ``area`` (what a
    uniform map would score), the paired difference (attention - plain) ``mean`` and the number of images where
    attention puts more mass on the subject, and the two-sided Wilcoxon signed-rank p-value of the paired
    difference. Images whose map has no mass (NaN share) are left out of the means and the test.
    """
    from scipy.stats import wilcoxon

    from xaiimg.ops import batches

    shares = {"attention": [], "plain": []}
    for part in batches(len(x), batch_size):
        maps = cam_with_without_attention(model_attention, model_plain, x[part], target)
        for name, saliency in maps.items():
            shares[name].append(subject_mass_share(saliency, masks[part]))
    result = {name: {"shares": torch.cat(values)} for name, values in shares.items()}
    for entry in result.values():
        valid = entry["shares"][~entry["shares"].isnan()]
        entry.update(mean=float(valid.mean()), std=float(valid.std()), undefined=int(entry["shares"].isnan().sum()))
    difference = result["attention"]["shares"] - result["plain"]["shares"]
    difference = difference[~difference.isnan()]
    # identical shares give no evidence of a shift (scipy's test is undefined there)
    p_value = float(wilcoxon(difference.double().numpy()).pvalue) if difference.abs().sum() > 0 else 1.0
    result["area"] = float(masks.flatten(1).float().mean(1).mean())
    result["difference"] = {"mean": float(difference.mean()), "attention_higher": int((difference > 0).sum()),
                            "count": int(difference.numel()), "wilcoxon_p": p_value}
    return result


# ---------------------------------------------------------------------------------------------- 3. LRP
def lrp_through_attention(model: nn.Module, x: torch.Tensor, target: TargetLike = None,
                          method: str | Explainer = "lrp", explain_score: bool = False, normalize: bool = False,
                          **params) -> torch.Tensor:
    """LRP relevance ``[B,1,H,W]`` with every attention module's ``detach_attention`` set for the call
    (softmax weights held constant: conservative propagation), restored afterwards.

    ``method``: the registered LRP method name (its ``params``) or an explainer instance; ``explain_score``
    explains the mean score (:class:`ScoreHead`, target 0) instead of a bin. ``normalize=False`` keeps signed,
    conserved relevance; ``True`` min-max normalises per image.
    """
    from xaiimg.methods import get_method

    explainer = get_method(method, **params)
    subject = _aesthetic(model).as_score_model() if explain_score else model
    if explain_score and target not in (None, 0):
        raise ValueError("explain_score explains the single score output; leave target as None or 0")
    with attention_detached(subject):
        return explainer(subject, x, target=0 if explain_score else target, normalize=normalize)


def positive_relevance(relevance: torch.Tensor) -> torch.Tensor:
    """The positive part of each relevance map ``[B,1,H,W]`` divided by its maximum (all-zero maps stay 0)."""
    positive = relevance.clamp_min(0)
    return positive / positive.flatten(1).amax(1).clamp_min(1e-12).view(-1, *([1] * (relevance.ndim - 1)))


# ------------------------------------------------------------------------------------------------ runs
def _epoch_logger(log, variant: str):
    """A :func:`train_aesthetic` epoch callback writing one progress line of ``variant`` to ``log`` (None: none)."""
    if not log:
        return None
    return lambda record: log(f"{variant} epoch {record['epoch']}: train {record['train_loss']:.4f}"
                              f" val srcc {record['val']['srcc']:.3f}")


def train_on_composition(out: str | Path, seed: int = 0, size: int = 224, train: int = 384, val: int = 96,
                         test: int = 160, epochs: int = 20, backbone: str = "efficientnet_lite0",
                         aggregation: str = "concat", score_weight: float = 0.1, lr: float = 1e-3,
                         log=functools.partial(print, flush=True)) -> dict:
    """Train the attention and plain variants on the composition benchmark (frozen backbone, features cached
    once and shared) into the run folder ``out`` (:class:`~xaiimg.studies.runs.AestheticRun`): checkpoints and
    metrics per variant, and a summary with the held-out (test split) SRCC/PLCC/accuracy of each variant's
    best-on-validation checkpoint."""
    run = AestheticRun(out)
    config = CompositionConfig(size=size)
    splits = {name: make_composition_set(count, config, seed=seed + offset)
              for offset, (name, count) in enumerate((("train", train), ("val", val), ("test", test)))}
    summary = {"benchmark": {"config": config.as_dict(), "seeds": {"train": seed, "val": seed + 1, "test": seed + 2},
                             "sizes": {"train": train, "val": val, "test": test}}, "variants": {}}
    torch.manual_seed(seed)
    plain = AestheticModel(backbone, attention=False)
    plain.freeze_backbone()
    started = time.perf_counter()
    features = {name: cache_features(plain, split.dataset(plain.spec)) for name, split in splits.items()}
    timings = {"feature_cache_seconds": time.perf_counter() - started}
    for variant in VARIANTS:
        torch.manual_seed(seed)
        model = AestheticModel(backbone, attention=variant == "attention", aggregation=aggregation)
        metrics = train_aesthetic(model, features["train"], features["val"], run.training_outputs(variant),
                                  inputs="features", epochs=epochs, lr=lr, score_weight=score_weight, seed=seed,
                                  log=_epoch_logger(log, variant))
        best = load_aesthetic(run.best_checkpoint(variant), model)
        held_out = evaluate_aesthetic(best, features["test"], cached=True, score_weight=score_weight)
        _record_variant(summary, timings, variant, held_out, metrics, log)
    run.write_summary(summary)
    run.write_timings(timings)
    return summary


def _record_variant(summary: dict, timings: dict, variant: str, held_out: dict, metrics: dict, log) -> None:
    """A trained variant's held-out scores and best epoch into the run summary, its durations into the timings."""
    summary["variants"][variant] = {"test": held_out, "best_epoch": metrics["best_epoch"]}
    timings[variant] = split_timings(metrics)[1]
    if log:
        log(f"{variant}: held-out SRCC {held_out['srcc']:.3f}, PLCC {held_out['plcc']:.3f}, "
            f"accuracy {held_out['accuracy']:.3f}")


def train_on_ava(out: str | Path, labels: str | Path, images: str | Path, test_labels: str | Path, seed: int = 0,
                 val_fraction: float = 0.05, epochs: int = 10, batch_size: int = 32, lr: float = 1e-3,
                 score_weight: float = 0.1, backbone: str = "efficientnet_lite0", aggregation: str = "concat",
                 variants: Sequence[str] = VARIANTS, cache: bool = False, missing: str = "skip",
                 log=functools.partial(print, flush=True)) -> dict:
    """Train the model variants on AVA (frozen backbone): ``labels`` (AVA.txt rows or an idealo/NIMA JSON split)
    minus the ids of ``test_labels`` (the standard split, e.g. ``idealo_ava_labels_test.json``) is split, seeded,
    into training and ``val_fraction`` validation (checkpoint selection); the run folder ``out``
    (:class:`~xaiimg.studies.runs.AestheticRun`) gets checkpoints and metrics per variant and a summary with the
    held-out SRCC/PLCC/accuracy at 5 of each variant's best checkpoint.
    ``missing="skip"`` trains on the labelled images present in ``images``; ``cache`` holds backbone features in
    memory (251 KB an image at 224 px)."""
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or not variants:
        raise ValueError(f"variants must be a non-empty subset of {VARIANTS}, got {list(variants)}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    run = AestheticRun(out)
    test_ids = [r.image_id for r in read_ava_labels(test_labels)]
    train_records, test_records = split_by_ids(read_ava_labels(labels), test_ids)
    order = torch.randperm(len(train_records), generator=torch.Generator().manual_seed(seed)).tolist()
    val_count = max(1, round(val_fraction * len(train_records)))
    records = {"train": [train_records[i] for i in sorted(order[val_count:])],
               "val": [train_records[i] for i in sorted(order[:val_count])], "test": test_records}
    transform = AestheticModel(backbone, attention=False).spec.transform()
    splits = {name: AVADataset(rows, images, transform, missing=missing) for name, rows in records.items()}
    summary = {"data": {"labels": str(labels), "images": str(images), "test_labels": str(test_labels),
                        "seed": seed, "sizes": {name: len(split) for name, split in splits.items()}}, "variants": {}}
    timings = {}
    for variant in variants:
        torch.manual_seed(seed)
        model = AestheticModel(backbone, attention=variant == "attention", aggregation=aggregation)
        metrics = train_aesthetic(model, splits["train"], splits["val"], run.training_outputs(variant),
                                  epochs=epochs, batch_size=batch_size, lr=lr, score_weight=score_weight, cache=cache,
                                  seed=seed, log=_epoch_logger(log, variant))
        best = load_aesthetic(run.best_checkpoint(variant), model)
        held_out = evaluate_aesthetic(best, splits["test"], batch_size, score_weight=score_weight)
        _record_variant(summary, timings, variant, held_out, metrics, log)
    run.write_summary(summary)
    run.write_timings(timings)
    return summary


def load_composition_run(out_dir, split: str = "test"):
    """``(model with attention, model without, CompositionSet)`` of a run of ``xaiimg train-aesthetic --out
    <out_dir>``: the best-on-validation checkpoints and the benchmark split regenerated from the run's recorded
    config and seed."""
    run = AestheticRun(out_dir)
    if not run.summary.is_file():
        raise FileNotFoundError(f"{run.summary} not found; run `xaiimg train-aesthetic --out {out_dir}` first")
    benchmark = run.read_summary()["benchmark"]
    if split not in benchmark["seeds"]:
        raise ValueError(f"split must be one of {sorted(benchmark['seeds'])}, got {split!r}")
    config = CompositionConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in benchmark["config"].items()})
    images = make_composition_set(benchmark["sizes"][split], config, seed=benchmark["seeds"][split])
    return load_aesthetic(run.best_checkpoint("attention")), load_aesthetic(run.best_checkpoint("plain")), images


def aesthetic_run(folder, train_if_missing: bool = False, seed: int = 0, size: int = 224, train: int = 96,
                  val: int = 32, test: int = 48, epochs: int = 8):
    """:func:`load_composition_run` of ``folder`` (the DVC ``aesthetic`` stage writes it). With
    ``train_if_missing`` (notebooks' CI parameters) a missing run is trained first with the given small sizes;
    its ``summary.json`` records what was used."""
    if not AestheticRun(folder).summary.is_file() and train_if_missing:
        train_on_composition(folder, seed=seed, size=size, train=train, val=val, test=test, epochs=epochs, log=None)
    return load_composition_run(folder)


def load_ava_run(run_dir, count: int | None = None, images=None, test_labels=None):
    """``(model with attention, model without, x [N,3,H,W] (model input), mean scores [N])`` of a run of
    ``xaiimg train-ava --out <run_dir>``: its best-on-validation checkpoints and the first ``count`` (all if None)
    held-out images present on disk, read from the image folder and test-split label file the run recorded (or
    ``images`` / ``test_labels`` where they have moved). AVA has no subject masks, so these serve the qualitative
    figures only."""
    run = AestheticRun(run_dir)
    if not run.summary.is_file():
        raise FileNotFoundError(f"{run.summary} not found; run `xaiimg train-ava --out {run_dir} ...` first "
                                "(data/README.md, AVA)")
    recorded = run.read_summary().get("data", {})
    images = images if images is not None else recorded.get("images")
    test_labels = test_labels if test_labels is not None else recorded.get("test_labels")
    if images is None or test_labels is None:
        raise ValueError(f"{run.summary} records no AVA image folder / test labels; pass images= and test_labels=")
    with_attention = load_aesthetic(run.best_checkpoint("attention"))
    plain = load_aesthetic(run.best_checkpoint("plain"))
    records = read_ava_labels(test_labels)
    held_out = AVADataset(records, images, with_attention.spec.transform(), missing="skip")
    if len(held_out) == 0:
        raise FileNotFoundError(f"none of the {len(records)} test images of {test_labels} is in {images}")
    pairs = [held_out[i] for i in range(len(held_out) if count is None else min(count, len(held_out)))]
    x = torch.stack([image for image, _ in pairs])
    scores = mean_score(torch.stack([distribution for _, distribution in pairs]))
    return with_attention, plain, x, scores


def focus_report(out_dir, targets=("score", None), batch_size: int = 16) -> dict:
    """:func:`subject_focus_study` on the held-out split of a composition run, for each CAM target
    (``"score"`` and the predicted bin by default); per-image shares as lists, JSON-ready."""
    with_attention, plain, held_out = load_composition_run(out_dir)
    x = with_attention.spec.from_unit_range(held_out.images)
    report = {}
    for target in targets:
        study = subject_focus_study(with_attention, plain, x, held_out.masks, target=target, batch_size=batch_size)
        for name in ("attention", "plain"):
            study[name]["shares"] = study[name]["shares"].tolist()
        report["score" if target == "score" else "predicted-bin"] = study
    return report


def focus_report_lines(report: dict) -> list[str]:
    """One summary line per CAM target of a :func:`focus_report`."""
    lines = []
    for target, study in report.items():
        attention, plain, difference = study["attention"], study["plain"], study["difference"]
        lines.append(f"CAM target {target}: subject mass share with attention {attention['mean']:.3f} "
                     f"+- {attention['std']:.3f}, without {plain['mean']:.3f} +- {plain['std']:.3f} "
                     f"(uniform map {study['area']:.3f}); attention higher on {difference['attention_higher']}/"
                     f"{difference['count']}, Wilcoxon p = {difference['wilcoxon_p']:.2g}")
    return lines
