"""Prompts from Hugging Face `datasets` sources: local files and directories the tests write, chat messages, errors."""

import json

import pytest

datasets = pytest.importorskip("datasets")

from red_rlhf.config import ConfigError, DataConfig, load_config  # noqa: E402
from red_rlhf.data.prompts import read_prompts, train_eval_prompts  # noqa: E402
from red_rlhf.models.tiny import CHATML_TEMPLATE, tiny_tokenizer  # noqa: E402
from red_rlhf.training.rollout import encode_prompts  # noqa: E402

PROMPTS = ["the movie was", "i think the plot", "the acting is", "overall it was"]


def table(**columns):
    return datasets.Dataset.from_dict(columns)


@pytest.mark.parametrize("suffix", ["parquet", "csv", "json", "jsonl"])
def test_local_files_of_each_format_give_their_prompt_column(tmp_path, suffix):
    rows = table(text=PROMPTS, score=[1, 2, 3, 4])
    path = tmp_path / f"prompts.{suffix}"
    {"parquet": rows.to_parquet, "csv": rows.to_csv, "json": rows.to_json, "jsonl": rows.to_json}[suffix](str(path))
    assert read_prompts(str(path), column="text") == PROMPTS


def test_arrow_file_directory_splits_and_save_to_disk(tmp_path):
    rows = table(prompt=PROMPTS)
    rows.save_to_disk(str(tmp_path / "saved"))
    [arrow] = list((tmp_path / "saved").glob("*.arrow"))
    assert read_prompts(str(arrow)) == PROMPTS
    assert read_prompts(str(tmp_path / "saved")) == PROMPTS  # a saved Dataset: its one split
    both = datasets.DatasetDict(train=table(prompt=PROMPTS[:3]), test=table(prompt=PROMPTS[3:]))
    both.save_to_disk(str(tmp_path / "dict"))
    cfg = DataConfig(prompts=str(tmp_path / "dict"), eval_prompts=str(tmp_path / "dict"), eval_split="test")
    assert train_eval_prompts(cfg) == (PROMPTS[:3], PROMPTS[3:])
    files = tmp_path / "files"
    files.mkdir()
    table(prompt=PROMPTS[:2]).to_parquet(str(files / "train.parquet"))
    table(prompt=PROMPTS[2:]).to_parquet(str(files / "test.parquet"))
    assert read_prompts(str(files), split="test") == PROMPTS[2:]  # split names from file names
    with pytest.raises(ConfigError, match=r"no split 'validation'; its splits are \['test', 'train'\]"):
        read_prompts(str(tmp_path / "dict"), split="validation")
    with pytest.raises(ConfigError, match=r"single file, which holds one split \('train'\), not 'test'"):
        read_prompts(str(arrow), split="test")


def test_a_hub_name_is_the_same_load_dataset_call(monkeypatch):
    calls = []

    def fake_load_dataset(name, *args, **kwargs):
        calls.append((name, args, kwargs))
        return table(question=PROMPTS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert read_prompts("someone/prompts", split="validation", column="question") == PROMPTS
    assert calls == [("someone/prompts", (), {"split": "validation"})]


def test_errors_name_the_column_the_row_and_the_split(tmp_path, monkeypatch):
    path = tmp_path / "p.parquet"
    table(text=PROMPTS).to_parquet(str(path))
    with pytest.raises(ConfigError, match=r"data.prompt_column 'prompt' is not a column of data.prompts; "
                                          r"its columns are \['text'\]"):
        read_prompts(str(path))
    table(prompt=[1, 2]).to_parquet(str(path))
    with pytest.raises(ConfigError, match=r"data.prompt_column 'prompt' of data.prompts: row 0 is int \(1\), not a string"):
        read_prompts(str(path))
    table(prompt=["fine", " "]).to_parquet(str(path))
    with pytest.raises(ConfigError, match="data.prompt_column 'prompt' of data.prompts: row 1 is an empty prompt"):
        read_prompts(str(path))
    table(prompt=[[{"role": "user", "content": "hi"}]]).to_parquet(str(path))
    with pytest.raises(ConfigError, match=r"row 0 is list .* not a string \(a chat column\? set data.messages_column\)"):
        read_prompts(str(path))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.xlsx").write_text("x")
    with pytest.raises(ConfigError, match=r"data.prompts: .*notes is a directory with no data files"):
        read_prompts(str(tmp_path / "notes"))  # a directory of no data files
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: table(prompt=PROMPTS).select([]))
    with pytest.raises(ConfigError, match=r"data.eval_prompts: someone/prompts: split 'test' holds no rows"):
        read_prompts("someone/prompts", "data.eval_prompts", split="test")
    with pytest.raises(ConfigError, match=r"data.prompts: prompt file .*missing.parquet does not exist"):
        read_prompts(str(tmp_path / "missing.parquet"))


def test_messages_are_rendered_through_the_chat_template_exactly(tmp_path):
    tok = tiny_tokenizer("llama", chat=True)
    tok.chat_template = "{{ bos_token }}" + CHATML_TEMPLATE  # a template that writes BOS, as Llama's does
    chats = [
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the movie was"}],
        [{"role": "user", "content": "the plot"}, {"role": "assistant", "content": "a reference answer"}],
    ]
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in chats))
    prompts = read_prompts(str(path), messages_column="messages", tokenizer=tok)
    assert "reference answer" not in prompts[1] and prompts[1].endswith("<|im_start|>assistant\n")
    ids, mask = encode_prompts(tok, prompts, max_tokens=64)
    for row, chat in enumerate(chats):
        expected = tok.apply_chat_template(chat[:1] if row == 1 else chat, tokenize=True, add_generation_prompt=True)
        expected = expected["input_ids"] if hasattr(expected, "keys") else expected
        assert ids[row][mask[row].bool()].tolist() == list(expected)  # one BOS, the template's tokens, nothing more
    with pytest.raises(ConfigError, match="data.messages_column 'turns' is not a column"):
        read_prompts(str(path), messages_column="turns", tokenizer=tok)
    with pytest.raises(ConfigError, match="data.messages_column 'messages': the policy tokenizer has no chat template"):
        read_prompts(str(path), messages_column="messages", tokenizer=tiny_tokenizer("gpt2"))
    path.write_text(json.dumps({"messages": [{"role": "user"}]}) + "\n")
    with pytest.raises(ConfigError, match=r"data.messages_column 'messages' of data.prompts, row 0 is not a list of"):
        read_prompts(str(path), messages_column="messages", tokenizer=tok)


def test_every_prompt_length_is_checked_before_training(tmp_path):
    from red_rlhf.training.prompt_check import check_prompts

    tok = tiny_tokenizer("gpt2")
    path = tmp_path / "p.parquet"
    table(text=["short", "short too", "the movie was " * 20]).to_parquet(str(path))
    cfg = load_config("configs/toy.yaml", [f"--data.prompts={path}", "--data.prompt_column=text",
                                           "--rollout.max_prompt_tokens=8"])
    with pytest.raises(ConfigError, match=r"data.prompts: .*p.parquet: row 2: the prompt has \d+ tokens, more than "
                                          r"rollout.max_prompt_tokens=8"):
        check_prompts(cfg, tok)
    cfg.rollout.max_prompt_tokens = 200
    check_prompts(cfg, tok)


def test_config_example_reads_the_shipped_parquet_and_validation():
    from red_rlhf.data.toy import PROMPTS as TOY

    cfg = load_config("configs/toy-parquet.yaml")
    assert cfg.data.prompts.endswith(".parquet")
    train, held_out = train_eval_prompts(cfg.data)
    assert train + held_out == list(TOY)  # the shipped file holds the toy prompts, in order
    with pytest.raises(ConfigError, match="set policy.chat_template false"):
        load_config("configs/toy-parquet.yaml", ["--data.messages_column=messages", "--policy.chat_template=true"])
    with pytest.raises(ConfigError, match="data.prompt_column is empty"):
        load_config("configs/toy-parquet.yaml", ["--data.prompt_column="])
