"""One sampling module: systematic πps sampling and class allocation exist once and serve both relative
Hessians and subsampling; checked against independent computations (Monte Carlo frequencies, a
largest-remainder rounding written here)."""

from __future__ import annotations

import numpy as np
import pytest

import winnow.analyses.relative as relative
import winnow.analyses.subsample as subsample
from winnow.analyses import sampling
from winnow.errors import ValidationError


def test_one_implementation_behind_both_old_paths():
    assert relative.systematic_sample is subsample.systematic_sample is sampling.systematic_sample
    assert relative.stratified_allocation is sampling.stratified_allocation
    assert subsample.allocate is sampling.allocate and subsample.budget_size is sampling.budget_size


def _largest_remainder(counts: np.ndarray, m: int) -> np.ndarray:
    """Proportional allocation written independently: floor(m n_c / n), then +1 for the largest remainders
    (ties to the first class)."""
    n = counts.sum()
    ideal = [m * c / n for c in counts]
    base = [int(np.floor(v)) for v in ideal]
    order = sorted(range(len(counts)), key=lambda c: (-(ideal[c] - base[c]), c))
    for c in order[: m - sum(base)]:
        base[c] += 1
    return np.array(base)


def test_stratified_allocation_is_largest_remainder():
    rng = np.random.default_rng(5)
    for _ in range(300):
        counts = rng.integers(1, 400, size=rng.integers(1, 6))
        m = int(rng.integers(1, counts.sum() + 1))
        np.testing.assert_array_equal(sampling.stratified_allocation(counts, m), _largest_remainder(counts, m))


def test_allocate_gives_every_class_a_row_and_respects_sizes():
    a = sampling.allocate(10, np.array([1000, 3, 0]), np.array([0.999, 0.001, 0.0]))
    assert a.tolist() == [9, 1, 0]
    assert sampling.stratified_allocation(np.array([1000, 3]), 10).tolist() == [10, 0]  # no minimum there


def test_systematic_sample_inclusion_frequencies():
    pi = np.array([1.0, 0.9, 0.5, 0.5, 0.05, 0.05, 0.0, 1.0])  # sums to 4
    rng = np.random.default_rng(0)
    S = 20000
    hits = np.zeros(pi.size)
    for _ in range(S):
        rows = sampling.systematic_sample(pi, rng)
        assert rows.size == 4 and np.all(np.diff(rows) > 0)
        hits[rows] += 1
    se = np.sqrt(pi * (1 - pi) / S) + 1e-12
    assert np.max(np.abs(hits / S - pi) / np.maximum(se, 1e-3)) < 4.5


def test_systematic_sample_refuses_bad_probabilities():
    with pytest.raises(ValidationError, match="sum to an integer"):
        sampling.systematic_sample(np.array([0.5, 0.2]), np.random.default_rng(0))
    with pytest.raises(ValidationError, match="in \\[0, 1\\]"):
        sampling.systematic_sample(np.array([1.5, 0.5]), np.random.default_rng(0))
