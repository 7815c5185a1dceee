"""Several reward sources at once: the RED paper's helpful-and-harmless setting.

Every source (a reward model, a cost model, a python function) is scored on the same responses and placed by its
own scheme (red | sparse | abc); the trainer then adds the token rewards up, token by token:

    r_t = sum over rewards  w_i * r_i,t  -  sum over costs  c_j * r_j,t

where c_j is the cost's fixed weight (reward shaping) or, under the Lagrangian option, a multiplier lambda_j >= 0
learned from the rollouts: it rises while the mean final cost exceeds the cost's limit and falls, never below 0,
while it is under (safe-RLHF's Lagrangian method, Dai et al. 2023, as a projected gradient step on lambda).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from red_rlhf.config import LagrangianConfig, SourceConfig
from red_rlhf.models.sources import RewardSource


class SourceError(ValueError):
    """A reward source failed; the message names it."""


@dataclass
class Source:
    config: SourceConfig
    reward: RewardSource

    @property
    def name(self) -> str:
        return self.config.name


class LagrangeMultiplier:
    """lambda >= 0 for the constraint E[cost] <= limit, moved by lr * (mean cost - limit) after each step."""

    def __init__(self, init: float, lr: float, limit: float):
        if init < 0:
            raise ValueError(f"a Lagrange multiplier starts at >= 0, got {init}")
        self.value, self.lr, self.limit = float(init), float(lr), float(limit)

    def update(self, mean_cost: float) -> float:
        self.value = max(0.0, self.value + self.lr * (mean_cost - self.limit))
        return self.value


def multipliers(sources: Sequence[Source], lagrangian: LagrangianConfig) -> dict[str, LagrangeMultiplier]:
    """One multiplier per cost source with a limit, when the Lagrangian option is on."""
    if not lagrangian.enabled:
        return {}
    return {s.name: LagrangeMultiplier(lagrangian.init, lagrangian.lr, s.config.limit)
            for s in sources if s.config.kind == "cost" and s.config.limit is not None}


def coefficients(sources: Sequence[Source], lambdas: dict[str, LagrangeMultiplier]) -> list[float]:
    """Signed coefficient of each source: +weight for rewards, -weight or -lambda for costs."""
    out = []
    for s in sources:
        c = lambdas[s.name].value if s.name in lambdas else s.config.weight
        out.append(c if s.config.kind == "reward" else -c)
    return out


def combine(per_source: Sequence[torch.Tensor], signed: Sequence[float]) -> torch.Tensor:
    """sum_i signed[i] * per_source[i]: per-token rewards (B, R) of every source -> the rewards PPO trains on."""
    if len(per_source) != len(signed) or not per_source:
        raise ValueError(f"need one coefficient per source, got {len(signed)} for {len(per_source)} sources")
    total = torch.zeros_like(per_source[0])
    for rewards, c in zip(per_source, signed):
        total = total + c * rewards
    return total
