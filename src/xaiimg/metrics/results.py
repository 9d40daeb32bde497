"""What every metric returns: a small dataclass with per-sample values, curves and aggregates.

Each result class declares the direction of each of its scores (``higher_is_better``, as Quantus does), and turns
into a plain dict (:meth:`MetricResult.to_dict`) or one CSV row of its aggregates (:meth:`MetricResult.csv_row`)
without pandas.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
from typing import ClassVar

import torch


def _plain(value):
    """Tensors and nested containers -> Python floats/ints/bools/lists (JSON-ready)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


@dataclasses.dataclass
class MetricResult:
    """Base of every metric result.

    ``higher_is_better`` maps each aggregate score name (the keys of :meth:`summary`) to its direction.
    """

    metric: ClassVar[str] = ""
    higher_is_better: ClassVar[dict[str, bool]] = {}

    def summary(self) -> dict[str, float]:
        """Aggregate scores over the samples, one float each (keys ordered as ``higher_is_better``)."""
        raise NotImplementedError

    def per_sample(self) -> dict[str, list[float]]:
        """The summary's scores per image (their mean is the summary), for the metrics that score each image on
        its own (:attr:`xaiimg.metrics.registry.Metric.per_image`)."""
        raise NotImplementedError(f"{type(self).__name__} has no per-image scores")

    def to_dict(self) -> dict:
        """Every field (per-sample values, curves) as plain Python values, plus ``summary`` and the directions."""
        fields = {field.name: _plain(getattr(self, field.name)) for field in dataclasses.fields(self)}
        return {"metric": self.metric, **fields, "summary": self.summary(),
                "higher_is_better": dict(self.higher_is_better)}

    def csv_header(self) -> str:
        """Column names of :meth:`csv_row`: ``metric`` then the summary scores."""
        return _csv_line(["metric", *self.summary()])

    def csv_row(self) -> str:
        """One CSV line of the aggregates (``repr`` precision floats, ``nan`` kept as ``nan``)."""
        values = [repr(float(value)) if not math.isnan(value) else "nan" for value in self.summary().values()]
        return _csv_line([self.metric, *values])


def _csv_line(cells: list[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(cells)
    return buffer.getvalue()
