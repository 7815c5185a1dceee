"""Tier 1: pure property tests of reward placement (no models)."""

import pytest
import torch

from red_rlhf.core.redistribute import (
    FIRST_TOKEN_RULES,
    abc_rewards,
    final_scores,
    redistribute,
    redistribute_reference,
    response_span,
    sparse_rewards,
    token_rewards,
)


def random_batch(batch=6, width=14, seed=0):
    """Random prefix scores and contiguous response masks, mixing left- and right-padded rows."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, width, generator=g, dtype=torch.float64)
    mask = torch.zeros(batch, width, dtype=torch.bool)
    valid = torch.zeros(batch, width, dtype=torch.bool)
    for b in range(batch):
        length = int(torch.randint(3, width + 1, (1,), generator=g))
        prompt = int(torch.randint(1, length, (1,), generator=g))
        start = width - length if b % 2 else 0  # odd rows left-padded, even rows right-padded
        valid[b, start : start + length] = True
        mask[b, start + prompt : start + length] = True
    scores = torch.where(valid, scores, torch.zeros_like(scores))
    return scores, mask


@pytest.mark.parametrize("first_token", FIRST_TOKEN_RULES)
@pytest.mark.parametrize("beta_c", [1.0, 0.5, 0.0])
def test_fast_equals_reference(beta_c, first_token):
    scores, mask = random_batch()
    fast = redistribute(scores, mask, beta_c=beta_c, first_token=first_token)
    slow = redistribute_reference(scores, mask, beta_c=beta_c, first_token=first_token)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-12)


def test_sum_property_and_zero_outside():
    scores, mask = random_batch(batch=8, seed=3)
    rewards = redistribute(scores, mask)
    first, last = response_span(mask)
    rows = torch.arange(8)
    expected = scores[rows, last] - scores[rows, first - 1]
    torch.testing.assert_close(rewards.sum(-1), expected)
    assert (rewards[~mask] == 0).all()
    assert (rewards[mask] != 0).all()  # random scores: every response token gets a difference


def test_drawn_example_row():
    # PAD PAD Hi , ok ! EOS   (left padding; response = ok ! EOS)
    scores = torch.tensor([[0.0, 0.0, 0.3, 1.0, 1.5, 0.5, 2.0]])
    mask = torch.tensor([[0, 0, 0, 0, 1, 1, 1]], dtype=torch.bool)
    assert redistribute(scores, mask).tolist() == [[0.0, 0.0, 0.0, 0.0, 0.5, -1.0, 1.5]]
    assert sparse_rewards(scores, mask).tolist() == [[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0]]
    assert redistribute(scores, mask, first_token="zero").tolist() == [[0.0, 0.0, 0.0, 0.0, 0.0, -1.0, 1.5]]
    assert redistribute(scores, mask, first_token="score").tolist() == [[0.0, 0.0, 0.0, 0.0, 1.5, -1.0, 1.5]]
    blended = redistribute(scores, mask, beta_c=0.5)
    torch.testing.assert_close(blended, torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.25, -0.5, 0.75 + 1.0]]))


def test_first_token_rules_change_the_sum_as_documented():
    scores, mask = random_batch(seed=5)
    first, last = response_span(mask)
    rows = torch.arange(scores.shape[0])
    final = scores[rows, last]
    torch.testing.assert_close(redistribute(scores, mask, first_token="zero").sum(-1), final - scores[rows, first])
    torch.testing.assert_close(redistribute(scores, mask, first_token="score").sum(-1), final)


def test_beta_c_zero_is_sparse_and_blend_is_linear():
    scores, mask = random_batch(seed=7)
    torch.testing.assert_close(redistribute(scores, mask, beta_c=0.0), sparse_rewards(scores, mask))
    mix = redistribute(scores, mask, beta_c=0.3)
    torch.testing.assert_close(mix, 0.3 * redistribute(scores, mask) + 0.7 * sparse_rewards(scores, mask))


def test_one_token_response():
    scores = torch.tensor([[0.2, 0.7, 1.9]])
    mask = torch.tensor([[False, False, True]])
    assert redistribute(scores, mask)[0].tolist() == pytest.approx([0.0, 0.0, 1.9 - 0.7])
    assert final_scores(scores, mask).tolist() == pytest.approx([1.9])


def test_bad_masks_and_scores_are_clear_errors():
    scores = torch.zeros(2, 5)
    with pytest.raises(ValueError, match=r"empty response in row\(s\) \[1\]"):
        redistribute(scores, torch.tensor([[0, 1, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool))
    with pytest.raises(ValueError, match="not one contiguous block"):
        redistribute(scores, torch.tensor([[0, 1, 0, 1, 0], [0, 1, 1, 0, 0]], dtype=torch.bool))
    with pytest.raises(ValueError, match="no token before the response"):
        redistribute(scores, torch.tensor([[1, 1, 0, 0, 0], [0, 1, 1, 0, 0]], dtype=torch.bool))
    with pytest.raises(ValueError, match="beta_c"):
        redistribute(scores, torch.tensor([[0, 1, 1, 0, 0]] * 2, dtype=torch.bool), beta_c=1.5)


def test_nan_scores_are_refused_where_used_only():
    mask = torch.tensor([[0, 0, 1, 1, 0]], dtype=torch.bool)
    padded_nan = torch.tensor([[float("nan"), 0.1, 0.2, 0.3, 0.0]])  # NaN before the prompt score: unused
    assert torch.isfinite(redistribute(padded_nan, mask)).all()
    for position in (1, 3):
        bad = torch.tensor([[0.0, 0.1, 0.2, 0.3, 0.0]])
        bad[0, position] = float("nan")
        with pytest.raises(ValueError, match="NaN"):
            token_rewards("red", bad, mask)
    with pytest.raises(ValueError, match="NaN"):
        token_rewards("sparse", torch.tensor([[0.0, 0.1, 0.2, float("inf"), 0.0]]), mask)


def test_abc_sums_to_final_score_with_non_negative_shares():
    scores, mask = random_batch(seed=11)
    attention = torch.rand(scores.shape, dtype=torch.float64)
    rewards = abc_rewards(scores, mask, attention, beta=0.5)
    final = final_scores(scores, mask)
    torch.testing.assert_close(rewards.sum(-1), final)
    assert (rewards[~mask] == 0).all()
    positive = final > 0
    assert positive.any() and (~positive).any()
    assert (rewards[positive][mask[positive]] >= 0).all()
    assert (rewards[~positive][mask[~positive]] <= 0).all()
    # the last token holds (1 - beta) * R plus its own attention share
    _, last = response_span(mask)
    rows = torch.arange(scores.shape[0])
    shares = torch.where(mask, attention, 0) / torch.where(mask, attention, 0).sum(-1, keepdim=True)
    torch.testing.assert_close(rewards[rows, last], 0.5 * final + 0.5 * final * shares[rows, last])


def test_abc_errors():
    scores = torch.tensor([[0.0, 1.0, 2.0]])
    mask = torch.tensor([[False, True, True]])
    with pytest.raises(ValueError, match="attention"):
        token_rewards("abc", scores, mask)
    with pytest.raises(ValueError, match="no attention on the response"):
        abc_rewards(scores, mask, torch.tensor([[1.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="unknown reward scheme"):
        token_rewards("dense", scores, mask)


def test_token_rewards_dispatches_by_name():
    scores, mask = random_batch(seed=13)
    attention = torch.rand(scores.shape, dtype=torch.float64)
    torch.testing.assert_close(token_rewards("red", scores, mask, beta_c=0.7), redistribute(scores, mask, beta_c=0.7))
    torch.testing.assert_close(token_rewards("sparse", scores, mask), sparse_rewards(scores, mask))
    torch.testing.assert_close(
        token_rewards("abc", scores, mask, attention=attention, abc_beta=0.2), abc_rewards(scores, mask, attention, beta=0.2)
    )
