"""Command line: ``xaiimg explain | evaluate | compare | export | methods`` over the comparison functions.

Outputs are built in a staging folder inside ``--out`` and moved into place only when the whole command has
succeeded: a failed command leaves the output folder as it was. Errors print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

EXIT_USAGE = 2


class CommandError(Exception):
    """A problem with the command's inputs, reported as one line on stderr."""


# ------------------------------------------------------------------------------------------------- inputs
def _image_paths(inputs: Sequence[str]) -> list[Path]:
    from xaiimg.data.images import IMAGE_SUFFIXES

    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise CommandError(f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise CommandError(f"no such image file or folder: {path}")
    return paths


def _load_images(paths: Sequence[Path]):
    from xaiimg.data.images import ImageLoadError, load_image

    try:
        return [load_image(p) for p in paths]
    except ImageLoadError as error:
        raise CommandError(str(error)) from None


def _parse_params(items: Sequence[str], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``METHOD.NAME=VALUE`` items (VALUE read as JSON when it parses, else as text) per method."""
    params: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, name = key.rpartition(".")
        if not sep or not dot:
            raise CommandError(f"--param expects METHOD.NAME=VALUE, got {item!r}")
        if method not in params:
            raise CommandError(f"--param {item!r} names method {method!r}, which is not among --method {list(methods)}")
        try:
            params[method][name] = json.loads(value)
        except json.JSONDecodeError:
            params[method][name] = value
    return params


def _open_model(args):
    from xaiimg.compare import open_model
    from xaiimg.models import CheckpointError, WeightsNotFoundError

    try:
        if args.checkpoint:
            return open_model(arch=args.arch, checkpoint=args.checkpoint)
        return open_model(args.model)
    except (CheckpointError, WeightsNotFoundError, ValueError) as error:
        raise CommandError(str(error)) from None


def _check_methods(methods: Sequence[str], params: dict[str, dict[str, Any]]) -> None:
    from xaiimg.methods import get_method

    for method in methods:
        try:
            get_method(method, **params[method])
        except (ValueError, TypeError) as error:
            raise CommandError(f"method {method!r}: {error}") from None


# ------------------------------------------------------------------------------------------------ outputs
@contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """A staging folder whose files move into ``out`` on success; on failure nothing new is left in ``out``."""
    existed = out.exists()
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".xaiimg-staging-"))
    try:
        yield staging
        for path in sorted(staging.iterdir()):
            path.replace(out / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not existed and not any(out.iterdir()):
            out.rmdir()


def _explain_all(model, x, methods, params, target, enhance):
    from xaiimg.compare import explain_methods

    try:
        return explain_methods(model, x, {m: params[m] for m in methods}, target=target, enhance=enhance).maps
    except ValueError as error:
        raise CommandError(str(error)) from None


def _save_grid(staging: Path, model, x, maps, names, formats) -> list[Path]:
    from xaiimg.viz import method_grid, save_figure

    figure = method_grid(model.spec.to_unit_range(x).clamp(0, 1), maps, row_labels=names)
    return save_figure(figure, staging / "saliency_grid", formats=formats)


def _record(store_dir: Path | None, kind: str, method: str, model, data: str, parameters, metrics) -> None:
    from xaiimg.report import ResultsStore, RunRecord

    if store_dir is not None:
        ResultsStore(store_dir).add(RunRecord(kind, method, model.spec.name, data, parameters, metrics))


# ----------------------------------------------------------------------------------------------- commands
def _prepare(args):
    paths = _image_paths(args.images)
    images = _load_images(paths)
    params = _parse_params(args.param, args.method)
    _check_methods(args.method, params)
    model = _open_model(args)
    return paths, model, model.preprocess(images), params


def command_explain(args) -> list[Path]:
    import torch

    paths, model, x, params = _prepare(args)
    maps = _explain_all(model, x, args.method, params, args.target, args.enhance)
    out = Path(args.out)
    with staged_output(out) as staging:
        written = _save_grid(staging, model, x, maps, [p.name for p in paths], args.formats)
        torch.save({"files": [p.name for p in paths], "maps": maps}, staging / "maps.pt")
        written.append(staging / "maps.pt")
        _record(args.store, "explain", ", ".join(maps), model, ",".join(map(str, args.images)),
                {"methods": params, "target": args.target, "enhance": args.enhance}, {"images": len(paths)})
    return [out / p.name for p in written]


def _evaluation_rows(model, x, maps, paths, args) -> list[dict[str, Any]]:
    from xaiimg.compare import score_images

    rows = []
    for label, saliency in maps.items():
        try:
            scores = score_images(args.metric, model, x, saliency, protocol=args.protocol, target=args.target)
        except ValueError as error:
            raise CommandError(str(error)) from None
        for index, path in enumerate(paths):
            rows.append({"image": path.name, "method": label, **{k: v[index] for k, v in scores.items()}})
    return rows


def _mean_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    keys = [k for k in rows[0] if k not in ("image", "method")]
    return [{"method": m, **{k: sum(r[k] for r in rows if r["method"] == m) / sum(r["method"] == m for r in rows)
                             for k in keys}} for m in methods]


def command_evaluate(args, with_grid: bool = False) -> list[Path]:
    from xaiimg.report import csv_text, latex_table, to_json, write_atomic

    paths, model, x, params = _prepare(args)
    maps = _explain_all(model, x, args.method, params, args.target, args.enhance)
    rows = _evaluation_rows(model, x, maps, paths, args)
    means = _mean_rows(rows)
    out = Path(args.out)
    with staging_and_record(out, args, model, params, means) as staging:
        written = [write_atomic(staging / "scores_per_image.csv", csv_text(rows)),
                   write_atomic(staging / "scores.csv", csv_text(means)),
                   write_atomic(staging / "scores.json", to_json({"per_image": rows, "mean": means,
                                                                  "metric": args.metric, "protocol": args.protocol})),
                   write_atomic(staging / "scores.tex", latex_table(
                       means, caption=f"{args.metric} ({args.protocol} protocol) on {len(paths)} images",
                       bold_best={"insertion_auc": "max", "deletion_auc": "min", "overall": "max"}))]
        if with_grid:
            written += _save_grid(staging, model, x, maps, [p.name for p in paths], args.formats)
    return [out / p.name for p in written]


@contextmanager
def staging_and_record(out: Path, args, model, params, means) -> Iterator[Path]:
    with staged_output(out) as staging:
        yield staging
        for row in means:
            _record(args.store, "evaluate", row["method"], model, ",".join(map(str, args.images)),
                    {"method": params.get(row["method"].split(" + ")[0], {}), "metric": args.metric,
                     "protocol": args.protocol, "enhance": args.enhance},
                    {k: v for k, v in row.items() if k != "method"})


def command_export(args) -> list[Path]:
    from xaiimg.report import ResultsStore

    store = ResultsStore(args.store)
    if not store.root.is_dir():
        raise CommandError(f"results store {store.root} does not exist")
    try:
        return [store.export(args.out)]
    except ValueError as error:
        raise CommandError(str(error)) from None


def command_methods(_args) -> list[Path]:
    from xaiimg.compare import method_parameters
    from xaiimg.methods import available_methods

    for method in available_methods():
        params = ", ".join(f"{k}={v!r}" for k, v in method_parameters(method).items())
        print(f"{method}: {params}")
    return []


# ------------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xaiimg", description="Saliency maps for image classifiers and metrics "
                                     "for how good they are. Every command takes images or folders of images.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("images", nargs="+", help="image files and/or folders of images")
        sub.add_argument("--method", action="append", required=True,
                         help="saliency method by registry name (repeat for several; `xaiimg methods` lists them)")
        sub.add_argument("--param", action="append", default=[], metavar="METHOD.NAME=VALUE",
                         help="a method parameter, e.g. grad-cam.layer=blocks.6 or rise.seed=1 (VALUE as JSON or text)")
        sub.add_argument("--model", default="efficientnet_lite0",
                         help="zoo model name (default efficientnet_lite0, weights available offline)")
        sub.add_argument("--arch", help="architecture of a user checkpoint (a torchvision or timm model name)")
        sub.add_argument("--checkpoint", help="user state_dict file (loaded with weights_only=True; pickles refused)")
        sub.add_argument("--target", type=int, default=None,
                         help="class index to explain for every image (default: each image's predicted class)")
        sub.add_argument("--enhance", action="store_true", help="wrap each method in the sliding-window enhancement")
        sub.add_argument("--out", required=True, help="output folder (created; only complete results are written)")
        sub.add_argument("--store", type=Path, default=None,
                         help="results-store folder where a run record is added (default: none)")

    explain = commands.add_parser("explain", help="write a grid of maps (PNG/PDF) and the raw maps (maps.pt)")
    common(explain)
    explain.add_argument("--formats", nargs="+", default=["png", "pdf"], choices=["png", "pdf", "svg"],
                         help="figure formats (default png pdf)")
    explain.set_defaults(run=command_explain)

    for name, helptext, grid in (("evaluate", "score methods' maps with a metric; CSV/JSON/TeX tables", False),
                                 ("compare", "maps side by side plus the evaluation table", True)):
        sub = commands.add_parser(name, help=helptext)
        common(sub)
        sub.add_argument("--metric", default="insertion-deletion", choices=["insertion-deletion"],
                         help="evaluation metric (default insertion-deletion)")
        sub.add_argument("--protocol", default="rise", choices=["rise", "thesis", "groupcam"],
                         help="insertion/deletion preset from PROTOCOLS.md (default rise)")
        if grid:
            sub.add_argument("--formats", nargs="+", default=["png", "pdf"], choices=["png", "pdf", "svg"],
                             help="figure formats (default png pdf)")
        sub.set_defaults(run=(lambda args: command_evaluate(args, with_grid=True)) if grid else command_evaluate)

    export = commands.add_parser("export", help="export every record of a results store to CSV or JSON")
    export.add_argument("--store", type=Path, required=True, help="results-store folder")
    export.add_argument("--out", required=True, help="output file ending in .csv (flat rows) or .json (full records)")
    export.set_defaults(run=command_export)

    methods = commands.add_parser("methods", help="list registered methods and their parameters")
    methods.set_defaults(run=command_methods)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "checkpoint", None) and not args.arch:
        print("xaiimg: error: --checkpoint needs --arch (the architecture name)", file=sys.stderr)
        return EXIT_USAGE
    try:
        for path in args.run(args):
            print(path)
    except CommandError as error:
        print(f"xaiimg: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
