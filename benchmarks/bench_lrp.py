"""LRP speed on EfficientNet-Lite0 (real weights), batch 8 at 224, float32, on the local device.

Measures in one run (median of ``--repeats`` interleaved rounds after one warm-up round): forward + backward
of the target logits to the input with frozen parameters (the passes LRP cannot avoid), forward + backward with
parameter gradients too (what a plain ``.backward()`` costs), ours (``LRP(composite).attribute``) and zennit 0.5.1
(the same composite, with the BatchNorm-merge and skip-connection canonizers zennit needs for timm's blocks) for
the composites ``epsilon``, ``epsilon-plus`` and ``epsilon-gamma-box`` (the default), and counts each job's
convolutions (forward products and transposed ones for input gradients). Writes
``benchmarks/out/bench_lrp.json`` with ours / (forward + backward) and ours / zennit, both as the ratio of the
medians and as the median (and range) of the ratios within each round, which is steadier on a shared machine.

Goals (issue 19 item 5): each composite within 1.25x of its own convolution bound, in units of forward +
backward (input gradient only): epsilon runs the model's own products (bound 1, goal <= 1.5, as before); gamma
needs two products and two transposes per convolution (bound ~1.64: the convolutions take ~64 % of forward +
backward), goal <= 2.05; z+ computes ``w+ x`` and its transpose instead of the layer's own (bound ~1.28), goal
<= 1.6.

    .venv/bin/python benchmarks/bench_lrp.py [--repeats 3] [--batch 8] [--threads N] [--no-zennit]
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
GOALS = {"epsilon": 1.5, "epsilon-plus": 1.6, "epsilon-gamma-box": 2.05}  # x forward+backward (input gradient)
MINIMAL = "forward+backward (input gradient only)"


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
    """How many convolutions one call of ``job`` runs: forward products and input-gradient (transposed) ones
    (``convolution_backward`` and transposed ``convolution``), counted at the dispatcher, so the rules' extra
    products show beside the model's own. A call with weights stacked on one side counts once."""
    from torch.utils._python_dispatch import TorchDispatchMode

    counts = {"forward": 0, "backward": 0}

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.convolution.default:
                counts["backward" if args[6] else "forward"] += 1  # args[6]: transposed
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
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--no-zennit", action="store_true", help="skip zennit (its gamma composite takes ~10x)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

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
        if not args.no_zennit:
            jobs[f"zennit {name}"] = zennit_lrp(name)

    convolutions = {name: convolution_counts(job) for name, job in jobs.items()}
    times: dict[str, list[float]] = {name: [] for name in jobs}
    cpu_times: dict[str, list[float]] = {name: [] for name in jobs}  # process CPU time (all threads)
    for round_index in range(args.repeats + 1):             # round 0 warms up
        for name, job in jobs.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            job()
            if round_index:
                times[name].append(time.perf_counter() - start)
                cpu_times[name].append(time.process_time() - cpu_start)
    median = {name: statistics.median(values) for name, values in times.items()}

    def per_round(job: str, reference: str, table=times) -> dict[str, float]:
        values = [a / b for a, b in zip(table[job], table[reference])]
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    minimal = median[MINIMAL]
    full = median["forward+backward (input and parameter gradients)"]
    ratios = {}
    for name in COMPOSITES:
        ours = median[f"ours {name}"]
        ratios[name] = {f"ours / {MINIMAL}": ours / minimal,
                        "ours / forward+backward (input and parameter gradients)": ours / full,
                        f"ours / {MINIMAL}, per round": per_round(f"ours {name}", MINIMAL),
                        f"ours / {MINIMAL}, CPU time, per round": per_round(f"ours {name}", MINIMAL, cpu_times)}
        if not args.no_zennit:
            ratios[name]["ours / zennit"] = ours / median[f"zennit {name}"]
            ratios[name]["zennit / " + MINIMAL] = median[f"zennit {name}"] / minimal
    result = {
        "benchmark": "LRP on efficientnet_lite0 (real weights)",
        "batch": args.batch, "input": [3, 224, 224], "dtype": "float32", "device": str(x.device),
        "repeats": args.repeats, "statistic": "median seconds per call (interleaved rounds, one warm-up round)",
        "torch_threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
        "seconds": median, "all_seconds": times, "all_cpu_seconds": cpu_times, "ratios": ratios,
        "convolutions per call": convolutions,
        "goal": {name: f"ours / {MINIMAL} <= {goal}" for name, goal in GOALS.items()},
        "goal_met": {name: ratios[name][f"ours / {MINIMAL}"] <= GOALS[name] for name in COMPOSITES},
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    for name, seconds in median.items():
        print(f"{name:52s} {seconds * 1000:9.1f} ms   convolutions {convolutions[name]}")
    print(json.dumps(ratios, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
