"""Tier 2: every prompt is checked before training starts; errors name the file and the line."""

import json

import pytest

from red_rlhf.config import ConfigError, load_config
from red_rlhf.training.trainer import Trainer

BASE = ["--train.log_with=", "--data.eval_size=0", "--rollout.batch_size=2", "--algo.mini_batch_size=2",
        "--rollout.max_prompt_tokens=8"]


def toy(tmp_path, *overrides):
    return load_config("configs/toy.yaml", BASE + [f"--train.output_dir={tmp_path / 'run'}"] + list(overrides))


def test_an_over_long_prompt_deep_in_the_file_is_named_by_line(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("the movie was\n\ni liked the\n" + "the plot was " * 10 + "\nit was\n")
    with pytest.raises(ConfigError) as err:
        Trainer(toy(tmp_path, f"--data.prompts={prompts}"))
    assert f"data.prompts: {prompts}: line 4: the prompt has" in str(err.value)
    assert "more than rollout.max_prompt_tokens=8" in str(err.value)
    assert not (tmp_path / "run").exists()  # nothing written


def test_a_tokenizer_that_cannot_take_any_prompt_is_not_blamed_on_a_line(tmp_path):
    with pytest.raises(ConfigError, match="^policy.chat_template is set but the policy tokenizer has no chat template"):
        Trainer(toy(tmp_path, "--policy.chat_template=true"))


def test_jsonl_and_eval_prompt_files_are_checked_too(tmp_path):
    train = tmp_path / "p.jsonl"
    train.write_text(json.dumps({"prompt": "the movie was"}) + "\n")
    held = tmp_path / "eval.jsonl"
    held.write_text(json.dumps({"prompt": "it was"}) + "\n\n" + json.dumps({"prompt": "good " * 20}) + "\n")
    with pytest.raises(ConfigError, match=rf"data.eval_prompts: {held}: line 3: the prompt has"):
        Trainer(toy(tmp_path, f"--data.prompts={train}", f"--data.eval_prompts={held}"))


def test_a_directory_and_non_utf8_prompt_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match=rf"data.prompts: {tmp_path} is a directory with no data files"):
        Trainer(toy(tmp_path, f"--data.prompts={tmp_path}"))
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("the movie was\nun caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=rf"data.prompts: {bad}, line 2: not UTF-8 text"):
        Trainer(toy(tmp_path, f"--data.prompts={bad}"))
