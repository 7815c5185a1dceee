"""Tier 2: what --resume may change (applied and logged), what it refuses (named), the settings history, and one
metrics row per step after a kill."""

import json

import pytest

from red_rlhf.config import ConfigError, load_config
from red_rlhf.training import checkpoint
from red_rlhf.training.resume import HISTORY, RESUMABLE, check_resume, drop_rows_after
from red_rlhf.training.trainer import Trainer

SMALL = ["--train.log_with=", "--train.eval_every=0", "--data.eval_size=0", "--rollout.batch_size=4",
         "--algo.mini_batch_size=4", "--algo.epochs=1", "--rollout.max_new_tokens=4"]


def toy(out, *overrides, config="configs/toy.yaml"):
    return load_config(config, SMALL + [f"--train.output_dir={out}"] + list(overrides))


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory):
    """A run that saved step 2 of 4 and was stopped."""
    out = tmp_path_factory.mktemp("resume") / "run"
    Trainer(toy(out, "--train.steps=2", "--train.save_every=1")).train()
    return out


def test_learning_rates_and_kl_coef_change_on_resume_and_are_logged(two_steps, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(two_steps, out)
    trainer = Trainer(toy(out, "--train.steps=3", "--algo.policy_lr=0.001", "--algo.critic_lr=0.002", "--kl.coef=0.5"))
    history = trainer.train(resume=True)
    printed = capsys.readouterr().out
    assert "resume at step 2: algo.policy_lr 0.003 (from the checkpoint) -> 0.001" in printed
    assert "algo.critic_lr 0.003 (from the checkpoint) -> 0.002" in printed
    assert "kl.coef 0.02 (from the checkpoint) -> 0.5" in printed
    assert [g["lr"] for g in trainer.policy_opt.param_groups] == [0.001]
    assert [g["lr"] for g in trainer.critic_opt.param_groups] == [0.002]
    assert history[0]["policy_lr"] == 0.001 and history[0]["kl_coef"] == 0.5
    entries = [json.loads(line) for line in (out / HISTORY).read_text().splitlines()]
    assert [(e["event"], e["step"]) for e in entries] == [("start", 0), ("resume", 2)]
    assert entries[0]["settings"]["algo"]["policy_lr"] == 0.003 and entries[1]["settings"]["algo"]["policy_lr"] == 0.001
    assert any("algo.policy_lr" in line for line in entries[1]["changes"])
    assert [r["step"] for r in rows(out / "metrics.jsonl")] == [1, 2, 3]


def test_unchanged_resume_keeps_the_adapted_kl_coef(tmp_path, capsys):
    out = tmp_path / "adaptive"
    Trainer(toy(out, "--train.steps=1", "--kl.adaptive=true", "--kl.target=0.01")).train()
    adapted = rows(out / "metrics.jsonl")[-1]
    trainer = Trainer(toy(out, "--train.steps=2", "--kl.adaptive=true", "--kl.target=0.01"))
    trainer.train(resume=True)
    assert "kl.coef" not in capsys.readouterr().out
    assert rows(out / "metrics.jsonl")[-1]["kl_coef"] != 0.02  # the controller's value came back, then moved on
    assert adapted["kl_coef"] == 0.02  # step 1 used the initial coefficient


@pytest.mark.parametrize(
    "overrides, names",
    [
        (["--reward.scheme=sparse"], ["reward.scheme: 'red' -> 'sparse'"]),
        (["--rollout.batch_size=8", "--algo.mini_batch_size=8", "--train.seed=3"],
         ["rollout.batch_size: 4 -> 8", "train.seed: 0 -> 3"]),
        (["--policy.lora_r=4"], ["policy.lora_r: 0 -> 4"]),
    ],
)
def test_settings_that_define_the_run_are_refused_by_name(two_steps, overrides, names):
    with pytest.raises(ConfigError) as err:
        check_resume(toy(two_steps, "--train.steps=4", *overrides), step=2)
    for name in names:
        assert name in str(err.value)
    assert "cannot resume from step 2" in str(err.value)


def test_another_algorithm_is_a_clear_error(two_steps):
    cfg = toy(two_steps, "--train.steps=4", "--algo.algorithm=rloo", "--rollout.samples_per_prompt=2",
              "--algo.mini_batch_size=8")
    with pytest.raises(ConfigError, match="algo.algorithm: the checkpoint of step 2 was written by a 'ppo' run"):
        Trainer(cfg).train(resume=True)


def test_steps_not_past_the_checkpoint_is_a_clear_error(two_steps):
    with pytest.raises(ConfigError, match="train.steps=2, but the checkpoint is already at step 2"):
        check_resume(toy(two_steps, "--train.steps=2"), step=2)


def test_every_resumable_setting_is_a_config_field():
    from red_rlhf.config import Config, to_dict
    from red_rlhf.training.resume import flat_settings

    assert RESUMABLE <= set(flat_settings(to_dict(Config())))


def test_reward_sources_flatten_to_the_names_errors_use():
    from red_rlhf.config import to_dict
    from red_rlhf.training.resume import flat_settings

    short, listed = to_dict(load_config("toy")), to_dict(load_config("toy-cost"))
    assert flat_settings(short)["reward.scheme"] == "red" and "reward.sources[0].scheme" not in flat_settings(short)
    assert flat_settings(listed)["reward.sources[1].kind"] == "cost" and "reward.kind" not in flat_settings(listed)


def test_the_settings_of_the_session_that_wrote_the_checkpoint_are_compared(tmp_path):
    """Start (lr a) saves step 2; a resume with lr b dies before saving; the next resume compares with b's
    session only for checkpoints b wrote: here the checkpoint of step 2 was written under a."""
    from red_rlhf.training.resume import record, settings_at

    out = tmp_path / "h"
    out.mkdir()
    record(out, "start", 0, toy(out, "--algo.policy_lr=0.1"))
    record(out, "resume", 2, toy(out, "--algo.policy_lr=0.2"))
    assert settings_at(out, 2)["algo"]["policy_lr"] == 0.1
    assert settings_at(out, 3)["algo"]["policy_lr"] == 0.2


def test_rows_of_a_killed_session_are_dropped(tmp_path):
    file = tmp_path / "metrics.jsonl"
    file.write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3)) + '{"step": 4, "rew')
    assert drop_rows_after(file, 2) == 2
    assert [r["step"] for r in rows(file)] == [1, 2]


def test_kill_after_logging_then_resume_leaves_one_row_per_step(tmp_path):
    out = tmp_path / "killed"
    first = Trainer(toy(out, "--train.steps=3", "--train.save_every=1"))
    real_save = first.save

    def save_then_die():
        if first.step == 2:  # step 2 was logged; the process dies before its checkpoint
            raise RuntimeError("killed")
        real_save()

    first.save = save_then_die
    with pytest.raises(RuntimeError, match="killed"):
        first.train()
    assert [r["step"] for r in rows(out / "metrics.jsonl")] == [1, 2]
    assert checkpoint.latest(out).name == "step-000001"
    Trainer(toy(out, "--train.steps=3", "--train.save_every=1")).train(resume=True)
    assert [r["step"] for r in rows(out / "metrics.jsonl")] == [1, 2, 3]
