"""Why the sliding window's gradient and LRP fusions change with the number of CPU threads (README, "How dvc.lock
was written"). Builds the window inputs of the thesis study's first uniform scenes with 1 and with 2 torch threads,
then explains both input sets with the same thread count, and reports how far the inputs and the min-max
normalised window maps move, by quintile of the window map's span relative to its image's full-image map.

    .venv/bin/python scripts/window_thread_sensitivity.py --scenes 16 > thread_sensitivity.json
"""
import argparse
import json

import torch

from xaiimg.methods import get_method
from xaiimg.methods.sliding_window import SlidingWindow
from xaiimg.studies.thesis_study import study_scenes, synthetic_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=16)
    parser.add_argument("--synthetic-dir", default="artifacts/synthetic")
    args = parser.parse_args()
    cnn = synthetic_model(args.synthetic_dir, "cnn")
    scenes = study_scenes(cnn, args.scenes)
    x = cnn.spec.from_unit_range(scenes.images.float())
    sliding = SlidingWindow("gradient")
    corners = sliding.windows(*x.shape[-2:])
    jobs = [(image, index) for image in range(len(x)) for index in range(len(corners) + 1)]
    targets = scenes.targets[[image for image, _ in jobs]]
    inputs = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        inputs[threads] = sliding._job_inputs(x, jobs, corners)
    torch.set_num_threads(2)
    input_change = (inputs[1] - inputs[2]).abs().amax((1, 2, 3))
    report = {"jobs": len(jobs), "inputs_differing": int((input_change > 0).sum()),
              "max_input_change": float(input_change.max()), "methods": {}}
    for method in ("gradient", "lrp", "grad-cam"):
        explainer = get_method(method)

        def explain(batch: torch.Tensor, normalize: bool) -> torch.Tensor:
            return torch.cat([explainer(cnn, batch[s:s + 4], target=targets[s:s + 4], normalize=normalize)
                              for s in range(0, len(batch), 4)])

        change = (explain(inputs[1], True) - explain(inputs[2], True)).abs().amax((1, 2, 3))
        raw = explain(inputs[2], False)
        span = raw.amax((1, 2, 3)) - raw.amin((1, 2, 3))
        ratio = span / span[[image * (len(corners) + 1) for image, _ in jobs]]
        changed = change > 1e-3
        order = ratio.argsort()
        quintiles = [order[q * len(order) // 5:(q + 1) * len(order) // 5] for q in range(5)]
        report["methods"][method] = {
            "maps_changed_over_1e-3": int(changed.sum()), "max_change": float(change.max()),
            "by_span_ratio_quintile": [{"span_ratio_up_to": float(ratio[q].max()), "changed": int(changed[q].sum()),
                                        "of": len(q), "max_change": float(change[q].max())} for q in quintiles]}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
