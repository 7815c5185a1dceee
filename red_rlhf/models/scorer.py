"""Texts in, per-token rewards out: `TokenRewardScorer`.

    scorer = TokenRewardScorer(HFRewardModel.from_pretrained("path/to/rm"))
    [scored] = scorer.score(["How do I boil an egg?"], [" Put it in boiling water for 8 minutes."])
    scored.tokens, scored.rewards, scored.final_score

The response is split into the policy's tokens (policy_tokenizer, or the reward model's own when it is
None); the reward source scores every prefix (`score_tokens`: one forward on those tokens when the reward model
reads them as they are, else its own tokens aligned by characters); `assemble_rewards` places the rewards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from red_rlhf.config import SourceConfig
from red_rlhf.core.masks import pad_rows
from red_rlhf.core.redistribute import SCHEMES
from red_rlhf.core.reward_assembly import RewardSettings
from red_rlhf.models.rewards import Source, score_sources, source_rewards
from red_rlhf.models.sources import FunctionReward, HFRewardModel, RewardSource, TokenBatch


@dataclass
class ScoredResponse:
    prompt: str
    response: str
    tokens: list[str]  # the policy's response tokens, as the text each adds ("" for the first bytes of a character)
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

    reward: an `HFRewardModel`, any object with `score_tokens` or `score_cuts` (see `sources.RewardSource`), or a
        python function text -> float (wrapped in `FunctionReward`).
    policy_tokenizer: the tokenizer whose tokens get the rewards; defaults to the reward model's.
    scheme: "red" (default), "sparse" or "abc". beta_c, first_token: see `redistribute`; abc_beta: see `abc_rewards`.
    """

    def __init__(self, reward: RewardSource | Callable[[str], float], *, policy_tokenizer=None, scheme: str = "red",
                 beta_c: float = 1.0, first_token: str = "difference", abc_beta: float = 0.5):
        if scheme not in SCHEMES:
            raise ValueError(f"unknown reward scheme {scheme!r}; choose one of {SCHEMES}")
        if not hasattr(reward, "score_tokens") and not hasattr(reward, "score_cuts"):
            reward = FunctionReward(reward)
        if policy_tokenizer is None:
            if not isinstance(reward, HFRewardModel):
                raise ValueError("a reward function has no tokenizer: pass policy_tokenizer= to say whose tokens get rewards")
            policy_tokenizer = reward.tokenizer
        self.reward, self.policy_tokenizer, self.scheme = reward, policy_tokenizer, scheme
        self.source = Source(SourceConfig(name="reward", scheme=scheme), reward)
        self.settings = RewardSettings(beta_c=beta_c, first_token=first_token, abc_beta=abc_beta)

    def batch(self, prompts: list[str], responses: list[str]) -> tuple[TokenBatch, list[tuple[list[int], list[tuple[int, int]]]]]:
        """The texts as policy tokens: a TokenBatch (texts and cuts known, not decoded) and each response's ids and spans."""
        tok = self.policy_tokenizer
        tokenized = []
        for i, response in enumerate(responses):
            if not response:
                raise ValueError(f"response {i} is empty: there are no tokens to reward")
            ids, offsets = policy_tokens(tok, response)
            if not ids:
                raise ValueError(f"response {i} ({response!r}) gives the policy tokenizer no tokens")
            tokenized.append((ids, offsets))
        prompt_ids = [tok(p).input_ids for p in prompts]
        for i, ids in enumerate(prompt_ids):
            if not ids:
                raise ValueError(f"prompt {i} ({prompts[i]!r}) gives the policy tokenizer no tokens: R(x) cannot be read")
        # The policy's ids are [prompt tokens | response tokens]; the text reads prompt + response. Where the two
        # tokenize alike the reward model may score the ids directly (tensor path); else it scores the text.
        plain = all(tok(p + r).input_ids == p_ids + ids
                    for p, r, p_ids, (ids, _) in zip(prompts, responses, prompt_ids, tokenized))
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        p_tensor, p_mask = pad_rows(prompt_ids, pad, side="left")  # as the trainer lays out a rollout
        r_tensor, r_mask = pad_rows([ids for ids, _ in tokenized], pad)
        cuts = [[end for _, end in offsets] for _, offsets in tokenized]
        batch = TokenBatch(prompts, p_tensor, p_mask, r_tensor, r_mask.bool(), tok, plain_prompts=plain,
                           _texts=(responses, cuts))
        return batch, tokenized

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[ScoredResponse]:
        prompts, responses = list(prompts), list(responses)
        if len(prompts) != len(responses):
            raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
        if not prompts:
            raise ValueError("nothing to score: no prompts and responses were given")
        batch, tokenized = self.batch(prompts, responses)
        scores = score_sources([self.source], batch)["reward"]
        rewards = source_rewards([self.source], {"reward": scores}, batch.response_mask, self.settings,
                                 dtype=torch.float64).rewards
        out = []
        for i, (prompt, response, (ids, offsets)) in enumerate(zip(prompts, responses, tokenized)):
            n = len(ids)
            pieces, start = [], 0  # each token's own text once: a multi-byte character goes to the token ending it
            for _, end in offsets:
                pieces.append(response[start:max(start, end)])
                start = max(start, end)
            out.append(ScoredResponse(prompt, response, pieces, ids, offsets, scores.tokens[i, :n].tolist(),
                                      float(scores.prompt[i]), float(scores.tokens[i, n - 1]), rewards[i, :n].tolist(),
                                      self.scheme))
        return out
