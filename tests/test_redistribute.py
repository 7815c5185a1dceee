"""Tier 1: reward placement for one source, in response coordinates (no models). The slow python-loop reference
of every scheme, normalisation and weighting is `assemble_rewards_reference` (tests/test_reward_path.py)."""

import pytest
import torch

from red_rlhf.core.redistribute import (
    FIRST_TOKEN_RULES,
    abc_rewards,
    final_scores,
    redistribute,
    response_lengths,
    sparse_rewards,
    token_rewards,
)


def random_batch(batch=6, width=9, seed=0):
    """Prompt scores (B,), prefix scores (B, R) with junk on padding, and right-padded response masks."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width + 1, (batch,), generator=g)
    mask = torch.arange(width)[None, :] < lengths[:, None]
    scores = torch.randn(batch, width, generator=g, dtype=torch.float64)
    return torch.randn(batch, generator=g, dtype=torch.float64), scores, mask


def test_drawn_example_row():
    # the module docstring's row: prompt "Hi," (s_0 = 1.0), response "ok ! EOS", one pad (junk score 9.0)
    prompt, scores = torch.tensor([1.0]), torch.tensor([[1.5, 0.5, 2.0, 9.0]])
    mask = torch.tensor([[True, True, True, False]])
    assert redistribute(prompt, scores, mask).tolist() == [[0.5, -1.0, 1.5, 0.0]]
    assert sparse_rewards(scores, mask).tolist() == [[0.0, 0.0, 2.0, 0.0]]
    assert redistribute(prompt, scores, mask, first_token="zero").tolist() == [[0.0, -1.0, 1.5, 0.0]]
    assert redistribute(prompt, scores, mask, first_token="score").tolist() == [[1.5, -1.0, 1.5, 0.0]]
    assert redistribute(prompt, scores, mask, beta_c=0.5).tolist() == [[0.25, -0.5, 0.75 + 1.0, 0.0]]
    attention = torch.tensor([[1.0, 1.0, 2.0, 5.0]])  # the pad's attention is ignored
    assert abc_rewards(scores, mask, attention, beta=0.5).tolist() == [[0.25, 0.25, 0.5 + 1.0, 0.0]]


@pytest.mark.parametrize("seed", range(3))
def test_sums_telescope_as_documented_for_each_first_token_rule(seed):
    prompt, scores, mask = random_batch(seed=seed)
    final = final_scores(scores, mask)
    red = redistribute(prompt, scores, mask)
    torch.testing.assert_close(red.sum(-1), final - prompt)
    assert (red[~mask] == 0).all() and (red[mask] != 0).all()  # random scores: every response token gets a difference
    torch.testing.assert_close(redistribute(prompt, scores, mask, first_token="zero").sum(-1), final - scores[:, 0])
    torch.testing.assert_close(redistribute(prompt, scores, mask, first_token="score").sum(-1), final)


@pytest.mark.parametrize("first_token", FIRST_TOKEN_RULES)
def test_beta_c_zero_is_sparse_and_the_blend_is_linear(first_token):
    prompt, scores, mask = random_batch(seed=7)
    torch.testing.assert_close(redistribute(prompt, scores, mask, beta_c=0.0, first_token=first_token),
                               sparse_rewards(scores, mask))
    mix = redistribute(prompt, scores, mask, beta_c=0.3, first_token=first_token)
    pure = redistribute(prompt, scores, mask, first_token=first_token)
    torch.testing.assert_close(mix, 0.3 * pure + 0.7 * sparse_rewards(scores, mask))


def test_one_token_response():
    prompt, scores, mask = torch.tensor([0.7]), torch.tensor([[1.9, 4.0]]), torch.tensor([[True, False]])
    assert redistribute(prompt, scores, mask)[0].tolist() == pytest.approx([1.9 - 0.7, 0.0])
    assert final_scores(scores, mask).tolist() == pytest.approx([1.9])


def test_bad_masks_and_settings_are_clear_errors():
    prompt, scores = torch.zeros(2), torch.zeros(2, 4)
    with pytest.raises(ValueError, match=r"empty response in row\(s\) \[1\]"):
        response_lengths(torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool))
    with pytest.raises(ValueError, match=r"row\(s\) \[0\]: a 0 before a 1"):
        token_rewards("red", prompt, scores, torch.tensor([[0, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool))
    with pytest.raises(ValueError, match="beta_c"):
        redistribute(prompt, scores, torch.ones(2, 4, dtype=torch.bool), beta_c=1.5)
    with pytest.raises(ValueError, match="first_token"):
        redistribute(prompt, scores, torch.ones(2, 4, dtype=torch.bool), first_token="last")


def test_nan_scores_are_refused_where_read_only():
    mask = torch.tensor([[True, True, False]])
    token_rewards("red", torch.tensor([0.1]), torch.tensor([[0.2, 0.3, float("nan")]]), mask)  # NaN on padding: unread
    for prompt, scores in ((float("nan"), [0.2, 0.3, 0.0]), (0.1, [0.2, float("inf"), 0.0])):
        for scheme in ("red", "sparse"):
            with pytest.raises(ValueError, match=r"NaN or infinite in row\(s\) \[0\]"):
                token_rewards(scheme, torch.tensor([prompt]), torch.tensor([scores]), mask)


def test_abc_sums_to_final_score_with_non_negative_shares():
    prompt, scores, mask = random_batch(seed=11)
    attention = torch.rand(scores.shape, dtype=torch.float64)
    rewards = abc_rewards(scores, mask, attention, beta=0.5)
    final = final_scores(scores, mask)
    torch.testing.assert_close(rewards.sum(-1), final)
    assert (rewards[~mask] == 0).all()
    positive = final > 0
    assert positive.any() and (~positive).any()
    assert (rewards[positive][mask[positive]] >= 0).all()
    assert (rewards[~positive][mask[~positive]] <= 0).all()
    rows, last = torch.arange(scores.shape[0]), response_lengths(mask) - 1
    shares = torch.where(mask, attention, 0) / torch.where(mask, attention, 0).sum(-1, keepdim=True)
    torch.testing.assert_close(rewards[rows, last], 0.5 * final + 0.5 * final * shares[rows, last])


def test_abc_errors_and_dispatch_by_name():
    prompt, scores, mask = torch.tensor([0.0]), torch.tensor([[1.0, 2.0]]), torch.tensor([[True, True]])
    with pytest.raises(ValueError, match="needs the reward model's attention"):
        token_rewards("abc", prompt, scores, mask)
    with pytest.raises(ValueError, match="no attention on the response"):
        abc_rewards(scores, mask, torch.tensor([[0.0, 0.0]]))
    with pytest.raises(ValueError, match="unknown reward scheme 'dense'"):
        token_rewards("dense", prompt, scores, mask)
    prompt, scores, mask = random_batch(seed=13)
    attention = torch.rand(scores.shape, dtype=torch.float64)
    torch.testing.assert_close(token_rewards("red", prompt, scores, mask, beta_c=0.7),
                               redistribute(prompt, scores, mask, beta_c=0.7))
    torch.testing.assert_close(token_rewards("sparse", prompt, scores, mask), sparse_rewards(scores, mask))
    torch.testing.assert_close(token_rewards("abc", prompt, scores, mask, attention=attention, abc_beta=0.2),
                               abc_rewards(scores, mask, attention, beta=0.2))
