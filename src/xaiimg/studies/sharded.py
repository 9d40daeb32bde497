"""Per-image evaluation of methods x metrics over a dataset, sharded over processes and hosts by ``torchrun`` (or
by DVC ``foreach`` stages), resumable after a crash, merged into the tables a single process writes.

Launch (``python -m xaiimg.cli evaluate-sharded --help``)::

    # one process (world size 1): evaluate, then merge into OUT/table.* and OUT/per_image.csv
    python -m xaiimg.cli evaluate-sharded --out OUT --data imagenet --root VAL --labels LOC_val_solution.csv \\
        --model vgg19 --method grad-cam --method score-cam --metric insertion-deletion \\
        --metric-param insertion-deletion.protocol=thesis --device cuda
    # N processes on this host (one per GPU); rank 0 merges once every rank is done
    torchrun --nproc-per-node 4 -m xaiimg.cli evaluate-sharded --out OUT ... --device cuda
    # several hosts: the same command on each, with --nnodes, --node-rank and --rdzv-endpoint (data/README.md)
    # shards run as separate jobs (DVC foreach): no process group, merge as its own step
    python -m xaiimg.cli evaluate-sharded --out OUT ... --rank 1 --world-size 4
    python -m xaiimg.cli merge-shards --out OUT

**Split.** The selected images (``--count``, or a seeded ``--subset-seed`` subset as
:func:`xaiimg.studies.thesis.imagenet_subset` draws) are cut into blocks of ``--batch-size`` consecutive images,
and block ``b`` belongs to rank ``b % world_size`` (``rank::world_size`` over blocks; with the default batch of
one image, over images). Unlike :class:`torch.utils.data.DistributedSampler` this pads nothing, so no image is
evaluated twice, and a block is the same batch whatever the world size: methods and metrics see the same tensors
in every layout, which is what makes the merged tables bit-identical to the single-process run's (on one machine
type and thread count; GPU kernels may differ between GPU models). Rank and world size come from
``torch.distributed`` when it is initialised (``torchrun`` sets ``RANK``/``WORLD_SIZE``; :func:`main` then joins
a process group, ``gloo`` by default: the group is only used for the barrier before the merge, no tensors are
exchanged), else from ``--rank``/``--world-size``.

**Records.** Each rank appends to its own file ``OUT/shards/shard-<rank>-of-<world>.jsonl``: a header line (the
evaluation's identity: data, selection, model weights digest, methods, metrics and their parameters, target rule,
batch size; and, for information, package versions and the digest of the xaiimg sources), then one line per
``(image, method)``: image id, position, label, explained class, ``{metric: {score: value}}``, the
:func:`code_digest` of the sources that computed it. Every line carries the sha256 of its own canonical
JSON (floats written as ``repr``, so they read back exactly). Why one append-only JSONL per rank rather than a file
per record: ImageNet's 50,000 images x 7-10 methods would be 350,000-500,000 small files, slow on the network
filesystems of clusters and for DVC to hash, while a rank's file is one DVC output of its ``foreach`` stage. The
lines of one ``(block, method)`` unit are written by one ``write`` on an ``O_APPEND`` descriptor and ``fsync``-ed
before the next unit starts, so a killed run loses at most the unit in flight; a line cut short by a crash, or
damaged later, fails its checksum (or lacks its newline), is never read back as a result, is named in a
:class:`CorruptRecordWarning`, and is recomputed on the next run (the rank first rewrites its file with only its
valid lines, write-then-rename). A restarted run reads every shard file of ``OUT/shards`` (any world size) and skips
the ``(image, method)`` pairs already there; shard files of another evaluation identity are refused
(:class:`RunMismatchError`). Records that other xaiimg sources computed are computed again by default
(``--on-code-change recompute``: a rerun after a code change, e.g. by DVC, gives the new code's numbers), or kept
(``keep``: a long run resumed after a harmless edit).

**Merge.** :func:`merge_shards` reads every shard file, keeps each ``(image, method)`` once (duplicates must agree
bit for bit, unless one of them is the current sources' record, which wins), refuses an incomplete run
(:class:`IncompleteRunError` names what is missing), orders the records by dataset position (the readers' sorted
image-id order), and writes ``OUT/per_image.csv`` and ``OUT/table.csv``, ``.json``, ``.tex`` (per method and score:
mean and paired 95% bootstrap interval, :func:`xaiimg.stats.paired_bootstrap`, seeded), plus ``OUT/run.json``
(identity, shard files) and ``OUT/timings.json`` (seconds measured per method, read from ``OUT/timings/``, where
each rank logs them apart from its records, so that a shard file holds no clock reading: the same evaluation
rebuilt gives the same bytes, and DVC the same hashes). The tables depend
on the records' values and the identity only, never on the layout, the order of completion or the clock.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from xaiimg.report import csv_text, package_versions, to_json, write_atomic, write_table

SCHEMA_VERSION = 1
SHARDS = "shards"
TIMINGS = "timings"
SHARD_PATTERN = re.compile(r"shard-(\d+)-of-(\d+)\.jsonl")
TARGETS = ("predicted", "label")
DATA_KINDS = ("synthetic", "imagenet", "folder")
DEFAULT_BARRIER_HOURS = 72.0
CODE_CHANGES = ("recompute", "keep")


class CorruptRecordWarning(UserWarning):
    """A shard line that is not a whole, checksummed record (cut short by a crash, or damaged): it is ignored and
    its ``(image, method)`` computed again."""


class RunMismatchError(ValueError):
    """Shard files in the output folder belong to another evaluation (other data, model, methods, ...)."""


class IncompleteRunError(RuntimeError):
    """The shards do not yet hold every ``(image, method)`` of the evaluation."""


# ------------------------------------------------------------------------------------------- checksums
def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces: the form every digest of this module is taken of (floats as ``repr``, exact)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _sha256(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def checksummed_line(entry: Mapping[str, Any]) -> bytes:
    """One JSONL line: ``entry`` plus ``"sha256"``, the digest of ``entry``'s canonical JSON."""
    if "sha256" in entry:
        raise ValueError("an entry may not carry its own 'sha256' key")
    body = dict(entry)
    return (json.dumps({**body, "sha256": _sha256(canonical_json(body))}, separators=(",", ":")) + "\n").encode()


def parse_line(line: bytes) -> dict[str, Any]:
    """The entry of a whole line (without its newline); ``ValueError`` naming why it is not one."""
    try:
        entry = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ValueError("not valid JSON (cut short or damaged)") from None
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
        raise ValueError("no checksum")
    claimed = entry.pop("sha256")
    if _sha256(canonical_json(entry)) != claimed:
        raise ValueError("checksum mismatch (damaged)")
    return entry


@dataclass
class ShardFile:
    """What one shard file holds: its header, its valid records, and every line that is not a valid entry as
    ``(line number, reason)``."""

    path: Path
    header: dict[str, Any] | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    problems: list[tuple[int, str]] = field(default_factory=list)

    @property
    def run(self) -> str | None:
        return None if self.header is None else self.header["run"]


def read_shard(path: str | Path) -> ShardFile:
    """Parse a shard file. Only lines ending in a newline are read; each must pass its checksum. A header that is
    not the first valid entry, and records of another run than the header's, count as problems."""
    path = Path(path)
    shard = ShardFile(path)
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()                       # b"" when the file ends with a newline, else an unterminated piece
    for number, line in enumerate(lines, start=1):
        try:
            entry = parse_line(line)
        except ValueError as error:
            shard.problems.append((number, str(error)))
            continue
        kind = entry.get("kind")
        if kind == "header" and shard.header is None and not shard.records:
            shard.header = entry
        elif kind == "record" and shard.header is not None and entry.get("run") == shard.header["run"]:
            shard.records.append(entry)
        elif kind == "record" and shard.header is None:
            shard.problems.append((number, "record before any valid header"))
        else:
            shard.problems.append((number, f"unexpected {kind!r} entry (another run or a second header)"))
    if tail:
        shard.problems.append((len(lines) + 1, f"cut short ({len(tail)} bytes without a newline)"))
    return shard


def _describe(shard: ShardFile, number: int, reason: str) -> str:
    return f"{shard.path}:{number}: {reason}"


def shard_files(out: str | Path) -> list[Path]:
    """The shard files of ``out`` ordered by (world size, rank)."""
    folder = Path(out) / SHARDS
    if not folder.is_dir():
        return []
    found = [(int(m.group(2)), int(m.group(1)), p) for p in folder.iterdir()
             if (m := SHARD_PATTERN.fullmatch(p.name))]
    return [path for *_, path in sorted(found)]


def shard_path(out: str | Path, rank: int, world_size: int) -> Path:
    return Path(out) / SHARDS / f"shard-{rank}-of-{world_size}.jsonl"


def timings_path(out: str | Path, rank: int, world_size: int) -> Path:
    """Where a rank logs the seconds of each ``(block, method)`` unit (``OUT/timings/``, beside the shards)."""
    return Path(out) / TIMINGS / f"shard-{rank}-of-{world_size}.jsonl"


# -------------------------------------------------------------------------------------------- the split
def split_blocks(num_images: int, batch_size: int, rank: int, world_size: int) -> list[list[int]]:
    """The blocks (lists of image positions) of ``rank``: positions cut into ``batch_size`` consecutive ones,
    block ``b`` to rank ``b % world_size``. Every position belongs to exactly one block of one rank."""
    check_rank(rank, world_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    starts = range(0, num_images, batch_size)
    return [list(range(start, min(start + batch_size, num_images)))
            for block, start in enumerate(starts) if block % world_size == rank]


def check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world size {world_size}")


def shard_position(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """``(rank, world size)``: torch.distributed's when a process group is initialised, else torchrun's
    ``RANK``/``WORLD_SIZE``, else the given pair (default ``(0, 1)``). A given pair that contradicts the launcher's
    is refused."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        found = dist.get_rank(), dist.get_world_size()
    elif "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        found = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    else:
        found = (0 if rank is None else rank, 1 if world_size is None else world_size)
        check_rank(*found)
        return found
    if (rank is not None and rank != found[0]) or (world_size is not None and world_size != found[1]):
        raise ValueError(f"--rank/--world-size {rank}/{world_size} contradict the launcher's {found[0]}/{found[1]} "
                         "(under torchrun, leave them out)")
    return found


# ------------------------------------------------------------------------------------------------ data
class ImageSource:
    """Images by position: ``ids``, ``labels`` (``None`` entries when unknown before loading), ``identity`` (what
    the images are, without where the files lie), and :meth:`load` -> ``(model input [3,H,W], label, mask or
    None)``."""

    ids: list[str]
    labels: list[int | None]
    identity: dict[str, Any]
    has_masks = False

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int, spec) -> tuple[torch.Tensor, int | None, torch.Tensor | None]:
        raise NotImplementedError


class FileSource(ImageSource):
    """:class:`~xaiimg.data.readers.ImageNetVal` or :class:`~xaiimg.data.images.ImageFolder` items, preprocessed
    with the model's ``spec.transform()``."""

    def __init__(self, kind: str, items):
        self.kind, self.items = kind, list(items)
        self.ids = [item.path.name for item in self.items]
        self.labels = [item.label for item in self.items]
        self.identity = {"kind": kind}

    def load(self, index, spec):
        from xaiimg.data.images import load_image

        item = self.items[index]
        return spec.transform()(load_image(item.path)), item.label, None


class SyntheticSource(ImageSource):
    """Scenes ``0 .. count-1`` of a :class:`~xaiimg.data.synthetic.SyntheticBenchmark` split (single object), each
    generated on its own (scene ``i`` is the same whatever else is generated), with the object's mask."""

    has_masks = True

    def __init__(self, count: int, size: int = 224, num_classes: int = 6, seed: int = 0, split: str = "test"):
        from xaiimg.data.synthetic import SyntheticBenchmark

        if count is None or count < 1:
            raise ValueError("the synthetic benchmark needs --count (how many scenes)")
        self.benchmark, self.split = SyntheticBenchmark(size=size, num_classes=num_classes, seed=seed), split
        self.benchmark.generate(1, split=split)   # checks the split
        self.ids = [f"{split}-{index:06d}" for index in range(count)]
        self.labels = [None] * count
        self.identity = {"kind": "synthetic", "benchmark": self.benchmark.config, "split": split}

    def load(self, index, spec):
        if spec.input_size != self.benchmark.size:
            raise ValueError(f"the model takes {spec.input_size} px inputs but the synthetic scenes are "
                             f"{self.benchmark.size} px (--synthetic-size)")
        scene = self.benchmark.generate(1, split=self.split, start=index)
        return spec.from_unit_range(scene.images)[0], int(scene.targets[0]), scene.class_masks()[0]


def open_source(data: Mapping[str, Any]) -> ImageSource:
    """The image source a data spec names: ``{"kind": "synthetic", "count", "size", "num_classes", "seed",
    "split"}``, ``{"kind": "imagenet", "root", "labels", "synsets"}`` (:class:`~xaiimg.data.readers.ImageNetVal`)
    or ``{"kind": "folder", "root", "labels"}`` (:class:`~xaiimg.data.images.ImageFolder`, labels optional)."""
    options = {key: value for key, value in data.items() if key != "kind" and value is not None}
    kind = data.get("kind")
    if kind == "synthetic":
        return SyntheticSource(**options)
    if kind == "imagenet":
        from xaiimg.data.readers import ImageNetVal

        return FileSource(kind, ImageNetVal(**options).items)
    if kind == "folder":
        from xaiimg.data.images import ImageFolder

        return FileSource(kind, ImageFolder(options["root"], options.get("labels")).items)
    raise ValueError(f"unknown data kind {kind!r}; use one of {DATA_KINDS}")


def select_positions(length: int, count: int | None = None, subset_seed: int | None = None) -> list[int]:
    """Dataset indices evaluated, in dataset order: the first ``count`` (all by default), or with ``subset_seed``
    ``count`` drawn without replacement by a seeded permutation (as :func:`xaiimg.studies.thesis.imagenet_subset`)."""
    count = length if count is None else min(count, length)
    if count < 1:
        raise ValueError(f"nothing to evaluate: {length} images, count {count}")
    if subset_seed is None:
        return list(range(count))
    chosen = torch.randperm(length, generator=torch.Generator().manual_seed(subset_seed))[:count].sort().values
    return chosen.tolist()


# ------------------------------------------------------------------------------------------------ model
def _file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def open_model(model: Mapping[str, Any]) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A model and its identity from ``{"zoo": name}``, ``{"arch": name, "checkpoint": path}`` or
    ``{"synthetic": path}`` (a ``xaiimg train-synthetic`` checkpoint); file weights are identified by their sha256,
    so the same weights at another path (another host) are the same model."""
    if model.get("synthetic"):
        from xaiimg.models.synthetic import load_synthetic_model

        return load_synthetic_model(model["synthetic"]), {"synthetic": _file_sha256(model["synthetic"])}
    if model.get("checkpoint"):
        from xaiimg.models import load_checkpoint_model

        if not model.get("arch"):
            raise ValueError("a checkpoint needs its architecture (--arch)")
        return (load_checkpoint_model(model["arch"], model["checkpoint"]),
                {"arch": model["arch"], "checkpoint": _file_sha256(model["checkpoint"])})
    if model.get("zoo"):
        from xaiimg.models import load_model

        return load_model(model["zoo"]), {"zoo": model["zoo"]}
    raise ValueError("give a model: zoo name (--model), --arch with --checkpoint, or --synthetic-model")


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """sha256 over the xaiimg package's Python sources, read once per process (in every shard header)."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def code_digest() -> str:
    """The first 16 hex digits of :func:`source_digest`: the ``code`` of every record."""
    return source_digest()[:16]


# ------------------------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class Evaluation:
    """What to compute: ``data`` (see :func:`open_source`), ``model`` (see :func:`open_model`), ``methods`` and
    ``metrics`` (registry name -> constructor parameters / metric options, in table order), the class explained and
    scored (``target``: ``"predicted"`` on the unperturbed image, or the dataset's ``"label"``), images per block
    (``batch_size``), the selection (``count``, ``subset_seed``: :func:`select_positions`), and the model's forwards
    under ``autocast`` (``None``, ``"bfloat16"``, ``"float16"``; :func:`xaiimg.nn.running_on`)."""

    data: Mapping[str, Any]
    model: Mapping[str, Any]
    methods: Mapping[str, Mapping[str, Any]]
    metrics: Mapping[str, Mapping[str, Any]]
    target: str = "predicted"
    batch_size: int = 1
    count: int | None = None
    subset_seed: int | None = None
    autocast: str | None = None

    def check(self) -> None:
        """Every check that needs no model or data: names, target rule, metric kinds."""
        from xaiimg.compare import build_explainer
        from xaiimg.metrics import get_metric
        from xaiimg.metrics.results import MetricResult

        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        given = [kind for kind in ("zoo", "checkpoint", "synthetic") if self.model.get(kind)]
        if len(given) != 1 or (self.model.get("arch") and given != ["checkpoint"]):
            raise ValueError("give one model: a zoo name (--model), --arch with --checkpoint, or --synthetic-model")
        if not self.methods or not self.metrics:
            raise ValueError("give at least one method and one metric")
        for method, params in self.methods.items():
            try:
                build_explainer(method, params)
            except (TypeError, ValueError) as error:
                raise ValueError(f"method {method!r}: {error}") from None
        for name in self.metrics:
            metric = get_metric(name)
            if metric.result.per_sample is MetricResult.per_sample:
                raise ValueError(f"metric {name!r} has no per-image scores, so it cannot be sharded by image")
            if metric.ground_truth and "masks" not in metric.ground_truth:
                raise ValueError(f"metric {name!r} needs {metric.ground_truth}, which no image source provides")


@dataclass
class Plan:
    """An :class:`Evaluation` opened: the model on its device, the image source, the evaluated dataset indices
    (``indices[position]``), the identity and its digest (``run``)."""

    evaluation: Evaluation
    model: torch.nn.Module
    source: ImageSource
    indices: list[int]
    identity: dict[str, Any]
    run: str
    device: torch.device

    @property
    def methods(self) -> list[str]:
        return list(self.evaluation.methods)


def prepare(evaluation: Evaluation, device: str | torch.device = "cpu") -> Plan:
    """Check ``evaluation``, open its data and model (moved to ``device``) and compute its identity."""
    from xaiimg.metrics import get_metric
    from xaiimg.nn import resolve_autocast, resolve_device

    evaluation.check()
    device = resolve_device(device)
    resolve_autocast(evaluation.autocast, device)
    source = open_source(evaluation.data)
    for name in evaluation.metrics:
        if get_metric(name).ground_truth and not source.has_masks:
            raise ValueError(f"metric {name!r} needs masks; of the image sources only 'synthetic' has them")
    if evaluation.target == "label" and None in source.labels and not isinstance(source, SyntheticSource):
        raise ValueError("target 'label' needs labelled images (a labels file)")
    indices = select_positions(len(source), evaluation.count, evaluation.subset_seed)
    model, model_identity = open_model(evaluation.model)
    model = model.to(device).eval()
    images = [[source.ids[i], source.labels[i]] for i in indices]
    identity = {
        "schema": SCHEMA_VERSION, "data": source.identity, "images": len(indices),
        "images_sha256": _sha256(canonical_json(images)), "model": model_identity,
        "methods": [[name, dict(params)] for name, params in evaluation.methods.items()],
        "metrics": [[name, dict(options)] for name, options in evaluation.metrics.items()],
        "target": evaluation.target, "batch_size": evaluation.batch_size, "autocast": evaluation.autocast,
    }
    return Plan(evaluation, model, source, indices, identity, _sha256(canonical_json(identity))[:32], device)


class _Blocks(torch.utils.data.Dataset):
    """Block ``j`` of a rank's to-do list as one batch (loaded in DataLoader workers when ``workers > 0``)."""

    def __init__(self, source: ImageSource, spec, indices: Sequence[int], blocks: Sequence[Sequence[int]]):
        self.source, self.spec, self.indices, self.blocks = source, spec, list(indices), [list(b) for b in blocks]

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, j: int) -> dict[str, Any]:
        loaded = [self.source.load(self.indices[position], self.spec) for position in self.blocks[j]]
        masks = [mask for _x, _label, mask in loaded]
        return {"block": j, "x": torch.stack([x for x, _label, _mask in loaded]),
                "labels": [label for _x, label, _mask in loaded],
                "masks": torch.stack(masks) if all(m is not None for m in masks) else None}


@dataclass
class ShardSummary:
    """What one :func:`evaluate_shard` call did: its file, how many ``(image, method)`` records it computed now and
    how many it found done, and the lines it dropped as damaged."""

    path: Path
    computed: int
    skipped: int
    dropped: list[str]


def _header(plan: Plan, rank: int, world_size: int) -> dict[str, Any]:
    sources = {"data": {k: str(v) for k, v in plan.evaluation.data.items() if v is not None},
               "model": {k: str(v) for k, v in plan.evaluation.model.items() if v}}
    return {"kind": "header", "run": plan.run, "identity": plan.identity, "rank": rank, "world_size": world_size,
            "sources": sources, "versions": package_versions(), "code": source_digest()}


def _differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    keys = sorted(key for key in set(a) | set(b) if a.get(key) != b.get(key))
    return ", ".join(f"{key}: {a.get(key)!r} here vs {b.get(key)!r} there" for key in keys)[:600]


def _warn(message: str) -> None:
    warnings.warn(message, CorruptRecordWarning, stacklevel=3)


def _done_records(plan: Plan, own: Path, rank: int, world_size: int, code_change: str
                  ) -> tuple[set[tuple[int, str]], list[str]]:
    """The ``(position, method)`` pairs already recorded in the shard files of the run. ``own`` is first rewritten
    (write-then-rename) with only its valid lines when it holds damaged ones (each named in a warning), and, with
    ``code_change="recompute"``, without the records that other xaiimg sources computed."""
    if code_change not in CODE_CHANGES:
        raise ValueError(f"code_change must be one of {CODE_CHANGES}, got {code_change!r}")
    done: set[tuple[int, str]] = set()
    dropped: list[str] = []
    code = code_digest()
    for path in shard_files(own.parent.parent):
        shard = read_shard(path)
        mine = path == own
        if shard.header is not None and shard.run != plan.run:
            raise RunMismatchError(
                f"{path} belongs to another evaluation ({_differences(plan.identity, shard.header['identity'])}); "
                "use another --out, or delete the shard files to start again")
        usable = shard.records
        stale = sum(record.get("code") != code for record in shard.records)
        if stale and code_change == "keep":
            warnings.warn(f"{path}: records computed by other xaiimg sources: {stale}; kept "
                          "(--on-code-change keep)", stacklevel=3)
        elif stale:
            usable = [record for record in shard.records if record.get("code") == code]
            warnings.warn(f"{path}: records computed by other xaiimg sources: {stale}; "
                          + ("computed again (--on-code-change recompute)" if mine else
                             "not counted as done (--on-code-change recompute)"), stacklevel=3)
        for number, reason in shard.problems:
            if mine:
                dropped.append(_describe(shard, number, reason))
                _warn(f"{_describe(shard, number, reason)}; dropped, its image is computed again")
            elif not reason.startswith("cut short"):   # another rank's unterminated last line may be in progress
                _warn(f"{_describe(shard, number, reason)}; ignored")
        if mine and (shard.problems or shard.header is None or len(usable) != len(shard.records)):
            header = shard.header if shard.header is not None else _header(plan, rank, world_size)
            write_atomic(path, b"".join([checksummed_line(header), *map(checksummed_line, usable)]))
        done.update((record["position"], record["method"]) for record in usable)
    if not own.exists():
        write_atomic(own, checksummed_line(_header(plan, rank, world_size)))
    return done, dropped


def _append(path: Path, lines: Sequence[bytes]) -> None:
    """Append ``lines`` with one ``write`` on an ``O_APPEND`` descriptor (retried for the rest if the kernel writes
    less), then ``fsync``: once this returns the records survive a crash."""
    data = b"".join(lines)
    handle = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(handle, view):]
        os.fsync(handle)
    finally:
        os.close(handle)


def _targets(plan: Plan, x: torch.Tensor, labels: Sequence[int | None]) -> torch.Tensor:
    if plan.evaluation.target == "label":
        if any(label is None for label in labels):
            raise ValueError("target 'label' needs a label for every image")
        return torch.tensor(labels, dtype=torch.long, device=x.device)
    from xaiimg.nn import running_on

    with torch.no_grad(), running_on(plan.model, None, plan.evaluation.autocast, default=x.device):
        return plan.model(x).argmax(dim=1)


def _score(plan: Plan, explainer, x: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor | None
           ) -> list[dict[str, dict[str, float]]]:
    """``{metric: {score: value}}`` per image of the block for one method."""
    from xaiimg.metrics import get_metric

    precision = {"autocast": plan.evaluation.autocast} if plan.evaluation.autocast else {}
    maps = explainer(plan.model, x, target=targets, **precision)
    per_image: list[dict[str, dict[str, float]]] = [{} for _ in range(len(x))]
    for name, options in plan.evaluation.metrics.items():
        metric = get_metric(name)
        extra = {"masks": masks} if metric.ground_truth else {}
        result = metric(plan.model, x, explainer if metric.explains else maps, targets, **options, **extra, **precision)
        for score, values in result.per_sample().items():
            if len(values) != len(x):
                raise RuntimeError(f"metric {name!r} gave {len(values)} {score!r} values for {len(x)} images")
            for image, value in zip(per_image, values):
                image.setdefault(name, {})[score] = float(value)
    return per_image


def evaluate_shard(out: str | Path, evaluation: Evaluation | Plan, rank: int = 0, world_size: int = 1,
                   device: str | torch.device = "cpu", workers: int = 0, code_change: str = "recompute",
                   log: Callable[[str], None] | None = None) -> ShardSummary:
    """Compute this rank's ``(image, method)`` records into ``out/shards/shard-<rank>-of-<world_size>.jsonl``,
    skipping what any shard file of ``out`` already holds (see the module docstring). Records computed by other
    xaiimg sources (another :func:`code_digest`) are computed again (``code_change="recompute"``) or kept
    (``"keep"``). ``workers``: DataLoader worker processes that load and preprocess blocks (pinned memory on CUDA);
    ``log`` receives progress lines."""
    plan = evaluation if isinstance(evaluation, Plan) else prepare(evaluation, device)
    check_rank(rank, world_size)
    own = shard_path(out, rank, world_size)
    own.parent.mkdir(parents=True, exist_ok=True)
    done, dropped = _done_records(plan, own, rank, world_size, code_change)
    methods = plan.methods
    blocks = split_blocks(len(plan.indices), plan.evaluation.batch_size, rank, world_size)
    todo = [block for block in blocks if any((p, m) not in done for p in block for m in methods)]
    skipped = sum((p, m) in done for block in blocks for p in block for m in methods)
    say = log or (lambda _line: None)
    say(f"rank {rank}/{world_size}: {len(blocks)} blocks, {len(todo)} to do ({skipped} records already done)")
    from xaiimg.compare import build_explainer

    explainers = {method: build_explainer(method, params) for method, params in plan.evaluation.methods.items()}
    loader = torch.utils.data.DataLoader(_Blocks(plan.source, plan.model.spec, plan.indices, todo), batch_size=None,
                                         num_workers=workers, pin_memory=plan.device.type == "cuda")
    computed, last_report, code = 0, time.monotonic(), code_digest()
    timing_log = timings_path(out, rank, world_size)
    timing_log.parent.mkdir(parents=True, exist_ok=True)
    timing_log.touch()
    for item in loader:
        block = todo[item["block"]]
        x = item["x"].to(plan.device, non_blocking=True)
        masks = None if item["masks"] is None else item["masks"].to(plan.device)
        targets = _targets(plan, x, item["labels"])
        target_values = targets.tolist()
        for method in methods:
            missing = [i for i, position in enumerate(block) if (position, method) not in done]
            if not missing:
                continue
            start = time.perf_counter()
            scores = _score(plan, explainers[method], x, targets, masks)
            seconds = time.perf_counter() - start
            lines = []
            for i in missing:
                position = block[i]
                index = plan.indices[position]
                label = item["labels"][i]
                lines.append(checksummed_line({
                    "kind": "record", "run": plan.run, "position": position, "image": plan.source.ids[index],
                    "label": label, "target": int(target_values[i]), "method": method, "scores": scores[i],
                    "code": code}))
            _append(own, lines)
            _append(timing_log, [(json.dumps({"method": method, "images": len(block), "seconds": seconds}) + "\n")
                                 .encode()])
            done.update((block[i], method) for i in missing)
            computed += len(missing)
        if time.monotonic() - last_report > 30:
            say(f"rank {rank}/{world_size}: {computed} records computed")
            last_report = time.monotonic()
    say(f"rank {rank}/{world_size}: done, {computed} records computed, {skipped} skipped")
    return ShardSummary(own, computed, skipped, dropped)


# -------------------------------------------------------------------------------------------------- merge
def collect_records(out: str | Path) -> tuple[dict[str, Any], dict[tuple[int, str], dict[str, Any]], list[Path]]:
    """The identity and the ``(position, method) -> record`` map of every shard file of ``out`` (damaged lines
    named in a :class:`CorruptRecordWarning` and left out); the files read."""
    paths = shard_files(out)
    if not paths:
        raise IncompleteRunError(f"no shard files in {Path(out) / SHARDS}; run the evaluation first")
    header, records = None, {}
    current = code_digest()
    for path in paths:
        shard = read_shard(path)
        for number, reason in shard.problems:
            _warn(f"{_describe(shard, number, reason)}; ignored (the evaluation recomputes it when run again)")
        if shard.header is None:
            continue
        if header is None:
            header = shard.header
        elif shard.run != header["run"]:
            raise RunMismatchError(f"{path} belongs to another evaluation than {paths[0]} "
                                   f"({_differences(header['identity'], shard.header['identity'])})")
        for record in shard.records:
            key = (record["position"], record["method"])
            kept = records.setdefault(key, record)
            if kept is record or canonical_json(kept["scores"]) == canonical_json(record["scores"]):
                continue
            if record.get("code") == current != kept.get("code"):
                records[key] = record                    # the current sources' record replaces an older one
            elif kept.get("code") != current or record.get("code") == current:
                raise RunMismatchError(f"image {record['image']}, method {record['method']}: two records with "
                                       f"different scores ({path} and an earlier shard file)")
    if header is None:
        raise IncompleteRunError(f"no shard file of {Path(out) / SHARDS} has a valid header")
    codes = {record.get("code") for record in records.values()}
    if len(codes) > 1:
        warnings.warn(f"the records merged from {out} were computed by {len(codes)} versions of the xaiimg sources",
                      stacklevel=2)
    return header["identity"], records, paths


def _columns(identity: Mapping[str, Any], record: Mapping[str, Any]) -> list[tuple[str, str, str, bool]]:
    """``(metric, score, column name, higher is better)`` in table order; the column is the score's name unless
    two metrics share it (then ``metric:score``)."""
    from xaiimg.metrics import get_metric

    pairs = []
    for name, _options in identity["metrics"]:
        declared = get_metric(name).higher_is_better
        found = list(record["scores"][name])
        pairs += [(name, score, declared.get(score, True))
                  for score in [s for s in declared if s in found] + sorted(set(found) - set(declared))]
    shared = {score for _n, score, _h in pairs if sum(s == score for _m, s, _x in pairs) > 1}
    return [(name, score, f"{name}:{score}" if score in shared else score, higher) for name, score, higher in pairs]


def measured_seconds(out: str | Path, methods: Sequence[str]) -> dict[str, dict[str, float | None]]:
    """Per method: seconds and images of every unit the ranks logged in ``out/timings/`` (units computed again after
    a crash count again), and images per second; unreadable log lines are skipped (they are no results)."""
    totals = {method: {"seconds": 0.0, "images": 0} for method in methods}
    folder = Path(out) / TIMINGS
    for path in sorted(folder.glob("shard-*.jsonl")) if folder.is_dir() else []:
        for line in path.read_bytes().splitlines():
            try:
                entry = json.loads(line)
                totals[entry["method"]]["seconds"] += float(entry["seconds"])
                totals[entry["method"]]["images"] += int(entry["images"])
            except (ValueError, KeyError, TypeError):
                continue
    return {method: {**total, "images_per_second": total["images"] / total["seconds"] if total["seconds"] else None}
            for method, total in totals.items()}


def merge_shards(out: str | Path, resamples: int | None = None, confidence: float = 0.95,
                 seed: int = 0) -> dict[str, Path]:
    """Merge the shard files of ``out`` into ``per_image.csv`` and ``table.{csv,json,tex}`` (plus ``run.json`` and
    ``timings.json``); the written paths by name. Raises :class:`IncompleteRunError` naming what is missing."""
    from xaiimg.stats import DEFAULT_RESAMPLES, paired_bootstrap

    out = Path(out)
    identity, records, paths = collect_records(out)
    methods = [name for name, _params in identity["methods"]]
    count = identity["images"]
    missing = [(p, m) for p in range(count) for m in methods if (p, m) not in records]
    if missing:
        examples = ", ".join(f"position {p} / {m}" for p, m in missing[:5])
        raise IncompleteRunError(f"{len(missing)} of {count * len(methods)} (image, method) records are missing from "
                                 f"{out / SHARDS}, e.g. {examples}; run (or resume) the evaluation of every shard")
    columns = _columns(identity, records[(0, methods[0])])
    per_image = []
    for position in range(count):                          # dataset order = the readers' sorted image ids
        for method in methods:
            record = records[(position, method)]
            row = {"image": record["image"], "position": position, "label": record["label"],
                   "target": record["target"], "method": method}
            row.update({column: record["scores"][name][score] for name, score, column, _h in columns})
            per_image.append(row)
    table = [{"method": method, "n": count} for method in methods]
    for name, score, column, _higher in columns:
        values = {m: [records[(p, m)]["scores"][name][score] for p in range(count)] for m in methods}
        try:
            estimates = paired_bootstrap(values, confidence=confidence,
                                         resamples=resamples or DEFAULT_RESAMPLES, seed=seed)
        except ValueError as error:
            raise ValueError(f"score {column!r}: {error}") from None
        for row, method in zip(table, methods):
            estimate = estimates[method]
            row.update({column: estimate.mean, f"{column} low": estimate.low, f"{column} high": estimate.high})
    caption = (f"{', '.join(name for name, _o in identity['metrics'])} on {count} images "
               f"({identity['data']['kind']}): mean and {confidence:.0%} paired bootstrap interval")
    written = write_table(table, out / "table", caption=caption,
                          bold_best={column: "max" if higher else "min" for _n, _s, column, higher in columns})
    written["per_image"] = write_atomic(out / "per_image.csv", csv_text(per_image))
    written["timings"] = write_atomic(out / "timings.json", to_json(measured_seconds(out, methods)))
    written["run"] = write_atomic(out / "run.json", to_json(
        {"identity": identity, "shards": [path.name for path in paths], "records": count * len(methods)}))
    return written


# ---------------------------------------------------------------------------------------------- command
def _pairs(items: Sequence[str], names: Sequence[str], option: str) -> dict[str, dict[str, Any]]:
    """``NAME.KEY=VALUE`` items (VALUE read as JSON when it parses, else as text) per name."""
    params: dict[str, dict[str, Any]] = {name: {} for name in names}
    for item in items:
        key, sep, value = item.partition("=")
        name, dot, parameter = key.rpartition(".")
        if not sep or not dot or name not in params:
            raise ValueError(f"{option} expects NAME.KEY=VALUE with NAME among {list(names)}, got {item!r}")
        try:
            params[name][parameter] = json.loads(value)
        except json.JSONDecodeError:
            params[name][parameter] = value
    return params


def evaluation_from_args(args: argparse.Namespace) -> Evaluation:
    if args.data == "synthetic":
        data = {"kind": "synthetic", "count": args.count, "size": args.synthetic_size,
                "num_classes": args.synthetic_classes, "seed": args.synthetic_seed, "split": args.split}
    elif args.data == "imagenet":
        data = {"kind": "imagenet", "root": args.root, "labels": args.labels, "synsets": args.synsets}
    else:
        data = {"kind": "folder", "root": args.root, "labels": args.labels}
    model = {"zoo": args.model, "arch": args.arch, "checkpoint": args.checkpoint, "synthetic": args.synthetic_model}
    return Evaluation(data=data, model={k: v for k, v in model.items() if v},
                      methods=_pairs(args.param, args.method, "--param"),
                      metrics=_pairs(args.metric_param, args.metric, "--metric-param"), target=args.target,
                      batch_size=args.batch_size, count=args.count, subset_seed=args.subset_seed,
                      autocast=args.autocast)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m xaiimg.cli",
        description="Per-image evaluation of saliency methods x metrics, sharded by rank (torchrun, or --rank/"
                    "--world-size for separate jobs), resumable, merged into the tables one process writes.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_evaluate_arguments(commands.add_parser(
        "evaluate-sharded", help="compute this rank's records (then merge, when the whole world ran in this launch)"))
    add_merge_arguments(commands.add_parser("merge-shards", help="merge every shard of --out into the tables"))
    return parser


def add_evaluate_arguments(evaluate: argparse.ArgumentParser) -> None:
    """The options of ``evaluate`` (for a CLI subcommand that wraps it: ``run=command_evaluate``)."""
    evaluate.add_argument("--out", required=True, help="run folder: shards/ and, after the merge, the tables")
    data = evaluate.add_argument_group("data")
    data.add_argument("--data", choices=DATA_KINDS, required=True)
    data.add_argument("--root", help="imagenet: ImageNetVal root; folder: the image folder")
    data.add_argument("--labels", help="imagenet: LOC_val_solution.csv, val.txt or file,label CSV; folder: CSV")
    data.add_argument("--synsets", help="imagenet: synset list (LOC_synset_mapping.txt)")
    data.add_argument("--synthetic-size", type=int, default=224)
    data.add_argument("--synthetic-classes", type=int, default=6)
    data.add_argument("--synthetic-seed", type=int, default=0)
    data.add_argument("--split", default="test", help="synthetic split (default test)")
    data.add_argument("--count", type=int, default=None, help="images evaluated (default all; synthetic: required)")
    data.add_argument("--subset-seed", type=int, default=None,
                      help="draw --count images by this seeded permutation instead of taking the first ones")
    model = evaluate.add_argument_group("model (one of)")
    model.add_argument("--model", help="zoo model name")
    model.add_argument("--arch", help="architecture of --checkpoint (torchvision or timm name)")
    model.add_argument("--checkpoint", help="state_dict file")
    model.add_argument("--synthetic-model", help="checkpoint of `xaiimg train-synthetic` (cnn.pt, vit.pt)")
    work = evaluate.add_argument_group("methods and metrics")
    work.add_argument("--method", action="append", required=True, help="registry name (repeat)")
    work.add_argument("--param", action="append", default=[], metavar="METHOD.NAME=VALUE")
    work.add_argument("--metric", action="append", required=True, help="per-image metric (repeat), e.g. "
                                                                        "insertion-deletion")
    work.add_argument("--metric-param", action="append", default=[], metavar="METRIC.NAME=VALUE",
                      help="e.g. insertion-deletion.protocol=thesis")
    work.add_argument("--target", choices=TARGETS, default="predicted",
                      help="class explained and scored (default: predicted on the unperturbed image)")
    work.add_argument("--batch-size", type=int, default=1,
                      help="images per block (one batch; the unit of the split and of resumption; default 1)")
    run = evaluate.add_argument_group("execution")
    run.add_argument("--device", default="cpu",
                     help="cpu (default), cuda (under torchrun: cuda:LOCAL_RANK), cuda:N or mps")
    run.add_argument("--autocast", choices=("bfloat16", "float16"), default=None,
                     help="the model's forwards under torch.autocast (default off; part of the evaluation's identity)")
    run.add_argument("--deterministic", action="store_true",
                     help="deterministic GPU kernels (cuDNN, cuBLAS): the same bits on every run on one GPU type")
    run.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    run.add_argument("--threads", type=int, default=None, help="torch CPU threads (torchrun sets 1 per process)")
    run.add_argument("--rank", type=int, default=None, help="this shard (separate jobs, e.g. DVC foreach)")
    run.add_argument("--world-size", type=int, default=None, help="number of shards (separate jobs)")
    run.add_argument("--backend", default="gloo", help="torch.distributed backend under torchrun (default gloo: "
                                                      "only a barrier is exchanged)")
    run.add_argument("--barrier-hours", type=float, default=DEFAULT_BARRIER_HOURS,
                     help="how long rank 0 waits for the slowest rank before merging")
    run.add_argument("--on-code-change", choices=CODE_CHANGES, default="recompute",
                     help="records found in --out that other xaiimg sources computed: compute them again (default) "
                          "or keep them")
    run.add_argument("--no-merge", action="store_true", help="do not merge after the evaluation")
    run.add_argument("--resamples", type=int, default=None, help="bootstrap resamples of the merge")
    evaluate.set_defaults(run=command_evaluate)


def add_merge_arguments(merge: argparse.ArgumentParser) -> None:
    """The options of ``merge`` (``run=command_merge``)."""
    merge.add_argument("--out", required=True)
    merge.add_argument("--resamples", type=int, default=None, help="bootstrap resamples (default 10,000; memory "
                                                                   "is about resamples x images x 16 bytes)")
    merge.set_defaults(run=command_merge)


def rank_device(device: str) -> str:
    """``"cuda"`` under torchrun becomes ``cuda:<LOCAL_RANK modulo the GPUs>`` (one GPU per process, shared round
    robin when there are more processes than GPUs); anything else is kept."""
    if device == "cuda" and "LOCAL_RANK" in os.environ and torch.cuda.is_available():
        return f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"
    return device


def deterministic_kernels() -> None:
    """Deterministic GPU kernels (cuDNN without autotuning, torch's deterministic algorithms, a fixed cuBLAS
    workspace), so that a block gives the same bits in every run on one GPU type; ops without a deterministic
    kernel only warn."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


def _print(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def command_evaluate(args: argparse.Namespace) -> list[Path]:
    import torch.distributed as dist

    evaluation = evaluation_from_args(args)
    evaluation.check()
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    joined = launched and dist.is_available() and not dist.is_initialized()
    if joined:     # a caller's process group is used as it is, and left to the caller
        dist.init_process_group(backend=args.backend, timeout=timedelta(hours=args.barrier_hours))
    try:
        rank, world_size = shard_position(args.rank, args.world_size)
        device = rank_device(args.device)
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.deterministic:
            deterministic_kernels()
        summary = evaluate_shard(args.out, evaluation, rank, world_size, device=device, workers=args.workers,
                                 code_change=args.on_code_change, log=_print)
        written = [summary.path]
        if args.no_merge:
            return written
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        elif world_size > 1:
            _print(f"rank {rank}/{world_size}: shard done; merge with `python -m xaiimg.cli merge-shards "
                   f"--out {args.out}` once every shard is")
            return written
        if rank == 0:
            written += list(merge_shards(args.out, resamples=args.resamples).values())
        return written
    finally:
        if joined:
            dist.destroy_process_group()


def command_merge(args: argparse.Namespace) -> list[Path]:
    return list(merge_shards(args.out, resamples=args.resamples).values())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        for path in args.run(args):
            print(path)
    except (ValueError, IncompleteRunError, FileNotFoundError) as error:
        print(f"xaiimg: error: {error}", file=sys.stderr)
        return 2
    return 0

