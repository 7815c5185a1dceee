"""Prefix scores -> per-token rewards for one reward source: RED, the sparse baseline and ABC. Pure torch.

Every function works on response positions with the prompt's score beside them, the layout every engine hands over:

    prompt_scores  (B,)    R(x): the reward model's score of the prompt alone
    scores         (B, R)  the score after each response token; R(x, y) at the last one; ignored on padding
    response_mask  (B, R)  bool, True on response tokens (the EOS included), right-padded: ones, then zeros

and returns rewards (B, R), 0 on padding. `token_rewards` picks the scheme by name; `core.reward_assembly` weighs
and sums several sources and adds the penalties.

One row, prompt "Hi," then response "ok!" and its EOS (R = 4, one pad):

    position          prompt |    0        1        2       3
    token               ","  |   ok        !       EOS     PAD
    response_mask            |    1        1        1       0
    scores             s_0   |   s_1      s_2      s_3      -       (s_0 = R(x), s_3 = R(x, y))
    red                      | s_1-s_0  s_2-s_1  s_3-s_2    0       sums to s_3 - s_0
    sparse                   |    0        0       s_3      0
    abc                      | b*s_3*a_0/A  b*s_3*a_1/A  b*s_3*a_2/A + (1-b)*s_3   0     (A = a_0 + a_1 + a_2)

The EOS is a response token and gets its reward even when the tokenizer's pad id equals its EOS id: masks come from
lengths, never from `ids != pad_id`. A response cut at max length without EOS is scored at its last token the same
way. When the reward model reads its score at a trailing template token the policy never produced, the source puts
that pooled score on the last response token (`core.alignment.scores_at_cuts`), so the sum still telescopes.
"""

from __future__ import annotations

import torch

SCHEMES = ("red", "sparse", "abc")
FIRST_TOKEN_RULES = ("difference", "zero", "score")


def response_lengths(response_mask: torch.Tensor) -> torch.Tensor:
    """Tokens in each response, (B,) long. Raises ValueError for an empty row or one that is not right-padded."""
    if response_mask.dim() != 2:
        raise ValueError(f"response_mask must be (B, R), got shape {tuple(response_mask.shape)}")
    if response_mask.dtype != torch.bool and ((response_mask != 0) & (response_mask != 1)).any():
        raise ValueError("response_mask must hold only 0 and 1 (or be bool), got values "
                         f"{response_mask[(response_mask != 0) & (response_mask != 1)].unique().tolist()[:5]}")
    mask = response_mask.bool()
    lengths = mask.sum(-1)
    empty = (lengths == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"empty response in row(s) {empty[:5]}: every row needs at least one response token")
    # a 0 before a 1 (left padding, a gap) would read R(x) from a padding position and put rewards off the tokens
    gaps = (mask[:, 1:] & ~mask[:, :-1]).any(-1).nonzero().flatten().tolist()
    if gaps:
        raise ValueError(f"response_mask row(s) {gaps[:5]}: a 0 before a 1; responses must start at column 0 and be "
                         "followed only by padding (ones, then zeros): shift left-padded rows left")
    return lengths


def check_scores(prompt_scores: torch.Tensor, scores: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Shapes, dtype and finiteness where the scores are read; returns the response lengths (B,)."""
    lengths = response_lengths(response_mask)
    if scores.shape != response_mask.shape or prompt_scores.shape != response_mask.shape[:1]:
        raise ValueError(f"scores of shape {tuple(scores.shape)} and prompt scores of shape "
                         f"{tuple(prompt_scores.shape)} do not fit the response mask {tuple(response_mask.shape)}")
    if not scores.is_floating_point() or not prompt_scores.is_floating_point():
        raise ValueError(f"scores must be floating point, got dtype {scores.dtype} and {prompt_scores.dtype}")
    bad = ~torch.isfinite(prompt_scores) | (~torch.isfinite(scores) & response_mask.bool()).any(-1)
    if bad.any():
        raise ValueError(f"the prompt score R(x) or a response token's score is NaN or infinite in row(s) "
                         f"{bad.nonzero().flatten().tolist()[:5]}: check the reward model or function")
    return lengths


def final_scores(scores: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """R(x, y): the score at the last response token of each row, (B,)."""
    last = response_lengths(response_mask) - 1
    return scores.gather(1, last.unsqueeze(1)).squeeze(1)


def sparse_rewards(scores: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """The standard RLHF reward: R(x, y) on the last response token, 0 elsewhere."""
    last = (response_lengths(response_mask) - 1).unsqueeze(1)
    return torch.zeros_like(scores).scatter(1, last, scores.gather(1, last))


def redistribute(
    prompt_scores: torch.Tensor,
    scores: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    beta_c: float = 1.0,
    first_token: str = "difference",
) -> torch.Tensor:
    """RED token rewards r_t = s_t - s_{t-1} (s_0 = R(x)), blended with the sparse reward by beta_c:

    r_t = beta_c * (s_t - s_{t-1}) + (1 - beta_c) * [t is last] * R(x, y); with beta_c = 1 a row sums to
    R(x, y) - R(x).

    first_token chooses the first response token's RED term (the paper has two readings, plus an ablation):
      "difference"  s_1 - s_0 (the paper's equations; default).
      "zero"        0 (the paper's pseudo-code); rows sum to R(x, y) - s_1.
      "score"       s_1, no prompt offset; rows sum to R(x, y).
    """
    if first_token not in FIRST_TOKEN_RULES:
        raise ValueError(f"first_token must be one of {FIRST_TOKEN_RULES}, got {first_token!r}")
    if not 0.0 <= beta_c <= 1.0:
        raise ValueError(f"beta_c must be in [0, 1], got {beta_c}")
    mask = response_mask.bool()
    previous = torch.cat([prompt_scores.unsqueeze(1), scores[:, :-1]], dim=1)  # (B, R): s_{t-1}
    red = scores - previous
    if first_token != "difference":
        red[:, 0] = 0.0 if first_token == "zero" else scores[:, 0]
    red = torch.where(mask, red, 0.0)
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

    attention (B, R): the reward model's last-layer attention from the token it reads its score at to each response
    token, heads averaged. Response token t gets beta * R * a_t / sum_response(a), and the last response token also
    gets (1 - beta) * R. Rows sum to R(x, y).
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"abc beta must be in [0, 1], got {beta}")
    if attention is None or attention.shape != scores.shape:
        raise ValueError(f"scheme 'abc' needs the reward model's attention of shape {tuple(scores.shape)}, got "
                         f"{None if attention is None else tuple(attention.shape)}")
    mask = response_mask.bool()
    sparse = sparse_rewards(scores, mask)
    weights = torch.where(mask, attention.to(scores.dtype), 0.0)
    if (weights < 0).any() or not torch.isfinite(weights).all():
        raise ValueError("attention weights must be finite and non-negative")
    total = weights.sum(-1, keepdim=True)  # (B, 1)
    if (total <= 0).any():
        rows = (total.squeeze(1) <= 0).nonzero().flatten().tolist()
        raise ValueError(f"row(s) {rows} put no attention on the response: ABC cannot spread the reward")
    final = sparse.sum(-1, keepdim=True)  # (B, 1) = R(x, y)
    return beta * final * weights / total + (1.0 - beta) * sparse


def token_rewards(
    scheme: str,
    prompt_scores: torch.Tensor,
    scores: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    beta_c: float = 1.0,
    first_token: str = "difference",
    attention: torch.Tensor | None = None,
    abc_beta: float = 0.5,
) -> torch.Tensor:
    """Which token gets which reward under `scheme` (see the module's drawn row). Returns (B, R), 0 on padding."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown reward scheme {scheme!r}; choose one of {SCHEMES}")
    check_scores(prompt_scores, scores, response_mask)
    if scheme == "red":
        return redistribute(prompt_scores, scores, response_mask, beta_c=beta_c, first_token=first_token)
    if scheme == "sparse":
        return sparse_rewards(scores, response_mask)
    return abc_rewards(scores, response_mask, attention, beta=abc_beta)
