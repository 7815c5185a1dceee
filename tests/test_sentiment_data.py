"""Data preparation of the embedded task, on a small fixture in the format of the real vaderSentiment sdist."""

import json
import tarfile

import pytest

from red_rlhf.data.sentiment import parse_snippets, prepare, split_snippets
from tests.helpers import add_bytes, fake_sdist, fixture_snippets


def test_parse_pairs_and_no_leakage():
    snippets = parse_snippets(fixture_snippets())
    assert len(snippets) == 400 and snippets[0].id == 1 and '"quoted"' in snippets[0].text
    splits = split_snippets(snippets, margin=1.0, eval_prompts=10)
    pairs = splits["pairs_train"] + splits["pairs_eval"]
    assert pairs and all(p["chosen_rating"] - p["rejected_rating"] >= 1.0 for p in pairs)
    paired_ids = {i for p in pairs for i in p["ids"]}
    assert len(paired_ids) == 2 * len(pairs)  # each snippet in at most one pair
    assert not paired_ids & set(splits["prompt_snippet_ids"])  # prompts never come from reward-model snippets
    assert all(len(p.split()) == 4 for p in splits["prompts_train"] + splits["prompts_eval"])
    assert len(splits["prompts_eval"]) == 10
    with pytest.raises(ValueError, match="expected 'id<tab>rating<tab>text'"):
        parse_snippets("1\tnot enough")


def test_prepare_writes_cached_files(tmp_path, capsys):
    sdist = fake_sdist(tmp_path / "vaderSentiment-3.3.2.tar.gz", fixture_snippets())
    out = prepare(tmp_path / "cache", sdist=sdist, eval_prompts=10)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["LICENSE-vaderSentiment.txt", "manifest.json", "pairs_eval.jsonl", "pairs_train.jsonl",
                     "prompts_eval.txt", "prompts_train.txt"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["pairs_train"] == len((out / "pairs_train.jsonl").read_text().splitlines())
    assert "MIT" in (out / "LICENSE-vaderSentiment.txt").read_text()
    first = (out / "pairs_train.jsonl").read_text()
    prepare(tmp_path / "cache", sdist=sdist, eval_prompts=10)  # second call: cached, nothing rebuilt
    assert "(cached)" in capsys.readouterr().out and (out / "pairs_train.jsonl").read_text() == first
    with pytest.raises(ValueError, match="does not look like the vaderSentiment sdist"):
        bad = tmp_path / "bad.tar.gz"
        with tarfile.open(bad, "w:gz") as t:
            add_bytes(t, "x/README", b"")
        prepare(tmp_path / "other", sdist=bad, eval_prompts=10)
