"""Prompt files and the resumable, sharded prompt order."""

import json

import pytest

from red_rlhf.config import ConfigError, DataConfig
from red_rlhf.data.prompts import PromptOrder, read_prompts, train_eval_prompts


def test_prompt_files(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompt": "a"}) + "\n\n" + json.dumps({"prompt": "b", "extra": 1}) + "\n")
    assert read_prompts(str(f)) == ["a", "b"]
    f.write_text(json.dumps({"prompt": "a"}) + "\n" + json.dumps({"text": "b"}) + "\n")
    with pytest.raises(ConfigError, match=r'data.prompts: .*line 2: each line needs string field\(s\) "prompt"'):
        read_prompts(str(f))
    t = tmp_path / "p.txt"
    t.write_text("one\n\ntwo\nthree\n")
    assert train_eval_prompts(DataConfig(prompts=str(t), eval_size=1)) == (["one", "two"], ["three"])
    with pytest.raises(ConfigError, match="leaves no training prompts"):
        train_eval_prompts(DataConfig(prompts=str(t), eval_size=3))


def test_prompt_order_is_sharded_and_resumable():
    prompts = [f"p{i}" for i in range(10)]
    ranks = [PromptOrder(prompts, seed=1, rank=r, world_size=2) for r in range(2)]
    first = [o.next_batch(5) for o in ranks]
    assert not set(first[0]) & set(first[1]) and set(first[0]) | set(first[1]) == set(prompts)  # one epoch, split
    saved = ranks[0].state_dict()
    expected = ranks[0].next_batch(7)  # crosses into the next epoch
    again = PromptOrder(prompts, seed=1, rank=0, world_size=2)
    again.load_state_dict(saved)
    assert again.next_batch(7) == expected
