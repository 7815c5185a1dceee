"""Prompts from Hugging Face `datasets`: local parquet/json/csv/arrow files, directories, or a hub dataset name.

    data:
      prompts: data/prompts.parquet     # or a directory, or "trl-lib/tldr" (a hub name)
      split: train
      prompt_column: prompt             # a column of strings, or:
      messages_column: null             # a column of chat messages, rendered through the policy's chat template

Every error names the config field and the column at fault. The hub path is the same `load_dataset` call as the
local one; only a machine that reaches the hub can use it.
"""

from __future__ import annotations

from pathlib import Path

from red_rlhf.config import ConfigError

# file suffix -> the `datasets` builder that reads it
BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".arrow": "arrow"}


def looks_like_path(source: str) -> bool:
    """A local path (exists, starts like a path, or ends in a known data suffix) rather than a hub dataset name."""
    return (Path(source).expanduser().exists() or source.startswith((".", "/", "~"))
            or Path(source).suffix in (*BUILDERS, ".txt"))


def load_rows(source: str, split: str, field: str):
    """The rows of one split of a `datasets` source (a `datasets.Dataset`)."""
    try:
        import datasets
    except ImportError as err:
        raise ConfigError(f"{field}: {source!r} is read with the `datasets` package: pip install 'red-rlhf[data]'") from err
    path = Path(source).expanduser()
    where = f"{field}: {source}"
    try:
        if path.is_file():
            if path.suffix not in BUILDERS:
                raise ConfigError(f"{where}: unknown file type {path.suffix!r}; use one of .txt, "
                                  f"{', '.join(BUILDERS)}")
            if split != "train":
                raise ConfigError(f"{where} is a single file, which holds one split ('train'), not {split!r}: point "
                                  "at the file of that split, or at a directory holding one file per split")
            if path.suffix == ".parquet":
                _check_parquet(path, where)
            rows = datasets.load_dataset(BUILDERS[path.suffix], data_files=str(path), split="train")
        elif path.is_dir() and _saved_to_disk(path):
            rows = datasets.load_from_disk(str(path))
            if isinstance(rows, datasets.DatasetDict):
                if split not in rows:
                    raise ConfigError(f"{where} has no split {split!r}; its splits are {sorted(rows)}")
                rows = rows[split]
        elif path.is_dir() and not any(f.suffix in BUILDERS for f in path.rglob("*") if f.is_file()):
            raise ConfigError(f"{field}: {source} is a directory with no data files ({', '.join(BUILDERS)}) and no "
                              "saved dataset; a prompt file (.txt or .jsonl) is read as lines")
        elif path.is_dir() or not looks_like_path(source):
            rows = datasets.load_dataset(str(path) if path.is_dir() else source, split=split)
        else:
            raise ConfigError(f"{field}: prompt file {source} does not exist")
    except ConfigError:
        raise
    except (ValueError, KeyError, FileNotFoundError, OSError, datasets.exceptions.DatasetsError) as err:
        # datasets' own errors ("An error occurred while generating the dataset") carry the reason as their cause
        reason = err.__cause__ if isinstance(err, datasets.exceptions.DatasetsError) and err.__cause__ else err
        first = str(reason).strip().splitlines()[0] if str(reason).strip() else type(reason).__name__
        raise ConfigError(f"{where} (split {split!r}) cannot be loaded: {first}") from err
    if len(rows) == 0:
        raise ConfigError(f"{where}: split {split!r} holds no rows")
    return rows


def _check_parquet(path: Path, where: str) -> None:
    """A parquet file's footer, read before `datasets` reads it: an empty or damaged file gets one line naming it
    (`datasets` fails on a 0-row file with "BatchSize must be greater than 0" deep in a traceback)."""
    import pyarrow.parquet as pq

    try:
        rows = pq.read_metadata(str(path)).num_rows
    except Exception as err:  # pyarrow's ArrowInvalid / OSError on a truncated or foreign file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{where} is not a readable parquet file ({first}): it is damaged or not parquet") from err
    if rows == 0:
        raise ConfigError(f"{where}: the parquet file holds no rows")


def _saved_to_disk(path: Path) -> bool:
    """A directory written by Dataset.save_to_disk / DatasetDict.save_to_disk."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def column_prompts(rows, column: str, field: str, column_field: str) -> list[str]:
    """The strings of one column; a missing column, a non-string or empty cell is an error naming the column."""
    if column not in rows.column_names:
        raise ConfigError(f"{column_field} {column!r} is not a column of {field}; its columns are {rows.column_names}")
    prompts = rows[column]
    for i, value in enumerate(prompts):
        if not isinstance(value, str):
            raise ConfigError(f"{column_field} {column!r} of {field}: row {i} is {type(value).__name__} "
                              f"({value!r:.60}), not a string" + (" (a chat column? set data.messages_column)"
                                                                  if isinstance(value, list) else ""))
        if not value.strip():
            raise ConfigError(f"{column_field} {column!r} of {field}: row {i} is an empty prompt")
    return list(prompts)


def render_messages(conversation, tokenizer, where: str) -> str:
    """One chat (a list of {"role", "content"}) as prompt text: the tokenizer's chat template with a generation
    prompt, trailing assistant turns dropped (a reference answer is not part of the prompt).

    The tokenizer adds its own BOS when the text is encoded, so a BOS the template writes is taken off here: the
    encoded text is then exactly apply_chat_template(..., tokenize=True). (A template that writes no BOS, for a
    tokenizer that adds one, gets that BOS in front, as plain-text prompts do.)
    """
    if not isinstance(conversation, list) or not all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                                     and isinstance(m.get("content"), str) for m in conversation):
        raise ConfigError(f"{where} is not a list of {{'role': str, 'content': str}} messages: {conversation!r:.80}")
    messages = [{"role": m["role"], "content": m["content"]} for m in conversation]
    while messages and messages[-1]["role"] == "assistant":
        messages.pop()
    if not messages:
        raise ConfigError(f"{where} has no turn before the assistant's answer: nothing to prompt with")
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and tokenizer("x").input_ids[:1] == [tokenizer.bos_token_id]:
        text = text[len(bos):]
    return text


def messages_prompts(rows, column: str, field: str, tokenizer) -> list[str]:
    """Each row's chat messages rendered through the policy's chat template."""
    if column not in rows.column_names:
        raise ConfigError(f"data.messages_column {column!r} is not a column of {field}; "
                          f"its columns are {rows.column_names}")
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"data.messages_column {column!r}: the policy tokenizer has no chat template to render "
                          "the messages with; use data.prompt_column with plain-text prompts")
    return [render_messages(conversation, tokenizer, f"data.messages_column {column!r} of {field}, row {i}")
            for i, conversation in enumerate(rows[column])]
