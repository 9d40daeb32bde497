"""LRP speed on EfficientNet-Lite0 (real weights), batch 8 at 224, float32, on the local device.

Measures in one run (median of ``--repeats`` interleaved rounds after one warm-up round): forward + backward
of the target logits to the input with frozen parameters (the passes LRP cannot avoid), forward + backward with
parameter gradients too (what a plain ``.backward()`` costs), ours (``LRP(composite).attribute``) and zennit 0.5.1
(the same composite, with the BatchNorm-merge and skip-connection canonizers zennit needs for timm's blocks) for
the composites ``epsilon``, ``epsilon-plus`` and ``epsilon-gamma-box`` (the default), and counts each job's
convolutions (forward products and transposed ones for input gradients). Writes
``benchmarks/out/bench_lrp.json`` with ours / (forward + backward) (goal <= 1.5) and ours / zennit.

    .venv/bin/python benchmarks/bench_lrp.py [--repeats 3] [--batch 8]
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
from xaiimg.methods.lrp import LRP

OUT = Path(__file__).resolve().parent / "out" / "bench_lrp.json"
COMPOSITES = ("epsilon", "epsilon-plus", "epsilon-gamma-box")


def zennit_composite(name: str, model):
    """zennit's composite for ``name`` with canonizers for timm's EfficientNet-Lite (BatchNormAct2d merges named
    explicitly, skip additions through zennit's ``Sum``)."""
    from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual
    from zennit.canonizers import AttributeCanonizer, CompositeCanonizer, NamedMergeBatchNorm
    from zennit.composites import EpsilonGammaBox, EpsilonPlus, LayerMapComposite, layer_map_base
    from zennit.layer import Sum
    from zennit.rules import Epsilon
    from zennit.types import Linear

    def inverted_residual(self, x):
        out = self.bn3(self.conv_pwl(self.se(self.aa(self.bn2(self.conv_dw(self.bn1(self.conv_pw(x))))))))
        return self.canonizer_sum(torch.stack([x, self.drop_path(out)], dim=-1))

    def depthwise_separable(self, x):
        out = self.bn2(self.conv_pw(self.se(self.aa(self.bn1(self.conv_dw(x))))))
        return self.canonizer_sum(torch.stack([x, self.drop_path(out)], dim=-1))

    def skip_sum(_name, module):
        forward = {InvertedResidual: inverted_residual, DepthwiseSeparableConv: depthwise_separable}.get(type(module))
        if forward is None or not module.has_skip:
            return None
        return {"forward": forward.__get__(module), "canonizer_sum": Sum()}

    pairs = [(("conv_stem",), "bn1"), (("conv_head",), "bn2")]
    order = {DepthwiseSeparableConv: [("conv_dw", "bn1"), ("conv_pw", "bn2")],
             InvertedResidual: [("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")]}
    for block_name, module in model.named_modules():
        pairs += [((f"{block_name}.{conv}",), f"{block_name}.{norm}") for conv, norm in order.get(type(module), [])]
    canonizers = [CompositeCanonizer([NamedMergeBatchNorm(pairs), AttributeCanonizer(skip_sum)])]
    low = model.spec.from_unit_range(torch.zeros(1, 3, 1, 1))
    high = model.spec.from_unit_range(torch.ones(1, 3, 1, 1))
    return {"epsilon": lambda: LayerMapComposite(layer_map_base() + [(Linear, Epsilon())], canonizers=canonizers),
            "epsilon-plus": lambda: EpsilonPlus(canonizers=canonizers),
            "epsilon-gamma-box": lambda: EpsilonGammaBox(low=low, high=high, canonizers=canonizers)}[name]()


def convolution_counts(job) -> dict[str, int]:
    """How many convolutions one call of ``job`` runs: forward products and input-gradient (transposed) ones,
    counted at the dispatcher, so the rules' extra products show beside the model's own."""
    from torch.utils._python_dispatch import TorchDispatchMode

    counts = {"forward": 0, "backward": 0}

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.convolution.default:
                counts["forward"] += 1
            elif func is torch.ops.aten.convolution_backward.default:
                counts["backward"] += 1
            return func(*args, **(kwargs or {}))

    with Count():
        job()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()

    model = xi.load_model("efficientnet_lite0")
    x = torch.randn(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        targets = model(x).argmax(1)
    one_hot = torch.zeros(args.batch, model.spec.num_classes).scatter_(1, targets[:, None], 1.0)

    def forward_backward(parameter_gradients: bool):
        def run():
            for p in model.parameters():
                p.requires_grad_(parameter_gradients)
            inputs = x.clone().requires_grad_()
            torch.autograd.grad(model(inputs), inputs, one_hot)
            for p in model.parameters():
                p.requires_grad_(True)
        return run

    def zennit_lrp(name):
        composite = zennit_composite(name, model)

        def run():
            inputs = x.clone().requires_grad_()
            with composite.context(model) as modified:
                logits = modified(inputs)
                torch.autograd.grad(logits, inputs, one_hot * logits.detach())
        return run

    jobs = {"forward+backward (input gradient only)": forward_backward(False),
            "forward+backward (input and parameter gradients)": forward_backward(True)}
    for name in COMPOSITES:
        jobs[f"ours {name}"] = lambda name=name: LRP(name).attribute(model, x, targets)
        jobs[f"zennit {name}"] = zennit_lrp(name)

    convolutions = {name: convolution_counts(job) for name, job in jobs.items()}
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for round_index in range(args.repeats + 1):             # round 0 warms up
        for name, job in jobs.items():
            start = time.perf_counter()
            job()
            if round_index:
                times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in times.items()}

    minimal = median["forward+backward (input gradient only)"]
    full = median["forward+backward (input and parameter gradients)"]
    ratios = {name: {"ours / forward+backward (input gradient only)": median[f"ours {name}"] / minimal,
                     "ours / forward+backward (input and parameter gradients)": median[f"ours {name}"] / full,
                     "ours / zennit": median[f"ours {name}"] / median[f"zennit {name}"]}
              for name in COMPOSITES}
    result = {
        "benchmark": "LRP on efficientnet_lite0 (real weights)",
        "batch": args.batch, "input": [3, 224, 224], "dtype": "float32", "device": str(x.device),
        "repeats": args.repeats, "statistic": "median seconds per call (interleaved rounds, one warm-up round)",
        "torch_threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
        "seconds": median, "all_seconds": times, "ratios": ratios, "convolutions per call": convolutions,
        "goal": "ours / forward+backward (input gradient only) <= 1.5",
        "goal_met": {name: ratios[name]["ours / forward+backward (input gradient only)"] <= 1.5
                     for name in COMPOSITES},
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    for name, seconds in median.items():
        print(f"{name:52s} {seconds * 1000:9.1f} ms   convolutions {convolutions[name]}")
    print(json.dumps(ratios, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
