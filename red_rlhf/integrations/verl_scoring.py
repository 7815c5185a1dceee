"""red_rlhf's reward sources on a verl batch: load them once, score a `RowBatch`, place the token rewards.

The numbers come from red_rlhf's own reward path (the sources' prefix scores and `token_rewards` placement);
nothing here re-implements RED. verl adds its own KL term later (apply_kl_penalty), so none is added here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from red_rlhf.config import reward_sources
from red_rlhf.models.build import load_source
from red_rlhf.models.sources import place_rewards


@dataclass
class ScoredBatch:
    rewards: torch.Tensor  # (B, R) the token rewards, 0 on padding
    final: torch.Tensor  # (B,) sum over sources of coef * raw R(x, y)
    prompt: torch.Tensor  # (B,) sum over sources of coef * raw R(x)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_sources(settings) -> list:
    """[(SourceConfig, source)] for red_rlhf's reward section; HF models moved to settings.device, frozen."""
    device = _device(settings.device)
    loaded = []
    for i, source in enumerate(reward_sources_of(settings.reward)):
        where = "reward.reward_kwargs" if not settings.reward.sources else f"reward.reward_kwargs.sources[{i}]"
        scorer = load_source(source, where)
        if hasattr(scorer, "model"):
            scorer.model.to(device).requires_grad_(False)
        loaded.append((source, scorer))
    return loaded


def reward_sources_of(reward_cfg) -> list:
    """The SourceConfig list of a reward section (the single-source short form becomes one source)."""

    class _Holder:  # reward_sources reads cfg.reward
        reward = reward_cfg

    return reward_sources(_Holder)


def _texts_and_cuts(tokenizer, ids: torch.Tensor, mask: torch.Tensor) -> tuple[list[str], list[list[int]]]:
    """Each response's text and where each of its tokens ends in it (prefix decodes, kept non-decreasing)."""
    texts, cuts = [], []
    for row, row_mask in zip(ids, mask):
        valid = row[row_mask].tolist()
        ends, top = [], 0
        for t in range(1, len(valid) + 1):
            top = max(top, len(tokenizer.decode(valid[:t], skip_special_tokens=False,
                                                clean_up_tokenization_spaces=False)))
            ends.append(top)
        text = tokenizer.decode(valid, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        ends = [min(e, len(text)) for e in ends[:-1]] + [len(text)]
        texts.append(text)
        cuts.append(ends)
    return texts, cuts


def score_batch(sources: list, reward_cfg, batch) -> ScoredBatch:
    """Token rewards (B, R) on the batch's response positions: every source scored and placed, coef-weighted, summed."""
    width = batch.response_ids.shape[1]
    texts, cuts = _texts_and_cuts(batch.tokenizer, batch.response_ids, batch.response_mask)
    rewards = torch.zeros(batch.response_ids.shape, dtype=torch.float64)
    final = torch.zeros(len(texts), dtype=torch.float64)
    prompt = torch.zeros(len(texts), dtype=torch.float64)
    for source, scorer in sources:
        coef = source.weight if source.kind == "reward" else -source.weight
        scored = scorer.score_cuts(batch.prompts, texts, cuts, need_attention=source.scheme == "abc")
        placed, _ = place_rewards(scored, width, source.scheme, beta_c=reward_cfg.beta_c,
                                  first_token=reward_cfg.first_token, abc_beta=reward_cfg.abc_beta,
                                  shift=reward_cfg.score_shift, scale=reward_cfg.score_scale, clip=reward_cfg.score_clip,
                                  dtype=torch.float64)
        rewards += coef * placed
        final += coef * torch.tensor([cs.scores[-1] for cs in scored], dtype=torch.float64)
        prompt += coef * torch.tensor([cs.prompt_score for cs in scored], dtype=torch.float64)
    if reward_cfg.missing_eos_penalty is not None:
        last = batch.response_mask.sum(-1) - 1  # (B,)
        rows = torch.arange(len(texts))
        rewards[rows, last] -= torch.where(batch.ended, 0.0, float(reward_cfg.missing_eos_penalty)).double()
    return ScoredBatch(rewards, final, prompt)
