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
from red_rlhf.models.sources import FunctionReward, HFRewardModel
from red_rlhf.models.scorer import ScoredResponse, TokenRewardScorer
from red_rlhf.models.prefix import naive_prefix_scores, pooled_attention, prefix_scores

__version__ = "0.1.0"

__all__ = [
    "FunctionReward",
    "HFRewardModel",
    "ScoredResponse",
    "TokenRewardScorer",
    "SCHEMES",
    "abc_rewards",
    "final_scores",
    "naive_prefix_scores",
    "pooled_attention",
    "prefix_scores",
    "redistribute",
    "response_span",
    "sparse_rewards",
    "token_rewards",
]
