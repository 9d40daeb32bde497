"""Paper 000's claims 2 and 3 on the planted-evidence benchmark, where the right answer is known.

On :mod:`xaiimg.data.planted` (rule ``"subject"``) every pixel that carries score information lies inside the
subject mask, so a model that scores well must read the subject, and "the explanation concentrates on the subject"
is a question the measurement can answer either way. :func:`run_planted_study`:

1. renders training, validation and held-out scenes (one fixed data seed for every model seed);
2. runs the frozen part of the backbone (stem and stages before ``stage``, by default ``blocks.3``) once
   for all scenes (:func:`~xaiimg.training.aesthetic.cache_stage_inputs`), shared by every seed and both variants;
3. per variant (with / without attention) and seed trains the stages from ``stage`` on, conv_head + BN, DANet's channel
   reduction, the attention modules and the 10-bin head on EMD + 0.1 MSE (classify-then-regress) from that cache,
   and keeps the best-on-validation checkpoint; held-out SRCC, PLCC, binary accuracy at 5;
4. explains every held-out scene with CAM at the model's default layer (``aggregate``, the score as target, exact
   for the GAP + linear head; computed from the cache, equal to
   :func:`~xaiimg.studies.aesthetic.class_activation_maps`) and the first ``lrp_scenes`` with LRP through attention
   (:func:`~xaiimg.studies.aesthetic.lrp_through_attention`, attention weights held constant, the score explained,
   positive relevance); measures the subject-mass share (:func:`~xaiimg.studies.aesthetic.subject_mass_share`), the
   energy-based pointing game against the subject's bounding box (registered ``energy-pointing-game``; Wang et al.
   2020 use boxes) and the share of LRP mass on the subject's contour band;
5. writes per-seed and pooled rows (mean, 95% bootstrap interval; paired attention - plain differences with
   sign-flip and Wilcoxon p-values) to ``results/aesthetic_planted.{json,csv}`` and the claims to
   ``results/claims/aesthetic.json``.

CAM vs LRP. They answer different questions, and the study measures both on the same scenes and models. CAM is
the aggregate map (4x4 at 128 px, every cell's receptive field spanning most of the image) weighted by the head
and min-max normalised: its mass is where the last layer's *features* that raise the score sit, smeared over
32-pixel cells, and the min-max offset gives every cell above the weakest one mass, so its share is pulled toward
the subject's area fraction. LRP redistributes the score down to pixels through the whole network: positive
relevance lands on the input structures whose contributions raise the score, here the subject's stripes and
contours. The results' ``note`` states, from the numbers, where they agree and where they do not.

Where to split (measured on this benchmark at 128 px): a ridge read-out of frozen Lite0 features pooled inside the
true subject mask reaches held-out SRCC about 0.7 from the stride-8/16 features (blocks.2/3 outputs) but 0.3-0.4
from the features entering ``blocks.6``, so the subject's sharpness is mostly lost by the stride-32 stages.
Fine-tuning ``blocks.6`` alone reached held-out SRCC 0.11 (512 scenes, one seed), from ``blocks.4`` about 0.45 on
validation, from ``blocks.3`` 0.62 with 1,024 training scenes and about 0.8 with 2,048 (the default, 5 seeds: per
seed in ``results/aesthetic_planted.json``).
"""
from __future__ import annotations

import functools
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from xaiimg.data.ava import NUM_BINS, mean_score
from xaiimg.data.planted import PlantedConfig, bounding_box_masks, make_planted_set
from xaiimg.models.aesthetic import AestheticModel, load_aesthetic
from xaiimg.nn import capture_outputs
from xaiimg.ops import minmax_normalize, upsample
from xaiimg.report import csv_text, to_json, write_atomic
from xaiimg.stats import bootstrap_mean, paired_difference, sign_flip_test, wilcoxon_signed_rank
from xaiimg.studies.aesthetic import lrp_through_attention, positive_relevance, subject_mass_share
from xaiimg.studies.reproduction import measured_claim, write_claims
from xaiimg.studies.runs import TIMINGS, VARIANTS, split_timings
from xaiimg.training.aesthetic import TrainingOutputs, cache_stage_inputs, evaluate_aesthetic, train_aesthetic

METHODS = ("cam", "lrp")
MEASURES = ("subject_share", "energy_pointing_box")
QUALITY = ("srcc", "plcc", "accuracy")
SRCC_TARGET = 0.8
RESULTS_NAME = "aesthetic_planted"


class PlantedRun:
    """The run folder::

        RUN/summary.json                 settings, benchmark config and seeds, per-variant per-seed held-out metrics
        RUN/measures.json                per-scene explanation measures per variant and seed
        RUN/timings.json                 measured seconds (data, cache, each training, explanations, total)
        RUN/<variant>/seed<k>/last.pt    checkpoints (last epoch, best on validation), per-epoch metrics.json
        RUN/<variant>/seed<k>/best.pt
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.summary = self.root / "summary.json"
        self.measures = self.root / "measures.json"
        self.timings = self.root / TIMINGS

    def training_outputs(self, variant: str, seed: int) -> TrainingOutputs:
        if variant not in VARIANTS:
            raise ValueError(f"unknown aesthetic variant {variant!r}; use one of {VARIANTS}")
        folder = self.root / variant / f"seed{int(seed)}"
        return TrainingOutputs(folder / "last.pt", folder / "best.pt", folder / "metrics.json")

    def write(self, path: Path, value: dict) -> Path:
        return write_atomic(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------------------- measures
@torch.no_grad()
def cam_from_stage_inputs(model: AestheticModel, h: torch.Tensor, stage: str, size: tuple[int, int]) -> torch.Tensor:
    """CAM of the mean score at ``model.aggregate`` from the features entering ``stage``: the same numbers as
    :func:`~xaiimg.studies.aesthetic.class_activation_maps` on the images (``w = sum_c p_c (c - score) W_c``,
    ``CAM = sum_k w_k F_k``, bilinear to ``size``, min-max per image), without rerunning the frozen stages."""
    was_training = model.training
    model.eval()
    try:
        with capture_outputs([model.aggregate]) as outputs:
            logits = model.forward_from(h, stage)
    finally:
        model.train(was_training)
    probabilities = logits.softmax(-1)
    bins = torch.arange(1, NUM_BINS + 1, dtype=logits.dtype, device=logits.device)
    weights = (probabilities * (bins - mean_score(probabilities).unsqueeze(1))) @ model.classifier.weight
    cam = torch.einsum("bk,bkhw->bhw", weights, outputs[0]).unsqueeze(1)
    return minmax_normalize(upsample(cam, size))


def contour_band(masks: torch.Tensor, width: int) -> torch.Tensor:
    """Pixels within ``width`` px (Chebyshev) of the subject's boundary, inside or outside: ``[B,1,H,W]`` bool."""
    masks = masks.float()
    dilated = F.max_pool2d(masks, 2 * width + 1, stride=1, padding=width)
    eroded = -F.max_pool2d(-masks, 2 * width + 1, stride=1, padding=width)
    return (dilated - eroded) > 0


def map_measures(maps: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor) -> dict[str, torch.Tensor]:
    """Subject-mass share (NaN-free: an all-zero map scores 0, as the pointing metric does) and the energy-based
    pointing game against ``boxes`` (the registered metric), per image."""
    from xaiimg.metrics import get_metric

    share = subject_mass_share(maps, masks)
    pointing = get_metric("energy-pointing-game")(None, None, maps, masks=boxes).energy_inside
    return {"subject_share": torch.nan_to_num(share, nan=0.0).double(), "energy_pointing_box": pointing.double()}


def spearman_per_image(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman correlation of two maps per image (average ranks), ``[B]``."""
    from xaiimg.ops import average_ranks

    ranks = [torch.stack([average_ranks(row) for row in x.flatten(1).double()]) for x in (a, b)]
    centred = [r - r.mean(1, keepdim=True) for r in ranks]
    return (centred[0] * centred[1]).sum(1) / (centred[0].norm(dim=1) * centred[1].norm(dim=1)).clamp_min(1e-300)


def explanation_measures(model: AestheticModel, x: torch.Tensor, masks: torch.Tensor, *,
                         stage_inputs: torch.Tensor | None = None, stage: str = "blocks.6",
                         lrp_count: int | None = None, band_width: int = 3,
                         batch_size: int = 16) -> dict[str, dict[str, torch.Tensor]]:
    """``{"cam": {...}, "lrp": {...}}`` of per-image measures on model inputs ``x`` ``[N,3,H,W]`` with subject
    ``masks`` ``[N,1,H,W]``: :func:`map_measures` of CAM (from ``stage_inputs`` when given, else
    :func:`~xaiimg.studies.aesthetic.class_activation_maps` on ``x``) for all images and of LRP's positive relevance
    for the first ``lrp_count`` (all if None); for LRP also the share on the ``band_width``-px contour band
    (``contour_share``, its area ``contour_area``) and the per-image Spearman correlation with CAM
    (``cam_spearman``)."""
    from xaiimg.ops import batches
    from xaiimg.studies.aesthetic import class_activation_maps

    masks = masks.bool()
    boxes = bounding_box_masks(masks)
    count = len(x) if lrp_count is None else min(lrp_count, len(x))
    cams, results = [], {"cam": {}, "lrp": {}}
    for part in batches(len(x), batch_size):
        if stage_inputs is not None:
            cams.append(cam_from_stage_inputs(model, stage_inputs[part], stage, tuple(x.shape[-2:])))
        else:
            cams.append(class_activation_maps(model, x[part], "score"))
    cam = torch.cat(cams)
    results["cam"] = map_measures(cam, masks, boxes)
    if count:
        relevance = torch.cat([positive_relevance(lrp_through_attention(model, x[part], explain_score=True))
                               for part in batches(count, batch_size)])
        lrp = map_measures(relevance, masks[:count], boxes[:count])
        band = contour_band(masks[:count], band_width)
        lrp["contour_share"] = torch.nan_to_num(subject_mass_share(relevance, band), nan=0.0).double()
        lrp["contour_area"] = band.flatten(1).double().mean(1)
        lrp["cam_spearman"] = spearman_per_image(cam[:count], relevance)
        results["lrp"] = lrp
    return results


# ---------------------------------------------------------------------------------------------- rows
def _estimate_row(values) -> dict:
    estimate = bootstrap_mean(values)
    return {"n": estimate.n, "mean": estimate.mean, "ci_low": estimate.low, "ci_high": estimate.high}


def _paired_row(attention, plain) -> dict:
    estimate = paired_difference(attention, plain)
    return {"n": estimate.n, "attention": float(torch.as_tensor(attention).mean()),
            "plain": float(torch.as_tensor(plain).mean()), "difference": estimate.mean,
            "ci_low": estimate.low, "ci_high": estimate.high,
            "attention_higher": int((torch.as_tensor(attention) > torch.as_tensor(plain)).sum()),
            "sign_flip_p": sign_flip_test(attention, plain), "wilcoxon_p": wilcoxon_signed_rank(attention, plain)}


def quality_rows(metrics: dict[str, dict[int, dict]]) -> list[dict]:
    """Per variant: each seed's held-out SRCC/PLCC/accuracy, then their mean with the bootstrap interval over
    seeds."""
    rows = []
    for variant, by_seed in metrics.items():
        for quantity in QUALITY:
            for seed, values in by_seed.items():
                rows.append({"table": "quality", "variant": variant, "quantity": quantity, "seed": str(seed),
                             "n": 1, "mean": values[quantity], "ci_low": values[quantity],
                             "ci_high": values[quantity]})
            rows.append({"table": "quality", "variant": variant, "quantity": quantity, "seed": "pooled",
                         **_estimate_row([values[quantity] for values in by_seed.values()])})
    return rows


def pooled_scene_values(measures: dict, variant: str, method: str, quantity: str) -> torch.Tensor:
    """Per scene, the mean over seeds of ``quantity``: ``[N]``."""
    return torch.stack([per_seed[method][quantity] for per_seed in measures[variant].values()]).mean(0)


def explanation_rows(measures: dict[str, dict[int, dict]], areas: dict[str, torch.Tensor]) -> list[dict]:
    """Per method and measure: per seed and pooled (per-scene mean over seeds) paired rows attention - plain, and
    per variant the measure minus chance (the uniform map's score: mask or box area)."""
    rows = []
    seeds = list(measures[VARIANTS[0]])
    for method in METHODS:
        for quantity in MEASURES:
            chance = areas["mask" if quantity == "subject_share" else "box"]
            for seed in [*seeds, "pooled"]:
                if seed == "pooled":
                    values = {v: pooled_scene_values(measures, v, method, quantity) for v in VARIANTS}
                else:
                    values = {v: measures[v][seed][method][quantity] for v in VARIANTS}
                n = len(values["attention"])
                rows.append({"table": "attention-minus-plain", "method": method, "quantity": quantity,
                             "seed": str(seed), **_paired_row(values["attention"], values["plain"])})
                for variant in VARIANTS:
                    rows.append({"table": "minus-chance", "method": method, "quantity": quantity,
                                 "variant": variant, "seed": str(seed),
                                 "chance": float(chance[:n].mean()),
                                 **_paired_row_single(values[variant], chance[:n])})
    return rows


def _paired_row_single(values, chance) -> dict:
    estimate = paired_difference(values, chance)
    return {"n": estimate.n, "value": float(torch.as_tensor(values).mean()), "difference": estimate.mean,
            "ci_low": estimate.low, "ci_high": estimate.high, "sign_flip_p": sign_flip_test(values, chance)}


def _uniform_rows(rows: list[dict]) -> list[dict]:
    """Every row with every column (first-seen order; empty where a table has no such column), for one CSV."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return [{column: row.get(column, "") for column in columns} for row in rows]


def cam_lrp_note(measures: dict, areas: dict[str, torch.Tensor]) -> str:
    """The CAM-vs-LRP comparison in words, from the pooled per-scene numbers."""
    parts = []
    for variant in VARIANTS:
        cam = pooled_scene_values(measures, variant, "cam", "subject_share")
        lrp = pooled_scene_values(measures, variant, "lrp", "subject_share")
        n = len(lrp)
        contour = pooled_scene_values(measures, variant, "lrp", "contour_share")
        band = pooled_scene_values(measures, variant, "lrp", "contour_area")
        rho = pooled_scene_values(measures, variant, "lrp", "cam_spearman")
        parts.append(f"{variant}: subject share CAM {float(cam[:n].mean()):.3f} vs LRP {float(lrp.mean()):.3f} "
                     f"(subject area {float(areas['mask'][:n].mean()):.3f}); LRP on the {float(band.mean()):.3f}-area "
                     f"contour band {float(contour.mean()):.3f}; per-image Spearman(CAM, LRP) "
                     f"{float(rho.mean()):.2f}")
    effects = {method: float((pooled_scene_values(measures, "attention", method, "subject_share")
                              - pooled_scene_values(measures, "plain", method, "subject_share")).mean())
               for method in METHODS}
    agree = "agree" if effects["cam"] * effects["lrp"] > 0 else "disagree"
    return (f"CAM and LRP {agree} on the sign of attention's effect on the subject share (CAM "
            f"{effects['cam']:+.3f}, LRP {effects['lrp']:+.3f}). " + "; ".join(parts) + ". Why they differ: CAM is "
            "the 4x4 aggregate map weighted by the head and min-max normalised, so every cell above the weakest one "
            "keeps mass and its share is pulled toward the area fraction, and its cells' receptive fields span the "
            "image; LRP sends the score to the pixels whose contributions raise it (the subject's stripes and "
            "contours), at pixel resolution. CAM measures where score-raising last-layer features sit, LRP which "
            "input pixels the score is built from.")


# ---------------------------------------------------------------------------------------------- claims
def planted_claims(quality: dict, measures: dict, areas: dict, data: str, model: str, note: str) -> list:
    """Claims 2 and 3 of paper 000 and the model-quality prerequisite (one per variant)."""
    claims = []
    for variant in VARIANTS:
        srcc = [values["srcc"] for values in quality[variant].values()]
        claims.append(measured_claim(
            f"aesthetic-model-quality-{variant}", "aesthetic", "Prerequisite (issue 16)",
            f"the model {'with' if variant == 'attention' else 'without'} attention scores held-out planted scenes "
            f"well enough to be worth explaining: SRCC >= {SRCC_TARGET}", f"target SRCC >= {SRCC_TARGET} (ours)",
            "held-out SRCC per seed", f"{model}, {variant}", data, bootstrap_mean(srcc), "greater", SRCC_TARGET,
            details={"srcc_per_seed": srcc}))
    cam_difference = (pooled_scene_values(measures, "attention", "cam", "subject_share")
                      - pooled_scene_values(measures, "plain", "cam", "subject_share"))
    per_seed = {str(seed): float((measures["attention"][seed]["cam"]["subject_share"]
                                  - measures["plain"][seed]["cam"]["subject_share"]).mean())
                for seed in measures["attention"]}
    claims.append(measured_claim(
        "aesthetic-claim2-cam-attention", "aesthetic", "Fig. 7",
        "with the attention module the CAM concentrates on the image's subject",
        "CAM with attention covers the subject (qualitative figure)",
        "per scene (mean over seeds): CAM subject-mass share with attention minus without",
        f"{model}, attention vs plain", data, bootstrap_mean(cam_difference), "greater",
        note=f"seeds with a positive mean difference: {sum(v > 0 for v in per_seed.values())}/{len(per_seed)}",
        details={"per_seed_mean_difference": per_seed}))
    lrp_share = pooled_scene_values(measures, "attention", "lrp", "subject_share")
    n = len(lrp_share)
    lrp_excess = lrp_share - areas["mask"][:n].double()
    contour = (pooled_scene_values(measures, "attention", "lrp", "contour_share")
               - pooled_scene_values(measures, "attention", "lrp", "contour_area"))
    claims.append(measured_claim(
        "aesthetic-claim3-lrp-subject", "aesthetic", "Fig. 8",
        "LRP shows the model attends to the subject over the background (light, shadow and contours)",
        "relevance on the subject and its contours (qualitative figure)",
        "per scene (mean over seeds): LRP positive-relevance share on the subject minus the subject's area "
        "fraction (the uniform map's share)", f"{model}, attention", data, bootstrap_mean(lrp_excess), "greater",
        note=f"{note} Contours: LRP share on the contour band minus its area {float(contour.mean()):+.3f} "
             f"(95% CI [{bootstrap_mean(contour).low:.3f}, {bootstrap_mean(contour).high:.3f}]).",
        details={"lrp_subject_share": float(lrp_share.mean()), "subject_area": float(areas["mask"][:n].mean()),
                 "contour_excess": float(contour.mean())}))
    return claims


# ---------------------------------------------------------------------------------------------- study
def run_planted_study(run_dir: str | Path, results_dir: str | Path, seeds: Sequence[int] = (0, 1, 2, 3, 4), *,
                      size: int = 128, train: int = 4096, val: int = 128, test: int = 200, epochs: int = 6,
                      batch_size: int = 32, lr: float = 5e-4, score_weight: float = 0.1, stage: str = "blocks.3",
                      reduced_channels: int = 256, lrp_scenes: int = 200, data_seed: int = 1000,
                      backbone: str = "efficientnet_lite0", rule: str = "subject", claims: bool = True,
                      log=functools.partial(print, flush=True)) -> dict:
    """The whole study (module docstring): run folder ``run_dir`` (:class:`PlantedRun`), results
    ``results_dir/aesthetic_planted.{json,csv}`` and (``claims``) ``results_dir/claims/aesthetic.json``.
    Returns the results record."""
    seeds = [int(seed) for seed in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and non-empty, got {seeds}")
    if min(train, val, test) < 2 or lrp_scenes < 0 or epochs < 1:
        raise ValueError(f"need train, val, test >= 2, epochs >= 1 and lrp_scenes >= 0; got {train}, {val}, "
                         f"{test}, {epochs}, {lrp_scenes}")
    log = log or (lambda message: None)
    run, results_dir = PlantedRun(run_dir), Path(results_dir)
    started, cpu_started = time.perf_counter(), time.process_time()
    timings = {}
    config = PlantedConfig(size=size, rule=rule)
    sizes = {"train": train, "val": val, "test": test}
    splits = {name: make_planted_set(count, config, seed=data_seed + offset)
              for offset, (name, count) in enumerate(sizes.items())}
    timings["data_seconds"] = time.perf_counter() - started
    log(f"rendered {sum(sizes.values())} scenes in {timings['data_seconds']:.0f} s")

    def build(variant: str) -> AestheticModel:
        return AestheticModel(backbone, attention=variant == "attention", reduced_channels=reduced_channels)

    base = build("plain")
    spec = base.spec
    mark = time.perf_counter()
    cache = {name: cache_stage_inputs(base, split.dataset(spec), stage) for name, split in splits.items()}
    timings["stage_cache_seconds"] = time.perf_counter() - mark
    log(f"cached the inputs of {stage} in {timings['stage_cache_seconds']:.0f} s")
    test_x = spec.from_unit_range(splits["test"].images)
    masks = splits["test"].masks
    areas = {"mask": masks.flatten(1).double().mean(1), "box": bounding_box_masks(masks).flatten(1).double().mean(1)}
    quality = {variant: {} for variant in VARIANTS}
    measures = {variant: {} for variant in VARIANTS}
    timings["models"] = {}
    for variant in VARIANTS:
        for seed in seeds:
            mark = time.perf_counter()
            torch.manual_seed(seed)
            model = build(variant)
            outputs = run.training_outputs(variant, seed)
            history = train_aesthetic(model, cache["train"], cache["val"], outputs, inputs="stage-inputs",
                                      start_stage=stage, epochs=epochs, batch_size=batch_size, lr=lr,
                                      score_weight=score_weight, seed=seed,
                                      log=lambda r, v=variant, s=seed: log(f"{v} seed {s} epoch {r['epoch']}: train "
                                                                           f"{r['train_loss']:.3f}, val SRCC "
                                                                           f"{r['val']['srcc']:.3f}"))
            best = load_aesthetic(outputs.best_checkpoint, model)
            held_out = evaluate_aesthetic(best, cache["test"], score_weight=score_weight, start_stage=stage)
            quality[variant][seed] = {**held_out, "best_epoch": history["best_epoch"]}
            trained = time.perf_counter()
            measures[variant][seed] = explanation_measures(best, test_x, masks, stage_inputs=cache["test"].tensors[0],
                                                           stage=stage, lrp_count=lrp_scenes)
            timings["models"][f"{variant}/seed{seed}"] = {**split_timings(history)[1],
                                                          "explain_seconds": time.perf_counter() - trained}
            log(f"{variant} seed {seed}: held-out SRCC {held_out['srcc']:.3f}, PLCC {held_out['plcc']:.3f}, "
                f"accuracy {held_out['accuracy']:.3f} (best epoch {history['best_epoch']}); "
                f"{time.perf_counter() - mark:.0f} s")
    note = cam_lrp_note(measures, areas) if lrp_scenes else "LRP not run (lrp_scenes=0)."
    data = (f"planted benchmark (rule {rule}), {size} px; train {train}, val {val}, held-out {test} scenes "
            f"(LRP on the first {min(lrp_scenes, test)}); {len(seeds)} seeds")
    model_name = (f"AestheticModel({backbone}, stages from {stage} on + conv_head fine-tuned, "
                  f"DANet reduction to {reduced_channels} ch)")
    settings = {"seeds": seeds, "size": size, "sizes": sizes, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                "score_weight": score_weight, "stage": stage, "reduced_channels": reduced_channels,
                "lrp_scenes": lrp_scenes, "data_seeds": {name: data_seed + k for k, name in enumerate(sizes)},
                "backbone": backbone, "benchmark": config.as_dict()}
    rows = _uniform_rows(quality_rows(quality) + (explanation_rows(measures, areas) if lrp_scenes else []))
    record = {"study": "aesthetic-planted", "model": model_name, "data": data, "settings": settings, "note": note,
              "rows": rows}
    results_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(results_dir / f"{RESULTS_NAME}.json", to_json(record))
    write_atomic(results_dir / f"{RESULTS_NAME}.csv", csv_text(rows))
    if claims and lrp_scenes:
        write_claims(results_dir / "claims" / "aesthetic.json",
                     planted_claims(quality, measures, areas, data, model_name, note))
    run.write(run.summary, {"settings": settings, "quality": {v: {str(s): q for s, q in by_seed.items()}
                                                              for v, by_seed in quality.items()}})
    run.write(run.measures, {v: {str(s): {m: {k: t.tolist() for k, t in values.items()}
                                          for m, values in per_seed.items()}
                                 for s, per_seed in by_seed.items()} for v, by_seed in measures.items()})
    timings["total_seconds"] = time.perf_counter() - started
    timings["total_cpu_seconds"] = time.process_time() - cpu_started  # both cores' time; robust to other load
    run.write(run.timings, timings)
    log(f"study done in {timings['total_seconds']:.0f} s")
    return record


def read_planted_results(results_dir: str | Path) -> dict:
    """The results record :func:`run_planted_study` wrote (for the notebooks)."""
    path = Path(results_dir) / f"{RESULTS_NAME}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run `xaiimg aesthetic-study --run RUN --results "
                                f"{results_dir}` first")
    return json.loads(path.read_text())

