"""Tier 2: a non-finite reward, loss or gradient stops training with the step and the phase, before any weight
update and before a checkpoint."""

import pytest
import torch

from red_rlhf.config import load_config
from red_rlhf.training import checkpoint
from red_rlhf.training.guards import NonFiniteError
from red_rlhf.training.ppo import compute_advantages, update
from red_rlhf.training.trainer import Trainer

SMALL = ["--train.log_with=", "--train.eval_every=0", "--data.eval_size=0", "--rollout.batch_size=4",
         "--algo.mini_batch_size=4", "--algo.epochs=1", "--rollout.max_new_tokens=4", "--train.save_every=1", "--train.steps=2"]


def toy(out, *overrides):
    return load_config("configs/toy.yaml", SMALL + [f"--train.output_dir={out}"] + list(overrides))


def weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_rewards_that_overflow_stop_at_scoring_and_save_nothing(tmp_path):
    trainer = Trainer(toy(tmp_path / "inf", "--reward.function=tests.nan_reward:huge", "--reward.takes_prompt=false",
                          "--reward.score_scale=1e-30", "--reward.scheme=sparse"))
    before = weights(trainer.policy)
    with pytest.raises(NonFiniteError, match=r"step 1, phase rewards: token_rewards is NaN or inf"):
        trainer.train()
    assert all(torch.equal(before[n], p) for n, p in trainer.policy.named_parameters())
    assert checkpoint.latest(tmp_path / "inf", must_exist=False) is None


def test_a_nan_loss_stops_the_update_before_the_optimiser_step(tmp_path):
    trainer = Trainer(toy(tmp_path / "loss"))
    cfg = trainer.cfg
    ro = trainer.rollout(["the movie was", "i liked the", "the plot", "it was"])
    shaped = torch.zeros_like(ro.logprobs)
    exp = compute_advantages(cfg, ro, shaped)
    exp.advantages[1, 0] = float("nan")  # one bad token is enough
    policy0, critic0 = weights(trainer.policy), weights(trainer.critic)
    with pytest.raises(NonFiniteError, match=r"step 7, phase update, epoch 1, mini-batch 1: policy_loss = nan"):
        update(cfg, exp, trainer.policy, trainer.critic, trainer.policy_opt, trainer.critic_opt, step=7)
    assert all(torch.equal(policy0[n], p) for n, p in trainer.policy.named_parameters())
    assert all(torch.equal(critic0[n], p) for n, p in trainer.critic.named_parameters())


def test_an_infinite_gradient_is_named(tmp_path):
    trainer = Trainer(toy(tmp_path / "grad"))
    cfg = trainer.cfg
    ro = trainer.rollout(["the movie was", "i liked the", "the plot", "it was"])
    exp = compute_advantages(cfg, ro, torch.zeros_like(ro.logprobs))
    exp.returns[0, 0] = float("inf")  # the critic's target: an infinite value loss and gradient
    critic0 = weights(trainer.critic)
    with pytest.raises(NonFiniteError, match=r"step 3, phase update, epoch 1, mini-batch 1: value_loss = inf"):
        update(cfg, exp, trainer.policy, trainer.critic, trainer.policy_opt, trainer.critic_opt, step=3)
    assert all(torch.equal(critic0[n], p) for n, p in trainer.critic.named_parameters())


def test_cli_names_the_step_in_one_line(tmp_path, capsys):
    from red_rlhf.cli import main

    code = main(["train", "--config", "configs/toy.yaml", *SMALL, f"--train.output_dir={tmp_path / 'cli'}",
                 "--reward.function=tests.nan_reward:huge", "--reward.takes_prompt=false", "--reward.score_scale=1e-30", "--reward.scheme=sparse"])
    err = capsys.readouterr().err
    assert code == 2 and "red-rlhf train: error: step 1, phase rewards: token_rewards" in err
    assert "Traceback" not in err


def test_ensure_finite_names_step_phase_tensor_and_rows():
    from red_rlhf.training.guards import ensure_finite

    kl = torch.zeros(3, 4)
    ensure_finite(5, "rewards", kl=kl, values=None)  # finite: nothing happens
    kl[2, 1] = float("inf")
    with pytest.raises(NonFiniteError, match=r"step 5, phase rewards: kl is NaN or infinite in row\(s\) \[2\]"):
        ensure_finite(5, "rewards", kl=kl)
