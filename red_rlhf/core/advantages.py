"""KL estimators, masked statistics, KL shaping, GAE and the critic-free group estimators (RLOO, GRPO). Pure torch.

Shapes: B rollouts, T response positions. `mask` (B, T) is True on response tokens (EOS included) and False on
padding after the response.
"""

from __future__ import annotations

import torch

KL_ESTIMATORS = ("k1", "k3")


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    values = torch.where(mask.bool(), values, torch.zeros_like(values))
    return values.sum() if dim is None else values.sum(dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1)


def masked_stats(values: torch.Tensor, mask: torch.Tensor, reduce=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased variance of the unmasked entries.

    reduce: sums a tensor over data-parallel processes (None: this process only), so the statistics can be
    those of the global batch.
    """
    reduce = reduce or (lambda x: x)
    mask = mask.bool()
    count = reduce(mask.sum().to(values.dtype))
    if count < 2:
        raise ValueError("a variance needs at least two unmasked values (is the batch of responses this small?)")
    mean = reduce(torch.where(mask, values, 0).sum()) / count
    squares = reduce(torch.where(mask, (values - mean) ** 2, 0).sum())
    return mean, squares / (count - 1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, reduce=None) -> torch.Tensor:
    """(values - mean) / std over the unmasked entries; with shift_mean=False the mean is added back.

    reduce: see `masked_stats` (whitening over all data-parallel processes).
    """
    mean, var = masked_stats(values, mask, reduce)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


def kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate on the sampled tokens (Schulman's k1 / k3 estimators).

    k1 = log pi - log pi_ref (signed; unbiased); k3 = (r - 1) - log r with r = pi_ref / pi (non-negative, unbiased).
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"kl estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")


def shape_rewards(token_rewards: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """The per-token reward RL optimises: r_t - kl_coef * KL_t on response tokens, 0 on padding."""
    return torch.where(mask.bool(), token_rewards - kl_coef * kl, torch.zeros_like(token_rewards))


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalised advantage estimation over right-padded responses. Returns (advantages, returns), (B, T).

    delta_t = r_t + gamma * V_{t+1} - V_t, A_t = delta_t + gamma * lam * A_{t+1}; V and A are 0 past the
    response's last token (it ends the episode), so padding never leaks into the last real token.
    """
    mask = mask.bool()
    values = torch.where(mask, values, torch.zeros_like(values))
    rewards = torch.where(mask, rewards, torch.zeros_like(rewards))
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):  # (B,) per step: the scan runs over T, vectorised over B
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = torch.where(mask[:, t], advantage, torch.zeros_like(advantage))
        next_value = torch.where(mask[:, t], values[:, t], torch.zeros_like(advantage))
        next_advantage = advantages[:, t]
    return advantages, torch.where(mask, advantages + values, torch.zeros_like(values))


def gae_reference(rewards, values, mask, gamma: float, lam: float):
    """The slow, obvious GAE: python loops per row and token, for tests."""
    advantages = torch.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        length = int(mask[b].sum())
        running = 0.0
        for t in reversed(range(length)):
            next_value = float(values[b, t + 1]) if t + 1 < length else 0.0
            delta = float(rewards[b, t]) + gamma * next_value - float(values[b, t])
            running = delta + gamma * lam * running
            advantages[b, t] = running
    returns = torch.where(mask.bool(), advantages + values, torch.zeros_like(values))
    return advantages, returns


def returns_to_go(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """G_t = sum_{k >= t} gamma^(k-t) r_k over the response, (B, T), 0 on padding."""
    rewards = torch.where(mask.bool(), rewards, torch.zeros_like(rewards))
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running
        out[:, t] = running
    return torch.where(mask.bool(), out, torch.zeros_like(out))


GROUP_ESTIMATORS = ("rloo", "grpo")
GROUP_SCALES = ("none", "batch", "group")


def group_advantages(rewards: torch.Tensor, mask: torch.Tensor, group_ids: torch.Tensor, estimator: str = "rloo",
                     gamma: float = 1.0, scale: str = "none", eps: float = 1e-6, reduce=None) -> torch.Tensor:
    """Critic-free group estimators on per-token returns, (B, T). Rows of one prompt share a `group_ids` value (B,);
    they may sit anywhere in the batch (engines reorder rows), and groups may differ in size.

    With G_{i,t} = sum_{u >= t} gamma^(u-t) r_{i,u} the return-to-go of sample i and G_{j,1} sample j's full return:

        rloo:  A_{i,t} = G_{i,t} - mean_{j != i, j in group} G_{j,1}      (leave-one-out)
        grpo:  A_{i,t} = G_{i,t} - mean_{j in group} G_{j,1}              (group mean, self included)

    Why return-to-go: for RED, G_{i,t} = R(x, y_i) - s_{i,t-1} (+ the KL to go when the KL is in the reward). The
    prefix score s_{i,t-1} depends only on tokens before t, so it acts as a state-dependent baseline: the expected
    gradient is unchanged while each token gets credit of its own. Summing each row first (what GRPO/RLOO do in
    verl, TRL and OpenRLHF) gives every token R(x, y_i) - R(x) - baseline and throws the redistribution away.
    rloo's baseline does not depend on sample i, so it is unbiased; grpo's contains G_{i,1} / k, which scales the
    expected gradient by (k - 1) / k (same direction). With m_{-i} the others' mean full return,

        A^grpo_{i,t} = (k - 1) / k * (G_{i,t} - m_{-i}) + (G_{i,t} - G_{i,1}) / k,

    the first term (k - 1) / k times rloo's; at gamma = 1 the second is minus the rewards before token t, over k (for
    RED without KL, (s_{i,0} - s_{i,t-1}) / k): a function of the prefix before t, whose expected gradient is 0. With the sparse reward and no KL in the reward, G_{i,t} =
    R(x, y_i) at every t, and both are exactly the standard RLOO / GRPO (without std scaling).

    A group of one sample has no other sample to compare with: its baseline is 0 (callers warn).

    scale: "none"; "batch" divides every advantage by ONE standard deviation, that of the full returns G_{j,1} over
    the whole batch (`reduce` sums over data-parallel processes), which changes the step size only; "group" divides
    by each group's std of full returns (the original GRPO). Per-group scaling is unbiased only when every token of a
    sample has the same advantage (sparse reward, no KL in the reward): with per-token returns the prefix term is
    divided by a std that depends on the sampled group, which biases the estimator and blows it up on near-tied
    groups. Callers refuse "group" for redistributed rewards; this function does not know the scheme.
    """
    if estimator not in GROUP_ESTIMATORS:
        raise ValueError(f"group estimator must be one of {GROUP_ESTIMATORS}, got {estimator!r}")
    if scale not in GROUP_SCALES:
        raise ValueError(f"group scale must be one of {GROUP_SCALES}, got {scale!r}")
    if group_ids.shape != rewards.shape[:1]:
        raise ValueError(f"group_ids must have one id per row, shape {tuple(rewards.shape[:1])}, got {tuple(group_ids.shape)}")
    to_go = returns_to_go(rewards, mask, gamma)  # (B, T)
    totals = to_go[:, 0]  # (B,) each sample's full return
    _, group = torch.unique(group_ids, return_inverse=True)  # (B,) group index 0..G-1
    count = torch.zeros(int(group.max()) + 1, dtype=totals.dtype, device=totals.device).index_add_(
        0, group, torch.ones_like(totals))  # (G,)
    group_sum = torch.zeros_like(count).index_add_(0, group, totals)  # (G,)
    n, total = count[group], group_sum[group]  # (B,) each row's group size and group sum
    if estimator == "rloo":
        baseline = torch.where(n > 1, (total - totals) / (n - 1).clamp(min=1), torch.zeros_like(totals))
    else:
        baseline = torch.where(n > 1, total / n, torch.zeros_like(totals))
    advantages = to_go - baseline[:, None]
    if scale == "batch":
        _, var = masked_stats(totals, torch.ones_like(totals, dtype=torch.bool), reduce)
        advantages = advantages / (var.sqrt() + eps)
    elif scale == "group":
        mean = group_sum / count
        squares = torch.zeros_like(count).index_add_(0, group, (totals - mean[group]) ** 2)
        std = (squares / (count - 1).clamp(min=1)).sqrt()  # (G,) unbiased, as torch.std
        advantages = advantages / (std[group][:, None] + eps)
    return torch.where(mask.bool(), advantages, torch.zeros_like(advantages))


def singleton_groups(group_ids: torch.Tensor) -> tuple[int, int]:
    """(groups of one row, all groups): a group of one has no baseline in `group_advantages` (callers warn)."""
    _, counts = torch.unique(group_ids, return_counts=True)
    return int((counts == 1).sum()), len(counts)


def group_advantages_reference(rewards, mask, group_ids, estimator: str = "rloo", gamma: float = 1.0):
    """`group_advantages` (scale "none") with python loops, for tests."""
    lengths = [int(m.sum()) for m in mask]
    totals = [sum(float(rewards[b, u]) * gamma**u for u in range(lengths[b])) for b in range(len(lengths))]
    out = torch.zeros_like(rewards)
    for b in range(len(lengths)):
        same = [j for j in range(len(lengths)) if int(group_ids[j]) == int(group_ids[b])]
        others = [j for j in same if j != b] if estimator == "rloo" else same
        baseline = sum(totals[j] for j in others) / len(others) if len(same) > 1 else 0.0
        for t in range(lengths[b]):
            to_go = sum(float(rewards[b, u]) * gamma ** (u - t) for u in range(t, lengths[b]))
            out[b, t] = to_go - baseline
    return out
