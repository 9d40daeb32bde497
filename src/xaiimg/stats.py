"""Statistics for reproduction tables: n, the mean and a 95% bootstrap interval, paired across methods, and paired
tests for "A beats B".

- Percentile bootstrap (Efron & Tibshirani, An Introduction to the Bootstrap, 1993, ch. 13): resample the images
  with replacement ``resamples`` times, take the mean of each resample, and report the ``(1-c)/2`` and ``(1+c)/2``
  quantiles of those means.
- Paired: every method is resampled with the same image indices (:func:`paired_bootstrap`), so differences between
  methods keep their pairing and their intervals are those of the per-image differences.
- Paired tests: the exact or Monte-Carlo sign-flip permutation test of the mean difference (Fisher 1935; Good,
  Permutation Tests, 2000), and the Wilcoxon signed-rank test (scipy) beside it.

Everything is seeded: the same values and seed give the same interval.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 10_000
EXACT_SIGN_FLIP_LIMIT = 16          # up to 2**16 sign patterns are enumerated; larger n draws random patterns


@dataclass(frozen=True)
class Estimate:
    """A mean over ``n`` items with its ``confidence`` bootstrap interval ``[low, high]``."""

    n: int
    mean: float
    low: float
    high: float
    confidence: float = 0.95

    def excludes(self, value: float) -> bool:
        """Whether ``value`` lies outside the interval (e.g. 0 for a difference: the sign is settled)."""
        return value < self.low or value > self.high

    def as_row(self, digits: int = 3) -> dict[str, float | int]:
        """``n``, ``mean``, ``ci_low``, ``ci_high`` rounded for a table."""
        return {"n": self.n, "mean": round(self.mean, digits), "ci_low": round(self.low, digits),
                "ci_high": round(self.high, digits)}

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}] (n={self.n})"


def _values(values, name: str = "values") -> np.ndarray:
    array = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise ValueError(f"{name} is empty: a mean needs at least one item")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values; drop or explain them before averaging")
    return array


def bootstrap_indices(n: int, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """``[resamples, n]`` indices drawn with replacement: one row per bootstrap resample of ``n`` items."""
    if n < 1 or resamples < 1:
        raise ValueError(f"need n >= 1 and resamples >= 1, got n={n}, resamples={resamples}")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _estimate(values: np.ndarray, indices: np.ndarray, confidence: float) -> Estimate:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    means = values[indices].mean(axis=1)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Estimate(int(values.size), float(values.mean()), float(low), float(high), confidence)


def bootstrap_mean(values, confidence: float = 0.95, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Estimate:
    """The mean of ``values`` (one per image) with its percentile bootstrap interval."""
    array = _values(values)
    return _estimate(array, bootstrap_indices(array.size, resamples, seed), confidence)


def paired_bootstrap(values_by_method: Mapping[str, Sequence[float]], confidence: float = 0.95,
                     resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict[str, Estimate]:
    """Each method's mean and interval from the same resampled images (values aligned by image)."""
    arrays = {name: _values(values, name) for name, values in values_by_method.items()}
    sizes = {array.size for array in arrays.values()}
    if len(sizes) != 1:
        raise ValueError(f"paired values need one value per image for every method, got sizes "
                         f"{ {name: array.size for name, array in arrays.items()} }")
    indices = bootstrap_indices(sizes.pop(), resamples, seed)
    return {name: _estimate(array, indices, confidence) for name, array in arrays.items()}


def paired_difference(a, b, confidence: float = 0.95, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Estimate:
    """``mean(a - b)`` over paired images with its bootstrap interval."""
    a, b = _values(a, "a"), _values(b, "b")
    if a.size != b.size:
        raise ValueError(f"paired values need the same images: {a.size} vs {b.size}")
    return bootstrap_mean(a - b, confidence, resamples, seed)


def sign_flip_test(a, b, permutations: int = DEFAULT_RESAMPLES, seed: int = 0) -> float:
    """Two-sided p-value of ``mean(a - b) = 0`` by flipping the signs of the paired differences: exact over all
    ``2**n`` patterns for ``n <= 16``, else ``permutations`` random patterns with the observed one counted
    (p = (1 + #extreme) / (1 + permutations), never 0)."""
    a, b = _values(a, "a"), _values(b, "b")
    if a.size != b.size:
        raise ValueError(f"paired values need the same images: {a.size} vs {b.size}")
    differences = a - b
    observed = abs(differences.mean())
    tolerance = 1e-12 * max(1.0, float(np.abs(differences).max()))
    if differences.size <= EXACT_SIGN_FLIP_LIMIT:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=differences.size)))
        extreme = np.abs((signs * differences).mean(axis=1)) >= observed - tolerance
        return float(extreme.mean())
    signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(permutations, differences.size))
    extreme = np.abs((signs * differences).mean(axis=1)) >= observed - tolerance
    return float((1 + extreme.sum()) / (1 + permutations))


def wilcoxon_signed_rank(a, b) -> float:
    """Two-sided p-value of the Wilcoxon signed-rank test of paired ``a`` and ``b`` (scipy; zero differences
    dropped, ``"wilcox"`` convention); 1.0 when every difference is zero."""
    from scipy.stats import wilcoxon

    a, b = _values(a, "a"), _values(b, "b")
    if a.size != b.size:
        raise ValueError(f"paired values need the same images: {a.size} vs {b.size}")
    if np.all(a == b):
        return 1.0
    return float(wilcoxon(a, b, zero_method="wilcox", alternative="two-sided").pvalue)


def normal_interval_halfwidth(values, confidence: float = 0.95) -> float:
    """``z * sd / sqrt(n)``: the normal-theory half-width, a cross-check of the bootstrap for large n."""
    from scipy.stats import norm

    array = _values(values)
    return float(norm.ppf((1 + confidence) / 2) * array.std(ddof=1) / math.sqrt(array.size))
