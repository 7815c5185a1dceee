"""Silent or misleading results from bad inputs, found by trying them (issue 23): text encodings, sampling that
cannot train, the reward layout, stale exports, damaged or empty model and data files, and output noise."""

import codecs
import json
import re

import pytest

from red_rlhf.config import ConfigError
from red_rlhf.data.prompts import read_prompts


# ---------------------------------------------------------------- text encodings, decided in data/text.py


def test_a_utf8_byte_order_mark_is_removed_from_every_text_input(tmp_path):
    from red_rlhf.data.jsonl import read_responses
    from red_rlhf.training.reward_model import read_pairs

    txt = tmp_path / "prompts.txt"
    txt.write_bytes(codecs.BOM_UTF8 + "the movie was\nthe plot\n".encode())
    assert read_prompts(str(txt)) == ["the movie was", "the plot"]  # not "\ufeffthe movie was"
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_bytes(codecs.BOM_UTF8 + (json.dumps({"prompt": "a"}) + "\n").encode())
    assert read_prompts(str(jsonl)) == ["a"]
    scored = tmp_path / "score.jsonl"
    scored.write_bytes(codecs.BOM_UTF8 + (json.dumps({"prompt": "p", "response": "r"}) + "\n").encode())
    assert read_responses(scored) == (["p"], ["r"])
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_bytes(codecs.BOM_UTF8 + (json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"}) + "\n").encode())
    assert read_pairs(pairs)[0].prompt == "p"


@pytest.mark.parametrize("encoding, message", [
    ("utf-16", "is UTF-16 text (it starts with a UTF-16 byte-order mark): save it as UTF-8"),
    ("utf-32", "is UTF-32 text (it starts with a UTF-32 byte-order mark): save it as UTF-8"),
    ("utf-16-le", "line 1: holds NUL bytes, so it is not UTF-8 text"),
    ("cp1252", "line 2: not UTF-8 text"),
])
def test_other_encodings_are_refused_naming_the_file(tmp_path, encoding, message):
    from red_rlhf.data.jsonl import read_responses

    txt = tmp_path / "prompts.txt"
    txt.write_bytes("the movie was\nun café\n".encode(encoding))
    with pytest.raises(ConfigError, match=rf"data.prompts: {txt}.*{re.escape(message)}"):
        read_prompts(str(txt))
    scored = tmp_path / "score.jsonl"
    scored.write_bytes((json.dumps({"prompt": "p", "response": "r"}) + "\n" + json.dumps(
        {"prompt": "café", "response": "r"}, ensure_ascii=False) + "\n").encode(encoding))
    with pytest.raises(ValueError, match=rf"{scored}.*{re.escape(message.split(', so')[0].split(': save')[0])}"):
        read_responses(scored)


# ---------------------------------------------------------------- damaged or empty data and model files


def test_an_empty_or_damaged_parquet_prompt_file_is_one_line(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), str(empty))
    with pytest.raises(ConfigError, match=rf"data.prompts: {empty}: the parquet file holds no rows"):
        read_prompts(str(empty))
    cut = tmp_path / "cut.parquet"
    pq.write_table(pa.table({"prompt": ["the movie was", "the plot"]}), str(cut))
    cut.write_bytes(cut.read_bytes()[:40])
    with pytest.raises(ConfigError, match=rf"data.prompts: {cut} is not a readable parquet file"):
        read_prompts(str(cut))


# ---------------------------------------------------------------- settings that cannot train


@pytest.mark.parametrize("temperature, reason", [
    ("1e-30", "nothing is learned"), ("0.01", "greedy in effect"), ("1000", "the samples are noise")])
def test_a_sampling_temperature_that_cannot_train_is_refused_with_the_reason(tmp_path, temperature, reason):
    from tests.helpers import toy

    with pytest.raises(ConfigError, match=rf"rollout.temperature must be in \[0.05, 10.0\], got {temperature}.*{reason}"):
        toy(tmp_path, f"--rollout.temperature={temperature}")
    assert toy(tmp_path, "--rollout.temperature=0.05").rollout.temperature == 0.05


# ---------------------------------------------------------------- assemble_rewards' layout, checked in one place


def test_assemble_rewards_refuses_a_response_mask_not_starting_at_column_0_and_a_nan_prompt_score():
    import torch

    from red_rlhf.core.reward_assembly import PrefixScores, SourceScores, assemble_rewards

    tokens = torch.tensor([[0.1, 0.3, 0.4, 0.0], [0.0, 0.2, 0.5, 0.0]])
    prompt = torch.tensor([0.1, 0.1])
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]], dtype=torch.bool)
    assert assemble_rewards([SourceScores("r", PrefixScores(prompt, tokens))], right).rewards.sum(-1)[0].item() == pytest.approx(0.3)
    shifted = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 0]], dtype=torch.bool)  # row 1 left-padded by one
    with pytest.raises(ValueError, match=r"response_mask row\(s\) \[1\]: a 0 before a 1; responses must start at "
                                         "column 0"):
        assemble_rewards([SourceScores("r", PrefixScores(prompt, tokens))], shifted)
    with pytest.raises(ValueError, match=r"source 'r': the prompt score R\(x\) or a response token's score is NaN or "
                                         r"infinite in row\(s\) \[0\]"):
        assemble_rewards([SourceScores("r", PrefixScores(torch.tensor([float("nan"), 0.1]), tokens))], right)
    padded_nan = tokens.clone()
    padded_nan[0, 3] = float("nan")  # on padding: never read, allowed
    assemble_rewards([SourceScores("r", PrefixScores(prompt, padded_nan))], right)


# ---------------------------------------------------------------- exports


def test_an_export_replaces_an_older_one_entirely(tmp_path):
    from red_rlhf.training.trainer import Trainer
    from tests.helpers import toy

    policy = tmp_path / "run" / "policy"
    policy.mkdir(parents=True)
    for stale in ("adapter_config.json", "adapter_model.safetensors", "model-00002-of-00002.safetensors"):
        (policy / stale).write_text("from an older export")  # a LoRA run's adapters, a shard of a bigger model
    Trainer(toy(tmp_path, "--train.steps=1")).train()  # a full-weights policy exported into the same folder
    names = sorted(p.name for p in policy.iterdir())
    assert "model.safetensors" in names and not {"adapter_config.json", "adapter_model.safetensors",
                                                  "model-00002-of-00002.safetensors"} & set(names)
    assert sorted(p.name for p in policy.parent.iterdir() if p.name.startswith(".policy")) == []


# ---------------------------------------------------------------- damaged model folders: one line naming the file


def _one_error_line(capsys, argv):
    from red_rlhf.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize("cut", ["half", "empty"])
def test_a_truncated_or_empty_weights_file_is_one_line_naming_it(tmp_path, capsys, cut):
    from red_rlhf.models.tiny import save_tiny_reward_model, toy_policy, toy_tokenizer

    rm = save_tiny_reward_model(tmp_path / "rm")
    capsys.readouterr()  # the saving's own output
    weights = rm / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2] if cut == "half" else b"")
    message = rf"{weights} is not a whole safetensors file \(.*\): the model folder is damaged"
    err = _one_error_line(capsys, ["score", "--reward-model", str(rm), "--prompt", "hi", "--response", "there"])
    assert re.search(rf"red-rlhf score: error: reward model: {message}", err), err
    train = ["train", "--config", "configs/toy.yaml", f"--train.output_dir={tmp_path / 'run'}"]
    err = _one_error_line(capsys, train + [f"--reward.model={rm}", "--reward.function=null"])
    assert re.search(rf"red-rlhf train: error: reward.model: {message}", err), err
    policy = tmp_path / "policy"
    tok = toy_tokenizer()
    toy_policy(tok).save_pretrained(policy)
    tok.save_pretrained(policy)
    capsys.readouterr()
    (policy / "model.safetensors").write_bytes((policy / "model.safetensors").read_bytes()[:100])
    err = _one_error_line(capsys, train + [f"--policy.name_or_path={policy}"])
    assert f"red-rlhf train: error: policy.name_or_path: {policy / 'model.safetensors'} is not a whole safetensors" in err
    (policy / "config.json").write_text("{cut")
    err = _one_error_line(capsys, train + [f"--policy.name_or_path={policy}"])
    assert f"policy.name_or_path: {policy / 'config.json'} is not valid JSON" in err


# ---------------------------------------------------------------- output a user cannot act on


def test_log_output_has_no_library_progress_bars_and_phase_counts_match_their_labels(tmp_path, capsys):
    from red_rlhf.cli import main
    from red_rlhf.models.tiny import save_tiny_reward_model
    from red_rlhf.training.trainer import PHASES

    rm = save_tiny_reward_model(tmp_path / "rm")
    capsys.readouterr()
    assert main(["score", "--reward-model", str(rm), "--prompt", "hi", "--response", "there"]) == 0
    assert main(["train", "--config", "configs/toy.yaml", "--train.log_with=", "--data.eval_size=0",
                 "--train.steps=2", f"--train.output_dir={tmp_path / 'run'}"]) == 0
    printed = capsys.readouterr()
    for bar in ("Loading weights", "Writing model shards", "it/s]"):  # output here is not a terminal: a log file
        assert bar not in printed.err + printed.out, bar
    phase_lines = [line.split("  [")[0] for line in printed.out.splitlines() if line.startswith("phase ")]
    assert phase_lines
    titles = {p.number: p.title for p in PHASES}
    for line in phase_lines:  # "phase 6/7  controllers": the count names the phase the label names
        count, label = line.removeprefix("phase ").split("  ")
        number = int(count.split("/")[0])
        assert label == (titles[number] if label != "step done" else "step done") and count.endswith("/7"), line
        assert label != "step done" or number == 7, line


def test_a_reward_function_that_raises_names_the_step_and_the_checkpoint_to_resume_from(tmp_path):
    from red_rlhf.models.sources import SourceError
    from red_rlhf.training.trainer import Trainer
    from tests import raising_reward
    from tests.helpers import toy

    args = ["--reward.function=tests.raising_reward:reward", "--reward.takes_prompt=false", "--train.save_every=1",
            "--rollout.batch_size=2", "--algo.mini_batch_size=2", "--rollout.max_new_tokens=3", "--train.steps=3"]
    try:
        raising_reward.fail = True
        with pytest.raises(SourceError, match=r"^step 1, phase score: reward source 'reward' failed: .*lexicon.*; no "
                                              "checkpoint was saved yet: fix it and start again"):
            Trainer(toy(tmp_path, *args, name="first")).train()
        raising_reward.fail = False
        second = Trainer(toy(tmp_path, *args, name="second"))
        original = second.train_step

        def step():
            raising_reward.fail = second.step == 1  # step 2 fails, after step 1's checkpoint
            return original()

        second.train_step = step
        with pytest.raises(SourceError, match=rf"^step 2, phase score: .*; the last checkpoint is "
                                              rf"{tmp_path / 'second'}/checkpoints/step-000001: fix it and continue "
                                              "with --resume"):
            second.train()
    finally:
        raising_reward.fail = False
