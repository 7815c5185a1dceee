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
