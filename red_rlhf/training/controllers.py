"""What moves between steps besides the weights: the adaptive KL coefficient and the Lagrange multipliers.

Both are updated in their own phase of `Trainer.train_step`, after the policy update, from the step's statistics.
"""

from __future__ import annotations

from collections.abc import Sequence


class AdaptiveKL:
    """Ziegler et al. (2019): move the KL coefficient so the per-response KL tracks a target (None: fixed)."""

    def __init__(self, coef: float, target: float | None, horizon: int):
        self.coef, self.target, self.horizon = coef, target, horizon

    def update(self, kl: float, n_samples: int) -> None:
        if self.target is None:
            return
        error = max(-0.2, min(0.2, kl / self.target - 1.0))
        self.coef *= 1.0 + error * n_samples / self.horizon


class LagrangeMultiplier:
    """lambda >= 0 for the constraint E[cost] <= limit, moved by lr * (mean cost - limit) after each step
    (safe-RLHF's Lagrangian method, Dai et al. 2023, as a projected gradient step on lambda)."""

    def __init__(self, init: float, lr: float, limit: float):
        if init < 0:
            raise ValueError(f"a Lagrange multiplier starts at >= 0, got {init}")
        self.value, self.lr, self.limit = float(init), float(lr), float(limit)

    def update(self, mean_cost: float) -> float:
        self.value = max(0.0, self.value + self.lr * (mean_cost - self.limit))
        return self.value


def multipliers(sources: Sequence, lagrangian) -> dict[str, LagrangeMultiplier]:
    """One multiplier per cost source with a limit, when the Lagrangian option is on (sources: `SourceConfig`s)."""
    if not lagrangian.enabled:
        return {}
    return {s.name: LagrangeMultiplier(lagrangian.init, lagrangian.lr, s.limit)
            for s in sources if s.kind == "cost" and s.limit is not None}
