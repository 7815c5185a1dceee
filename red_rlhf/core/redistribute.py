"""Prefix scores -> per-token rewards: RED, the sparse baseline and ABC.

Pure torch, no tokenizer or model. Every function takes

    scores         (B, T) float  the reward model's score of the prefix that ends at each position
    response_mask  (B, T) bool   True on response tokens (the response's own EOS included), False on the
                                 prompt and on padding (left or right)

and returns rewards (B, T), zero outside the response. `token_rewards` is the one entry point the rest of
the project uses; it owns which token gets which reward.
"""

from __future__ import annotations

import torch

SCHEMES = ("red", "sparse", "abc")
FIRST_TOKEN_RULES = ("difference", "zero", "score")


def response_span(response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the first and of the last response token of each row, both (B,) long.

    Raises ValueError for a row without response tokens or with a gap inside its response.
    """
    if response_mask.dim() != 2:
        raise ValueError(f"response_mask must be (B, T), got shape {tuple(response_mask.shape)}")
    mask = response_mask.bool()
    lengths = mask.sum(-1)  # (B,)
    empty = (lengths == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"empty response in row(s) {empty}: every row needs at least one response token")
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)  # (B, T)
    first = torch.where(mask, positions, mask.shape[1]).min(-1).values
    last = torch.where(mask, positions, -1).max(-1).values
    gaps = ((last - first + 1) != lengths).nonzero().flatten().tolist()
    if gaps:
        raise ValueError(f"response_mask of row(s) {gaps} is not one contiguous block of response tokens")
    return first, last


def _gather(scores: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return scores.gather(1, index.unsqueeze(1)).squeeze(1)  # (B,)


def final_scores(scores: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """R(x, y): the score at the last response token of each row, (B,)."""
    _, last = response_span(response_mask)
    return _gather(scores, last)


def _check_finite(scores: torch.Tensor, used: torch.Tensor) -> None:
    bad = (~torch.isfinite(scores) & used).any(-1).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"reward scores are NaN or infinite in row(s) {bad}: check the reward model or function")


def sparse_rewards(scores: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """The standard RLHF reward: R(x, y) on the last response token, 0 elsewhere."""
    _, last = response_span(response_mask)
    _check_finite(_gather(scores, last).unsqueeze(1), torch.ones_like(last, dtype=torch.bool).unsqueeze(1))
    rewards = torch.zeros_like(scores)
    rewards.scatter_(1, last.unsqueeze(1), _gather(scores, last).unsqueeze(1))
    return rewards


def redistribute(
    scores: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    beta_c: float = 1.0,
    first_token: str = "difference",
) -> torch.Tensor:
    """RED token rewards r_t = s_t - s_{t-1}, blended with the sparse reward by beta_c.

    r_t = beta_c * (s_t - s_{t-1}) + (1 - beta_c) * [t is last] * R(x, y).
    s_{t-1} of the first response token is the score at the last token before the response (the prompt
    score R(x)), so with beta_c = 1 each row sums to R(x, y) - R(x).

    first_token chooses the first response token's RED term (the paper has two readings, plus an ablation):
      "difference"  s_1 - s_0 (the paper's equations; default). Needs a token before the response.
      "zero"        0 (the paper's pseudo-code); rows sum to R(x, y) - s_1.
      "score"       s_1, no prompt offset; rows sum to R(x, y).
    """
    if first_token not in FIRST_TOKEN_RULES:
        raise ValueError(f"first_token must be one of {FIRST_TOKEN_RULES}, got {first_token!r}")
    if not 0.0 <= beta_c <= 1.0:
        raise ValueError(f"beta_c must be in [0, 1], got {beta_c}")
    mask = response_mask.bool()
    first, _ = response_span(mask)
    if first_token == "difference" and (first == 0).any():
        rows = (first == 0).nonzero().flatten().tolist()
        raise ValueError(
            f"row(s) {rows} have no token before the response, so the prompt score R(x) cannot be read; "
            "add a prompt (or a BOS token), or use first_token='score'"
        )
    previous_position = (first - 1).clamp(min=0)
    used = mask.clone()
    used.scatter_(1, previous_position.unsqueeze(1), True)
    _check_finite(scores, used)

    previous = torch.cat([torch.zeros_like(scores[:, :1]), scores[:, :-1]], dim=1)  # (B, T): s_{t-1}
    red = torch.where(mask, scores - previous, torch.zeros_like(scores))
    first_reward = {
        "difference": _gather(red, first),
        "zero": torch.zeros_like(first, dtype=scores.dtype),
        "score": _gather(scores, first),
    }[first_token]
    red = red.scatter(1, first.unsqueeze(1), first_reward.unsqueeze(1))
    if beta_c == 1.0:
        return red
    return beta_c * red + (1.0 - beta_c) * sparse_rewards(scores, mask)


def abc_rewards(
    scores: torch.Tensor,
    response_mask: torch.Tensor,
    attention: torch.Tensor,
    *,
    beta: float = 0.5,
) -> torch.Tensor:
    """Attention-based credit (Chan et al. 2024, "Dense Reward for Free in RLHF").

    attention (B, T): the reward model's last-layer attention from the token it reads its score at, heads
    averaged. Response token t gets beta * R * a_t / sum_response(a), and the last response token also gets
    (1 - beta) * R. Rows sum to R(x, y).
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"abc beta must be in [0, 1], got {beta}")
    if attention.shape != scores.shape:
        raise ValueError(f"attention must have the shape of scores {tuple(scores.shape)}, got {tuple(attention.shape)}")
    mask = response_mask.bool()
    sparse = sparse_rewards(scores, mask)
    weights = torch.where(mask, attention.to(scores.dtype), torch.zeros_like(scores))
    if (weights < 0).any() or not torch.isfinite(weights).all():
        raise ValueError("attention weights must be finite and non-negative")
    total = weights.sum(-1, keepdim=True)  # (B, 1)
    if (total <= 0).any():
        rows = (total.squeeze(1) <= 0).nonzero().flatten().tolist()
        raise ValueError(f"row(s) {rows} put no attention on the response: ABC cannot spread the reward")
    shares = weights / total  # (B, T), each row sums to 1 over the response
    final = sparse.sum(-1, keepdim=True)  # (B, 1) = R(x, y)
    return beta * final * shares + (1.0 - beta) * sparse


def _check_shapes(scores: torch.Tensor, response_mask: torch.Tensor) -> None:
    if scores.dim() != 2 or response_mask.shape != scores.shape:
        raise ValueError(f"scores and response_mask must both be (B, T); got {tuple(scores.shape)} and "
                         f"{tuple(response_mask.shape)}")
    if not scores.is_floating_point():
        raise ValueError(f"scores must be floating point, got dtype {scores.dtype}")
    if response_mask.dtype != torch.bool and ((response_mask != 0) & (response_mask != 1)).any():
        raise ValueError("response_mask must hold only 0 and 1 (or be bool), got values "
                         f"{response_mask[(response_mask != 0) & (response_mask != 1)].unique().tolist()[:5]}")


def token_rewards(
    scheme: str,
    scores: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    beta_c: float = 1.0,
    first_token: str = "difference",
    attention: torch.Tensor | None = None,
    abc_beta: float = 0.5,
) -> torch.Tensor:
    """Which token gets which reward, for every scheme. Returns (B, T), zero outside the response.

    One left-padded row, prompt "Hi" (2 tokens), response "ok!" (2 tokens) + its EOS, T = 7:

        position        0     1     2     3     4     5     6
        token          PAD   PAD   Hi    ,     ok    !    EOS
        response_mask   0     0     0     0     1     1     1
        scores          0     0    s_a   s_0   s_1   s_2   s_3      (s_0 = R(x), s_3 = R(x, y))
        red             0     0     0     0  s_1-s_0 s_2-s_1 s_3-s_2   sums to s_3 - s_0
        sparse          0     0     0     0     0     0    s_3
        abc             0     0     0     0   b*s_3*a_4/A ... + (1-b)*s_3 on EOS   (A = a_4+a_5+a_6)

    The EOS is a response token and gets its reward even when the tokenizer's pad id equals its EOS id:
    masks come from lengths, never from `ids != pad_id`. A response cut at max length without EOS is
    scored at its last token the same way. When the reward model reads its score at a trailing template
    token the policy never produced, the caller puts that pooled score on the last response token (see
    `core.alignment.scores_at_cuts`), so the sum still telescopes to R(x, y) - R(x).
    """
    _check_shapes(scores, response_mask)
    if scheme == "red":
        return redistribute(scores, response_mask, beta_c=beta_c, first_token=first_token)
    if scheme == "sparse":
        return sparse_rewards(scores, response_mask)
    if scheme == "abc":
        if attention is None:
            raise ValueError("scheme 'abc' needs the reward model's attention weights (attention=...)")
        return abc_rewards(scores, response_mask, attention, beta=abc_beta)
    raise ValueError(f"unknown reward scheme {scheme!r}; choose one of {SCHEMES}")


def redistribute_reference(
    scores: torch.Tensor, response_mask: torch.Tensor, *, beta_c: float = 1.0, first_token: str = "difference"
) -> torch.Tensor:
    """The slow, obvious version of `redistribute` (python loops), kept to test the fast one against."""
    rewards = torch.zeros_like(scores)
    for b in range(scores.shape[0]):
        positions = [t for t in range(scores.shape[1]) if bool(response_mask[b, t])]
        for i, t in enumerate(positions):
            if i == 0:
                red = {"difference": scores[b, t] - scores[b, t - 1], "zero": 0.0, "score": scores[b, t]}[first_token]
            else:
                red = scores[b, t] - scores[b, t - 1]
            sparse = scores[b, t] if i == len(positions) - 1 else 0.0
            rewards[b, t] = beta_c * red + (1.0 - beta_c) * sparse
    return rewards
