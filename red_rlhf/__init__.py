"""red-rlhf: RLHF with token-level rewards (RED reward redistribution).

What a user imports: the scorer and reward sources (texts or tensors in, per-token rewards out), the pure placement
and estimator functions, and the training entry points `load_config` and `Trainer`. The training entry points load on
first use, so `import red_rlhf` stays light (no accelerate, no trackers) for scoring alone.
"""

from red_rlhf.core.redistribute import (
    SCHEMES,
    abc_rewards,
    final_scores,
    redistribute,
    sparse_rewards,
    token_rewards,
)
from red_rlhf.core.advantages import gae, group_advantages, returns_to_go
from red_rlhf.core.reward_assembly import AssembledRewards, PrefixScores, RewardSettings, SourceScores, assemble_rewards
from red_rlhf.models.prefix import pooled_attention, prefix_scores
from red_rlhf.models.scorer import ScoredResponse, TokenRewardScorer
from red_rlhf.models.sources import FunctionReward, HFRewardModel, TokenBatch

__version__ = "0.1.0"

_TRAINING = {"Trainer": "red_rlhf.training.trainer", "load_config": "red_rlhf.config", "Config": "red_rlhf.config"}


def __getattr__(name: str):
    if name in _TRAINING:
        import importlib

        return getattr(importlib.import_module(_TRAINING[name]), name)
    raise AttributeError(f"module 'red_rlhf' has no attribute {name!r}")


__all__ = [
    "AssembledRewards",
    "Config",
    "FunctionReward",
    "HFRewardModel",
    "PrefixScores",
    "RewardSettings",
    "SCHEMES",
    "ScoredResponse",
    "SourceScores",
    "TokenBatch",
    "TokenRewardScorer",
    "Trainer",
    "abc_rewards",
    "assemble_rewards",
    "final_scores",
    "gae",
    "group_advantages",
    "load_config",
    "pooled_attention",
    "prefix_scores",
    "redistribute",
    "returns_to_go",
    "sparse_rewards",
    "token_rewards",
]
