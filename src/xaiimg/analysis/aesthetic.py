"""The interpretability study of paper 000 on the aesthetic model, as functions notebooks call.

1. :func:`feature_maps_by_stage`: what shallow vs deep backbone stages respond to, projected back to pixels
   (Zeiler & Fergus deconvnet when the ``"deconvnet"`` method is registered, else upsampled feature maps).
2. :func:`cam_with_without_attention`: CAM (Zhou et al., CVPR 2016) of the model with attention vs the
   backbone-only model; :func:`subject_focus_study` quantifies "attention moves focus onto the subject" as the
   share of CAM mass inside the subject mask (:func:`subject_mass_share`) over a held-out set.
3. :func:`lrp_through_attention`: LRP with the attention weights held constant (conservative propagation).

Runs are read back by :func:`load_composition_run` (synthetic scenes with subject masks) and :func:`load_ava_run`
(AVA photographs, full profile).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from xaiimg.data.ava import NUM_BINS, mean_score
from xaiimg.methods.base import (Explainer, TargetLike, capture_outputs, preserved_state, resolve_layer,
                                 resolve_targets)
from xaiimg.models.aesthetic import AestheticModel, ScoreHead, attention_detached
from xaiimg.ops import check_images, minmax_normalize, upsample

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

    from xaiimg.methods.base import batches

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


# ------------------------------------------------------------------------------------------- run loading
def load_composition_run(out_dir, split: str = "test"):
    """``(model with attention, model without, CompositionSet)`` of a run of
    ``python -m xaiimg.models.aesthetic train --out <out_dir>``: the best-on-validation checkpoints and the
    benchmark split regenerated from the run's recorded config and seed."""
    import json
    from pathlib import Path

    from xaiimg.data.composition import CompositionConfig, make_composition_set
    from xaiimg.models.aesthetic import load_aesthetic

    out_dir = Path(out_dir)
    summary_path = out_dir / "summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"{summary_path} not found; run "
                                f"`python -m xaiimg.models.aesthetic train --out {out_dir}` first")
    benchmark = json.loads(summary_path.read_text())["benchmark"]
    if split not in benchmark["seeds"]:
        raise ValueError(f"split must be one of {sorted(benchmark['seeds'])}, got {split!r}")
    config = CompositionConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in benchmark["config"].items()})
    images = make_composition_set(benchmark["sizes"][split], config, seed=benchmark["seeds"][split])
    return load_aesthetic(out_dir / "attention" / "best.pt"), load_aesthetic(out_dir / "plain" / "best.pt"), images


def load_ava_run(run_dir, count: int | None = None, images=None, test_labels=None):
    """``(model with attention, model without, x [N,3,H,W] (model input), mean scores [N])`` of a run of
    ``python -m xaiimg.models.aesthetic train-ava --out <run_dir>``: its best-on-validation checkpoints and the
    first ``count`` (all if None) held-out images present on disk, read from the image folder and test-split label
    file the run recorded (or ``images`` / ``test_labels`` where they have moved). AVA has no subject masks, so
    these serve the qualitative figures only."""
    import json
    from pathlib import Path

    from xaiimg.data.ava import AVADataset, read_ava_labels
    from xaiimg.models.aesthetic import load_aesthetic

    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"{summary_path} not found; run `python -m xaiimg.models.aesthetic train-ava --out "
                                f"{run_dir} ...` first (data/README.md, AVA)")
    recorded = json.loads(summary_path.read_text()).get("data", {})
    images = images if images is not None else recorded.get("images")
    test_labels = test_labels if test_labels is not None else recorded.get("test_labels")
    if images is None or test_labels is None:
        raise ValueError(f"{summary_path} records no AVA image folder / test labels; pass images= and test_labels=")
    with_attention = load_aesthetic(run_dir / "attention" / "best.pt")
    plain = load_aesthetic(run_dir / "plain" / "best.pt")
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


def main(argv=None) -> None:
    import argparse
    import json
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m xaiimg.analysis.aesthetic",
                                     description="subject mass share of CAM with vs without attention, held-out split")
    parser.add_argument("--run", required=True, help="output folder of `python -m xaiimg.models.aesthetic train`")
    parser.add_argument("--out", required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    report = focus_report(args.run)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    for target, study in report.items():
        attention, plain = study["attention"], study["plain"]
        print(f"CAM target {target}: subject mass share with attention {attention['mean']:.3f} "
              f"+- {attention['std']:.3f}, without {plain['mean']:.3f} +- {plain['std']:.3f} "
              f"(uniform map {study['area']:.3f}); attention higher on {study['difference']['attention_higher']}/"
              f"{study['difference']['count']}, Wilcoxon p = {study['difference']['wilcoxon_p']:.2g}")


if __name__ == "__main__":
    main()
