"""AVA (Aesthetic Visual Analysis, Murray et al., CVPR 2012) labels, splits and images.

``AVA.txt`` has one row per image, 15 whitespace-separated integers::

    index  image_id  v1 ... v10  semantic_tag_1  semantic_tag_2  challenge_id

``v_i`` = number of votes for score ``i`` (1..10); tag 0 means "no tag". The common test split (NIMA's, as
published by idealo/image-quality-assessment) is a JSON list of ``{"image_id": "<id>", "label": [10 counts]}``.
Images are ``<images_dir>/<image_id>.jpg``.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from xaiimg.data.images import load_image

NUM_BINS = 10


@dataclass(frozen=True)
class AVARecord:
    """One image's votes; ``index``, ``semantic_tags`` and ``challenge_id`` are ``None`` when the source (e.g.
    the JSON split files) does not carry them."""

    image_id: str
    votes: tuple[int, ...]
    index: int | None = None
    semantic_tags: tuple[int, int] | None = None
    challenge_id: int | None = None

    @property
    def num_votes(self) -> int:
        return sum(self.votes)

    @property
    def distribution(self) -> torch.Tensor:
        return vote_distribution(torch.tensor(self.votes))

    @property
    def mean_score(self) -> float:
        return float(mean_score(self.distribution.double()))


def vote_distribution(votes: torch.Tensor) -> torch.Tensor:
    """Vote counts ``[...,10]`` -> distribution (float, summing to 1 over the last axis)."""
    votes = torch.as_tensor(votes)
    if votes.shape[-1] != NUM_BINS:
        raise ValueError(f"votes need {NUM_BINS} bins in the last axis, got shape {tuple(votes.shape)}")
    if (votes < 0).any():
        raise ValueError("vote counts must be non-negative")
    totals = votes.sum(-1, keepdim=True)
    if (totals == 0).any():
        raise ValueError("a row of vote counts sums to zero; its distribution is undefined")
    dtype = votes.dtype if votes.is_floating_point() else torch.float32
    return votes.to(dtype) / totals.to(dtype)


def mean_score(distribution: torch.Tensor) -> torch.Tensor:
    """``sum_i i * p_i`` (scores 1..10) over the last axis."""
    if distribution.shape[-1] != NUM_BINS:
        raise ValueError(f"a score distribution has {NUM_BINS} bins, got shape {tuple(distribution.shape)}")
    bins = torch.arange(1, NUM_BINS + 1, dtype=distribution.dtype, device=distribution.device)
    return (distribution * bins).sum(-1)


def _parse_row(fields: list[str], where: str) -> AVARecord:
    if len(fields) != 15:
        raise ValueError(f"{where}: expected 15 fields (index, image id, 10 vote counts, 2 semantic tags, "
                         f"challenge id), got {len(fields)}")
    try:
        numbers = [int(f) for f in fields]
    except ValueError:
        raise ValueError(f"{where}: every field must be an integer, got {fields}") from None
    votes = tuple(numbers[2:12])
    if min(votes) < 0:
        raise ValueError(f"{where}: negative vote count in {list(votes)}")
    if sum(votes) == 0:
        raise ValueError(f"{where}: the image has no votes")
    return AVARecord(image_id=fields[1], votes=votes, index=numbers[0], semantic_tags=(numbers[12], numbers[13]),
                     challenge_id=numbers[14])


def _check_unique(records: Sequence[AVARecord], where: Sequence[str]) -> None:
    seen: dict[str, str] = {}
    for record, location in zip(records, where):
        if record.image_id in seen:
            raise ValueError(f"{location}: image id {record.image_id} repeats {seen[record.image_id]}")
        seen[record.image_id] = location


def read_ava_txt(path: str | Path) -> list[AVARecord]:
    """Rows of an ``AVA.txt``-format file in file order; blank lines are skipped, malformed rows and repeated
    image ids raise ``ValueError`` naming ``file:line``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"AVA label file not found: {path}")
    records, where = [], []
    with path.open() as handle:
        for line_number, line in enumerate(handle, start=1):
            if line.strip():
                location = f"{path}:{line_number}"
                records.append(_parse_row(line.split(), location))
                where.append(location)
    if not records:
        raise ValueError(f"{path} holds no AVA rows")
    _check_unique(records, where)
    return records


def read_ava_json(path: str | Path) -> list[AVARecord]:
    """A split file ``[{"image_id": "...", "label": [10 counts]}, ...]`` (idealo/NIMA format), in file order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"AVA split file not found: {path}")
    entries = json.loads(path.read_text())
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of {{'image_id', 'label'}} objects")
    records, where = [], []
    for position, entry in enumerate(entries):
        location = f"{path}[{position}]"
        if not isinstance(entry, dict) or "image_id" not in entry or "label" not in entry:
            raise ValueError(f"{location}: expected an object with 'image_id' and 'label', got {entry!r}")
        votes = entry["label"]
        if not isinstance(votes, list) or len(votes) != NUM_BINS or not all(isinstance(v, int) for v in votes):
            raise ValueError(f"{location}: 'label' must be {NUM_BINS} integer vote counts, got {votes!r}")
        if min(votes) < 0 or sum(votes) == 0:
            raise ValueError(f"{location}: vote counts must be non-negative with a positive total, got {votes}")
        records.append(AVARecord(image_id=str(entry["image_id"]), votes=tuple(votes)))
        where.append(location)
    _check_unique(records, where)
    return records


def read_ava_labels(path: str | Path) -> list[AVARecord]:
    """:func:`read_ava_json` for a ``.json`` file, :func:`read_ava_txt` otherwise."""
    return read_ava_json(path) if Path(path).suffix.lower() == ".json" else read_ava_txt(path)


def split_by_ids(records: Sequence[AVARecord], test_ids: Iterable[str]) -> tuple[list[AVARecord], list[AVARecord]]:
    """``(train, test)``: records whose id is in ``test_ids`` go to test; both keep the order of ``records``."""
    test_ids = {str(i) for i in test_ids}
    return ([r for r in records if r.image_id not in test_ids], [r for r in records if r.image_id in test_ids])


class AVADataset(Dataset):
    """``(transform(image), distribution [10])`` for each record whose image ``<images_dir>/<id>.jpg`` exists.

    ``missing="error"`` (default) raises if any record has no image, naming a few; ``"skip"`` drops them
    (e.g. a full label file over a folder holding a subset of the images). ``transform`` maps a PIL image to a
    tensor, e.g. ``model.spec.transform()``.
    """

    def __init__(self, records: Sequence[AVARecord], images_dir: str | Path, transform: Callable,
                 missing: str = "error", suffix: str = ".jpg"):
        self.images_dir = Path(images_dir)
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"AVA image folder not found: {self.images_dir}")
        if missing not in ("error", "skip"):
            raise ValueError(f"missing must be 'error' or 'skip', got {missing!r}")
        present = {p.name for p in self.images_dir.iterdir()}
        absent = [r.image_id for r in records if r.image_id + suffix not in present]
        if absent and missing == "error":
            raise FileNotFoundError(f"{len(absent)} of {len(records)} AVA images missing from {self.images_dir}, "
                                    f"e.g. {absent[:3]}; pass missing='skip' to use the ones present")
        self.records = [r for r in records if r.image_id + suffix in present]
        self.transform = transform
        self.suffix = suffix

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        record = self.records[index]
        image = load_image(self.images_dir / f"{record.image_id}{self.suffix}")
        return self.transform(image), record.distribution
