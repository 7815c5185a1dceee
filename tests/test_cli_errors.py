"""Tier 2: every user mistake the hostile-tester probes found (issue 13) ends in one line naming the setting,
file, line or step, exit status 2, no traceback; docs/reliability.md lists them with these tests."""

import json
from pathlib import Path
import sys

import pytest

from red_rlhf.cli import main

TRAIN = ["train", "--config", "configs/toy.yaml", "--train.log_with=", "--data.eval_size=0",
         "--rollout.batch_size=4", "--algo.mini_batch_size=4", "--algo.epochs=1", "--rollout.max_new_tokens=4"]


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory):
    out = tmp_path_factory.mktemp("rm") / "tiny"
    assert main(["tiny-rm", str(out)]) == 0
    return out


@pytest.fixture
def no_models(monkeypatch):
    """Fails the test if a command gets as far as building the trainer (the checks must come first)."""
    from red_rlhf.training import trainer

    def refuse(*args, **kwargs):
        raise AssertionError("models were loaded before the check")

    monkeypatch.setattr(trainer.Trainer, "__init__", refuse)


def error_of(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len([l for l in err.splitlines() if "error:" in l]) == 1, err
    return err


# ---------------------------------------------------------------- train: before any model loads


def test_output_dir_that_is_a_file_or_under_a_file(tmp_path, capsys, no_models):
    file = tmp_path / "a-file"
    file.write_text("x")
    assert f"train.output_dir {file} is a file, not a directory" in error_of(capsys, TRAIN + [f"--train.output_dir={file}"])
    err = error_of(capsys, TRAIN + [f"--train.output_dir={file / 'run'}"])
    assert f"train.output_dir {file / 'run'} is not writable" in err


def test_empty_output_dir(capsys, no_models):
    assert "train.output_dir is empty" in error_of(capsys, TRAIN + ["--train.output_dir="])


def test_resume_without_a_checkpoint(tmp_path, capsys, no_models):
    assert "no checkpoint to resume from in" in error_of(capsys, TRAIN + [f"--train.output_dir={tmp_path}", "--resume"])


def test_missing_or_not_a_model_reward_and_policy_paths(tmp_path, capsys, no_models):
    out = f"--train.output_dir={tmp_path / 'run'}"
    err = error_of(capsys, TRAIN + [out, "--reward.model=./no/such/rm", "--reward.function=null"])
    assert "reward.model: path ./no/such/rm does not exist" in err
    empty = tmp_path / "empty-dir"
    empty.mkdir()
    err = error_of(capsys, TRAIN + [out, f"--policy.name_or_path={empty}"])
    assert f"policy.name_or_path: {empty} is a directory but holds no model" in err


def test_ctrl_c_during_start_up_does_not_suggest_resume(tmp_path, capsys, monkeypatch):
    from red_rlhf.training import trainer

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer.Trainer, "__init__", interrupted)
    with pytest.raises(SystemExit) as stop:
        main(TRAIN + [f"--train.output_dir={tmp_path / 'run'}"])
    assert stop.value.code == 130
    out = capsys.readouterr().out
    assert "stopped before the first checkpoint; start again with: red-rlhf train --config configs/toy.yaml" in out
    assert "--resume" not in out


def test_resume_with_a_changed_run_setting_names_it_and_progress_prints_plain_lines(tmp_path, capsys):
    out = f"--train.output_dir={tmp_path / 'run'}"
    assert main(TRAIN + [out, "--train.steps=1"]) == 0
    printed = capsys.readouterr().out
    assert "train steps 1/1" in printed  # not a terminal: plain progress lines, not a silent rich bar
    err = error_of(capsys, TRAIN + [out, "--train.steps=2", "--reward.scheme=sparse", "--resume"])
    assert "cannot resume from step 1 with changed settings (reward.scheme: 'red' -> 'sparse')" in err
    err = error_of(capsys, TRAIN + [out, "--train.steps=2"])
    assert "already holds checkpoints: pass --resume" in err


def test_a_full_disk_during_a_checkpoint_save(tmp_path, capsys, monkeypatch):
    import errno

    from accelerate import Accelerator

    def full_disk(self, output_dir, **kwargs):
        (Path(output_dir) / "model.safetensors").write_bytes(b"half")  # a partial write, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Accelerator, "save_state", full_disk)
    err = error_of(capsys, TRAIN + [f"--train.output_dir={tmp_path / 'run'}", "--train.steps=1"])
    assert "writing a checkpoint to" in err and "No space left on device" in err and "is the disk full?" in err
    assert not list((tmp_path / "run" / "checkpoints").glob("*step-*"))  # no partial checkpoint is left behind


def test_reward_module_with_a_syntax_error_or_only_in_the_current_directory(tmp_path, capsys, monkeypatch, no_models):
    import importlib
    from pathlib import Path

    config = str(Path(__file__).parents[1] / "configs" / "toy.yaml")
    base = ["train", "--config", config, f"--train.output_dir={tmp_path / 'run'}", "--reward.takes_prompt=false"]
    found, here = tmp_path / "on_path", tmp_path / "cwd"
    found.mkdir()
    here.mkdir()
    (found / "broken_reward.py").write_text("def reward(text):\n    return len(text) +\n")
    (here / "local_reward.py").write_text("def reward(text):\n    return 1.0\n")
    # as the installed command runs: the current directory is not on sys.path
    monkeypatch.setattr(sys, "path", [str(found)] + [p for p in sys.path if p not in ("", ".")])
    monkeypatch.chdir(here)
    importlib.invalidate_caches()
    err = error_of(capsys, base + ["--reward.function=broken_reward:reward"])
    assert "reward.function: 'broken_reward:reward': the module has a syntax error at" in err and "line 2" in err
    err = error_of(capsys, base + ["--reward.function=local_reward:reward"])
    assert "local_reward is in the current directory, which the installed red-rlhf command does not search" in err
    assert "PYTHONPATH=." in err


def test_non_utf8_text_on_the_command_line(capsys):
    bad = b"caf\xe9".decode("utf-8", "surrogateescape")  # what Python makes of Latin-1 bytes in argv
    err = error_of(capsys, ["score", "--reward-model", "x", "--prompt", bad, "--response", " b"])
    assert "argument 5 (caf\\xe9) is not valid UTF-8 text" in err


# ---------------------------------------------------------------- score


def test_score_outputs_to_a_directory_or_a_full_device(tiny_rm, tmp_path, capsys):
    base = ["score", "--reward-model", str(tiny_rm), "--prompt", "Hi", "--response", " there"]
    assert f"--html {tmp_path} is a directory: give a file name" in error_of(capsys, base + ["--html", str(tmp_path)])
    if __import__("os").path.exists("/dev/full"):  # Linux: writes fail with ENOSPC, as on a full disk
        assert "--json /dev/full: cannot write: No space left on device" in error_of(capsys, base + ["--json", "/dev/full"])


def test_score_input_directory_and_not_a_model_directory(tiny_rm, tmp_path, capsys):
    err = error_of(capsys, ["score", "--reward-model", str(tiny_rm), "--input", str(tmp_path)])
    assert f"input file {tmp_path} is a directory, not a JSON-lines file" in err
    err = error_of(capsys, ["score", "--reward-model", str(tmp_path), "--prompt", "a", "--response", " b"])
    assert f"reward model: {tmp_path} is a directory but holds no model" in err


def test_a_whitespace_only_response_is_scored(tiny_rm, tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    assert main(["score", "--reward-model", str(tiny_rm), "--prompt", "Hi", "--response", "  ", "--json", str(rows)]) == 0
    [row] = [json.loads(line) for line in rows.read_text().splitlines()]
    assert "".join(row["tokens"]) == "  " and len(row["rewards"]) == len(row["tokens"]) >= 1
    assert sum(row["rewards"]) == pytest.approx(row["final_score"] - row["prompt_score"], abs=1e-5)
    assert "response 1 is empty" in error_of(capsys, ["score", "--reward-model", str(tiny_rm), "--prompt", "Hi",
                                                      "--response", ""])


# ---------------------------------------------------------------- train-rm, prepare-data


def test_train_rm_without_held_out_pairs_says_no_accuracy(tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": "Review:", "chosen": " good film", "rejected": " bad film"}) + "\n"
                            for _ in range(4)))
    out = tmp_path / "rm"
    assert main(["train-rm", "--data", str(data), "--output-dir", str(out), "--held-out-fraction", "0",
                 "--head-only", "--head-iterations", "2"]) == 0
    assert "no held-out pairs (--held-out-fraction 0.0 of 4 pairs), so no accuracy was measured" in capsys.readouterr().out
    metrics = json.loads((out / "rm_metrics.json").read_text())  # strict JSON: no NaN
    assert metrics["accuracy_after"] is None and metrics["held_out_pairs"] == 0
    file = tmp_path / "file"
    file.write_text("x")
    err = error_of(capsys, ["train-rm", "--data", str(data), "--output-dir", str(file)])
    assert f"--output-dir {file} is a file, not a directory" in err


def test_prepare_data_with_a_file_that_is_not_an_archive(tmp_path, capsys):
    fake = tmp_path / "vaderSentiment-3.3.2.tar.gz"
    fake.write_text("not an archive")
    err = error_of(capsys, ["prepare-data", "--cache-dir", str(tmp_path / "cache"), "--sdist", str(fake)])
    assert f"{fake} is not a readable .tar.gz archive" in err


# ---------------------------------------------------------------- output hygiene


def test_library_deprecation_warnings_stay_out_of_user_output(capsys):
    import warnings

    from red_rlhf.cli import quiet_third_party

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_third_party(verbose=False)
        warnings.warn("old api", FutureWarning)
        warnings.warn("older api", DeprecationWarning)
        warnings.warn("a real problem", UserWarning)
    assert [str(w.message) for w in seen] == ["a real problem"]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_third_party(verbose=True)
        warnings.warn("old api", FutureWarning)
    assert len(seen) == 1


def test_plain_progress_prints_a_line_per_change_throttled():
    import io

    from red_rlhf.progress import PlainProgress

    stream = io.StringIO()
    bar = PlainProgress(min_interval=0.0, stream=stream)
    task = bar.add_task("train steps", total=3, info="")
    for step in range(1, 4):
        bar.update(task, completed=step, info=f"reward {step}")
    lines = stream.getvalue().splitlines()
    assert [line.split("  [")[0] for line in lines] == [f"train steps {s}/3  reward {s}" for s in (1, 2, 3)]
    stream = io.StringIO()
    slow = PlainProgress(min_interval=3600.0, stream=stream)
    task = slow.add_task("phase", total=7)
    for n in range(1, 8):
        slow.update(task, completed=n)
    assert [line.split("  [")[0] for line in stream.getvalue().splitlines()] == ["phase 1/7", "phase 7/7"]
