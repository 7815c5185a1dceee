"""The learning study's statistics (bench/learning_stats.py), checked on cases worked out by hand."""

import math
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from learning_stats import at_kl, bootstrap, step_reaching, t_interval  # noqa: E402


def test_t_interval_matches_the_textbook_formula():
    values = [1.0, 2.0, 4.0, 7.0, 6.0]
    mean, lo, hi = t_interval(values)
    half = 2.776 * statistics.stdev(values) / math.sqrt(5)  # t_{0.975, 4}
    assert mean == pytest.approx(4.0)
    assert (lo, hi) == pytest.approx((4.0 - half, 4.0 + half))
    assert math.isnan(t_interval([3.0])[1])
    with pytest.raises(ValueError):
        t_interval([])


def test_at_kl_interpolates_inside_the_trace_and_never_extrapolates():
    kls, scores = [0.0, 4.0, 10.0, 8.0, 20.0], [1.0, 3.0, 6.0, 5.0, 7.0]
    assert at_kl(kls, scores, 2.0) == pytest.approx(2.0)
    assert at_kl(kls, scores, 4.0) == pytest.approx(3.0)
    assert at_kl(kls, scores, 7.0) == pytest.approx(4.5)  # first crossing (4 -> 10), not the dip (10 -> 8)
    assert at_kl(kls, scores, 14.0) == pytest.approx(6.0)  # 8 -> 20, half-way
    assert at_kl(kls, scores, 25.0) is None


def test_step_reaching_is_the_first_interpolated_crossing():
    steps, curve = [0, 8, 16, 24], [0.0, 1.0, 3.0, 2.0]
    assert step_reaching(steps, curve, 2.0) == pytest.approx(12.0)
    assert step_reaching(steps, curve, -1.0) == 0.0
    assert step_reaching(steps, curve, 3.5) is None


def test_bootstrap_counts_missing_draws_and_brackets_the_mean():
    values = [float(v) for v in range(10)]
    share, lo, hi = bootstrap([values], lambda xs: statistics.fmean(xs), draws=500)
    assert share == 1.0 and lo < 4.5 < hi
    share, _, _ = bootstrap([values], lambda xs: None if 9.0 not in xs else 1.0, draws=500)
    assert 0.5 < share < 0.8  # P(9 drawn at least once in 10) = 1 - 0.9^10 = 0.65
