"""Tier 2: tiny end-to-end training runs on the toy task (a known reward), checkpoints, resume, bad inputs."""

import json
import os
import signal

import pytest
import torch

from red_rlhf.training import checkpoint
from red_rlhf.config import ConfigError, load_config
from red_rlhf.core.advantages import kl_per_token
from red_rlhf.training.trainer import Trainer
from tests.helpers import check_curves, die_during_step, model_score, real, toy


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
    cfg = load_config("configs/toy-rloo.yaml", ["--train.log_with=", "--data.eval_size=0", "--train.steps=3",
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
    die_during_step(first, 3)  # after the checkpoint of step 2
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
    # a save killed half-way (here: the optimiser state cannot be written) leaves `latest` on the previous complete one
    again = Trainer(toy(tmp_path, "--train.steps=5", name="int"))
    again.load(checkpoint.latest(tmp_path / "int"))
    again.step = 2
    real_save = torch.save

    def failing_save(obj, path, *args, **kwargs):
        if str(path).endswith("optimizer.bin"):
            raise OSError("disk full")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(checkpoint.CheckpointError, match=r"\.tmp-step-000002 failed \(disk full\): is the disk full\? "
                                                         "The last complete checkpoint is kept"):
        again.save()
    monkeypatch.setattr(torch, "save", real_save)
    assert checkpoint.latest(tmp_path / "int").name == "step-000001"
    assert not list((tmp_path / "int" / "checkpoints").glob(".tmp-*"))  # the half-written save is removed
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
    with pytest.raises(ConfigError, match=rf"data.prompts: {long}: line 1: the prompt has \d+ tokens, more than "
                                          "rollout.max_prompt_tokens=16"):  # found before training starts
        Trainer(toy(tmp_path, f"--data.prompts={long}", "--rollout.batch_size=2", "--algo.mini_batch_size=2",
                    "--rollout.max_prompt_tokens=16", name="long"))
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


def record_rewards(trainer: Trainer) -> list[tuple]:
    """Keep what phase 3 gives the estimator each step: (rollout, prefix scores, assembled rewards)."""
    seen, assemble = [], trainer.assemble

    def recording(ro, scores, kl):
        out = assemble(ro, scores, kl)
        seen.append((ro, scores, out))
        return out

    trainer.assemble = recording
    return seen


def hf_run(tmp_path, rm, scheme):
    cfg = toy(tmp_path, f"--reward.model={rm}", "--reward.function=null", f"--reward.scheme={scheme}",
              "--train.steps=2", "--rollout.batch_size=8", "--algo.mini_batch_size=4", name=f"hf-{scheme}")
    trainer = Trainer(cfg)
    seen = record_rewards(trainer)
    policy0 = params(trainer.policy)
    history = trainer.train()
    assert [m["step"] for m in history] == [1, 2] and len(seen) == 2 and changed(policy0, trainer.policy)
    return trainer, seen, history


def own_scores(trainer, model, ro):
    """Each row's R(x) and R(x, y) by the reward model itself, on texts decoded here (not by the trainer's path)."""
    tok = trainer.tokenizer
    prompt_scores, final_scores = [], []
    for i, prompt in enumerate(ro.prompts):
        p_ids, r_ids = real(ro.prompt_ids[i], ro.prompt_mask[i]), real(ro.response_ids[i], ro.response_mask[i])
        assert tok.decode(p_ids) == prompt
        full = tok.decode(p_ids + r_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        prompt_scores.append(model_score(model.model, model.tokenizer, prompt))
        final_scores.append(model_score(model.model, model.tokenizer, full))
    return torch.tensor(prompt_scores), torch.tensor(final_scores)


def test_hf_reward_model_with_another_tokenizer_red_rewards_are_the_scorers(tmp_path):
    """RED with a reward model of another tokenizer: the token rewards the trainer used telescope to the reward
    model's own R(x, y) - R(x) of the decoded texts, equal `TokenRewardScorer`'s on those texts, and the logged
    reward_mean is the mean R(x, y)."""
    from red_rlhf import HFRewardModel, TokenRewardScorer
    from red_rlhf.models.tiny import save_tiny_reward_model

    rm = HFRewardModel.from_pretrained(str(save_tiny_reward_model(tmp_path / "rm")))
    trainer, seen, history = hf_run(tmp_path, tmp_path / "rm", "red")
    assert not trainer.sources[0].reward.reads_policy_tokens(trainer.tokenizer)  # the text path, aligned by characters
    scorer = TokenRewardScorer(rm, policy_tokenizer=trainer.tokenizer)
    compared = 0
    for (ro, _, out), metrics in zip(seen, history):
        mask = ro.response_mask
        prompt_scores, final_scores = own_scores(trainer, rm, ro)
        torch.testing.assert_close(out.final_raw["reward"], final_scores, atol=1e-4, rtol=0)
        torch.testing.assert_close(out.score_rewards.sum(-1), final_scores - prompt_scores, atol=1e-4, rtol=0)
        assert metrics["reward_mean"] == pytest.approx(final_scores.mean().item(), abs=1e-4)
        assert (out.score_rewards[mask] != 0).float().mean() > 0.5  # spread over the response, not on one token
        texts, _ = ro.token_batch(trainer.tokenizer).texts()
        for i, row in enumerate(scorer.score(ro.prompts, texts)):
            if row.token_ids == real(ro.response_ids[i], mask[i]):  # the text re-tokenises to the sampled tokens
                torch.testing.assert_close(out.score_rewards[i, : len(row.rewards)],
                                           torch.tensor(row.rewards, dtype=torch.float32), atol=1e-4, rtol=0)
                compared += 1
    assert compared >= 8, compared


def test_hf_reward_model_abc_rewards_sum_to_the_final_score_spread_over_the_response(tmp_path):
    """ABC: each row's token rewards sum to R(x, y) (the reward model's own score of the decoded text), all
    share its sign (attention shares are >= 0), and reach more tokens than the last one."""
    from red_rlhf import HFRewardModel
    from red_rlhf.models.tiny import save_tiny_reward_model

    rm = HFRewardModel.from_pretrained(str(save_tiny_reward_model(tmp_path / "rm")))
    trainer, seen, _ = hf_run(tmp_path, tmp_path / "rm", "abc")
    for ro, scores, out in seen:
        mask = ro.response_mask
        _, final_scores = own_scores(trainer, rm, ro)
        assert scores["reward"].attention is not None
        torch.testing.assert_close(out.score_rewards.sum(-1), final_scores, atol=1e-4, rtol=0)
        signed = out.score_rewards * final_scores.sign().unsqueeze(1)
        assert (signed[mask] >= -1e-6).all() and (out.score_rewards[~mask] == 0).all()
        long_rows = mask.sum(-1) > 1
        spread = (out.score_rewards.abs() > 1e-6).sum(-1)
        assert long_rows.any() and (spread[long_rows] > 1).all(), spread.tolist()
        # the trainer's PPO reward is that minus the KL term, nothing else
        kl = kl_per_token(ro.logprobs, ro.ref_logprobs, trainer.cfg.kl.estimator)
        torch.testing.assert_close(out.rewards, torch.where(mask, out.score_rewards - out.kl_penalty, 0.0))
        torch.testing.assert_close(out.kl_penalty, torch.where(mask, trainer.cfg.kl.coef * kl, 0.0))


def test_critic_from_reward_model_needs_the_policys_tokenizer(tmp_path):
    from red_rlhf.models.tiny import save_tiny_reward_model

    rm = save_tiny_reward_model(tmp_path / "rm")
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


def test_cli_train_eval_tensorboard_and_plot(tmp_path, capsys, drawn_figures):
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
    check_curves(out / "curves.png", drawn_figures[-1], rows, size=(1300, 650))  # figsize 13 x 6.5 in at 100 dpi
    assert main(["train", "--config", "configs/toy.yaml", "--algo.epoch=2"]) == 2
    assert "unknown config key algo.epoch" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "nothing")]) == 2


def test_missing_eos_penalty_hits_only_cut_responses(tmp_path):
    trainer = Trainer(toy(tmp_path, "--rollout.max_new_tokens=3", name="eos"))
    torch.manual_seed(3)
    ro = trainer.rollout(["the movie was"] * 8 + ["i liked the"] * 8)
    scores = trainer.score(ro)
    plain = trainer.assemble(ro, scores, kl=None).rewards
    trainer.cfg.reward.missing_eos_penalty = 1.0
    penalised = trainer.assemble(ro, scores, kl=None).rewards
    last = ro.response_mask.sum(-1) - 1
    rows = torch.arange(len(ro))
    diff = plain[rows, last] - penalised[rows, last]
    assert (~ro.ended).any()  # 3 new tokens: some responses are cut
    torch.testing.assert_close(diff, (~ro.ended).float())
    other = torch.ones_like(plain, dtype=torch.bool)
    other[rows, last] = False
    assert torch.equal(plain[other], penalised[other])
