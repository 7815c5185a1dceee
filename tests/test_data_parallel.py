"""Tier 3: invariance: one update with 2 processes x 4 rollouts equals 1 process x 8 (torchrun, gloo, CPU)."""

import json
import sys

import pytest
import torch

from tests.helpers import run_workers, torchrun


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo is tested on Linux")
def test_two_processes_take_the_same_step_as_one(tmp_path):
    one = run_workers(1, tmp_path / "one.pt")
    two = run_workers(2, tmp_path / "two.pt")
    for part in ("policy", "critic"):
        for name, value in one[part].items():
            torch.testing.assert_close(two[part][name], value, rtol=1e-4, atol=1e-5, msg=f"{part}.{name}")
    for key in ("policy_loss", "value_loss"):
        assert two["stats"][key] == pytest.approx(one["stats"][key], rel=1e-4, abs=1e-6)
    # the update really moved the weights (the comparison is not between two untouched models)
    from red_rlhf.models.tiny import toy_policy, toy_tokenizer

    initial = toy_policy(toy_tokenizer(), seed=0).state_dict()
    assert any(not torch.allclose(initial[n], v) for n, v in one["policy"].items() if n in initial)


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo is tested on Linux")
def test_grpo_two_processes_take_the_same_step_as_one(tmp_path):
    """GRPO with the KL as a loss term and one batch-level std: each process holds whole groups (its own prompts'
    samples); the std of full returns and the token normaliser are global, so 2 x 4 rollouts equal 1 x 8."""
    one = run_workers(1, tmp_path / "one.pt", "grpo")
    two = run_workers(2, tmp_path / "two.pt", "grpo")
    assert "critic" not in one
    for name, value in one["policy"].items():
        torch.testing.assert_close(two["policy"][name], value, rtol=1e-4, atol=1e-5, msg=f"policy.{name}")
    for key in ("policy_loss", "kl_loss"):
        assert one["stats"][key] != 0 and two["stats"][key] == pytest.approx(one["stats"][key], rel=1e-4, abs=1e-6)
    from red_rlhf.models.tiny import toy_policy, toy_tokenizer

    initial = toy_policy(toy_tokenizer(), seed=0).state_dict()
    assert any(not torch.allclose(initial[n], v) for n, v in one["policy"].items() if n in initial)


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo is tested on Linux")
def test_the_trainer_runs_as_two_processes_and_resumes(tmp_path):
    out = tmp_path / "ddp"
    common = ["-m", "red_rlhf.cli", "train", "--config", "configs/toy.yaml", "--train.save_every=1",
              "--train.log_with=", f"--train.output_dir={out}"]
    torchrun(2, *common, "--train.steps=2")
    torchrun(2, *common, "--train.steps=3", "--resume")
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # one line per step: the processes form one run, not two
    files = sorted(p.name for p in (out / "checkpoints" / "step-000003").iterdir())
    assert files == ["model.safetensors", "model_1.safetensors", "optimizer.bin", "optimizer_1.bin", "rng-rank0.json",
                     "rng-rank0.safetensors", "rng-rank1.json", "rng-rank1.safetensors", "trainer.json"]


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo is tested on Linux")
def test_a_config_error_under_torchrun_exits_cleanly_with_its_message(tmp_path):
    # the error comes from Trainer() itself (prompt check, after the process group is up), before train() runs
    done = torchrun(2, "-m", "red_rlhf.cli", "train", "--config", "configs/toy.yaml", "--rollout.max_prompt_tokens=1",
                    "--train.log_with=", f"--train.output_dir={tmp_path / 'bad'}", check=False)
    assert done.returncode != 0
    # torchrun stops the other process (SIGTERM) once one has failed, so at least one message, not always two
    assert "red-rlhf train: error: data.prompts: the toy prompts: line 1:" in done.stderr, done.stderr[-3000:]
    assert "terminate called" not in done.stderr and "SIGABRT" not in done.stderr, done.stderr[-3000:]
    assert "exitcode  : 2 " in done.stderr, done.stderr[-3000:]  # the first to fail: the CLI's own exit code
