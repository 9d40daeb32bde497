"""Benchmark: the thesis study's enhancement loop (issue 15) on the synthetic CNN, passes counted.

Measured in one run on the same scenes (the study's uniform set, ``--scenes`` of them):
- model passes: images sent through the model by one plain ``SlidingWindow`` call (eq. 4-8) and by
  ``enhancement_maps`` (the plain map, three fusions, three controls and the five-value D0 sweep); the study
  explains the windows once, so both must send the same images (target: ratio 1);
- seconds: the same two calls, the localisation metrics of all 12 maps (pointing, energy pointing, mIoU, boundary
  F-score: no model pass) and the positive/negative perturbation of the 7 maps the study scores, per 100 scenes.
Writes benchmarks/out/bench_thesis_study.json. Needs the DVC ``synthetic`` stage's artifacts/synthetic/cnn.pt.

    .venv/bin/python benchmarks/bench_thesis_study.py [--scenes 32] [--method grad-cam]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from xaiimg.methods import get_method
from xaiimg.methods.sliding_window import SlidingWindow
from xaiimg.metrics import positive_negative_perturbation
from xaiimg.passes import count_passes
from xaiimg.studies.synthetic import synthetic_model
from xaiimg.studies.thesis_study import ThesisStudyConfig, enhancement_maps, localisation_values, study_scenes

OUT = Path(__file__).resolve().parent / "out" / "bench_thesis_study.json"


def timed(function):
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=32)
    parser.add_argument("--method", default="grad-cam")
    parser.add_argument("--synthetic-dir", default="artifacts/synthetic")
    args = parser.parse_args()
    config = ThesisStudyConfig(synthetic_dir=args.synthetic_dir, scenes=args.scenes)
    model = synthetic_model(config.synthetic_dir, "cnn")
    scenes = study_scenes(model, args.scenes)
    x = model.spec.from_unit_range(scenes.images.float())
    targets, masks = scenes.targets, scenes.class_masks(scenes.targets)
    sliding = SlidingWindow(get_method(args.method), **config.synthetic_window)

    def plain():
        return torch.cat([sliding(model, x[i:i + config.batch_size], target=targets[i:i + config.batch_size])
                          for i in range(0, len(x), config.batch_size)])

    with count_passes(model) as plain_passes:
        plain_seconds, plain_maps = timed(plain)
    with count_passes(model) as study_passes:
        study_seconds, maps = timed(lambda: enhancement_maps(sliding, model, x, targets, config.batch_size,
                                                             config.cutoffs))
    metric_seconds, _ = timed(lambda: [localisation_values(saliency, masks) for saliency in maps.values()])
    scored = {name: saliency for name, saliency in maps.items() if not name.startswith("literal D0")}
    with count_passes(model) as perturbation_passes:
        perturbation_seconds, _ = timed(lambda: [
            positive_negative_perturbation(model, x, saliency, labels=targets, reference="label",
                                           batch_size=config.batch_size) for saliency in scored.values()])
    per_100 = 100 / len(x)
    record = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__},
        "scenes": len(x), "method": args.method, "maps": len(maps), "perturbed_maps": len(scored),
        "images_forwarded": {"plain_sliding_window": plain_passes.images_forwarded,
                             "enhancement_maps": study_passes.images_forwarded,
                             "ratio": study_passes.images_forwarded / plain_passes.images_forwarded,
                             "perturbation": perturbation_passes.images_forwarded,
                             "perturbation_per_map_per_scene": perturbation_passes.images_forwarded / len(scored)
                             / len(x)},
        "images_backwarded": {"plain_sliding_window": plain_passes.images_backwarded,
                              "enhancement_maps": study_passes.images_backwarded},
        "literal_equals_plain_call": float((maps["literal"] - plain_maps).abs().max()),
        "seconds_per_100_scenes": {"plain_sliding_window": plain_seconds * per_100,
                                   "enhancement_maps": study_seconds * per_100,
                                   "localisation_metrics": metric_seconds * per_100,
                                   "perturbation": perturbation_seconds * per_100},
    }
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(record, indent=1))
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
