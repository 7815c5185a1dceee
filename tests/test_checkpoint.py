"""Checkpoints load no code: every file is JSON, safetensors or a weights_only tensor pickle; a tampered file is refused."""

import json
import os

import pytest
import torch

from red_rlhf.training import checkpoint
from red_rlhf.training.checkpoint import CheckpointError
from red_rlhf.training.trainer import Trainer
from tests.helpers import RunsCode, toy


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One trained and saved step of the toy PPO run (policy + critic); returns (directory, config args)."""
    tmp = tmp_path_factory.mktemp("ckpt")
    Trainer(toy(tmp, "--train.steps=1", name="run")).train()
    return tmp, checkpoint.latest(tmp / "run")


def copy_run(saved, tmp_path):
    import shutil

    root, _ = saved
    shutil.copytree(root / "run", tmp_path / "run")
    return checkpoint.latest(tmp_path / "run")


def test_every_file_is_json_safetensors_or_a_weights_only_pickle(saved):
    from safetensors.torch import load_file

    _, path = saved
    names = sorted(p.name for p in path.iterdir())
    assert names == ["model.safetensors", "model_1.safetensors", "optimizer.bin", "optimizer_1.bin", "rng-rank0.json",
                     "rng-rank0.safetensors", "trainer.json"]
    for file in path.iterdir():
        if file.suffix == ".json":
            json.loads(file.read_text())
        elif file.suffix == ".safetensors":
            load_file(str(file))
        else:  # the optimiser states: plain tensors and numbers, loadable with no allow-list at all
            torch.load(file, weights_only=True)
    state = json.loads((path / "trainer.json").read_text())
    assert state["step"] == 1 and state["kl_coef"] == pytest.approx(0.02)


def test_a_tampered_optimiser_file_is_refused_and_runs_nothing(saved, tmp_path):
    path = copy_run(saved, tmp_path)
    marker = tmp_path / "code-ran"
    torch.save({"state": RunsCode(marker), "param_groups": []}, path / "optimizer.bin")
    trainer = Trainer(toy(tmp_path, "--train.steps=2", name="run"))
    with pytest.raises(CheckpointError, match=r"refusing to load it.*could run code") as err:
        trainer.load(path)
    assert "optimizer.bin asks to unpickle io.open" in str(err.value)  # names the file and what it asked to call
    assert not marker.exists()


@pytest.mark.parametrize("name, content, message", [
    ("trainer.json", b"{not json", "trainer.json is not valid JSON"),
    ("model.safetensors", b"\x80\x04garbage", "model.safetensors is not a valid safetensors file"),
    ("rng-rank0.safetensors", b"\x00" * 16, "rng-rank0.safetensors is not a valid safetensors file"),
])
def test_a_damaged_file_gets_a_message_naming_it(saved, tmp_path, name, content, message):
    path = copy_run(saved, tmp_path)
    (path / name).write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        Trainer(toy(tmp_path, "--train.steps=2", name="run")).load(path)


def test_a_checkpoint_with_a_pickled_trainer_state_is_not_loaded(tmp_path):
    pickled = tmp_path / "run" / "checkpoints" / "step-000001"
    pickled.mkdir(parents=True)
    torch.save({"step": 1}, pickled / "state.pt")
    (pickled.parent / "latest").write_text("step-000001\n")
    with pytest.raises(CheckpointError, match="state.pt.*unpickling can run code"):
        checkpoint.latest(tmp_path / "run")


def test_resuming_with_fewer_processes_names_the_missing_rng_file(saved, tmp_path):
    path = copy_run(saved, tmp_path)
    os.remove(path / "rng-rank0.json")
    with pytest.raises(CheckpointError, match="rng-rank0.json is missing: resume with as many processes"):
        Trainer(toy(tmp_path, "--train.steps=2", name="run")).load(path)


def test_a_truncated_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    """A damaged latest checkpoint (a truncated weights file) is skipped, saying so, and the run resumes from the
    previous complete checkpoint; one that was altered to run code is never skipped (the tampering test above)."""
    Trainer(toy(tmp_path, "--train.steps=2", "--train.save_every=1", name="run")).train()
    root = tmp_path / "run" / "checkpoints"
    latest = checkpoint.latest(tmp_path / "run")
    assert latest.name == "step-000002" and (root / "step-000001").is_dir()
    weights = latest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    resumed = Trainer(toy(tmp_path, "--train.steps=3", "--train.save_every=1", name="run"))
    history = resumed.train(resume=True)
    out = capsys.readouterr().out
    assert "model.safetensors is not a valid safetensors file" in out
    assert "resuming from the previous complete checkpoint, step-000001, instead" in out
    assert [m["step"] for m in history] == [2, 3]  # step 2 is trained again, from step 1's state
