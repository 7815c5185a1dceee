"""red-rlhf: RLHF with token-level rewards (RED reward redistribution)."""

from red_rlhf.core.redistribute import (
    SCHEMES,
    abc_rewards,
    final_scores,
    redistribute,
    response_span,
    sparse_rewards,
    token_rewards,
)
from red_rlhf.core.reward_assembly import (
    AssembledRewards,
    RewardSettings,
    SourceScores,
    assemble_rewards,
    assemble_rewards_reference,
)
from red_rlhf.models.prefix import naive_prefix_scores, pooled_attention, prefix_scores
from red_rlhf.models.scorer import ScoredResponse, TokenRewardScorer
from red_rlhf.models.sources import FunctionReward, HFRewardModel, PrefixScores, TokenBatch

__version__ = "0.1.0"

__all__ = [
    "AssembledRewards",
    "FunctionReward",
    "HFRewardModel",
    "PrefixScores",
    "RewardSettings",
    "SCHEMES",
    "ScoredResponse",
    "SourceScores",
    "TokenBatch",
    "TokenRewardScorer",
    "abc_rewards",
    "assemble_rewards",
    "assemble_rewards_reference",
    "final_scores",
    "naive_prefix_scores",
    "pooled_attention",
    "prefix_scores",
    "redistribute",
    "response_span",
    "sparse_rewards",
    "token_rewards",
]
