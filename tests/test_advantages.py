"""Tier 1: GAE, RLOO, KL and PPO losses against plain loops and hand-worked numbers."""

import itertools
import math

import pytest
import torch

from red_rlhf.core.advantages import (
    gae, gae_reference, group_advantages, group_advantages_reference, kl_per_token, masked_whiten, returns_to_go,
    shape_rewards,
)
from red_rlhf.core.losses import policy_loss, value_loss
from red_rlhf.core.redistribute import redistribute
from red_rlhf.core.reward_assembly import PrefixScores, RewardSettings, SourceScores, assemble_rewards
from red_rlhf.training.rollout import truncate_at_eos
from tests.helpers import bandit_gradients


def right_padded(batch=6, width=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width + 1, (batch,), generator=g)
    mask = torch.arange(width).expand(batch, width) < lengths.unsqueeze(1)
    return torch.randn(batch, width, generator=g, dtype=torch.float64), torch.randn(batch, width, generator=g, dtype=torch.float64), mask


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 1.0), (0.99, 0.0)])
def test_gae_equals_python_loop(gamma, lam):
    rewards, values, mask = right_padded()
    fast_adv, fast_ret = gae(rewards, values, mask, gamma, lam)
    slow_adv, slow_ret = gae_reference(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(fast_adv, slow_adv)
    torch.testing.assert_close(fast_ret, slow_ret)
    assert (fast_adv[~mask] == 0).all()


def test_gae_with_lambda_one_and_zero_values_is_return_to_go():
    rewards, _, mask = right_padded(seed=1)
    adv, _ = gae(rewards, torch.zeros_like(rewards), mask, 1.0, 1.0)
    torch.testing.assert_close(adv, returns_to_go(rewards, mask))


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_rloo_with_consecutive_groups_equals_python_loop(gamma):
    rewards, _, mask = right_padded(batch=8, seed=2)
    group_ids = torch.arange(8) // 4  # the trainer's layout: k = 4 samples of each prompt side by side
    torch.testing.assert_close(group_advantages(rewards, mask, group_ids, "rloo", gamma),
                               group_advantages_reference(rewards, mask, group_ids, "rloo", gamma))


def test_rloo_with_red_rewards_is_unbiased_on_a_bandit():
    """Exact expectation (by enumeration) of the RLOO estimator on RED token rewards equals the true gradient.

    Two tokens from {0, 1}; tabular policy pi(y1) = softmax(a), pi(y2 | y1) = softmax(b[y1]); k = 2 samples.
    Prefix scores are an arbitrary function of the prefix with s_2 = R(y1, y2), so RED's return-to-go carries a
    prefix-dependent baseline R - s_{t-1}; it must not bias the gradient.
    """
    a = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([[0.5, -0.1], [-0.4, 0.2]], dtype=torch.float64, requires_grad=True)
    final = {(0, 0): 1.0, (0, 1): -0.5, (1, 0): 2.0, (1, 1): 0.25}
    s1 = {0: 0.7, 1: -1.3}  # the reward model's score after the first token
    s0 = 0.4  # prompt score

    def logp(y):
        return torch.log_softmax(a, 0)[y[0]] + torch.log_softmax(b[y[0]], 0)[y[1]]

    outcomes = list(itertools.product([0, 1], repeat=2))
    true_objective = sum(logp(y).exp() * final[y] for y in outcomes)
    true_grad = torch.autograd.grad(true_objective, (a, b))

    expected = [torch.zeros_like(a), torch.zeros_like(b)]
    for group in itertools.product(outcomes, repeat=2):
        scores = torch.tensor([[s0, s1[y[0]], final[y]] for y in group], dtype=torch.float64)
        mask = torch.tensor([[False, True, True]] * 2)
        rewards = redistribute(scores[:, 0], scores[:, 1:], mask[:, 1:])  # (2, 2) token rewards
        adv = group_advantages(rewards, torch.ones(2, 2, dtype=torch.bool), torch.tensor([0, 0]), "rloo")
        prob = math.prod(logp(y).exp().item() for y in group)
        for i, y in enumerate(group):
            token_logps = [torch.log_softmax(a, 0)[y[0]], torch.log_softmax(b[y[0]], 0)[y[1]]]
            surrogate = sum(adv[i, t] * token_logps[t] for t in range(2)) / 2  # mean over the k samples
            grads = torch.autograd.grad(surrogate, (a, b))
            expected[0] += prob * grads[0]
            expected[1] += prob * grads[1]
    torch.testing.assert_close(expected[0], true_grad[0])
    torch.testing.assert_close(expected[1], true_grad[1])


def test_kl_estimators():
    logp = torch.tensor([-1.0, -2.0, -0.5])
    ref = torch.tensor([-1.5, -2.0, -0.1])
    torch.testing.assert_close(kl_per_token(logp, ref, "k1"), logp - ref)
    k3 = kl_per_token(logp, ref, "k3")
    assert (k3 >= 0).all() and k3[1] == 0
    torch.testing.assert_close(k3, torch.exp(ref - logp) - 1 - (ref - logp))
    with pytest.raises(ValueError, match="k1"):
        kl_per_token(logp, ref, "k2")


def test_policy_loss_hand_worked():
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.0]]))
    adv = torch.tensor([[1.0, -1.0, 2.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    out = policy_loss(new, old, adv, mask, clip_range=0.2)
    # per token max(-A r, -A clip(r)): max(-1.5, -1.2) = -1.2; max(0.5, 0.8) = 0.8; max(-2, -2) = -2
    assert out.loss.item() == pytest.approx((-1.2 + 0.8 - 2.0) / 3)
    assert out.clip_fraction.item() == pytest.approx(2 / 3)
    # with a global normaliser the loss is the token sum over it (data-parallel shards add up)
    assert policy_loss(new, old, adv, mask, 0.2, normalizer=6).loss.item() == pytest.approx((-1.2 + 0.8 - 2.0) / 6)


def test_value_loss_hand_worked():
    values, old, returns = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, 2.5]]), torch.tensor([[2.0, 2.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, frac = value_loss(values, old, returns, mask, clip_range=0.2)
    # token 1: max((1-2)^2, (0.7-2)^2) = 1.69; token 2: max(0, (2.3-2)^2) = 0.09
    assert loss.item() == pytest.approx(0.5 * (1.69 + 0.09) / 2)
    assert frac.item() == pytest.approx(1.0)
    assert value_loss(values, old, returns, mask, None)[0].item() == pytest.approx(0.5 * (1.0 + 0.0) / 2)


def test_drawn_row_eos_truncation_placement_and_kl_shaping():
    """Prompt "Hi ," left-padded; the policy sampled  ok ! EOS EOS EOS  with pad id == EOS id (3)."""
    eos = pad = 3
    sampled = torch.tensor([[7, 8, eos, eos, eos], [7, 8, 9, 9, 9]])
    ids, mask, ended = truncate_at_eos(sampled, eos, pad)
    assert mask.tolist() == [[True, True, True, False, False], [True] * 5]
    assert ended.tolist() == [True, False]
    assert ids[0].tolist() == [7, 8, eos, pad, pad]
    # prefix scores after each response token (last = R(x, y)); prompt scores 0.5 and 0.0
    prompt = torch.tensor([0.5, 0.0])
    tokens = torch.where(mask, torch.tensor([[1.0, 0.0, 2.0, 9.0, 9.0], [0.1, 0.2, 0.3, 0.4, 0.5]]), 0.0)

    def assemble(scheme="red", **settings):
        return assemble_rewards([SourceScores("rm", PrefixScores(prompt, tokens), scheme)], mask, RewardSettings(**settings))

    red = assemble()
    torch.testing.assert_close(red.rewards[0], torch.tensor([0.5, -1.0, 2.0, 0.0, 0.0]))  # the EOS keeps its reward
    torch.testing.assert_close(red.final_raw["rm"], torch.tensor([2.0, 0.5]))
    torch.testing.assert_close(assemble("sparse").rewards[0], torch.tensor([0.0, 0.0, 2.0, 0.0, 0.0]))
    kl = torch.full((2, 5), 0.5)
    shaped = assemble_rewards([SourceScores("rm", PrefixScores(prompt, tokens))], mask, kl=kl, kl_coef=0.1).rewards
    torch.testing.assert_close(shaped[0], torch.tensor([0.45, -1.05, 1.95, 0.0, 0.0]))
    torch.testing.assert_close(shaped, shape_rewards(red.rewards, kl, mask, kl_coef=0.1))
    # normalisation and clipping act on prefix scores: the sum telescopes to the normalised difference
    normed = assemble(score_shift=1.0, score_scale=2.0, score_clip=0.4)
    assert normed.rewards[0].sum().item() == pytest.approx(min((2.0 - 1) / 2, 0.4) - (0.5 - 1) / 2)
    assert normed.final_normalised["rm"][0].item() == pytest.approx(0.4) and normed.final_raw["rm"][0].item() == 2.0
    # the missing-EOS penalty hits the last token of the row cut without EOS only
    penalised = assemble_rewards(
        [SourceScores("rm", PrefixScores(prompt, tokens))], mask, RewardSettings(missing_eos_penalty=1.0), ended=ended).rewards
    torch.testing.assert_close(penalised - red.rewards, torch.tensor([[0.0] * 5, [0.0, 0.0, 0.0, 0.0, -1.0]]))


def test_whitening():
    values, _, mask = right_padded(seed=4)
    w = masked_whiten(values, mask)
    assert w[mask].mean().item() == pytest.approx(0.0, abs=1e-9)
    assert w[mask].std().item() == pytest.approx(1.0, abs=1e-6)
    kept = masked_whiten(values, mask, shift_mean=False)
    assert kept[mask].mean().item() == pytest.approx(values[mask].mean().item())


@pytest.mark.parametrize("estimator", ["rloo", "grpo"])
@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_group_advantages_equal_python_loops_with_shuffled_uneven_groups(estimator, gamma):
    torch.manual_seed(3)
    rewards = torch.randn(9, 6)
    lengths = torch.tensor([6, 3, 1, 5, 6, 2, 4, 6, 3])
    mask = torch.arange(6)[None, :] < lengths[:, None]
    group_ids = torch.tensor([7, 2, 7, 2, 5, 7, 2, 11, 5])  # groups of 3, 3, 2 and a singleton, interleaved
    fast = group_advantages(rewards, mask, group_ids, estimator, gamma)
    torch.testing.assert_close(fast, group_advantages_reference(rewards, mask, group_ids, estimator, gamma))
    assert torch.all(fast[7][:6] == returns_to_go(rewards, mask, gamma)[7])  # a singleton's baseline is 0


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("estimator", ["rloo", "grpo"])
def test_group_estimators_on_red_rewards_by_exact_enumeration(estimator, k):
    """rloo's expected gradient is the true one; grpo's, whose baseline includes the sample itself, (k - 1) / k of it."""
    expected, true = bandit_gradients(lambda r, m, ids: group_advantages(r, m, ids, estimator), k)
    factor = 1.0 if estimator == "rloo" else (k - 1) / k
    for got, want in zip(expected, true):
        torch.testing.assert_close(got, factor * want)
        assert want.abs().max() > 0.05  # a real gradient, so the factor is tested


def test_per_group_std_with_red_rewards_explodes_on_tied_groups():
    """Why callers refuse scale "group" for RED: a group whose full returns tie (same response twice) has std 0, and
    only eps guards the per-token part -(s_{t-1} - s_0) of the advantages; with the sparse reward that group's
    advantages are all 0. Enumerated exactly (k = 2), the RED estimator's mean is ~1/eps off, the sparse one is not."""
    def per_group(r, m, ids):
        return group_advantages(r, m, ids, "grpo", scale="group")

    red, true = bandit_gradients(per_group, 2)
    sparse, _ = bandit_gradients(per_group, 2, scheme="sparse")
    true_norm = torch.cat([g.flatten() for g in true]).norm()
    assert torch.cat([g.flatten() for g in red]).norm() > 1e4 * true_norm
    assert torch.cat([g.flatten() for g in sparse]).norm() < 10 * true_norm
    red3, true3 = bandit_gradients(per_group, 3)  # k = 3: the direction itself is wrong (README quotes it)
    red3, true3 = torch.cat([g.flatten() for g in red3]), torch.cat([g.flatten() for g in true3])
    assert torch.dot(red3, true3) / (red3.norm() * true3.norm()) < -0.8
