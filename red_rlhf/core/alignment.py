"""Map reward-model tokens to policy tokens by character offsets (pure python).

Policy and reward model may tokenize the same response differently. Both sides are described by the
character position where each of their response tokens ends ("cuts", in response coordinates). Policy
token t gets the prefix score of the last reward-model token that ends at or before the end of policy
token t; a policy token before which no reward-model token has ended gets the prompt score, so its RED
reward is 0. Because every policy token reads a prefix score of the same monotone sequence, the rewards
still telescope to R(x, y) - R(x).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence


def check_cuts(cuts: Sequence[int], length: int, what: str = "policy token ends") -> None:
    if not cuts:
        raise ValueError(f"{what}: the response has no tokens")
    if any(b < a for a, b in zip(cuts, cuts[1:])):
        raise ValueError(f"{what} must be non-decreasing, got {list(cuts)}")
    if cuts[0] < 0 or cuts[-1] > length:
        raise ValueError(f"{what} must lie within the response's {length} characters, got {list(cuts)}")


def scores_at_cuts(
    rm_ends: Sequence[int], rm_scores: Sequence[float], prompt_score: float, final_score: float, cuts: Sequence[int]
) -> list[float]:
    """Prefix score for each policy token.

    rm_ends[j]: where reward-model response token j ends; rm_scores[j]: its prefix score. The last policy
    token takes final_score, the score the reward model reads at its pooled position (which may be a
    trailing template token after the response), so the row's rewards sum to final - prompt.
    """
    if len(rm_ends) != len(rm_scores):
        raise ValueError("rm_ends and rm_scores must have the same length")
    out = []
    for cut in cuts[:-1]:
        seen = bisect.bisect_right(rm_ends, cut)  # reward-model tokens ending at or before this cut
        out.append(rm_scores[seen - 1] if seen else prompt_score)
    out.append(final_score)
    return out


def sums_between_cuts(rm_ends: Sequence[int], values: Sequence[float], cuts: Sequence[int]) -> list[float]:
    """Sum each reward-model token's value into the first policy token that ends at or after it (ABC shares)."""
    totals = [0.0] * len(cuts)
    for end, value in zip(rm_ends, values):
        t = min(bisect.bisect_left(cuts, end), len(cuts) - 1)
        totals[t] += float(value)
    return totals
