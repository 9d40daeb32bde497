"""Benchmark: insertion/deletion on EfficientNet-Lite0 at 224 px against its raw forwards and Quantus PixelFlipping.

In one run, on the same two sample images and one fixed smooth saliency map per image:

- ``xaiimg``: ``insertion_deletion(protocol="groupcam")`` (448 px per step, N = 112): ``B*(2N+1)`` forwards.
- ``raw``: the same number of images through the model in the same batch size, nothing else (plain ``model(x)``
  under ``no_grad`` on a prebuilt batch). ``ratio = raw seconds / xaiimg seconds`` is the fraction of the forward
  throughput the metric keeps (target >= 0.85).
- ``quantus``: ``quantus.PixelFlipping`` (deletion), baseline 0 in normalised space (the groupcam deletion
  canvas), softmax, the same map. Quantus broadcasts the map over the 3 channels and flips ``features_in_step``
  values of the flattened ``[3,H,W]`` array per step, and requires ``features_in_step`` to divide ``H*W``; 1344
  (448 pixels x 3) does not divide 50176, so it runs 448 values (149.3 pixels) per step: ``3N = 336`` steps of
  ``B`` images, one step at a time, and its every third point is our deletion curve (the same pixels removed, as
  the map has no ties; the remaining differences are float rounding of different batch sizes).
  Reported: throughput (images/s) of each, and the time of each to produce the same deletion curve.

Writes benchmarks/out/bench_metrics.json.

    .venv/bin/python benchmarks/bench_metrics.py [--repeats 1] [--batch-size 64] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import xaiimg as xi
from xaiimg.metrics import insertion_deletion

OUT = Path(__file__).resolve().parent / "out" / "bench_metrics.json"
STEP = 448


def timed(function, repeats: int, device: torch.device):
    """Median seconds of ``repeats`` calls (the model is warmed up once in ``main``), and the last return value."""
    times, value = [], None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        value = function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def raw_forwards(model, image: torch.Tensor, total: int, batch_size: int) -> None:
    batch = image.expand(batch_size, -1, -1, -1).contiguous()
    with torch.no_grad():
        for start in range(0, total, batch_size):
            model(batch[: min(batch_size, total - start)])


def smooth_saliency(batch: int, size: int, device) -> torch.Tensor:
    """A 7x7 random map upsampled (float64), plus a 1e-9 jitter so that no two pixels tie: with ties, which tied
    pixels a step removes depends on the sort (stable here, unstable in Quantus), and the curves would differ."""
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(batch, 1, 7, 7, generator=generator, dtype=torch.float64)
    jitter = 1e-9 * torch.rand(batch, 1, size, size, generator=generator, dtype=torch.float64)
    return (xi.ops.upsample(coarse, (size, size)) + jitter).to(device)


def quantus_pixel_flipping(model, x: torch.Tensor, saliency: torch.Tensor, targets: torch.Tensor, device) -> np.ndarray:
    import quantus

    metric = quantus.PixelFlipping(features_in_step=STEP, perturb_baseline=0.0, normalise=False, abs=False,
                                   disable_warnings=True, display_progressbar=False)
    curves = metric(model=model, x_batch=x.cpu().numpy(), y_batch=targets.cpu().numpy(),
                    a_batch=saliency.cpu().numpy(), channel_first=True, softmax=True, device=str(device),
                    batch_size=x.shape[0])
    return np.asarray(curves)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)

    model = xi.load_model("efficientnet_lite0").to(device)
    x = model.preprocess(xi.data.sample_images(["chelsea", "coffee"])).to(device)
    batch, _, height, width = x.shape
    saliency = smooth_saliency(batch, height, device)
    num_steps = math.ceil(height * width / STEP)
    forwards = batch * (2 * num_steps + 1)

    raw_forwards(model, x[:1], args.batch_size, args.batch_size)  # warm-up (allocator, kernels)
    raw_seconds, _ = timed(lambda: raw_forwards(model, x[:1], forwards, args.batch_size), args.repeats, device)
    ours_seconds, ours = timed(lambda: insertion_deletion(model, x, saliency, protocol="groupcam",
                                                          batch_size=args.batch_size), args.repeats, device)
    quantus_seconds, quantus_curves = timed(
        lambda: quantus_pixel_flipping(model, x, saliency, ours.targets, device), args.repeats, device)

    ours_deletion = ours.deletion_curve[:, 1:].cpu().numpy()
    curve_difference = np.abs(ours_deletion - quantus_curves[:, 2::3])
    result = {
        "benchmark": "insertion/deletion throughput, EfficientNet-Lite0, 224x224, protocol groupcam (448 px/step)",
        "command": f"python benchmarks/bench_metrics.py --repeats {args.repeats} --batch-size {args.batch_size} "
                   f"--device {args.device}",
        "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.platform(), "processor": platform.processor() or platform.machine(),
        "images": batch, "steps": num_steps, "batch_size": args.batch_size, "repeats": args.repeats,
        "xaiimg": {"seconds": ours_seconds, "forwards": forwards, "images_per_s": forwards / ours_seconds},
        "raw_forward": {"seconds": raw_seconds, "forwards": forwards, "images_per_s": forwards / raw_seconds},
        "throughput_ratio_vs_raw_forward": raw_seconds / ours_seconds,
        "target_ratio_vs_raw_forward": 0.85,
        "quantus_pixel_flipping": {"seconds": quantus_seconds, "forwards": quantus_curves.size,
                                   "images_per_s": quantus_curves.size / quantus_seconds},
        "throughput_ratio_vs_quantus": (forwards / ours_seconds) / (quantus_curves.size / quantus_seconds),
        "speedup_vs_quantus_same_deletion_curve": quantus_seconds / ours_seconds,
        "speedup_note": "xaiimg's time includes the insertion curve too",
        "deletion_curve_vs_quantus": {"max_abs_difference": float(curve_difference.max()),
                                      "points_differing_over_1e-4": int((curve_difference > 1e-4).sum()),
                                      "points": int(curve_difference.size),
                                      "deletion_auc_xaiimg": ours.deletion_auc.tolist()},
        "note": "timings on a shared 2-core CPU are noisy; the ratios are measured in one run",
    }
    result["target_met"] = result["throughput_ratio_vs_raw_forward"] >= 0.85
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
