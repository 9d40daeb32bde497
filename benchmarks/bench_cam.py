"""CAM-family speed on EfficientNet-Lite0 (real weights), batch 8 at 224, float32, on the local device.

Measures in one run (median of ``--repeats`` interleaved rounds after one warm-up round):
forward (no graph), forward + full backward (input and parameter gradients), Captum ``LayerGradCam`` (+ its
bilinear ``interpolate`` and min-max, i.e. the same output as ours), pytorch-grad-cam GradCAM / GradCAM++ /
XGradCAM, and ours (cam, grad-cam, grad-cam++, xgrad-cam). Writes ``benchmarks/out/bench_cam.json`` with the
ratios ours / Captum LayerGradCam (goal <= 1.1) and ours / (forward + backward).

    .venv/bin/python benchmarks/bench_cam.py [--repeats 5] [--batch 8]
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import xaiimg as xi
from xaiimg.ops import minmax_normalize

OUT = Path(__file__).resolve().parent / "out" / "bench_cam.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()

    import pytorch_grad_cam
    from captum.attr import LayerAttribution, LayerGradCam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = xi.load_model("efficientnet_lite0")
    layer_name = model.spec.default_layer
    x = torch.randn(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        targets = model(x).argmax(1)

    reference_model = copy.deepcopy(model)          # Captum / pytorch-grad-cam / full backward write .grad here
    reference_layer = reference_model.get_submodule(layer_name)
    captum = LayerGradCam(reference_model, reference_layer)
    reference_cams = {name: getattr(pytorch_grad_cam, name)(model=reference_model, target_layers=[reference_layer])
                      for name in ("GradCAM", "GradCAMPlusPlus", "XGradCAM")}
    cam_targets = [ClassifierOutputTarget(int(t)) for t in targets]

    def forward():
        with torch.no_grad():
            reference_model(x)

    def forward_backward():
        inputs = x.clone().requires_grad_()
        reference_model(inputs).gather(1, targets.view(-1, 1)).sum().backward()
        reference_model.zero_grad(set_to_none=True)

    def captum_grad_cam():
        raw = captum.attribute(x, target=targets, relu_attributions=True)
        minmax_normalize(LayerAttribution.interpolate(raw, (224, 224), "bilinear"))

    jobs = {"forward": forward, "forward+backward": forward_backward, "captum LayerGradCam": captum_grad_cam}
    for name, cam in reference_cams.items():
        jobs[f"pytorch-grad-cam {name}"] = lambda cam=cam: cam(input_tensor=x, targets=cam_targets)
    for name in ("cam", "grad-cam", "grad-cam++", "xgrad-cam"):
        jobs[f"ours {name}"] = lambda name=name: xi.explain(name, model, x, target=targets)

    times: dict[str, list[float]] = {name: [] for name in jobs}
    for round_index in range(args.repeats + 1):             # round 0 warms up
        for name, job in jobs.items():
            start = time.perf_counter()
            job()
            if round_index:
                times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in times.items()}

    ratios = {}
    for name in ("grad-cam", "grad-cam++", "xgrad-cam", "cam"):
        ours = median[f"ours {name}"]
        ratios[name] = {"ours / captum LayerGradCam": ours / median["captum LayerGradCam"],
                        "ours / (forward+backward)": ours / median["forward+backward"],
                        "ours / forward": ours / median["forward"]}
    for name, cls in (("grad-cam", "GradCAM"), ("grad-cam++", "GradCAMPlusPlus"), ("xgrad-cam", "XGradCAM")):
        ratios[name]["ours / pytorch-grad-cam"] = median[f"ours {name}"] / median[f"pytorch-grad-cam {cls}"]

    result = {
        "benchmark": "CAM family on efficientnet_lite0 (real weights), layer " + layer_name,
        "batch": args.batch, "input": [3, 224, 224], "dtype": "float32", "device": str(x.device),
        "repeats": args.repeats, "statistic": "median seconds per call (interleaved rounds, one warm-up round)",
        "torch_threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
        "seconds": median, "all_seconds": times, "ratios": ratios,
        "goal": "ours grad-cam / captum LayerGradCam <= 1.1",
        "goal_met": ratios["grad-cam"]["ours / captum LayerGradCam"] <= 1.1,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    for name, seconds in median.items():
        print(f"{name:34s} {seconds * 1000:9.1f} ms")
    print(json.dumps(ratios, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
