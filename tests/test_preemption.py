"""Preemption-safe runs: a scheduler's SIGTERM saves and resumes to the uninterrupted result, one trainer per
output folder, and a missing or wrong `checkpoints/latest` never costs a checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from red_rlhf.training import checkpoint, lock, stops
from red_rlhf.training.resume import checkpoint_step
from red_rlhf.training.trainer import Trainer
from tests.helpers import ROOT, toy

COMPARED = ("reward_mean", "kl", "policy_loss", "value_loss", "kl_coef", "entropy")


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def same_steps(a, b):
    for x, y in zip(a, b):
        assert x["step"] == y["step"]
        for key in COMPARED:
            assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-7), (x["step"], key)


@pytest.fixture
def sigterm_is_caught():
    """Without a handler SIGTERM or SIGUSR1 would end pytest itself: here an unhandled one fails the test instead."""
    def unhandled(signum, frame):
        raise AssertionError(f"{signal.Signals(signum).name} reached the default handler: the trainer ignores it")

    previous = {sig: signal.signal(sig, unhandled) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    yield
    for sig, handler in previous.items():
        signal.signal(sig, handler)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run the interrupted ones are compared with."""
    tmp = tmp_path_factory.mktemp("straight")
    return Trainer(toy(tmp, "--train.steps=4", "--kl.adaptive=true", "--kl.target=1")).train()


@pytest.mark.parametrize("signal_name, at", [("SIGTERM", 1), ("SIGTERM", 3), ("SIGUSR1", 2)])
def test_a_scheduler_signal_at_any_step_saves_and_resumes_to_the_uninterrupted_result(
        tmp_path, straight, sigterm_is_caught, capsys, signal_name, at):
    # no periodic saves (the toy saves every 10 steps): only the stop can have written a checkpoint
    first = Trainer(toy(tmp_path, "--train.steps=4", "--kl.adaptive=true", "--kl.target=1"))
    original = first.train_step

    def signalled_step():
        if first.step + 1 == at:  # the signal arrives in the middle of step `at`
            os.kill(os.getpid(), getattr(signal, signal_name))
        return original()

    first.train_step = signalled_step
    with pytest.raises(stops.Stopped) as stop:
        first.train()
    assert (stop.value.signal_name, stop.value.step, stop.value.exit_code) == (signal_name, at, stops.STOPPED_EXIT)
    assert f"{signal_name}: finishing this step, saving a checkpoint" in capsys.readouterr().out
    assert checkpoint.latest(tmp_path / "run").name == f"step-{at:06d}"
    assert not (tmp_path / "run" / lock.LOCK).exists()  # the lock goes with the run
    rest = Trainer(toy(tmp_path, "--train.steps=4", "--kl.adaptive=true", "--kl.target=1")).train(resume=True)
    assert [m["step"] for m in rest] == list(range(at + 1, 5))
    same_steps(straight[at:], rest)
    assert [r["step"] for r in rows(tmp_path / "run")] == [1, 2, 3, 4]


def test_a_second_signal_stops_at_once_and_the_last_checkpoint_stays(tmp_path, sigterm_is_caught, capsys):
    trainer = Trainer(toy(tmp_path, "--train.steps=3", "--train.save_every=1"))
    original = trainer.train_step

    def twice_in_step_2():
        if trainer.step == 1:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)  # the scheduler's patience ran out: stop now
        return original()

    trainer.train_step = twice_in_step_2
    with pytest.raises(stops.Stopped) as stop:
        trainer.train()
    assert stop.value.step is None and stop.value.exit_code == stops.STOPPED_EXIT
    assert "SIGTERM again to stop now" in capsys.readouterr().out
    assert checkpoint.latest(tmp_path / "run").name == "step-000001"
    assert not (tmp_path / "run" / lock.LOCK).exists()


def test_a_signal_in_the_last_step_still_exports_the_policy(tmp_path, sigterm_is_caught):
    """A stop after the last step would leave a finished run that --resume cannot export (train.steps reached)."""
    trainer = Trainer(toy(tmp_path, "--train.steps=2"))
    original = trainer.train_step

    def signalled_last_step():
        if trainer.step == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return original()

    trainer.train_step = signalled_last_step
    assert len(trainer.train()) == 2
    assert (tmp_path / "run" / "policy" / "model.safetensors").is_file()
    assert checkpoint.latest(tmp_path / "run").name == "step-000002"


def _cli(*args, **kwargs):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "red_rlhf.cli", "train", "--config", "configs/toy.yaml", *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.skipif(sys.platform != "linux", reason="signals to a child process are tested on Linux")
def test_two_trainers_on_one_folder_and_a_sigterm_to_the_cli(tmp_path, capsys):
    """`red-rlhf train` in a child process: a second trainer on its folder is refused, naming the child; SIGTERM to
    the child saves the step it was in, exits 75 with the resume command, and the resumed run continues exactly."""
    from red_rlhf.cli import main

    out = tmp_path / "run"
    common = ["--train.log_with=", "--train.eval_every=0", "--data.eval_size=0", "--train.save_every=0",
              f"--train.output_dir={out}"]
    child = _cli(*common, "--train.steps=400")
    try:
        deadline = time.time() + 120
        while not ((out / "metrics.jsonl").is_file() and len(rows(out)) >= 2):
            assert child.poll() is None and time.time() < deadline, child.communicate()[1][-3000:]
            time.sleep(0.2)
        assert main(["train", "--config", "configs/toy.yaml", *common, "--train.steps=400"]) == 2
        err = capsys.readouterr().err
        assert f"{out} is in use by another trainer (pid {child.pid} on host" in err
        assert "one trainer per train.output_dir" in err
        child.send_signal(signal.SIGTERM)
        stdout, stderr = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == stops.STOPPED_EXIT, stderr[-3000:]
    step = checkpoint_step(checkpoint.latest(out))
    assert step >= 2 and [r["step"] for r in rows(out)] == list(range(1, step + 1))
    assert f"SIGTERM: stopped after step {step}; checkpoint {out}/checkpoints/step-{step:06d}; resume with: " \
           "red-rlhf train --config configs/toy.yaml" in stdout and stdout.rstrip().endswith("--resume")
    assert "Traceback" not in stderr and not (out / lock.LOCK).exists()
    # the child's steps ran on one thread: so do these (on more threads a matmul sums in another order, and the
    # runs drift apart by ~1e-5 within five steps), and then the resumed run equals the straight one exactly
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", "--config", "configs/toy.yaml", *common, f"--train.steps={step + 1}", "--resume"]) == 0
        straight = Trainer(toy(tmp_path, f"--train.steps={step + 1}", name="straight")).train()
    finally:
        torch.set_num_threads(threads)
    last = rows(out)[-1]
    assert last["step"] == step + 1 and {k: last[k] for k in COMPARED} == {k: straight[-1][k] for k in COMPARED}


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo is tested on Linux")
def test_under_torchrun_a_sigterm_to_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    from tests.helpers import torchrun

    out = tmp_path / "ddp"
    done = torchrun(2, "tests/stop_worker.py", "train", "--config", "configs/toy.yaml", "--train.save_every=0",
                    "--train.log_with=", "--train.steps=5", f"--train.output_dir={out}", check=False)
    assert "exitcode  : 75" in done.stderr, done.stderr[-3000:]
    assert "SIGTERM: stopped after step 2; checkpoint" in done.stdout, done.stdout[-3000:]
    assert checkpoint.latest(out).name == "step-000002"  # rank 0 never got the signal, and saved with rank 1
    files = sorted(p.name for p in (out / "checkpoints" / "step-000002").iterdir())
    assert "rng-rank0.json" in files and "rng-rank1.json" in files
    assert [r["step"] for r in rows(out)] == [1, 2]


# ---------------------------------------------------------------- the lock


def test_a_stale_lock_of_a_dead_process_is_taken_over_and_a_foreign_host_is_named(tmp_path, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    out = tmp_path / "run"
    out.mkdir()
    file = out / lock.LOCK
    file.write_text(json.dumps({"pid": int(dead.stdout), "host": __import__("socket").gethostname()}))
    history = Trainer(toy(tmp_path, "--train.steps=1")).train()
    assert len(history) == 1
    assert f"removing a stale lock: {file} was left by pid {int(dead.stdout)}" in capsys.readouterr().out
    assert not file.exists()
    file.write_text(json.dumps({"pid": 4242, "host": "node-17", "time": "2026-01-01T00:00:00Z", "command": "x"}))
    with pytest.raises(lock.FolderLocked, match=rf"in use by another trainer \(pid 4242 on host node-17.*remove {file}"):
        Trainer(toy(tmp_path, "--train.steps=2")).train(resume=True)
    assert file.exists()  # not ours to remove


def test_a_reused_pid_does_not_keep_a_lock_alive(tmp_path):
    record = lock.owner_record()
    if record["started"] is None:
        pytest.skip("no /proc: process start times cannot be read")
    assert not lock.is_stale(record)  # this very process
    assert lock.is_stale({**record, "started": str(int(record["started"]) + 1)})  # same pid, another process


# ---------------------------------------------------------------- checkpoints/latest


@pytest.fixture(scope="module")
def three_saves(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("latest")
    Trainer(toy(tmp, "--train.steps=3", "--train.save_every=1", "--train.keep_checkpoints=3")).train()
    return tmp / "run"


def copy_of(run, tmp_path):
    import shutil

    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.parametrize("damage, why", [
    ("delete", "latest is missing"),
    ("empty", "latest is empty"),
    ("missing-step", "latest names step-000009, which does not exist"),
    ("garbage", "latest names 'no idea', which is not a step-NNNNNN checkpoint directory"),
])
def test_a_missing_empty_or_wrong_latest_resumes_from_the_newest_step_saying_so(three_saves, tmp_path, capsys, damage,
                                                                               why):
    from red_rlhf.cli import main

    out = copy_of(three_saves, tmp_path)
    pointer = out / "checkpoints" / "latest"
    {"delete": lambda: pointer.unlink(), "empty": lambda: pointer.write_text("\n"),
     "missing-step": lambda: pointer.write_text("step-000009\n"),
     "garbage": lambda: pointer.write_text("no idea\n")}[damage]()
    args = ["train", "--config", "configs/toy.yaml", "--train.log_with=", "--train.eval_every=0",
            "--data.eval_size=0", "--train.save_every=1", "--train.keep_checkpoints=3", f"--train.output_dir={out}"]
    # a fresh start would log over the old rows and rotate the old checkpoints away: refused even without `latest`
    assert main(args + ["--train.steps=4"]) == 2
    assert "already holds checkpoints: pass --resume" in capsys.readouterr().err
    assert main(args + ["--train.steps=4", "--resume"]) == 0
    printed = capsys.readouterr().out
    assert why in printed and "using the newest checkpoint by step, step-000003" in printed
    assert [r["step"] for r in rows(out)] == [1, 2, 3, 4]
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == [f"step-00000{i}" for i in (2, 3, 4)]
    assert checkpoint.latest(out).name == "step-000004"


def test_rotation_keeps_the_newest_by_step_and_never_a_later_run_stage(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (9, 10, 11, 999999, 1000000):
        (root / f"step-{step:06d}").mkdir(parents=True)
    # by name step-1000000 sorts before step-999999; by step it is the newest and stays
    assert [p.name for p in checkpoint.to_rotate(root, 1000000, keep=2)] == ["step-000009", "step-000010",
                                                                             "step-000011"]
    # a run resumed from step 10 (11 was damaged) keeps 11 and later until it overwrites them
    assert [p.name for p in checkpoint.to_rotate(root, 10, keep=1)] == ["step-000009"]


# ---------------------------------------------------------------- lean checkpoints


def test_a_lora_checkpoint_holds_only_what_training_changes_and_resumes_on_the_same_base(tmp_path):
    from safetensors import safe_open

    from red_rlhf.models.tiny import toy_policy, toy_tokenizer

    tok = toy_tokenizer()
    base = tmp_path / "base"
    toy_policy(tok).save_pretrained(base)
    tok.save_pretrained(base)
    lora = [f"--policy.name_or_path={base}", "--policy.lora_r=4", "--policy.lora_target_modules=c_attn",
            "--algo.policy_lr=0.05", "--train.save_every=1"]
    straight = Trainer(toy(tmp_path, *lora, "--train.steps=3", name="straight")).train()
    Trainer(toy(tmp_path, *lora, "--train.steps=2")).train()
    saved = checkpoint.latest(tmp_path / "run")
    with safe_open(str(saved / "model.safetensors"), framework="pt") as f:
        policy_keys = list(f.keys())
    assert policy_keys and all("lora_" in key for key in policy_keys)  # the adapters, not the frozen base
    with safe_open(str(saved / "model_1.safetensors"), framework="pt") as f:
        assert any("head" in key for key in f.keys())  # the critic trains every weight: all of it is kept
    state = json.loads((saved / "trainer.json").read_text())
    assert state["weights"] == "trainable" and len(state["frozen"]["policy"]) == 16
    rest = Trainer(toy(tmp_path, *lora, "--train.steps=3")).train(resume=True)
    same_steps(straight[2:], rest)
    # the base at policy.name_or_path replaced by another model: the adapters do not belong to it
    toy_policy(tok, seed=1).save_pretrained(base)
    with pytest.raises(checkpoint.CheckpointError, match=rf"frozen weights of the policy loaded from {base} differ from "
                                                         "those the checkpoint was trained on"):
        Trainer(toy(tmp_path, *lora, "--train.steps=4")).train(resume=True)


def test_a_checkpoint_of_other_adapters_is_refused_by_name(tmp_path):
    lora = ["--policy.lora_r=4", "--policy.lora_target_modules=c_attn", "--train.steps=1"]
    Trainer(toy(tmp_path, *lora)).train()
    other = Trainer(toy(tmp_path, "--policy.lora_r=4", "--policy.lora_target_modules=c_attn,c_proj", "--train.steps=2"))
    with pytest.raises(checkpoint.CheckpointError, match=r"model.safetensors lacks \d+ trainable weight\(s\) of the "
                                                         r"policy \(e.g. .*c_proj.*\).*resume with the config"):
        other.load(checkpoint.latest(tmp_path / "run"))


def test_saving_prints_no_shared_tensor_warning(tmp_path, caplog):
    import logging

    with caplog.at_level(logging.WARNING):
        Trainer(toy(tmp_path, "--train.steps=1")).train()  # the toy GPT-2 ties lm_head to the embedding
    assert not [r for r in caplog.records if "shared tensor" in r.getMessage()]
    assert checkpoint.latest(tmp_path / "run").name == "step-000001"


def test_the_frozen_base_is_left_out_under_ddp_names_too(tmp_path):
    """DDP's state dict names every weight module.NAME: the hook drops the frozen ones under either name."""
    trainer = Trainer(toy(tmp_path, "--policy.lora_r=4", "--policy.lora_target_modules=c_attn"))
    model = trainer.acc.unwrap_model(trainer.policy)
    for prefix in ("", "module."):
        weights = [{prefix + k: v for k, v in model.state_dict().items()}]
        from red_rlhf.training.frozen import keep_trainable

        keep_trainable([model], weights, None)
        assert weights[0] and all("lora_" in k and k.startswith(prefix) for k in weights[0]), prefix
