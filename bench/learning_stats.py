"""The statistics of the learning study (bench/bench_learning.py): plain python, no scipy, tested in
tests/test_learning_stats.py.

- `t_interval`: mean and a two-sided 95% Student-t interval over seeds (seeds are the independent units).
- `at_kl`: a run's held-out score at a given KL to the reference, read off its evaluation trace by linear
  interpolation between evaluations (never extrapolated: None past the run's largest KL).
- `step_reaching`: the first (interpolated) step at which a score curve reaches a level; None if it never does.
- `bootstrap`: a percentile interval of any statistic of resampled seeds (used for steps-to-match).
- study v2 (docs/results/learning-v2/PROTOCOL.md): `mean_at_kl` (the primary statistic), `paired_t_test`, `holm`,
  and `spearman` / `pairwise_accuracy` for the gold judge's agreement with human ratings.
"""

from __future__ import annotations

import math
import random
import statistics
from typing import Callable, Sequence

# two-sided 95%: the 0.975 quantile of Student's t with df degrees of freedom (standard table values)
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
         20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
         29: 2.045, 30: 2.042}


def t_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): mean +- t_{0.975, n-1} * sd / sqrt(n). One value: the interval is (nan, nan)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("t_interval needs at least one value")
    mean = statistics.fmean(values)
    if len(values) == 1:
        return mean, math.nan, math.nan
    half = T_975.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def at_kl(kls: Sequence[float], scores: Sequence[float], target: float) -> float | None:
    """Score at KL `target` on the trace (kls[i], scores[i]) in evaluation order.

    The first segment that crosses the target is interpolated (KL mostly grows with training; where it dips, the
    first crossing is the one the run reached first). None when the trace never reaches the target."""
    if len(kls) != len(scores) or not kls:
        raise ValueError("at_kl needs two traces of the same, non-zero length")
    for i in range(len(kls)):
        if kls[i] == target:
            return float(scores[i])
        if i and (kls[i - 1] - target) * (kls[i] - target) < 0:
            w = (target - kls[i - 1]) / (kls[i] - kls[i - 1])
            return float(scores[i - 1] + w * (scores[i] - scores[i - 1]))
    return None


def step_reaching(steps: Sequence[float], scores: Sequence[float], level: float) -> float | None:
    """First step (linear between evaluations) where the curve reaches `level`; None if it never does."""
    if len(steps) != len(scores) or not steps:
        raise ValueError("step_reaching needs two curves of the same, non-zero length")
    if scores[0] >= level:
        return float(steps[0])
    for i in range(1, len(steps)):
        if scores[i] >= level:
            w = (level - scores[i - 1]) / (scores[i] - scores[i - 1])
            return float(steps[i - 1] + w * (steps[i] - steps[i - 1]))
    return None


def bootstrap(groups: Sequence[Sequence], statistic: Callable[..., float | None], *, draws: int = 2000,
              seed: int = 0) -> tuple[float, float, float]:
    """(share of draws where the statistic exists, 2.5th, 97.5th percentile): each group (e.g. one scheme's runs)
    is resampled with replacement on its own and `statistic(*resampled_groups)` is computed per draw; draws where it
    is None (e.g. a curve that never reaches the level) are counted, not dropped silently."""
    rng = random.Random(seed)
    values = []
    for _ in range(draws):
        value = statistic(*[[g[rng.randrange(len(g))] for _ in g] for g in groups])
        if value is not None:
            values.append(value)
    if not values:
        return 0.0, math.nan, math.nan
    values.sort()
    pick = lambda q: values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]  # noqa: E731
    return len(values) / draws, pick(0.025), pick(0.975)


# ---------------------------------------------------------------------------------------------------- study v2
# The pre-registered study (docs/results/learning-v2/PROTOCOL.md): one statistic per run, a paired t-test over
# seeds per primary comparison, Holm's correction over the primary comparisons, and the gold judge's validation.


def kl_grid(low: float, high: float, step: float) -> list[float]:
    """low, low + step, ..., high (inclusive): the KL levels the primary statistic averages over."""
    if not (0 <= low < high) or step <= 0:
        raise ValueError(f"kl_grid needs 0 <= low < high and step > 0, got {low}, {high}, {step}")
    count = round((high - low) / step)
    if abs(low + count * step - high) > 1e-9:
        raise ValueError(f"kl_grid: step {step} does not divide the range {low}..{high}")
    return [low + i * step for i in range(count + 1)]


def mean_at_kl(kls: Sequence[float], scores: Sequence[float], grid: Sequence[float]) -> float | None:
    """A run's mean score over a KL range: `at_kl` at every level of `grid`, averaged. None when the run never
    reaches the top of the range (a partial range would favour the run: scores mostly grow with KL)."""
    values = [at_kl(kls, scores, level) for level in grid]
    if any(v is None for v in values):
        return None
    return statistics.fmean(values)


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), 0 <= x <= 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"incomplete_beta needs 0 <= x <= 1, got {x}")
    if x in (0.0, 1.0):
        return x
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast on this side; use the symmetry on the other
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with df degrees of freedom."""
    if df <= 0:
        raise ValueError(f"t_two_sided_p needs df > 0, got {df}")
    if math.isinf(t):
        return 0.0
    return incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


def t_quantile(q: float, df: float) -> float:
    """The q-quantile of Student's t (0.5 < q < 1), by bisection on `t_two_sided_p`."""
    if not 0.5 < q < 1.0:
        raise ValueError(f"t_quantile needs 0.5 < q < 1, got {q}")
    lo, hi = 0.0, 1e4
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if 1.0 - t_two_sided_p(mid, df) / 2.0 < q else (lo, mid)
    return (lo + hi) / 2


def min_detectable(sd_d: float, n: int, alpha: float, power: float = 0.8) -> float:
    """The smallest true mean difference a two-sided paired t-test over n pairs finds with this power at level
    alpha, when the differences have standard deviation sd_d: (t_{1-alpha/2, n-1} + t_{power, n-1}) sd_d / sqrt(n)
    (the usual approximation of the non-central t)."""
    return (t_quantile(1 - alpha / 2, n - 1) + t_quantile(power, n - 1)) * sd_d / math.sqrt(n)


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> dict:
    """Two-sided paired t-test of mean(a - b) = 0, the pairs (a[i], b[i]) sharing a seed: n, the mean difference
    and its 95% t-interval, t, df and p. Fewer than 2 pairs or no spread: p is nan (no test)."""
    if len(a) != len(b):
        raise ValueError(f"paired_t_test needs pairs: {len(a)} values against {len(b)}")
    diffs = [float(x) - float(y) for x, y in zip(a, b)]
    if not diffs:
        raise ValueError("paired_t_test needs at least one pair")
    mean, low, high = t_interval(diffs)
    n = len(diffs)
    sd = statistics.stdev(diffs) if n > 1 else 0.0
    if n < 2 or sd == 0.0:
        return {"n": n, "mean": mean, "low": low, "high": high, "t": math.nan, "df": n - 1, "p": math.nan}
    t = mean / (sd / math.sqrt(n))
    return {"n": n, "mean": mean, "low": low, "high": high, "t": t, "df": n - 1, "p": t_two_sided_p(t, n - 1)}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order: the i-th smallest p times (m - i + 1), made
    non-decreasing along the sorted order, capped at 1. A comparison with no test (nan) counts as p = 1: it stays
    in the family, so the correction does not shrink when a comparison fails to run."""
    ps = [1.0 if math.isnan(p) else float(p) for p in pvalues]
    if any(not 0.0 <= p <= 1.0 for p in ps):
        raise ValueError(f"holm needs p-values in [0, 1], got {list(pvalues)}")
    m = len(ps)
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda k: ps[k])):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        adjusted[i] = running
    return adjusted


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation: Pearson's correlation of the (tie-averaged) ranks."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError("spearman needs two sequences of the same length, at least 2")
    rx, ry = ranks(x), ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    var = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return cov / var if var else math.nan


def pairwise_accuracy(truth: Sequence[float], predicted: Sequence[float], margin: float = 1.0) -> tuple[float, int]:
    """(share, pairs): among all pairs whose true ratings differ by at least `margin`, the share the prediction
    orders the same way (a tied prediction counts one half)."""
    if len(truth) != len(predicted):
        raise ValueError("pairwise_accuracy needs one prediction per rating")
    right, pairs = 0.0, 0
    for i in range(len(truth)):
        for j in range(i + 1, len(truth)):
            gap = truth[i] - truth[j]
            if abs(gap) >= margin:
                pairs += 1
                said = predicted[i] - predicted[j]
                right += 0.5 if said == 0 else float((said > 0) == (gap > 0))
    return (right / pairs if pairs else math.nan), pairs
