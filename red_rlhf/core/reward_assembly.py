"""Every source's prefix scores -> the per-token reward the advantage estimator sees. Pure torch.

This module answers "what reward does token t get, and why?" in one function, `assemble_rewards`:

    for each source i (a reward model, a cost model, a python function):
        s_i          = clip((prefix scores - score_shift) / score_scale, -score_clip, score_clip)
        r_i          = token_rewards(scheme_i, s_i)          red: s_t - s_{t-1} | sparse | abc   (beta_c, first token)
    r_t              = sum_i coef_i * r_i,t                  coef: +weight (reward), -weight or -lambda (cost)
    r_T             -= missing_eos_penalty                   last token of a response cut without EOS
    r_t             -= kl_coef * KL_t                        per-token KL to the reference (left out when kl is None)

Shapes: B responses, R response positions, right-padded. `response_mask` (B, R) is True on response tokens (EOS
included). Every output is 0 on padding. Normalisation and clipping act on every prefix score alike (the prompt
score R(x) included), so RED rewards still telescope to the normalised R(x, y) - R(x).

`assemble_rewards_reference` is the same computation as python loops over rows and tokens; tests hold them equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from red_rlhf.core.advantages import shape_rewards
from red_rlhf.core.redistribute import FIRST_TOKEN_RULES, check_scores, response_lengths, token_rewards


@dataclass
class RewardSettings:
    """How prefix scores become token rewards, the same for every source (the `reward` section of a training
    config extends this with its sources)."""

    beta_c: float = 1.0
    """RED blend: beta_c * RED + (1 - beta_c) * sparse. The paper uses 1."""
    first_token: str = "difference"
    """RED reward of the first response token: "difference" (s_1 - s_0), "zero" or "score" (see redistribute)."""
    abc_beta: float = 0.5
    """ABC: share of the score spread by attention; the rest goes on the last token."""
    score_shift: float = 0.0
    """Prefix scores are normalised as (s - score_shift) / score_scale before placement (the sum still telescopes)."""
    score_scale: float = 1.0
    """See score_shift."""
    score_clip: float | None = None
    """Clip normalised prefix scores to [-score_clip, score_clip] before placement; None: no clipping."""
    missing_eos_penalty: float | None = None
    """Subtracted from the last token's reward of a response cut at max_new_tokens without EOS; None: no penalty."""


@dataclass
class PrefixScores:
    """One source's scores on the policy's response tokens (what every reward source returns)."""

    prompt: torch.Tensor  # (B,) R(x): the score of the prompt alone
    tokens: torch.Tensor  # (B, R) the score after each response token; R(x, y) at the last; 0 on padding
    attention: torch.Tensor | None = None  # (B, R) ABC: attention on each response token (None unless asked)


@dataclass
class SourceScores:
    """One source's prefix scores and how they become rewards."""

    name: str
    scores: PrefixScores
    scheme: str = "red"  # "red" | "sparse" | "abc"
    coef: float = 1.0  # signed weight: + for a reward, - for a cost (its weight or its Lagrange multiplier)


@dataclass
class AssembledRewards:
    rewards: torch.Tensor  # (B, R) what the advantage estimator sees: score rewards minus the KL term
    score_rewards: torch.Tensor  # (B, R) the sources' combined token rewards, missing-EOS penalty included, no KL
    kl_penalty: torch.Tensor  # (B, R) kl_coef * KL_t on response tokens (0 without kl)
    final_raw: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (B,) R(x, y) as the source gave it
    final_normalised: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (B,) after shift/scale/clip
    final_combined_raw: torch.Tensor | None = None  # (B,) sum_i coef_i * raw R_i(x, y)
    prompt_combined_raw: torch.Tensor | None = None  # (B,) sum_i coef_i * raw R_i(x)

    def to(self, device) -> "AssembledRewards":
        move = {k: v.to(device) for k, v in vars(self).items() if isinstance(v, torch.Tensor)}
        move.update({k: {n: t.to(device) for n, t in getattr(self, k).items()} for k in ("final_raw", "final_normalised")})
        return AssembledRewards(**move)


def _check(sources: Sequence[SourceScores], settings: RewardSettings) -> None:
    if not sources:
        raise ValueError("assemble_rewards needs at least one source")
    if settings.first_token not in FIRST_TOKEN_RULES:
        raise ValueError(f"first_token must be one of {FIRST_TOKEN_RULES}, got {settings.first_token!r}")
    if not settings.score_scale > 0:
        raise ValueError(f"score_scale must be > 0, got {settings.score_scale}")


def _place(s: SourceScores, mask: torch.Tensor, settings: RewardSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """One source's token rewards (B, R) and normalised scores (B, R), in float64; errors name the source."""
    try:
        check_scores(s.scores.prompt, s.scores.tokens, mask)  # before normalising: clipping hides an infinite score
        prompt = normalise(s.scores.prompt.to(torch.float64), settings)
        tokens = torch.where(mask, normalise(s.scores.tokens.to(torch.float64), settings), 0.0)
        placed = token_rewards(s.scheme, prompt, tokens, mask, beta_c=settings.beta_c, first_token=settings.first_token,
                               attention=s.scores.attention, abc_beta=settings.abc_beta)
    except ValueError as err:
        raise ValueError(f"source {s.name!r}: {err}") from err
    return placed, tokens


def normalise(scores: torch.Tensor, settings: RewardSettings) -> torch.Tensor:
    """(s - score_shift) / score_scale, clipped to [-score_clip, score_clip] when set."""
    out = (scores - settings.score_shift) / settings.score_scale
    return out if settings.score_clip is None else out.clamp(-settings.score_clip, settings.score_clip)


def assemble_rewards(
    sources: Sequence[SourceScores],
    response_mask: torch.Tensor,
    settings: RewardSettings = RewardSettings(),
    *,
    ended: torch.Tensor | None = None,
    kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    dtype: torch.dtype = torch.float32,
) -> AssembledRewards:
    """The final per-token rewards (see the module docstring for the recipe, `core.redistribute` for one row).

    ended: (B,) bool, the response ends with EOS; needed when settings.missing_eos_penalty is set.
    kl: (B, R) per-token KL estimate (k1 or k3); None: no KL term (an engine that adds its own, e.g. verl).
    Each source is placed in float64 (prefix differences of large scores lose little), then weighted and summed
    in `dtype`.
    """
    mask = response_mask.bool()
    _check(sources, settings)
    last = response_lengths(mask) - 1
    rows = torch.arange(mask.shape[0], device=mask.device)
    combined = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    final_raw, final_normalised = {}, {}
    prompt_raw, final_combined = (torch.zeros(mask.shape[0], dtype=dtype, device=mask.device) for _ in range(2))
    for s in sources:
        placed, tokens = _place(s, mask, settings)
        combined = combined + s.coef * placed.to(dtype)  # placed in float64, summed in dtype
        final_raw[s.name] = s.scores.tokens[rows, last].to(dtype)
        final_normalised[s.name] = tokens[rows, last].to(dtype)
        prompt_raw = prompt_raw + s.coef * s.scores.prompt.to(dtype)
        final_combined = final_combined + s.coef * final_raw[s.name]
    if settings.missing_eos_penalty is not None:
        if ended is None:
            raise ValueError("missing_eos_penalty is set: pass ended= (which responses end with EOS)")
        penalty = torch.where(ended.bool().to(mask.device), 0.0, float(settings.missing_eos_penalty))
        combined[rows, last] -= penalty.to(dtype)
    rewards, kl_penalty = torch.where(mask, combined, 0.0), torch.zeros_like(combined)
    if kl is not None:
        if kl.shape != mask.shape:
            raise ValueError(f"kl of shape {tuple(kl.shape)} does not fit the response mask {tuple(mask.shape)}")
        rewards = shape_rewards(combined, kl.to(dtype), mask, kl_coef)
        kl_penalty = torch.where(mask, kl_coef * kl.to(dtype), 0.0)
    return AssembledRewards(
        rewards=rewards, score_rewards=combined, kl_penalty=kl_penalty, final_raw=final_raw,
        final_normalised=final_normalised, final_combined_raw=final_combined, prompt_combined_raw=prompt_raw,
    )


def assemble_rewards_reference(
    sources: Sequence[SourceScores],
    response_mask: torch.Tensor,
    settings: RewardSettings = RewardSettings(),
    *,
    ended: torch.Tensor | None = None,
    kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> torch.Tensor:
    """The slow, obvious `assemble_rewards(...).rewards`: python loops over rows and tokens, for tests."""

    def norm(value: float) -> float:
        value = (float(value) - settings.score_shift) / settings.score_scale
        if settings.score_clip is not None:
            value = max(-settings.score_clip, min(settings.score_clip, value))
        return value

    out = torch.zeros(response_mask.shape, dtype=torch.float64)
    for b in range(response_mask.shape[0]):
        positions = [t for t in range(response_mask.shape[1]) if bool(response_mask[b, t])]
        for s in sources:
            final = norm(s.scores.tokens[b, positions[-1]])
            total_attention = sum(float(s.scores.attention[b, t]) for t in positions) if s.scheme == "abc" else 0.0
            for i, t in enumerate(positions):
                previous = norm(s.scores.prompt[b]) if i == 0 else norm(s.scores.tokens[b, positions[i - 1]])
                is_last = i == len(positions) - 1
                if s.scheme == "sparse":
                    reward = final if is_last else 0.0
                elif s.scheme == "abc":
                    share = float(s.scores.attention[b, t]) / total_attention
                    reward = settings.abc_beta * final * share + ((1 - settings.abc_beta) * final if is_last else 0.0)
                else:
                    if i == 0:
                        red = {"difference": norm(s.scores.tokens[b, t]) - previous, "zero": 0.0,
                               "score": norm(s.scores.tokens[b, t])}[settings.first_token]
                    else:
                        red = norm(s.scores.tokens[b, t]) - previous
                    reward = settings.beta_c * red + (1 - settings.beta_c) * (final if is_last else 0.0)
                out[b, t] += s.coef * reward
        if settings.missing_eos_penalty is not None and not bool(ended[b]):
            out[b, positions[-1]] -= settings.missing_eos_penalty
        if kl is not None:
            for t in positions:
                out[b, t] -= kl_coef * float(kl[b, t])
    return out
