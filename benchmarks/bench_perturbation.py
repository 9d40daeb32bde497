"""Benchmark: Score-CAM, Group-CAM and MSG-CAM on EfficientNet-Lite0 at 224 px (one run, same image, same code).

For each method: seconds (fastest of ``--repeats`` runs, wall-clock and process CPU) of the method and of
its model passes alone (plain torch calls on inputs of the same sizes and batch sizes, nothing else), and
their ratio (targets: Score-CAM and Group-CAM <= 1.05x their masked forwards; MSG-CAM <= 1.15x its model
passes). Group-CAM is also reported against all of its passes
(forward+backward, baseline, masked), since with 32 groups the first two are ~10% of the work by themselves.
Score-CAM is also compared with pytorch-grad-cam's ScoreCAM on the same job (same layer, batch size, mask
upsampling and weighting). Score-CAM runs on ``blocks.2`` (40 channels, 28x28) instead of the default
``bn2`` (1280 channels, ~1280 masked forwards, about a minute per run on 2 CPU cores for each library) to keep
the whole script under 3 minutes on 2 cores; the ratios do not depend on the channel count. MSG-CAM uses its
defaults (8 scales, 224..924 px). Writes benchmarks/out/bench_perturbation.json.

    .venv/bin/python benchmarks/bench_perturbation.py [--repeats 2] [--device cpu] [--score-layer blocks.2]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import xaiimg as xi
from xaiimg.methods.msgcam import MSGCAM
from xaiimg.methods.perturbation import GroupCAM, ScoreCAM
from xaiimg.methods.perturbation_base import scaled_sizes
from xaiimg.nn import capture_outputs, frozen_parameters, select_scores

OUT = Path(__file__).resolve().parent / "out" / "bench_perturbation.json"


def timed(function, repeats: int, device: torch.device) -> dict[str, float]:
    """Fastest wall-clock and process-CPU seconds over ``repeats`` runs after a warm-up (the minimum is the least
    disturbed by other processes; CPU time is the steadier of the two on a shared machine)."""
    function()  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return dict(wall=min(wall), cpu=min(cpu))


def ratio(numerator: dict[str, float], denominator: dict[str, float]) -> dict[str, float]:
    return {kind: numerator[kind] / denominator[kind] for kind in numerator}


def no_grad_forwards(model, image: torch.Tensor, total: int, batch_size: int) -> None:
    """``total`` images through the model in batches of ``batch_size`` (content does not change the cost)."""
    batch = image.expand(batch_size, -1, -1, -1).contiguous()
    with torch.no_grad():
        for start in range(0, total, batch_size):
            model(batch[: min(batch_size, total - start)])


def forward_backward_to_layer(model, layer, x: torch.Tensor, target: torch.Tensor) -> None:
    """One forward with autograd on and the backward of the target logit down to ``layer``'s output."""
    with frozen_parameters(model), capture_outputs([layer]) as captured:
        logits = model(x.detach().requires_grad_(True))
        torch.autograd.grad(select_scores(logits, target).sum(), captured[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--score-layer", default="blocks.2")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--methods", nargs="+", default=["score-cam", "group-cam", "msg-cam"],
                        choices=["score-cam", "group-cam", "msg-cam"])
    args = parser.parse_args()
    device = torch.device(args.device)
    model = xi.load_model("efficientnet_lite0").to(device)
    x = model.preprocess(xi.data.sample_images(["chelsea"])).to(device)
    with torch.no_grad():
        target = model(x).argmax(-1)
    layer = model.get_submodule(model.spec.default_layer)
    bs = args.batch_size
    results = {}

    if "score-cam" in args.methods:
        results["score-cam"] = bench_score_cam(model, x, target, args.score_layer, bs, args.repeats, device)
    if "group-cam" in args.methods:
        results["group-cam"] = bench_group_cam(model, x, target, layer, bs, args.repeats, device)
    if "msg-cam" in args.methods:
        results["msg-cam"] = bench_msg_cam(model, x, target, layer, bs, args.repeats, device)

    report = dict(benchmark="bench_perturbation", model="efficientnet_lite0", input=list(x.shape),
                  device=str(device), threads=torch.get_num_threads(), repeats=args.repeats, batch_size=bs,
                  torch=torch.__version__, python=platform.python_version(), results=results)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


def bench_score_cam(model, x, target, layer_name, bs, repeats, device):
    """1 forward + C masked forwards; and pytorch-grad-cam's ScoreCAM on the same job."""
    from pytorch_grad_cam import ScoreCAM as GradCamScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer = model.get_submodule(layer_name)
    with torch.no_grad(), capture_outputs([layer]) as captured:
        model(x)
    channels = captured[0].shape[1]
    ours = ScoreCAM(layer=layer_name, batch_size=bs, weights="logit-softmax", align_corners=True)
    method = timed(lambda: ours(model, x, target=target), repeats, device)
    masked = timed(lambda: no_grad_forwards(model, x, channels, bs), repeats, device)
    anchor = GradCamScoreCAM(model=model, target_layers=[layer])
    anchor.batch_size = bs
    try:
        reference = timed(lambda: anchor(input_tensor=x, targets=[ClassifierOutputTarget(int(target))]),
                          repeats, device)
    finally:
        anchor.activations_and_grads.release()
    return dict(layer=layer_name, channels=channels, seconds=method, masked_forwards_seconds=masked,
                ratio_to_masked_forwards=ratio(method, masked), pytorch_grad_cam_seconds=reference,
                ratio_to_pytorch_grad_cam=ratio(method, reference))


def bench_group_cam(model, x, target, layer, bs, repeats, device):
    """1 forward+backward, 1 baseline forward, 32 masked forwards."""
    group_cam = GroupCAM(batch_size=bs)

    def all_passes():
        forward_backward_to_layer(model, layer, x, target)
        no_grad_forwards(model, x, 1, bs)
        no_grad_forwards(model, x, group_cam.groups, bs)

    method = timed(lambda: group_cam(model, x, target=target), repeats, device)
    masked = timed(lambda: no_grad_forwards(model, x, group_cam.groups, bs), repeats, device)
    passes = timed(all_passes, repeats, device)
    return dict(layer=model.spec.default_layer, groups=group_cam.groups, seconds=method,
                masked_forwards_seconds=masked, ratio_to_masked_forwards=ratio(method, masked),
                all_passes_seconds=passes, ratio_to_all_passes=ratio(method, passes))


def bench_msg_cam(model, x, target, layer, bs, repeats, device):
    """One forward+backward per scale, 1 baseline forward, 32 masked forwards."""
    msg_cam = MSGCAM(batch_size=bs)
    scales = msg_cam.scales(x.shape[-2])
    sizes = scaled_sizes(tuple(x.shape[-2:]), scales, scales[0])

    def model_passes():
        for size in sizes:
            scaled = x if size == tuple(x.shape[-2:]) else F.interpolate(x, size=size, mode="bicubic")
            forward_backward_to_layer(model, layer, scaled, target)
        no_grad_forwards(model, x, 1, bs)
        no_grad_forwards(model, x, msg_cam.groups, bs)

    method = timed(lambda: msg_cam(model, x, target=target), repeats, device)
    passes = timed(model_passes, repeats, device)
    return dict(layer=model.spec.default_layer, scales=scales, groups=msg_cam.groups, seconds=method,
                model_passes_seconds=passes, ratio_to_model_passes=ratio(method, passes))


if __name__ == "__main__":
    main()
