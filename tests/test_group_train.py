"""Tier 2: the critic-free group estimators (algo.algorithm rloo / grpo) in our trainer: rows grouped by prompt id,
the KL as a loss term, std scaling, the config's refusals, a toy GRPO run whose reward rises, kill-and-resume."""

import pytest
import torch

from red_rlhf.config import ConfigError, load_config
from red_rlhf.core.advantages import group_advantages, kl_per_token, returns_to_go
from red_rlhf.training import ppo
from red_rlhf.training.ppo import compute_advantages, update
from red_rlhf.training.rollout import Rollout
from red_rlhf.training.trainer import Trainer
from tests.helpers import die_during_step

BASE = ["--train.log_with=", "--train.eval_every=0", "--data.eval_size=0", "--train.save_every=0"]


def grpo(tmp_path, *overrides, name="grpo"):
    return load_config("configs/toy-grpo.yaml", BASE + [f"--train.output_dir={tmp_path / name}", *overrides])


def fake_rollout(group_ids, width=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = len(group_ids)
    lengths = torch.randint(1, width + 1, (rows,), generator=g)
    mask = torch.arange(width)[None, :] < lengths[:, None]
    empty = torch.zeros(rows, 1, dtype=torch.long)
    ro = Rollout([""] * rows, empty, empty, torch.zeros(rows, width, dtype=torch.long), mask,
                 torch.ones(rows, dtype=torch.bool), torch.zeros(rows, width), torch.zeros(rows, width),
                 group_ids=torch.as_tensor(group_ids))
    return ro, torch.where(mask, torch.randn(rows, width, generator=g), 0)


@pytest.mark.parametrize("algorithm", ["rloo", "grpo"])
def test_rows_are_grouped_by_prompt_id_not_position(tmp_path, algorithm):
    cfg = grpo(tmp_path, f"--algo.algorithm={algorithm}", "--algo.scale_advantages=none")
    ro, rewards = fake_rollout([3, 0, 3, 1, 0, 1, 3, 0])
    exp = compute_advantages(cfg, ro, rewards)
    torch.testing.assert_close(exp.advantages, group_advantages(rewards, ro.response_mask, ro.group_ids, algorithm))
    order = torch.randperm(8, generator=torch.Generator().manual_seed(1))
    shuffled = compute_advantages(cfg, ro.select(order), rewards[order])
    torch.testing.assert_close(shuffled.advantages, exp.advantages[order])  # the same rows, the same advantages
    with pytest.raises(ValueError, match="no group_ids"):
        compute_advantages(cfg, Rollout(*[getattr(ro, f) for f in ("prompts", "prompt_ids", "prompt_mask",
                                          "response_ids", "response_mask", "ended", "logprobs", "ref_logprobs")]), rewards)


def test_a_singleton_group_gets_baseline_zero_and_a_warning(tmp_path):
    cfg = grpo(tmp_path, "--algo.scale_advantages=none")
    ro, rewards = fake_rollout([0, 0, 5, 1, 1])
    with pytest.warns(UserWarning, match="1 of 3 prompt groups have a single sample"):
        exp = compute_advantages(cfg, ro, rewards)
    torch.testing.assert_close(exp.advantages[2], returns_to_go(rewards, ro.response_mask)[2])


def test_batch_scaling_divides_by_one_std_of_full_returns(tmp_path):
    cfg = grpo(tmp_path)  # scale_advantages: batch
    ro, rewards = fake_rollout([0, 0, 1, 1, 2, 2])
    plain = group_advantages(rewards, ro.response_mask, ro.group_ids, "grpo")
    std = returns_to_go(rewards, ro.response_mask)[:, 0].std()
    torch.testing.assert_close(compute_advantages(cfg, ro, rewards).advantages, plain / (std + 1e-6))


def test_rollout_rows_carry_their_prompts_group_id(tmp_path):
    trainer = Trainer(grpo(tmp_path))
    ro = trainer.rollout(["a b", "c d", "e f"], samples_per_prompt=3)
    assert ro.group_ids.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert all(ro.prompts[i] == ro.prompts[3 * (i // 3)] for i in range(9))
    assert ro.select([4, 0]).group_ids.tolist() == [1, 0]


def test_kl_loss_term_keeps_the_kl_out_of_the_rewards(tmp_path, monkeypatch):
    trainer = Trainer(grpo(tmp_path, "--train.steps=1", "--kl.coef=0.5"))
    with torch.no_grad():  # the policy moves off the reference, so the KL is not 0
        for p in trainer.policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    seen = {}
    real = ppo.compute_advantages

    def spy(cfg, ro, shaped, reduce=ppo.local_sum):
        seen["ro"], seen["shaped"] = ro, shaped.clone()
        return real(cfg, ro, shaped, reduce)

    monkeypatch.setattr("red_rlhf.training.trainer.compute_advantages", spy)
    real_update, kl_coefs = ppo.update, []

    def update_spy(*args, **kwargs):
        kl_coefs.append(kwargs["kl_loss_coef"])
        return real_update(*args, **kwargs)

    monkeypatch.setattr("red_rlhf.training.trainer.update", update_spy)
    metrics = trainer.train_step()
    ro = seen["ro"]
    kl = torch.where(ro.response_mask, kl_per_token(ro.logprobs, ro.ref_logprobs, "k3"), 0)
    assert kl.abs().sum() > 0 and kl_coefs == [0.5]
    scores = trainer.score(ro)
    no_kl = trainer.assemble(ro, scores, None).rewards
    torch.testing.assert_close(seen["shaped"], no_kl)  # the rewards the estimator saw carry no KL
    assert metrics["kl_loss"] > 0


def test_kl_loss_is_the_token_mean_k3_and_pulls_towards_the_reference(tmp_path):
    """One update with zero advantages: the policy loss has no gradient, so the step follows the KL term alone."""
    cfg = grpo(tmp_path, "--algo.epochs=1", "--algo.mini_batch_size=16", "--kl.coef=1.0")
    trainer = Trainer(cfg)
    torch.manual_seed(0)
    ro = trainer.rollout(trainer.order.next_batch(cfg.rollout.batch_size))
    ro.ref_logprobs = ro.logprobs - 0.3 * torch.rand(ro.logprobs.shape, generator=torch.Generator().manual_seed(2))
    exp = ppo.Experience(ro, torch.zeros_like(ro.logprobs), None)
    mask = ro.response_mask
    expected = torch.where(mask, kl_per_token(ro.logprobs, ro.ref_logprobs, "k3"), 0).sum() / mask.sum()
    opt = torch.optim.SGD(trainer.policy.parameters(), lr=0.05)
    stats = update(cfg, exp, trainer.policy, None, opt, None, kl_loss_coef=1.0)
    assert stats["kl_loss"] == pytest.approx(expected.item(), rel=1e-4)
    stats_after = update(cfg, exp, trainer.policy, None, opt, None, kl_loss_coef=1.0)
    assert stats_after["kl_loss"] < stats["kl_loss"]  # the KL to the reference went down


@pytest.mark.parametrize("overrides, message", [
    (["--rollout.samples_per_prompt=1", "--algo.mini_batch_size=4"], "'grpo' needs rollout.samples_per_prompt >= 2"),
    (["--algo.scale_advantages=group"], "reward.scheme 'red' for source reward) a token's return-to-go keeps"),
    (["--algo.scale_advantages=group", "--reward.scheme=sparse", "--kl.use_kl_loss=false", "--kl.estimator=k1"],
     "with the KL in the reward"),
    (["--algo.scale_advantages=batch", "--algo.whiten_advantages=true"], "set algo.whiten_advantages=false"),
    (["--algo.scale_advantages=std"], "algo.scale_advantages must be one of"),
    (["--kl.estimator=k1"], "kl.use_kl_loss needs kl.estimator 'k3'"),
    (["--algo.algorithm=ppo", "--algo.critic_init=policy"], "applies to algo.algorithm rloo or grpo"),
])
def test_refusals_name_the_field(tmp_path, overrides, message):
    with pytest.raises(ConfigError) as err:
        grpo(tmp_path, *overrides)
    assert message in str(err.value)


def test_group_scaling_is_accepted_where_every_token_has_the_same_return(tmp_path):
    cfg = grpo(tmp_path, "--algo.scale_advantages=group", "--reward.scheme=sparse")  # the KL is a loss term
    assert cfg.algo.scale_advantages == "group"


@pytest.mark.parametrize("scheme", ["red", "sparse"])
def test_toy_grpo_reward_rises(tmp_path, scheme):
    trainer = Trainer(grpo(tmp_path, f"--reward.scheme={scheme}", "--train.steps=14"))
    assert trainer.critic is None
    history = trainer.train()
    first, last = history[0]["reward_mean"], sum(m["reward_mean"] for m in history[-3:]) / 3
    assert last > first + 0.1, [round(m["reward_mean"], 3) for m in history]
    assert all(m["value_loss"] == 0.0 and m["kl_loss"] >= 0 for m in history)


def test_kill_and_resume_gives_the_same_next_updates(tmp_path):
    args = ("--train.steps=4", "--train.save_every=2", "--kl.adaptive=true", "--kl.target=0.5")
    straight = Trainer(grpo(tmp_path, *args, name="straight")).train()
    first = Trainer(grpo(tmp_path, *args, name="resumed"))
    die_during_step(first, 3)  # after the checkpoint of step 2
    with pytest.raises(RuntimeError, match="killed"):
        first.train()
    rest = Trainer(grpo(tmp_path, *args, name="resumed")).train(resume=True)
    assert [m["step"] for m in rest] == [3, 4]
    for a, b in zip(straight[2:], rest):
        for key in ("reward_mean", "kl", "policy_loss", "kl_loss", "kl_coef", "entropy", "advantage_mean"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
    assert straight[-1]["kl_coef"] != 0.02  # the adaptive coefficient moved (it scales the KL loss) and came back
