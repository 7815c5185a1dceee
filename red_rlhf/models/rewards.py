"""Reward sources on a batch of policy tokens -> the token rewards an estimator sees. Every engine goes through here:
our trainer, the verl reward manager, TRL's GRPOTrainer and `TokenRewardScorer`.

    scores  = score_sources(sources, batch)                      each source's R(x) and prefix scores, (B,) and (B, R)
    rewards = source_rewards(sources, scores, batch.response_mask, settings, ended=batch.ended)
    rewards = batch_rewards(sources, batch, settings)         the two at once, without a KL term (verl, TRL)

`source_rewards` gives each source its signed weight (+weight for a reward, -weight for a cost, or a Lagrange
multiplier in place of a constrained cost's weight) and hands the rest to `core.reward_assembly.assemble_rewards`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from red_rlhf.config import SourceConfig
from red_rlhf.core.reward_assembly import AssembledRewards, PrefixScores, RewardSettings, SourceScores, assemble_rewards
from red_rlhf.models.sources import RewardSource, SourceError, TokenBatch, score_text_path


@dataclass
class Source:
    """A reward source with the config it came from (name, scheme, kind, weight, limit)."""

    config: SourceConfig
    reward: RewardSource

    @property
    def name(self) -> str:
        return self.config.name


def score_sources(sources: list[Source], batch: TokenBatch) -> dict[str, PrefixScores]:
    """Each source's prefix scores on the batch's policy tokens (attention too for ABC sources); a failure names
    the source."""
    out = {}
    for source in sources:
        need_attention = source.config.scheme == "abc"
        try:
            if hasattr(source.reward, "score_tokens"):
                out[source.name] = source.reward.score_tokens(batch, need_attention=need_attention)
            else:  # a user's source with the text-path method only
                out[source.name] = score_text_path(source.reward, batch, need_attention)
        except Exception as err:  # a model's tokenizer, a user's function: say which source failed
            raise SourceError(f"reward source {source.name!r} failed: {err}") from err
    return out


def signed_weight(config: SourceConfig, multiplier: float | None = None) -> float:
    """A source's coefficient in the sum: + for a reward, - for a cost; a Lagrange multiplier replaces the weight."""
    weight = config.weight if multiplier is None else multiplier
    return weight if config.kind == "reward" else -weight


def source_rewards(
    sources: list[Source],
    scores: dict[str, PrefixScores],
    response_mask: torch.Tensor,
    settings: RewardSettings,
    *,
    ended: torch.Tensor | None = None,
    multipliers: dict[str, float] | None = None,
    kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    dtype: torch.dtype = torch.float32,
) -> AssembledRewards:
    """Every source's scores placed by its own scheme, signed-weighted and summed (see `assemble_rewards` for ended,
    kl and dtype). multipliers: name -> this step's Lagrange multiplier of a constrained cost."""
    multipliers = multipliers or {}
    inputs = [SourceScores(s.name, scores[s.name], s.config.scheme, signed_weight(s.config, multipliers.get(s.name)))
              for s in sources]
    return assemble_rewards(inputs, response_mask, settings, ended=ended, kl=kl, kl_coef=kl_coef, dtype=dtype)


def batch_rewards(sources: list[Source], batch: TokenBatch, settings: RewardSettings,
                  dtype: torch.dtype = torch.float64) -> AssembledRewards:
    """`score_sources` then `source_rewards` on one batch, without a KL term: an engine's reward step (the verl
    manager and TRL's reward function; both engines add their own KL)."""
    return source_rewards(sources, score_sources(sources, batch), batch.response_mask, settings, ended=batch.ended,
                          dtype=dtype)
