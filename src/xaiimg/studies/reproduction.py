"""Verdicts on the papers' claims: one record per claim, written by the studies to ``results/claims/*.json`` and
rendered into ``docs/REPRODUCTION.md`` by :func:`render_markdown` (``xaiimg reproduction``).

A claim is measured as one number per item (image, scene or seed) whose sign or size the paper states, e.g. the
per-image difference "MSG-CAM minus Group-CAM insertion AUC" for "MSG-CAM beats Group-CAM". The verdict rule
(:func:`verdict`):

- **reproduced**: the 95% bootstrap interval of the mean lies entirely on the paper's side of the null value
  (the interval excludes the opposite);
- **not reproduced**: otherwise; the note says whether the interval lies on the opposite side (contradicted) or
  contains the null value (inconclusive at this n);
- **not testable offline**: the claim needs data or weights this machine cannot have; the note says which.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from xaiimg.stats import Estimate

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
NOT_TESTABLE = "not testable offline"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, NOT_TESTABLE)
PAPERS = {"thesis": "Thesis: higher-resolution saliency maps (MSG-CAM, sliding window)",
          "aesthetic": "Paper: interpretability of an image aesthetic-quality model"}
Direction = Literal["greater", "less"]


@dataclass(frozen=True)
class Claim:
    """One claim of a paper and our measurement of it.

    ``where``: table or figure of the paper; ``statement``: the claim in words; ``paper_value``: the paper's number
    or wording; ``measure``: what ``mean`` is the mean of (per item); ``model`` and ``data``: what we measured on;
    ``n``, ``mean``, ``ci_low``, ``ci_high``: the estimate (None when not testable); ``note``: why the verdict.
    """

    id: str
    paper: str
    where: str
    statement: str
    paper_value: str
    measure: str
    model: str
    data: str
    verdict: str
    note: str
    n: int | None = None
    mean: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    details: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.paper not in PAPERS:
            raise ValueError(f"unknown paper {self.paper!r}; expected one of {sorted(PAPERS)}")
        if self.verdict not in VERDICTS:
            raise ValueError(f"unknown verdict {self.verdict!r}; expected one of {VERDICTS}")
        measured = self.n is not None
        if self.verdict != NOT_TESTABLE and not measured:
            raise ValueError(f"claim {self.id!r}: a verdict of {self.verdict!r} needs n, mean and an interval")
        if measured and not (self.ci_low <= self.mean <= self.ci_high):
            raise ValueError(f"claim {self.id!r}: mean {self.mean} outside its interval "
                             f"[{self.ci_low}, {self.ci_high}]")


def verdict(estimate: Estimate, direction: Direction, null: float = 0.0) -> tuple[str, str]:
    """``(verdict, note)`` for a claim that the mean is ``direction`` than ``null``: reproduced only when the
    interval excludes the opposite side (``low > null`` for "greater", ``high < null`` for "less")."""
    if direction not in ("greater", "less"):
        raise ValueError(f"direction must be 'greater' or 'less', got {direction!r}")
    interval = f"95% CI [{estimate.low:.3g}, {estimate.high:.3g}]"
    holds = estimate.low > null if direction == "greater" else estimate.high < null
    opposite = estimate.high < null if direction == "greater" else estimate.low > null
    if holds:
        return REPRODUCED, f"{interval} lies {'above' if direction == 'greater' else 'below'} {null:g}"
    if opposite:
        return NOT_REPRODUCED, f"contradicted: {interval} lies on the opposite side of {null:g}"
    return NOT_REPRODUCED, f"inconclusive: {interval} contains {null:g}"


def measured_claim(id: str, paper: str, where: str, statement: str, paper_value: str, measure: str, model: str,
                   data: str, estimate: Estimate, direction: Direction, null: float = 0.0, note: str = "",
                   details: dict | None = None) -> Claim:
    """A :class:`Claim` whose verdict follows from ``estimate`` by :func:`verdict`; ``note`` is appended."""
    outcome, reason = verdict(estimate, direction, null)
    return Claim(id, paper, where, statement, paper_value, measure, model, data, outcome,
                 f"{reason}. {note}".strip() if note else reason, estimate.n, estimate.mean, estimate.low,
                 estimate.high, dict(details or {}))


def untestable_claim(id: str, paper: str, where: str, statement: str, paper_value: str, reason: str) -> Claim:
    """A claim that needs data or weights not available offline; ``reason`` names them."""
    return Claim(id, paper, where, statement, paper_value, "-", "-", "-", NOT_TESTABLE, reason)


def write_claims(path: str | Path, claims: Sequence[Claim]) -> Path:
    """Write ``claims`` as JSON (sorted keys, stable bytes); ids must be unique."""
    ids = [claim.id for claim in claims]
    duplicates = sorted({claim_id for claim_id in ids if ids.count(claim_id) > 1})
    if duplicates:
        raise ValueError(f"duplicate claim ids: {duplicates}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"claims": [asdict(claim) for claim in claims]}, indent=1, sort_keys=True) + "\n")
    return path


def read_claims(paths: Iterable[str | Path]) -> list[Claim]:
    """The claims of every file in ``paths`` (validated; a malformed file raises naming it)."""
    claims = []
    for path in paths:
        try:
            records = json.loads(Path(path).read_text())["claims"]
            claims += [Claim(**record) for record in records]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: not a claims file ({error})") from error
    ids = [claim.id for claim in claims]
    duplicates = sorted({claim_id for claim_id in ids if ids.count(claim_id) > 1})
    if duplicates:
        raise ValueError(f"duplicate claim ids across files: {duplicates}")
    return claims


def claim_files(results_dir: str | Path) -> list[Path]:
    """``results_dir/claims/*.json`` in name order."""
    return sorted((Path(results_dir) / "claims").glob("*.json"))


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def summary_counts(claims: Sequence[Claim]) -> dict[str, dict[str, int]]:
    """Per paper, how many claims have each verdict."""
    counts = {paper: dict.fromkeys(VERDICTS, 0) for paper in PAPERS}
    for claim in claims:
        counts[claim.paper][claim.verdict] += 1
    return {paper: verdicts for paper, verdicts in counts.items() if sum(verdicts.values())}


def summary_lines(claims: Sequence[Claim]) -> list[str]:
    """One line per paper: ``N claims: a reproduced, b not reproduced, c not testable offline``."""
    return [f"- {PAPERS[paper]}: {sum(verdicts.values())} claims: "
            + ", ".join(f"{count} {name}" for name, count in verdicts.items())
            for paper, verdicts in summary_counts(claims).items()]


def verdict_lines(claims: Sequence[Claim], where: Sequence[str] = ("",)) -> list[str]:
    """The claims whose ``where`` starts with one of ``where``, one prose line each: where, statement, VERDICT, the
    measure with mean, 95% interval, n, model and data, and the note (what notebooks print beside their numbers)."""
    lines = []
    for claim in claims:
        if not claim.where.startswith(tuple(where)):
            continue
        measured = "" if claim.n is None else (
            f" ({claim.measure}: {claim.mean:+.3f} [{claim.ci_low:+.3f}, {claim.ci_high:+.3f}], n = {claim.n}, "
            f"{claim.model}; {claim.data})")
        lines.append(f"- {claim.where}: {claim.statement}: {claim.verdict.upper()}{measured}. {claim.note}")
    return lines


def render_markdown(claims: Sequence[Claim], sources: Sequence[str] = ()) -> str:
    """docs/REPRODUCTION.md: a summary, then per paper one row per claim (where, statement, paper, ours, verdict)."""
    lines = ["# Reproduction: which claims of the two papers hold here", "",
             "Generated by `xaiimg reproduction` from " + (", ".join(f"`{source}`" for source in sources) or "results")
             + "; do not edit by hand (tests/test_reproduction.py fails if it disagrees with results/).", "",
             "Verdict rule: **reproduced** only when the 95% bootstrap interval of the per-item measure lies entirely "
             "on the paper's side (it excludes the opposite); **not reproduced** when it contains the null value "
             "(inconclusive) or lies on the other side (contradicted); **not testable offline** when the claim needs "
             "data or weights this machine cannot have.", "", "## Summary", "", *summary_lines(claims), ""]
    for paper, title in PAPERS.items():
        rows = [claim for claim in claims if claim.paper == paper]
        if not rows:
            continue
        lines += [f"## {title}", "",
                  "| where | claim | paper | measure | model, data | n | mean [95% CI] | verdict | note |",
                  "|---|---|---|---|---|---:|---|---|---|"]
        for claim in rows:
            ours = "-" if claim.n is None else \
                f"{_number(claim.mean)} [{_number(claim.ci_low)}, {_number(claim.ci_high)}]"
            lines.append("| " + " | ".join(_cell(cell) for cell in (
                claim.where, claim.statement, claim.paper_value, claim.measure, f"{claim.model}; {claim.data}",
                "-" if claim.n is None else str(claim.n), ours, f"**{claim.verdict}**", claim.note)) + " |")
        lines.append("")
    return "\n".join(lines)


def write_reproduction(results_dir: str | Path, out: str | Path) -> Path:
    """Render every claims file under ``results_dir/claims`` into ``out`` (e.g. docs/REPRODUCTION.md)."""
    files = claim_files(results_dir)
    if not files:
        raise FileNotFoundError(f"no claims files under {Path(results_dir) / 'claims'}")
    out = Path(out)
    text = render_markdown(read_claims(files), [f"{Path(results_dir).name}/claims/{file.name}" for file in files])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return out
