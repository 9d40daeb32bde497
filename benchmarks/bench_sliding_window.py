"""Benchmark: sliding-window enhancement (thesis ch.4) of Grad-CAM on EfficientNet-Lite0 at 224 px.

Measured in one run, on the same images and the same code path:
- batched: ``--batch-sizes`` jobs (full image or upsampled window) per wrapped Grad-CAM call and per probability
  forward; 26 puts one image and its 25 windows in one call;
- per-window loop: ``batch_size=1``, i.e. one wrapped call and one probability forward per window;
- the unavoidable passes alone: for each image, its 26 inputs through a no-grad forward (window probabilities)
  and a forward + backward to the CAM layer (Grad-CAM), in chunks of the default batch size.
- the model alone: no-grad forwards of the 26 jobs at batch 1 and at each batch size, which shows whether the
  hardware runs larger batches faster per image at all (on 2 CPU cores it does not).
All run in turn within each repeat (on a shared machine load then hits all alike). Reports median seconds, the
ratios loop / batched for each batch size (target: >= 1 for the default, i.e. batched not slower) and default /
passes, and the largest difference between batched and loop outputs.
Writes benchmarks/out/bench_sliding_window.json.

    .venv/bin/python benchmarks/bench_sliding_window.py [--images 1] [--repeats 3] [--batch-sizes 4 8 26]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import torch

import xaiimg as xi
from xaiimg.methods.sliding_window import SlidingWindow
from xaiimg.nn import frozen_parameters

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


@torch.no_grad()
def forwards(model, jobs: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([model(chunk) for chunk in jobs.split(batch_size)])


@contextmanager
def layer_output_as_leaf(layer: torch.nn.Module, leaves: list):
    """While active (and grad is enabled), the layer's output is replaced by a detached leaf needing grad."""
    def hook(_module, _inputs, output):
        if torch.is_grad_enabled():
            leaves.append(output.detach().requires_grad_())
            return leaves[-1]
        return None

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def unavoidable_passes(model, x: torch.Tensor, method: SlidingWindow) -> None:
    """Grad-CAM's passes on each image's 26 inputs (full image + 25 upsampled windows) in chunks of
    ``method.batch_size``: a no-grad forward (window probabilities) and a forward + backward from the target
    logits to the CAM layer (the graph starts at that layer's output, as nothing below it needs gradients)."""
    height, width = x.shape[-2:]
    corners = method.windows(height, width)
    win_h, win_w = method.window
    layer = model.get_submodule(model.spec.default_layer)
    leaves = []
    with frozen_parameters(model), layer_output_as_leaf(layer, leaves):
        for image in x:
            crops = torch.stack([image[:, r:r + win_h, c:c + win_w] for r, c in corners])
            jobs = torch.cat([image[None], xi.ops.upsample(crops, (height, width))])
            for inputs in jobs.split(method.batch_size):
                with torch.no_grad():
                    model(inputs)
                logits = model(inputs)
                torch.autograd.grad(logits.max(dim=1).values.sum(), leaves.pop())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8, 26])
    args = parser.parse_args()
    device = torch.device(args.device)

    model = xi.load_model("efficientnet_lite0").to(device)
    x = model.preprocess(xi.data.sample_images(SAMPLES[:args.images])).to(device)
    wrapped = "grad-cam"
    default = SlidingWindow(wrapped)
    batched = {size: SlidingWindow(wrapped, batch_size=size) for size in sorted(set(args.batch_sizes))}
    loop = SlidingWindow(wrapped, batch_size=1)
    windows = len(default.windows(*x.shape[-2:]))

    functions = {f"batch {size}": (lambda method=method: method(model, x)) for size, method in batched.items()}
    functions["default"] = lambda: default(model, x)
    functions["loop"] = lambda: loop(model, x)
    functions["passes"] = lambda: unavoidable_passes(model, x, default)
    jobs = torch.randn(windows + 1, 3, *x.shape[-2:], device=device)
    for size in sorted({1, *batched}):  # the model alone: no-grad forwards of the 26 jobs in chunks of ``size``
        functions[f"forwards only, batch {size}"] = lambda size=size: forwards(model, jobs, size)
    seconds, results = interleaved(functions, args.repeats, device)

    result = {
        "benchmark": "sliding-window enhancement of Grad-CAM, EfficientNet-Lite0, 224 px, window 96, stride 32",
        "wrapped_method": wrapped,
        "images": args.images,
        "windows_per_image": windows,
        "default_batch_size": default.batch_size,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "repeats": args.repeats,
        "seconds": seconds,
        "ratio_loop_over_default": seconds["loop"] / seconds["default"],
        "ratio_loop_over_batch_size": {size: seconds["loop"] / seconds[f"batch {size}"] for size in batched},
        "ratio_default_over_passes": seconds["default"] / seconds["passes"],
        "max_abs_difference_batched_vs_loop": max(float((results[name] - results["loop"]).abs().max())
                                                  for name in ("default", *(f"batch {size}" for size in batched))),
        "target_met": seconds["loop"] / seconds["default"] >= 1,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
