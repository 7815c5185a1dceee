"""The statistics of the learning study (bench/bench_learning.py): plain python, no scipy, tested in
tests/test_learning_stats.py.

- `t_interval`: mean and a two-sided 95% Student-t interval over seeds (seeds are the independent units).
- `at_kl`: a run's held-out score at a given KL to the reference, read off its evaluation trace by linear
  interpolation between evaluations (never extrapolated: None past the run's largest KL).
- `step_reaching`: the first (interpolated) step at which a score curve reaches a level; None if it never does.
- `bootstrap`: a percentile interval of any statistic of resampled seeds (used for steps-to-match).
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
