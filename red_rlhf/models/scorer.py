"""Texts in, per-token rewards out: `TokenRewardScorer`.

    scorer = TokenRewardScorer(HFRewardModel.from_pretrained("path/to/rm"))
    [scored] = scorer.score(["How do I boil an egg?"], [" Put it in boiling water for 8 minutes."])
    scored.tokens, scored.rewards, scored.final_score

The response is split into the policy's tokens (policy_tokenizer, or the reward model's own when it is
None); the reward source scores every prefix; `token_rewards` places the rewards on the policy's tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from red_rlhf.core.redistribute import SCHEMES
from red_rlhf.models.sources import FunctionReward, HFRewardModel, RewardSource, place_rewards


@dataclass
class ScoredResponse:
    prompt: str
    response: str
    tokens: list[str]  # the policy's response tokens, as the text each covers
    token_ids: list[int]
    offsets: list[tuple[int, int]]  # character span of each token in `response`
    prefix_scores: list[float]  # score of prompt + response up to the end of each token
    prompt_score: float  # R(x)
    final_score: float  # R(x, y): what the reward model gives the whole response
    rewards: list[float]  # per-token rewards under `scheme`
    scheme: str

    def to_dict(self) -> dict:
        return asdict(self)


def policy_tokens(tokenizer, response: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character spans of a response under the policy tokenizer (no special tokens added)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("the policy tokenizer must be a fast tokenizer (it needs character offsets)")
    enc = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


class TokenRewardScorer:
    """Per-token rewards for (prompt, response) texts from any reward source.

    reward: an `HFRewardModel`, any object with `score_cuts` (see `rewards.RewardSource`), or a python
        function text -> float (wrapped in `FunctionReward`).
    policy_tokenizer: the tokenizer whose tokens get the rewards; defaults to the reward model's.
    scheme: "red" (default), "sparse" or "abc". beta_c, first_token: see `redistribute`; abc_beta: see `abc_rewards`.
    """

    def __init__(self, reward: RewardSource | Callable[[str], float], *, policy_tokenizer=None, scheme: str = "red",
                 beta_c: float = 1.0, first_token: str = "difference", abc_beta: float = 0.5):
        if scheme not in SCHEMES:
            raise ValueError(f"unknown reward scheme {scheme!r}; choose one of {SCHEMES}")
        if not hasattr(reward, "score_cuts"):
            reward = FunctionReward(reward)
        if policy_tokenizer is None:
            if not isinstance(reward, HFRewardModel):
                raise ValueError("a reward function has no tokenizer: pass policy_tokenizer= to say whose tokens get rewards")
            policy_tokenizer = reward.tokenizer
        self.reward, self.policy_tokenizer = reward, policy_tokenizer
        self.scheme, self.beta_c, self.first_token, self.abc_beta = scheme, beta_c, first_token, abc_beta

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[ScoredResponse]:
        prompts, responses = list(prompts), list(responses)
        if len(prompts) != len(responses):
            raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
        if not prompts:
            raise ValueError("nothing to score: no prompts and responses were given")
        tokenized = []
        for i, response in enumerate(responses):
            if not response:
                raise ValueError(f"response {i} is empty: there are no tokens to reward")
            ids, offsets = policy_tokens(self.policy_tokenizer, response)
            if not ids:
                raise ValueError(f"response {i} ({response!r}) gives the policy tokenizer no tokens")
            tokenized.append((ids, offsets))
        cuts = [[end for _, end in offsets] for _, offsets in tokenized]
        scored = self.reward.score_cuts(prompts, responses, cuts, need_attention=self.scheme == "abc")
        width = max(len(cs.scores) for cs in scored)
        rewards = place_rewards(scored, width, self.scheme, beta_c=self.beta_c, first_token=self.first_token,
                                abc_beta=self.abc_beta, dtype=torch.float64)[0]
        return [
            ScoredResponse(prompt, response, [response[s:e] for s, e in offsets], ids, offsets, cs.scores,
                           cs.prompt_score, cs.scores[-1], row[: len(ids)], self.scheme)
            for prompt, response, (ids, offsets), cs, row in zip(prompts, responses, tokenized, scored, rewards.tolist())
        ]
