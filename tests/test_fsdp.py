"""FSDP (sharded) training on CPU: 2 processes with FSDP2 take the same step as 1 without; the Trainer's sharded
checkpoints resume exactly; sharded checkpoints that would unpickle code are refused.

accelerate only shards on GPUs (on CPU it silently falls back to DDP); tests/fsdp_worker.py forces its state to FSDP,
and torch's FSDP2 then really shards over gloo (each process holds half of every parameter)."""

import io
import json
import sys

import pytest
import torch

from red_rlhf.training.checkpoint import CheckpointError, check_sharded
from tests.test_checkpoint import RunsCode
from tests.test_data_parallel import ROOT, run_workers, torchrun

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo is tested on Linux")


@linux_only
def test_fsdp_on_two_processes_takes_the_same_step_as_one_plain_process(tmp_path):
    one = run_workers(1, tmp_path / "one.pt")
    torchrun(2, str(ROOT / "tests" / "fsdp_worker.py"), "step", str(tmp_path / "fsdp.pt"))
    fsdp = torch.load(tmp_path / "fsdp.pt", weights_only=True)
    assert fsdp["held"] < 0.6 * fsdp["numel"] and one["held"] == one["numel"]  # really sharded: about half each
    for part in ("policy", "critic"):
        assert fsdp[part].keys() == one[part].keys()
        for name, value in one[part].items():
            torch.testing.assert_close(fsdp[part][name], value, rtol=1e-4, atol=1e-5, msg=f"{part}.{name}")
    for key in ("policy_loss", "value_loss", "policy_grad_norm", "critic_grad_norm"):
        assert fsdp["stats"][key] == pytest.approx(one["stats"][key], rel=1e-4, abs=1e-6), key


@linux_only
def test_fsdp_trainer_saves_shards_and_resumes_exactly(tmp_path):
    worker = str(ROOT / "tests" / "fsdp_worker.py")
    torchrun(2, worker, "train", str(tmp_path / "straight"), "3")
    torchrun(2, worker, "train", str(tmp_path / "resumed"), "2")
    torchrun(2, worker, "train", str(tmp_path / "resumed"), "3", "--resume")
    rows = {name: [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
            for name in ("straight", "resumed")}
    assert [r["step"] for r in rows["resumed"]] == [1, 2, 3]
    for key in ("reward_mean", "kl", "policy_loss", "value_loss", "entropy"):
        assert rows["resumed"][2][key] == pytest.approx(rows["straight"][2][key], rel=1e-5, abs=1e-7), key
    step = tmp_path / "resumed" / "checkpoints" / "step-000003"
    for part in ("pytorch_model_fsdp_0", "pytorch_model_fsdp_1", "optimizer_0", "optimizer_1"):  # policy, critic
        assert sorted(p.name for p in (step / part).iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert (tmp_path / "resumed" / "policy" / "model.safetensors").is_file()  # the export gathered the shards


def test_sharded_checkpoint_items_that_would_run_code_are_refused(tmp_path):
    import torch.distributed.checkpoint as dcp

    plain = {"w": torch.ones(4), "lr": 0.1, "betas": (0.9, 0.999)}
    dcp.save(plain, checkpoint_id=str(tmp_path / "plain"), no_dist=True)
    check_sharded(tmp_path / "plain")  # passes: tensors and plain numbers

    marker = tmp_path / "code-ran"
    dcp.save({"w": torch.ones(4), "extra": RunsCode(marker)}, checkpoint_id=str(tmp_path / "bad-item"), no_dist=True)
    with pytest.raises(CheckpointError, match=r"item extra holds pickled objects other than plain data.*io.open"):
        check_sharded(tmp_path / "bad-item")

    buffer = io.BytesIO()
    torch.save(RunsCode(marker), buffer)  # a hostile .metadata
    (tmp_path / "plain" / ".metadata").write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError, match=r"\.metadata holds more than sharded-checkpoint metadata"):
        check_sharded(tmp_path / "plain")
    assert not marker.exists()
