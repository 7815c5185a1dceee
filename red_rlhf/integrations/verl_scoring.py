"""red_rlhf's reward path on a verl batch: load the sources once, score a `RowBatch`, assemble the token rewards.

Nothing here re-implements RED: each source's `score_tokens` gives its prefix scores on the policy's tokens (one
forward over the policy's ids when the reward model reads them as they are, else decoded once and aligned), and
`assemble_rewards` places, weights and sums them. verl adds its own KL term later (apply_kl_penalty), so kl=None.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from red_rlhf.config import ConfigError, reward_settings
from red_rlhf.core.reward_assembly import SourceScores, assemble_rewards
from red_rlhf.models.build import Source, score_sources
from red_rlhf.models.build import load_sources as build_sources
from red_rlhf.models.sources import TokenBatch
from red_rlhf.training.controllers import signed_coefficients


@dataclass
class ScoredBatch:
    rewards: torch.Tensor  # (B, R) the token rewards, 0 on padding
    final: torch.Tensor  # (B,) sum over sources of coef * raw R(x, y)
    prompt: torch.Tensor  # (B,) sum over sources of coef * raw R(x)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_sources(settings) -> list[Source]:
    """The reward sources of reward.reward_kwargs, HF models frozen on settings.device; errors name the key."""
    try:
        sources = build_sources(settings.config)
    except ConfigError as err:
        raise ConfigError(re.sub(r"\breward\.(?!reward_kwargs)", "reward.reward_kwargs.", str(err))) from err
    device = _device(settings.device)
    for source in sources:
        if hasattr(source.reward, "model"):
            source.reward.model.to(device).requires_grad_(False)
    return sources


def score_batch(sources: list[Source], reward_cfg, batch) -> ScoredBatch:
    """Token rewards (B, R) on the batch's response positions: every source scored, placed, coef-weighted, summed."""
    tokens = TokenBatch(batch.prompts, batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask,
                        batch.tokenizer, plain_prompts=batch.plain_prompts)
    inputs = []
    prompt = torch.zeros(len(tokens), dtype=torch.float64)  # (B,)
    scored = score_sources(sources, tokens)
    coefs = signed_coefficients([s.config for s in sources], {})  # verl refuses Lagrangian costs: fixed weights
    for source, coef in zip(sources, coefs):
        scores = scored[source.name]
        inputs.append(SourceScores(source.name, scores.prompt, scores.tokens, source.config.scheme, coef,
                                   scores.attention))
        prompt += coef * scores.prompt.double().cpu()
    out = assemble_rewards(inputs, batch.response_mask, reward_settings(reward_cfg), ended=batch.ended, kl=None,
                           dtype=torch.float64)
    return ScoredBatch(out.rewards, out.final_combined_raw, prompt)
