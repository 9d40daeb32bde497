"""Benchmark: images per second of the thesis methods and evaluations on EfficientNet-Lite0 at 224 px, and the hours
each thesis table would take at that rate (issue 19, item 4).

Every method explains one batch of ``--images`` sample images (methods batch their masked forwards across the
images and masks together) with its defaults, except ``--batch-size`` for the masked forwards. RISE and Score-CAM
are timed on fewer masks and scaled linearly to their own (their masked forwards, one 224 px forward each, are all
but one or two of their passes): RISE on ``--rise-masks`` of its 4,000, Score-CAM on the channels of
``--score-cam-layer`` instead of the 1,280 of its default layer ``bn2``. Each evaluation scores Grad-CAM's maps of
the same images (its cost does not depend on the maps). One timed run each after one warm-up call, wall-clock and
process CPU seconds (on a shared machine the CPU time is the steadier); ``--device cuda`` and ``--autocast
bfloat16`` measure the GPU. Writes benchmarks/out/bench_full_profile.json and prints a short table.

Tables (projected hours = images x sum over the table's methods of (1 / method rate + sum of 1 / evaluation rate)):

- 3-2: 50,000 ImageNet val images; grad-cam, grad-cam++, xgrad-cam, score-cam, group-cam, cameras, msg-cam (the
  04 notebook's methods); insertion/deletion (thesis preset) per map.
- 3-3: 4,952 VOC07 test + 40,504 COCO14 val images; the 04 notebook's pointing methods; the pointing game per map
  (one map per image: images with several classes need one map per class, so this is a lower bound).
- 4-4: 4,276 ImageNet-Segmentation images; grad-cam, lrp and sliding-window (around grad-cam); segmentation.
- 4-2/4-3: 5,000 ImageNet val images (Chefer et al.); the same methods; positive/negative perturbation against the
  predicted and the target class (two evaluations per map).

    .venv/bin/python benchmarks/bench_full_profile.py [--images 2] [--device cpu] [--autocast bfloat16]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

import xaiimg as xi
from xaiimg.methods import get_method
from xaiimg.metrics import get_metric

OUT = Path(__file__).resolve().parent / "out" / "bench_full_profile.json"
SAMPLES = ["chelsea", "coffee", "rocket", "china", "flower", "grace_hopper"]
RISE_MASKS = 4000
METHODS = ["grad-cam", "grad-cam++", "xgrad-cam", "score-cam", "group-cam", "cameras", "msg-cam", "rise", "lrp",
           "sliding-window"]
BATCHED = {"score-cam", "group-cam", "msg-cam", "rise"}   # methods with a batch_size for their masked forwards
EVALUATIONS = ["insertion-deletion", "pointing-game", "segmentation", "perturbation"]
TABLES = {
    "3-2": dict(images=50_000, methods=["grad-cam", "grad-cam++", "xgrad-cam", "score-cam", "group-cam", "cameras",
                                        "msg-cam"], evaluations=["insertion-deletion"]),
    "3-3": dict(images=4_952 + 40_504, methods=["grad-cam", "grad-cam++", "xgrad-cam", "group-cam", "msg-cam"],
                evaluations=["pointing-game"]),
    "4-4": dict(images=4_276, methods=["grad-cam", "lrp", "sliding-window"], evaluations=["segmentation"]),
    "4-2/4-3": dict(images=5_000, methods=["grad-cam", "lrp", "sliding-window"],
                    evaluations=["perturbation", "perturbation"]),
}


def timed(function, device: torch.device) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one call (device synchronised)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, time.process_time() - start_cpu


def channels(model, x: torch.Tensor, layer: str | None) -> int:
    """Channels of ``layer`` (``None``: the model's default layer), i.e. Score-CAM's masks per image."""
    with torch.no_grad():
        return xi.nn.forward_to(model, x[:1], xi.nn.resolve_layer(model, layer)).shape[1]


def method_params(name: str, args) -> dict:
    params = dict(batch_size=args.batch_size) if name in BATCHED else {}
    if name == "rise":
        params["num_masks"] = args.rise_masks
    if name == "score-cam":
        params["layer"] = args.score_cam_layer
    if name == "sliding-window":
        params["wrapped"] = "grad-cam"
    return params


def centre_masks(count: int, size: int, device: torch.device) -> torch.Tensor:
    """Ground truth of the localisation evaluations: a centred box of half the side (cost does not depend on it)."""
    masks = torch.zeros(count, size, size, dtype=torch.bool, device=device)
    masks[:, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = True
    return masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2, help="sample images per batch (at most 6)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--autocast", default=None, choices=[None, "bfloat16", "float16"])
    parser.add_argument("--batch-size", type=int, default=64, help="masked forwards per batch")
    parser.add_argument("--rise-masks", type=int, default=400, help=f"RISE masks timed (scaled to {RISE_MASKS})")
    parser.add_argument("--score-cam-layer", default="blocks.2", help="Score-CAM layer timed (scaled to bn2)")
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    args = parser.parse_args()
    if not 1 <= args.images <= len(SAMPLES):
        parser.error(f"--images must lie in 1..{len(SAMPLES)}")
    device = xi.nn.resolve_device(args.device)
    xi.nn.resolve_autocast(args.autocast, device)

    model = xi.load_model("efficientnet_lite0").to(device).eval()
    x = model.preprocess(xi.data.sample_images(SAMPLES[: args.images])).to(device)
    count, size = x.shape[0], x.shape[-1]
    get_method("grad-cam")(model, x[:1], autocast=args.autocast)   # warm-up: kernels, allocator

    scales = {"rise": RISE_MASKS / args.rise_masks,
              "score-cam": channels(model, x, None) / channels(model, x, args.score_cam_layer)}
    methods = {}
    for name in args.methods:
        explainer = get_method(name, **method_params(name, args))
        seconds, cpu_seconds = timed(lambda: explainer(model, x, autocast=args.autocast), device)
        scale = scales.get(name, 1.0)
        methods[name] = dict(seconds=seconds * scale, cpu_seconds=cpu_seconds * scale,
                             images_per_second=count / (seconds * scale), measured_seconds=seconds, scaled_by=scale,
                             params=method_params(name, args))
        print(f"  {name:18s} {count / (seconds * scale):9.4f} img/s  (CPU {cpu_seconds * scale / count:8.2f} s/img)",
              flush=True)

    saliency = get_method("grad-cam")(model, x)
    masks = centre_masks(count, size, device)
    with torch.no_grad():
        labels = model(x).argmax(dim=-1).roll(1)   # target classes other than the predicted ones
    calls = {
        "insertion-deletion": lambda: get_metric("insertion-deletion")(
            model, x, saliency, protocol="thesis", batch_size=args.batch_size, autocast=args.autocast),
        "pointing-game": lambda: get_metric("pointing-game")(model, x, saliency, masks=masks),
        "segmentation": lambda: get_metric("segmentation")(model, x, saliency, masks=masks),
        "perturbation": lambda: get_metric("positive-negative-perturbation")(
            model, x, saliency, labels, batch_size=args.batch_size, autocast=args.autocast),
    }
    evaluations = {}
    for name in EVALUATIONS:
        seconds, cpu_seconds = timed(calls[name], device)
        evaluations[name] = dict(seconds=seconds, cpu_seconds=cpu_seconds, images_per_second=count / seconds)
        print(f"  {name:18s} {count / seconds:9.4f} img/s  (CPU {cpu_seconds / count:8.2f} s/img)", flush=True)

    tables = {}
    for table, spec in TABLES.items():
        if not all(method in methods for method in spec["methods"]):
            continue
        per_image = sum(1 / methods[m]["images_per_second"]
                        + sum(1 / evaluations[e]["images_per_second"] for e in spec["evaluations"])
                        for m in spec["methods"])
        cpu_per_image = sum(methods[m]["cpu_seconds"] / count
                            + sum(evaluations[e]["cpu_seconds"] / count for e in spec["evaluations"])
                            for m in spec["methods"])
        tables[table] = dict(**spec, seconds_per_image=per_image, hours=spec["images"] * per_image / 3600,
                             cpu_hours=spec["images"] * cpu_per_image / 3600)

    record = dict(
        device=str(device), device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else
        platform.processor() or platform.machine(), cpu_count=os.cpu_count(), threads=torch.get_num_threads(),
        torch=torch.__version__, autocast=args.autocast, images=count, size=size, batch_size=args.batch_size,
        model="efficientnet_lite0", methods=methods, evaluations=evaluations, tables=tables)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(record, indent=2))

    print(f"\nEfficientNet-Lite0, {count} images at {size} px on {device} (autocast {args.autocast}), "
          f"{torch.get_num_threads()} threads")
    print(f"{'table':8s} {'images':>7s} {'s/image':>9s} {'hours':>9s} {'CPU h':>9s}  methods + evaluations")
    for table, row in tables.items():
        print(f"{table:8s} {row['images']:7d} {row['seconds_per_image']:9.2f} {row['hours']:9.1f} "
              f"{row['cpu_hours']:9.1f}  "
              f"{', '.join(row['methods'])} + {', '.join(row['evaluations'])}")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
