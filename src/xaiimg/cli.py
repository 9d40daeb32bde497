"""Command line, the package's one entry point: ``xaiimg explain | evaluate | compare | export | methods`` over
the comparison functions; ``xaiimg train-synthetic | train-aesthetic | train-ava | focus-report`` over the studies'
training runs (:mod:`xaiimg.studies`); ``xaiimg notebook NAME`` runs one notebook stage of the DVC pipeline
(:mod:`xaiimg.pipeline`).

Every argument and output location of the comparison commands is checked before a model is loaded. Outputs are
built in a staging folder inside ``--out`` and moved into place only when the whole command has succeeded: a
failed command leaves the output folder as it was. ``--out`` and ``--store`` may not lie in an input folder (a
later run over that folder would read the figures as images) unless ``--allow-out-in-input`` is given. Errors,
usage errors and failed writes included, print one line (``xaiimg: error: ...``) and exit with status 2.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

EXIT_USAGE = 2
DEFAULT_MODEL = "efficientnet_lite0"
EXPORT_SUFFIXES = (".csv", ".json")


class CommandError(Exception):
    """A problem with the command's inputs, reported as one line on stderr."""


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line and exit 2, like every other error of the command."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"xaiimg: error: {message} (see `{self.prog} --help`)\n")


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


def _class_index(text: str) -> int:
    """``--target``: a class index, 0 or more."""
    try:
        index = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a class index is a whole number, got {text!r}") from None
    if index < 0:
        raise argparse.ArgumentTypeError(f"a class index is 0 or more, got {index}")
    return index


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


def _check_model_choice(args) -> None:
    """A zoo model (``--model``) or a user model (``--arch`` with ``--checkpoint``), never parts of both."""
    if args.checkpoint and not args.arch:
        raise CommandError("--checkpoint needs --arch (the architecture name)")
    if args.arch and not args.checkpoint:
        raise CommandError(f"--arch {args.arch} needs --checkpoint (the state_dict file to load into it); "
                           "for a zoo model use --model")
    if args.model and args.checkpoint:
        raise CommandError("--model names a zoo model; a user checkpoint takes its architecture from --arch")


def _open_model(args):
    from xaiimg.compare import open_model
    from xaiimg.models import CheckpointError, WeightsNotFoundError

    try:
        if args.checkpoint:
            return open_model(arch=args.arch, checkpoint=args.checkpoint)
        return open_model(args.model or DEFAULT_MODEL)
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
def _check_output_location(path: Path, option: str, folder: bool) -> None:
    """``path`` can be written as a folder (``folder``) or as a file: it is not an existing entry of the other
    kind, and the nearest existing folder at or above where it goes is a folder this process may write into."""
    if os.path.lexists(path) and path.is_dir() != folder:
        kind, wanted = ("a file", "a folder") if folder else ("a folder", "a file")
        raise CommandError(f"{option} {path} exists and is {kind}; {option} must name {wanted}")
    start = (path if folder else path.parent).absolute()
    existing = next(p for p in (start, *start.parents) if os.path.lexists(p))
    if not existing.is_dir():
        raise CommandError(f"{option} {path} cannot be created: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CommandError(f"{option} {path} cannot be written: no permission to write in {existing}")


def _check_outside_input_folders(args) -> None:
    """``--out`` and ``--store`` are neither an input folder nor inside one, unless ``--allow-out-in-input``."""
    if args.allow_out_in_input:
        return
    folders = [(item, Path(item).resolve()) for item in args.images if Path(item).is_dir()]
    for option, location in (("--out", Path(args.out)), ("--store", args.store)):
        if location is None:
            continue
        resolved = location.resolve()
        for item, folder in folders:
            if resolved == folder or folder in resolved.parents:
                raise CommandError(f"{option} {location} is inside the input folder {item}, where a later run would "
                                   "read the outputs as inputs; choose another location or pass --allow-out-in-input")


def _check_device(args) -> None:
    from xaiimg.nn import resolve_device

    try:
        args.device = resolve_device(args.device)
    except ValueError as error:
        raise CommandError(f"--device: {error}") from None


def _check_arguments(args) -> None:
    """Every check that needs no model, so that a mistake is reported before any model is loaded."""
    _check_model_choice(args)
    _check_device(args)
    _check_output_location(Path(args.out), "--out", folder=True)
    if args.store is not None:
        _check_output_location(args.store, "--store", folder=True)
    _check_outside_input_folders(args)


@contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """A staging folder whose files move into ``out`` on success; on failure nothing new is left in ``out``, and
    the folders created for it (with the umask's mode) are removed again."""
    created = [folder for folder in (out.absolute(), *out.absolute().parents) if not folder.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out, prefix=".xaiimg-staging-"))
        try:
            yield staging
            for path in sorted(staging.iterdir()):
                path.replace(out / path.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        for folder in created:   # deepest first
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


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
    _check_arguments(args)
    paths = _image_paths(args.images)
    images = _load_images(paths)
    params = _parse_params(args.param, args.method)
    _check_methods(args.method, params)
    model = _open_model(args).to(args.device)
    return paths, model, model.preprocess(images).to(args.device), params


def command_explain(args) -> list[Path]:
    import torch

    paths, model, x, params = _prepare(args)
    maps = _explain_all(model, x, args.method, params, args.target, args.enhance)
    out = Path(args.out)
    with staged_output(out) as staging:
        written = _save_grid(staging, model, x, maps, [p.name for p in paths], args.formats)
        with open(staging / "maps.pt", "wb") as file:   # a file object: a failed open is an OSError naming it
            torch.save({"files": [p.name for p in paths], "maps": {name: m.cpu() for name, m in maps.items()}}, file)
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

    out = Path(args.out)
    if out.suffix not in EXPORT_SUFFIXES:
        raise CommandError(f"--out {out} must end in {' or '.join(EXPORT_SUFFIXES)}")
    _check_output_location(out, "--out", folder=False)
    store = ResultsStore(args.store)
    if not store.root.is_dir():
        raise CommandError(f"results store {store.root} " + ("is not a folder" if store.root.exists()
                                                             else "does not exist"))
    try:
        written = store.export(args.out)
    except ValueError as error:
        raise CommandError(str(error)) from None
    for name, reason in store.scan().unreadable:
        print(f"xaiimg: warning: skipped {store.root / name}: {reason}", file=sys.stderr)
    return [written]


def command_methods(_args) -> list[Path]:
    from xaiimg.compare import method_parameters
    from xaiimg.methods import available_methods

    for method in available_methods():
        params = ", ".join(f"{k}={v!r}" for k, v in method_parameters(method).items())
        print(f"{method}: {params}")
    return []


# ------------------------------------------------------------------------------------ studies and pipeline
def _check_aesthetic_options(args) -> None:
    """``--backbone`` and ``--aggregation`` name a backbone and an aggregation of the aesthetic model."""
    from xaiimg.models.aesthetic import BACKBONES, DualAttention

    for option, value, known in (("--backbone", args.backbone, BACKBONES),
                                 ("--aggregation", args.aggregation, DualAttention.AGGREGATIONS)):
        if value not in known:
            raise CommandError(f"{option} must be one of {', '.join(known)}, got {value!r}")


def command_train_synthetic(args) -> list[Path]:
    from xaiimg.studies.runs import SyntheticRun
    from xaiimg.studies.synthetic import train_synthetic_run

    train_synthetic_run(args.out, args.models, seed=args.seed, size=args.size, num_classes=args.num_classes,
                        train_size=args.train_size, epochs=args.epochs, test_size=args.test_size,
                        threads=args.threads)
    run = SyntheticRun(args.out)
    return [run.checkpoint(kind) for kind in args.models] + [run.metrics]


def command_train_aesthetic(args) -> list[Path]:
    from xaiimg.studies.aesthetic import train_on_composition
    from xaiimg.studies.runs import VARIANTS, AestheticRun

    _check_aesthetic_options(args)
    train_on_composition(args.out, seed=args.seed, size=args.size, train=args.train, val=args.val, test=args.test,
                         epochs=args.epochs, backbone=args.backbone, aggregation=args.aggregation,
                         score_weight=args.score_weight, lr=args.lr)
    run = AestheticRun(args.out)
    return [run.best_checkpoint(variant) for variant in VARIANTS] + [run.summary]


def command_train_ava(args) -> list[Path]:
    from xaiimg.studies.aesthetic import train_on_ava
    from xaiimg.studies.runs import VARIANTS, AestheticRun

    _check_aesthetic_options(args)
    variants = args.variant or VARIANTS
    train_on_ava(args.out, args.labels, args.images, args.test_labels, seed=args.seed,
                 val_fraction=args.val_fraction, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                 score_weight=args.score_weight, backbone=args.backbone, aggregation=args.aggregation,
                 variants=variants, cache=args.cache)
    run = AestheticRun(args.out)
    return [run.best_checkpoint(variant) for variant in variants] + [run.summary]


def command_focus_report(args) -> list[Path]:
    from xaiimg.studies.aesthetic import focus_report, focus_report_lines

    report = focus_report(args.run_folder)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    for line in focus_report_lines(report):
        print(line)
    return [out]


def command_notebook(args) -> list[Path]:
    from xaiimg.pipeline import run_notebook

    try:
        return [run_notebook(args.name)]
    except ValueError as error:
        raise CommandError(str(error)) from None


def command_thesis_study(args) -> list[Path]:
    import yaml

    from xaiimg.studies.thesis_study import ThesisStudyConfig, run_thesis_study, summarise_thesis_study

    try:
        block = yaml.safe_load(Path(args.params).read_text()).get("thesis_study") or {}
        config = ThesisStudyConfig(**{**block, **({"parts": tuple(args.parts)} if args.parts else {})})
    except (TypeError, ValueError, AttributeError, yaml.YAMLError) as error:
        raise CommandError(f"{args.params}: bad thesis_study block ({error})") from None
    results = Path(args.results)
    if args.summary_only:
        summarise_thesis_study(config, results)
        return [results / "claims" / "thesis.json", results / "thesis_study" / "summary.csv"]
    run_thesis_study(config, results, log=functools.partial(print, flush=True), summarise=not args.no_summary)
    written = [results / "thesis_study" / f"{name}.json" for name in config.parts]
    return written if args.no_summary else [results / "claims" / "thesis.json", *written]


def command_aesthetic_study(args) -> list[Path]:
    from xaiimg.studies.aesthetic_planted import run_planted_study

    run_planted_study(args.run_folder, args.results, seeds=tuple(args.seeds), size=args.size, train=args.train,
                      val=args.val, test=args.test, epochs=args.epochs, stage=args.stage, lrp_scenes=args.lrp_scenes)
    results = Path(args.results)
    return [results / "aesthetic_planted.json", results / "aesthetic_planted.csv",
            results / "claims" / "aesthetic.json"]


def command_reproduction(args) -> list[Path]:
    from xaiimg.studies.reproduction import write_reproduction

    try:
        return [write_reproduction(args.results, args.out)]
    except (FileNotFoundError, ValueError) as error:
        raise CommandError(str(error)) from None


# ------------------------------------------------------------------------------------------------- parser
def _add_study_commands(commands) -> None:
    """The training runs of the studies and the pipeline's notebook stage (flags as the DVC stages use them)."""
    synthetic = commands.add_parser("train-synthetic", help="train the synthetic-benchmark CNN and ViT (DVC stage "
                                    "synthetic)")
    synthetic.add_argument("--out", type=Path, required=True, help="folder for cnn.pt, vit.pt and metrics.json")
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.add_argument("--models", nargs="+", choices=["cnn", "vit"], default=["cnn", "vit"])
    synthetic.add_argument("--size", type=int, default=224)
    synthetic.add_argument("--num-classes", type=int, default=6)
    synthetic.add_argument("--train-size", type=int, default=None, help="override the recipe's training-set size")
    synthetic.add_argument("--epochs", type=int, default=None, help="override the recipe's number of epochs")
    synthetic.add_argument("--test-size", type=int, default=600)
    synthetic.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    synthetic.set_defaults(run=command_train_synthetic)

    def aesthetic_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--out", required=True, help="output folder (checkpoints, metrics.json, summary.json)")
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--lr", type=float, default=1e-3)
        sub.add_argument("--score-weight", type=float, default=0.1)
        sub.add_argument("--backbone", default="efficientnet_lite0",
                         help="efficientnet_lite0 (default) or efficientnet_lite2")
        sub.add_argument("--aggregation", default="concat", help="concat (default) or sum")

    aesthetic = commands.add_parser("train-aesthetic", help="train both aesthetic-model variants on the synthetic "
                                    "composition benchmark (DVC stage aesthetic)")
    aesthetic_options(aesthetic)
    aesthetic.add_argument("--size", type=int, default=224)
    aesthetic.add_argument("--train", type=int, default=384, help="training images")
    aesthetic.add_argument("--val", type=int, default=96, help="validation images (checkpoint selection)")
    aesthetic.add_argument("--test", type=int, default=160, help="held-out images (reported metrics)")
    aesthetic.add_argument("--epochs", type=int, default=20)
    aesthetic.set_defaults(run=command_train_aesthetic)

    ava = commands.add_parser("train-ava", help="train the aesthetic-model variants on AVA (data/README.md), frozen "
                              "backbone")
    aesthetic_options(ava)
    ava.add_argument("--labels", required=True, help="AVA.txt (or an idealo/NIMA JSON split) with the vote counts")
    ava.add_argument("--images", required=True, help="folder of <image id>.jpg")
    ava.add_argument("--test-labels", required=True, help="label file whose ids form the held-out test split")
    ava.add_argument("--val-fraction", type=float, default=0.05)
    ava.add_argument("--epochs", type=int, default=10)
    ava.add_argument("--batch-size", type=int, default=32)
    ava.add_argument("--variant", action="append", choices=("attention", "plain"),
                     help="train only this variant (repeatable; default both)")
    ava.add_argument("--cache", action="store_true", help="hold backbone features in memory (251 KB an image)")
    ava.set_defaults(run=command_train_ava)

    focus = commands.add_parser("focus-report", help="subject mass share of CAM with vs without attention on the "
                                "held-out split of a train-aesthetic run")
    focus.add_argument("--run", dest="run_folder", required=True, help="output folder of `xaiimg train-aesthetic`")
    focus.add_argument("--out", required=True, help="JSON file to write")
    focus.set_defaults(run=command_focus_report)

    study = commands.add_parser("thesis-study", help="measure the thesis's claims with n, intervals and controls "
                                "(DVC stage thesis_study; settings: params.yaml thesis_study)")
    study.add_argument("--params", default="params.yaml", help="YAML file with a thesis_study block")
    study.add_argument("--results", default="results", help="results folder (writes thesis_study/ and claims/)")
    study.add_argument("--parts", nargs="+", choices=["photos", "photos_second_model", "layers", "pointing",
                                                     "enhancement", "enhancement_vit", "discrimination", "sanity"],
                       help="run only these parts (the others' stored files are kept)")
    steps = study.add_mutually_exclusive_group()
    steps.add_argument("--no-summary", action="store_true",
                       help="write only the parts' files (DVC's thesis_<part> stages), not the summary and claims")
    steps.add_argument("--summary-only", action="store_true",
                       help="run no part: write summary.csv, study.json and claims/thesis.json from the stored parts")
    study.set_defaults(run=command_thesis_study)

    planted = commands.add_parser("aesthetic-study", help="aesthetic paper claims 2-3 on the planted-evidence "
                                  "benchmark: both variants x seeds, CAM/LRP subject-mass share, claims")
    planted.add_argument("--run", dest="run_folder", required=True, help="run folder (checkpoints, measures, timings)")
    planted.add_argument("--results", default="results")
    planted.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    planted.add_argument("--size", type=int, default=128)
    planted.add_argument("--train", type=int, default=4096)
    planted.add_argument("--val", type=int, default=128)
    planted.add_argument("--test", type=int, default=200)
    planted.add_argument("--epochs", type=int, default=6)
    planted.add_argument("--stage", default="blocks.3", help="first fine-tuned backbone stage (its inputs are cached)")
    planted.add_argument("--lrp-scenes", type=int, default=200)
    planted.set_defaults(run=command_aesthetic_study)

    # listed for --help only: main() hands these to xaiimg.studies.sharded before parsing
    commands.add_parser("evaluate-sharded", help="per-image evaluation sharded by rank (torchrun or --rank/"
                        "--world-size), resumable; `xaiimg evaluate-sharded --help` lists its options")
    commands.add_parser("merge-shards", help="merge the shards of an evaluate-sharded run into its tables")

    reproduction = commands.add_parser("reproduction", help="render docs/REPRODUCTION.md from results/claims/*.json")
    reproduction.add_argument("--results", default="results", help="results folder holding claims/")
    reproduction.add_argument("--out", default="docs/REPRODUCTION.md", help="Markdown file to write")
    reproduction.set_defaults(run=command_reproduction)

    notebook = commands.add_parser("notebook", help="execute notebooks/NAME.ipynb with its params.yaml parameters "
                                   "(one DVC notebook stage; run from the checkout)")
    notebook.add_argument("name", help="notebook name without .ipynb, e.g. 04_msgcam_comparison")
    notebook.set_defaults(run=command_notebook)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="xaiimg", description="Saliency maps for image classifiers and metrics for how "
                                "good they are. Every command takes images or folders of images.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("images", nargs="+", help="image files and/or folders of images")
        sub.add_argument("--method", action="append", required=True,
                         help="saliency method by registry name (repeat for several; `xaiimg methods` lists them)")
        sub.add_argument("--param", action="append", default=[], metavar="METHOD.NAME=VALUE",
                         help="a method parameter, e.g. grad-cam.layer=blocks.6 or rise.seed=1 (VALUE as JSON or text)")
        sub.add_argument("--model", help=f"zoo model name (default {DEFAULT_MODEL}, weights available offline)")
        sub.add_argument("--arch", help="architecture of a user checkpoint (a torchvision or timm model name); "
                                        "needs --checkpoint")
        sub.add_argument("--checkpoint", help="user state_dict file (loaded with weights_only=True; pickles refused); "
                                              "needs --arch")
        sub.add_argument("--target", type=_class_index, default=None,
                         help="class index to explain for every image (default: each image's predicted class)")
        sub.add_argument("--enhance", action="store_true", help="wrap each method in the sliding-window enhancement")
        sub.add_argument("--device", default="cpu",
                         help="where the model and the maps live: cpu (default), cuda, cuda:N or mps; checked "
                              "before any model is loaded")
        sub.add_argument("--out", required=True, help="output folder (created; only complete results are written); "
                                                      "not inside an input folder")
        sub.add_argument("--store", type=Path, default=None,
                         help="results-store folder where a run record is added (default: none); not inside an "
                              "input folder")
        sub.add_argument("--allow-out-in-input", action="store_true",
                         help="allow --out and --store inside an input folder (a later run over that folder then "
                              "also reads the written figures as images)")

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
    export.add_argument("--out", required=True, help="output file ending in .csv (flat rows) or .json (full "
                                                     "records), outside the store")
    export.set_defaults(run=command_export)

    methods = commands.add_parser("methods", help="list registered methods and their parameters")
    methods.set_defaults(run=command_methods)
    _add_study_commands(commands)
    return parser


def _os_error_line(error: OSError) -> str:
    """``path: reason`` for a failed read or write (both paths of a failed move)."""
    paths = " -> ".join(str(p) for p in (error.filename, error.filename2) if p is not None)
    return f"{paths}: {error.strerror or error}" if paths else str(error)


SHARDED_COMMANDS = ("evaluate-sharded", "merge-shards")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SHARDED_COMMANDS:     # their options are xaiimg.studies.sharded's own (help included)
        from xaiimg.studies.sharded import main as sharded_main

        return sharded_main(argv)
    args = build_parser().parse_args(argv)
    try:
        for path in args.run(args):
            print(path)
    except CommandError as error:
        print(f"xaiimg: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:
        print(f"xaiimg: error: {_os_error_line(error)}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
