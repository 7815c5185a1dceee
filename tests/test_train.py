"""Tier 2: tiny end-to-end training runs on the toy task (a known reward), checkpoints, resume, bad inputs."""

import json
import os
import signal

import pytest
import torch

from red_rlhf.training import checkpoint
from red_rlhf.config import ConfigError, load_config
from red_rlhf.training.trainer import Trainer


def toy(tmp_path, *overrides, name="run"):
    base = ["--train.tensorboard=false", "--train.eval_every=0", "--data.eval_size=0", "--train.save_every=0",
            f"--train.output_dir={tmp_path / name}"]
    return load_config("configs/toy.yaml", base + list(overrides))


def params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed(before, model):
    return any(not torch.equal(before[n], p) for n, p in model.named_parameters())


@pytest.mark.parametrize("scheme", ["red", "sparse"])
def test_reward_rises_and_weights_change(tmp_path, scheme):
    trainer = Trainer(toy(tmp_path, f"--reward.scheme={scheme}", "--train.steps=14"))
    policy0, critic0 = params(trainer.policy), params(trainer.critic)
    history = trainer.train()
    first, last = history[0]["reward_mean"], sum(m["reward_mean"] for m in history[-3:]) / 3
    assert last > first + 0.1, [round(m["reward_mean"], 3) for m in history]
    assert changed(policy0, trainer.policy) and changed(critic0, trainer.critic)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 15))
    for key in ("step", "reward_mean", "kl", "response_length", "policy_loss", "value_loss", "entropy", "time_s"):
        assert all(key in r and r[key] == r[key] for r in rows), key  # present and not NaN
    assert (tmp_path / "run" / "policy" / "config.json").is_file()


def test_rloo_trains_without_a_critic(tmp_path):
    cfg = load_config("configs/toy-rloo.yaml", ["--train.tensorboard=false", "--data.eval_size=0", "--train.steps=3",
                                                "--train.save_every=0", f"--train.output_dir={tmp_path / 'rloo'}"])
    trainer = Trainer(cfg)
    assert trainer.critic is None
    before = params(trainer.policy)
    history = trainer.train()
    assert changed(before, trainer.policy) and history[-1]["value_loss"] == 0.0


def test_kill_and_resume_gives_the_same_next_update(tmp_path):
    straight = Trainer(toy(tmp_path, "--train.steps=4", "--train.save_every=2", "--kl.adaptive=true", "--kl.target=1",
                           name="straight")).train()
    first = Trainer(toy(tmp_path, "--train.steps=4", "--train.save_every=2", "--kl.adaptive=true", "--kl.target=1",
                        name="resumed"))
    original_step = first.train_step
    calls = []

    def killed_after_two():  # the process "dies" during step 3, after the checkpoint of step 2
        if len(calls) == 2:
            raise RuntimeError("killed")
        calls.append(1)
        return original_step()

    first.train_step = killed_after_two
    with pytest.raises(RuntimeError, match="killed"):
        first.train()
    resumed = Trainer(toy(tmp_path, "--train.steps=4", "--train.save_every=2", "--kl.adaptive=true", "--kl.target=1",
                          name="resumed"))
    rest = resumed.train(resume=True)
    assert [m["step"] for m in rest] == [3, 4]
    for a, b in zip(straight[2:], rest):
        for key in ("reward_mean", "kl", "policy_loss", "value_loss", "kl_coef", "entropy"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
    assert straight[-1]["kl_coef"] != 0.02  # the adaptive coefficient moved and was restored


def test_ctrl_c_saves_then_stops_and_an_unfinished_save_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    trainer = Trainer(toy(tmp_path, "--train.steps=5", name="int"))
    original_step = trainer.train_step

    def interrupted_step():
        out = original_step()
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C during step 1: it finishes, saves, stops
        return out

    trainer.train_step = interrupted_step
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert checkpoint.latest(tmp_path / "int").name == "step-000001"
    # a save killed half-way (here: state.pt cannot be written) leaves `latest` on the previous complete one
    again = Trainer(toy(tmp_path, "--train.steps=5", name="int"))
    again.load(checkpoint.latest(tmp_path / "int"))
    again.step = 2
    real_save = torch.save

    def failing_save(obj, path, *args, **kwargs):
        if str(path).endswith("state.pt"):
            raise OSError("disk full")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError):
        again.save()
    monkeypatch.setattr(torch, "save", real_save)
    assert checkpoint.latest(tmp_path / "int").name == "step-000001"
    Trainer(toy(tmp_path, "--train.steps=5", name="int")).load(checkpoint.latest(tmp_path / "int"))
    with pytest.raises(ValueError, match="already holds checkpoints"):
        Trainer(toy(tmp_path, "--train.steps=5", name="int")).train()


def test_bad_inputs_fail_clearly_and_save_nothing(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="holds no prompts"):
        Trainer(toy(tmp_path, f"--data.prompts={empty}"))
    long = tmp_path / "long.txt"
    long.write_text("the movie was " * 30 + "\nthe plot\n")
    with pytest.raises(ConfigError, match=r"data.prompts: prompt 0 .* more than rollout.max_prompt_tokens=16"):
        Trainer(toy(tmp_path, f"--data.prompts={long}", "--rollout.batch_size=2", "--algo.mini_batch_size=2",
                    "--rollout.max_prompt_tokens=16", name="long"))  # checked for every prompt before training
    with pytest.raises(ConfigError, match="exceeds the policy's context of 128 tokens"):
        Trainer(toy(tmp_path, "--rollout.max_prompt_tokens=120", "--rollout.max_new_tokens=20"))
    trainer = Trainer(toy(tmp_path, "--reward.function=tests.nan_reward:reward", "--reward.takes_prompt=false",
                          "--train.save_every=1", name="nan"))
    with pytest.raises(ValueError, match="reward is nan"):
        trainer.train()
    assert checkpoint.latest(tmp_path / "nan", must_exist=False) is None


def test_lora_reference_is_the_base_with_adapters_off(tmp_path):
    trainer = Trainer(toy(tmp_path, "--policy.lora_r=4", "--policy.lora_target_modules=c_attn", "--train.steps=2",
                          name="lora"))
    assert trainer.ref is None
    trainable = {n for n, p in trainer.policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    base = {n: p.detach().clone() for n, p in trainer.policy.named_parameters() if not p.requires_grad}
    ro = trainer.rollout(["the movie was", "i liked the"])
    torch.testing.assert_close(ro.logprobs, ro.ref_logprobs)  # LoRA B starts at 0: policy == reference
    trainer.train()
    for n, p in trainer.policy.named_parameters():
        if n in base:
            assert torch.equal(base[n], p)
    ro = trainer.rollout(["the movie was", "i liked the"])
    assert not torch.allclose(ro.logprobs, ro.ref_logprobs)


def test_hf_reward_model_with_another_tokenizer_and_abc(tmp_path):
    from red_rlhf.models.tiny import save_tiny_reward_model

    rm = save_tiny_reward_model(tmp_path / "rm")
    for scheme in ("red", "abc"):
        cfg = toy(tmp_path, f"--reward.model={rm}", "--reward.function=null", f"--reward.scheme={scheme}",
                  "--train.steps=2", name=f"hf-{scheme}")
        history = Trainer(cfg).train()
        assert len(history) == 2 and history[-1]["reward_mean"] == history[-1]["reward_mean"]
    with pytest.raises(ConfigError, match="uses another tokenizer"):
        Trainer(toy(tmp_path, f"--reward.model={rm}", "--reward.function=null", "--algo.critic_init=reward", name="crit"))


def test_critic_from_reward_model_starts_at_prefix_scores_or_at_zero():
    from red_rlhf.models.build import critic_from_reward_model
    from red_rlhf.models.prefix import causal_scores
    from red_rlhf.models.tiny import tiny_reward_model, tiny_tokenizer

    tok = tiny_tokenizer("gpt2")
    rm = tiny_reward_model("llama", len(tok), pad_token_id=tok.pad_token_id)
    ids = torch.tensor([tok("The movie was great.").input_ids])
    mask, pos = torch.ones_like(ids), torch.arange(ids.shape[1]).unsqueeze(0)
    with torch.no_grad():
        assert torch.allclose(critic_from_reward_model(rm)(ids, mask, pos), causal_scores(rm, ids, mask))
        assert torch.count_nonzero(critic_from_reward_model(rm, zero_head=True)(ids, mask, pos)) == 0
    assert rm.score.weight.abs().sum() > 0  # the reward model's own head is untouched


def test_cli_train_eval_tensorboard_and_plot(tmp_path, capsys):
    from red_rlhf.cli import main

    out = tmp_path / "cli"
    code = main(["train", "--config", "configs/toy.yaml", "--train.steps=3", "--train.eval_every=2", "--data.eval_size=4",
                 f"--train.output_dir={out}"])
    assert code == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [("eval_reward_mean" in r) for r in rows] == [False, True, True]
    from red_rlhf.training.trainer import GENERATE_METRIC, PHASES

    phases = [rows[0][p.metric] for p in PHASES]
    assert all(t >= 0 for t in phases) and sum(phases) == pytest.approx(rows[0]["time_s"])
    assert 0 < rows[0][GENERATE_METRIC] <= rows[0]["time_rollout_s"]
    assert (out / "samples.jsonl").is_file() and list(out.rglob("events.out.tfevents*"))
    assert "held-out samples" in capsys.readouterr().out
    assert main(["plot", str(out)]) == 0
    assert (out / "curves.png").stat().st_size > 10_000
    assert main(["train", "--config", "configs/toy.yaml", "--algo.epoch=2"]) == 2
    assert "unknown config key algo.epoch" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "nothing")]) == 2


def test_missing_eos_penalty_hits_only_cut_responses(tmp_path):
    trainer = Trainer(toy(tmp_path, "--rollout.max_new_tokens=3", name="eos"))
    torch.manual_seed(3)
    ro = trainer.rollout(["the movie was"] * 8 + ["i liked the"] * 8)
    plain, _, _ = trainer.score(ro)
    trainer.cfg.reward.missing_eos_penalty = 1.0
    penalised, _, _ = trainer.score(ro)
    last = ro.response_mask.sum(-1) - 1
    rows = torch.arange(len(ro))
    diff = plain[rows, last] - penalised[rows, last]
    assert (~ro.ended).any()  # 3 new tokens: some responses are cut
    torch.testing.assert_close(diff, (~ro.ended).float())
    other = torch.ones_like(plain, dtype=torch.bool)
    other[rows, last] = False
    assert torch.equal(plain[other], penalised[other])
