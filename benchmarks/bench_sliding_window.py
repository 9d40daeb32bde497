"""Benchmark: sliding-window enhancement (thesis ch.4) of Grad-CAM on EfficientNet-Lite0 at 224 px.

Measured in one run, on the same images and the same code path:
- batched: one image and its 25 windows (26 jobs) per wrapped Grad-CAM call and per probability forward;
- per-window loop: ``batch_size=1``, i.e. one wrapped call and one probability forward per window;
- the unavoidable passes alone: for each image, its 26 inputs through a no-grad forward (window probabilities)
  and a forward + backward to the CAM layer (Grad-CAM), batched.
The three run in turn within each repeat (on a shared machine load then hits all alike). Reports median
seconds, the ratios loop / batched and batched / passes, and the largest difference between the two outputs.
Writes benchmarks/out/bench_sliding_window.json.

    .venv/bin/python benchmarks/bench_sliding_window.py [--images 1] [--repeats 3] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import xaiimg as xi
from xaiimg.methods.base import capture_outputs, frozen_parameters
from xaiimg.methods.sliding_window import SlidingWindow

OUT = Path(__file__).resolve().parent / "out" / "bench_sliding_window.json"
SAMPLES = ["chelsea", "coffee", "astronaut", "rocket", "motorcycle"]


def interleaved(functions: dict, repeats: int, device: torch.device) -> tuple[dict, dict]:
    """Median seconds of each function, run in turn within every repeat (so load changes hit all alike)."""
    def once(function):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        result = function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start, result

    results = {name: function() for name, function in functions.items()}  # warm-up
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            seconds, results[name] = once(function)
            times[name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}, results


def unavoidable_passes(model, x: torch.Tensor, method: SlidingWindow) -> None:
    """Grad-CAM's passes on each image's 26 inputs (full image + 25 upsampled windows), batched: a no-grad
    forward (window probabilities) and a forward + backward from the target logits to the CAM layer."""
    height, width = x.shape[-2:]
    corners = method.windows(height, width)
    win_h, win_w = method.window
    layer = model.get_submodule(model.spec.default_layer)
    with frozen_parameters(model):
        for image in x:
            crops = torch.stack([image[:, r:r + win_h, c:c + win_w] for r, c in corners])
            inputs = torch.cat([image[None], xi.ops.upsample(crops, (height, width))])
            with torch.no_grad():
                model(inputs)
            with capture_outputs([layer]) as outputs:
                logits = model(inputs.requires_grad_(True))
            torch.autograd.grad(logits.max(dim=1).values.sum(), outputs[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)

    model = xi.load_model("efficientnet_lite0").to(device)
    x = model.preprocess(xi.data.sample_images(SAMPLES[:args.images])).to(device)
    wrapped = "grad-cam"
    batched = SlidingWindow(wrapped, batch_size=26)
    loop = SlidingWindow(wrapped, batch_size=1)
    windows = len(batched.windows(*x.shape[-2:]))

    seconds, results = interleaved({"batched": lambda: batched(model, x), "loop": lambda: loop(model, x),
                                    "passes": lambda: unavoidable_passes(model, x, batched)}, args.repeats, device)
    batched_s, loop_s, passes_s = seconds["batched"], seconds["loop"], seconds["passes"]
    batched_maps, loop_maps = results["batched"], results["loop"]

    result = {
        "benchmark": "sliding-window enhancement of Grad-CAM, EfficientNet-Lite0, 224 px, window 96, stride 32",
        "wrapped_method": wrapped,
        "images": args.images,
        "windows_per_image": windows,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "repeats": args.repeats,
        "seconds_batched": batched_s,
        "seconds_per_window_loop": loop_s,
        "seconds_unavoidable_passes": passes_s,
        "ratio_loop_over_batched": loop_s / batched_s,
        "ratio_batched_over_passes": batched_s / passes_s,
        "max_abs_difference_batched_vs_loop": float((batched_maps - loop_maps).abs().max()),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
