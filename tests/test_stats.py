"""Bootstrap intervals and paired tests on cases whose answers are known."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from xaiimg.stats import (
    bootstrap_mean,
    normal_interval_halfwidth,
    paired_bootstrap,
    paired_difference,
    sign_flip_test,
    wilcoxon_signed_rank,
)


def test_constant_values_have_a_zero_width_interval():
    estimate = bootstrap_mean([0.7] * 30)
    assert (estimate.n, estimate.mean, estimate.low, estimate.high) == (30, pytest.approx(0.7), pytest.approx(0.7),
                                                                        pytest.approx(0.7))


def test_interval_matches_normal_theory_for_many_normal_values():
    values = np.random.default_rng(1).normal(2.0, 1.0, size=400)
    estimate = bootstrap_mean(values, resamples=20_000)
    half = normal_interval_halfwidth(values)
    assert estimate.mean == pytest.approx(values.mean())
    assert (estimate.high - estimate.low) / 2 == pytest.approx(half, rel=0.08)
    assert estimate.low < values.mean() < estimate.high


def test_same_seed_same_interval_and_tensors_accepted():
    values = torch.rand(40, generator=torch.Generator().manual_seed(0))
    assert bootstrap_mean(values, seed=3) == bootstrap_mean(values.numpy(), seed=3)
    assert bootstrap_mean(values, seed=3) != bootstrap_mean(values, seed=4)


def test_paired_bootstrap_resamples_the_same_images_for_every_method():
    """b = a + 1 exactly: with shared indices every resample's means differ by exactly 1, so do the bounds."""
    a = np.random.default_rng(0).uniform(size=50)
    estimates = paired_bootstrap({"a": a, "b": a + 1.0})
    assert estimates["b"].low - estimates["a"].low == pytest.approx(1.0)
    assert estimates["b"].high - estimates["a"].high == pytest.approx(1.0)
    difference = paired_difference(a + 1.0, a)
    assert (difference.low, difference.high) == (pytest.approx(1.0), pytest.approx(1.0)) and difference.excludes(0)


def test_exact_sign_flip_p_values_by_hand():
    """Five positive differences of one size: only the all-plus and all-minus of 32 patterns are as extreme."""
    assert sign_flip_test([1.0] * 5, [0.0] * 5) == pytest.approx(2 / 32)
    assert sign_flip_test([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 1.0
    assert sign_flip_test([1, -1, 1, -1], [0, 0, 0, 0]) == 1.0


def test_monte_carlo_sign_flip_and_wilcoxon_separate_a_real_shift_from_noise():
    rng = np.random.default_rng(5)
    a = rng.normal(size=60)
    assert sign_flip_test(a + 0.8, a + rng.normal(scale=0.3, size=60)) < 0.001
    noise = rng.normal(scale=0.3, size=60)
    assert sign_flip_test(a + noise, a - noise[::-1]) > 0.05
    assert wilcoxon_signed_rank(a + 0.8, a) < 0.001 and wilcoxon_signed_rank(a, a) == 1.0


@pytest.mark.parametrize("call,message", [
    (lambda: bootstrap_mean([]), "empty"),
    (lambda: bootstrap_mean([1.0, float("nan")]), "NaN"),
    (lambda: paired_bootstrap({"a": [1, 2], "b": [1]}), "one value per image"),
    (lambda: paired_difference([1, 2], [1]), "same images"),
    (lambda: bootstrap_mean([1, 2], confidence=1.0), "confidence"),
])
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
