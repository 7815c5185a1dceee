"""PPO losses and their diagnostics. Pure torch; every mean is over response tokens (mask)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from red_rlhf.core.advantages import masked_mean, masked_sum


@dataclass
class PolicyLoss:
    loss: torch.Tensor  # scalar to minimise
    clip_fraction: torch.Tensor  # share of tokens whose ratio was clipped
    approx_kl: torch.Tensor  # k3 estimate of KL(old || new) on the sampled tokens


def _aggregate(values, mask, normalizer: float | None) -> torch.Tensor:
    """Mean over response tokens; with a normalizer, sum / normalizer (data-parallel processes pass the global
    token count so that their gradients add up to the single-process mean)."""
    return masked_mean(values, mask) if normalizer is None else masked_sum(values, mask) / normalizer


def policy_loss(logprobs, old_logprobs, advantages, mask, clip_range: float, normalizer: float | None = None) -> PolicyLoss:
    """Clipped surrogate: mean_t max(-A_t * ratio_t, -A_t * clip(ratio_t, 1 - eps, 1 + eps)).

    All per-token tensors (B, T); mask True on response tokens.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = _aggregate(torch.maximum(unclipped, clipped), mask, normalizer)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = masked_mean(torch.expm1(log_ratio) - log_ratio, mask)
    return PolicyLoss(loss, clip_fraction, approx_kl)


def value_loss(values, old_values, returns, mask, clip_range: float | None,
               normalizer: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """0.5 * mean_t max((V - G)^2, (V_clipped - G)^2); V_clipped stays within clip_range of the rollout's value.

    Returns (loss, clip_fraction). clip_range None: the plain squared error.
    """
    unclipped = (values - returns) ** 2
    if clip_range is None:
        return 0.5 * _aggregate(unclipped, mask, normalizer), torch.zeros(())
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * _aggregate(torch.maximum(unclipped, clipped), mask, normalizer)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).float(), mask)
    return loss, clip_fraction


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each position's token distribution, (B, T)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)
