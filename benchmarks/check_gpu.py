"""GPU check (issue 19, item 1): run on a machine with CUDA; exits 1 when a check fails.

1. tests/test_device.py under pytest: every registered method and the main metrics on ``cuda`` with host round trips
   forbidden (the CUDA cases are parametrised only when CUDA is present, so this is where they run).
2. EfficientNet-Lite0 (real weights) at 224 px, model and images on the CPU, ``device="cuda"``: each thesis method's
   maps come back on the CPU in float32, the model is back on the CPU, and the maps agree with the CPU's (largest
   absolute difference of [0,1] maps, ``--tolerance``); insertion/deletion (thesis preset) AUCs agree the same way.
3. The same with ``autocast="bfloat16"`` and ``"float16"``: maps finite, on the CPU, float32; their difference from
   the float32 maps is reported, not judged.

Writes benchmarks/out/check_gpu.json. Then measure: ``benchmarks/bench_full_profile.py --device cuda --images 6``.

    .venv/bin/python benchmarks/check_gpu.py [--tolerance 0.02]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

import xaiimg as xi
from xaiimg.methods import get_method
from xaiimg.metrics import get_metric

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out" / "check_gpu.json"
METHODS = {"grad-cam": {}, "grad-cam++": {}, "xgrad-cam": {}, "score-cam": dict(layer="blocks.2"),
           "group-cam": {}, "cameras": {}, "msg-cam": {}, "rise": dict(num_masks=500), "lrp": {},
           "sliding-window": dict(wrapped="grad-cam")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tolerance", type=float, default=0.02, help="largest |GPU - CPU| of [0,1] maps")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("CUDA is not available on this machine: nothing to check")
        return 1
    report: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "failures": []}

    tests = subprocess.run([sys.executable, "-m", "pytest", "tests/test_device.py", "-q", "-p", "no:cacheprovider"],
                           cwd=ROOT, capture_output=True, text=True)
    report["test_device"] = tests.stdout.strip().splitlines()[-1] if tests.stdout.strip() else tests.stderr[-500:]
    if tests.returncode != 0:
        report["failures"].append(f"tests/test_device.py: {report['test_device']}")

    model = xi.load_model("efficientnet_lite0").eval()
    x = model.preprocess(xi.data.sample_images(["chelsea", "coffee"]))
    report["methods"] = {}
    for name, params in METHODS.items():
        explainer = get_method(name, **params)
        on_cpu = explainer(model, x)
        row = {}
        for autocast in (None, "bfloat16", "float16"):
            maps = explainer(model, x, device="cuda", autocast=autocast)
            placed = maps.device.type == "cpu" and maps.dtype == torch.float32 and torch.isfinite(maps).all().item()
            model_home = next(model.parameters()).device.type == "cpu"
            difference = (maps - on_cpu).abs().max().item()
            row[str(autocast)] = dict(max_abs_difference=difference, placed=bool(placed), model_home=model_home)
            if not placed or not model_home:
                report["failures"].append(f"{name} autocast={autocast}: maps or model not where they belong")
            if autocast is None and difference > args.tolerance:
                report["failures"].append(f"{name}: GPU maps differ from CPU maps by {difference:.3g}")
        report["methods"][name] = row
        print(f"{name:15s} " + "  ".join(f"{k}: {v['max_abs_difference']:.2e}" for k, v in row.items()), flush=True)

    saliency = get_method("grad-cam")(model, x)
    metric = get_metric("insertion-deletion")
    on_cpu = metric(model, x, saliency, protocol="thesis")
    on_gpu = metric(model, x, saliency, protocol="thesis", device="cuda")
    difference = max((on_gpu.insertion_auc - on_cpu.insertion_auc).abs().max().item(),
                     (on_gpu.deletion_auc - on_cpu.deletion_auc).abs().max().item())
    report["insertion_deletion_max_auc_difference"] = difference
    if on_gpu.insertion_auc.device.type != "cpu" or difference > args.tolerance:
        report["failures"].append(f"insertion/deletion: GPU AUCs differ from CPU by {difference:.3g} or not on CPU")

    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2))
    print(f"test_device: {report['test_device']}; insertion/deletion AUC difference {difference:.2e}")
    print("FAILURES:\n  " + "\n  ".join(report["failures"]) if report["failures"] else "all GPU checks passed")
    print(f"wrote {OUT}")
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
