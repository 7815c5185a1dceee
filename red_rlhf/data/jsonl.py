"""Reading JSON-lines files of records with required string fields, with errors that name file and line."""

from __future__ import annotations

import json
from pathlib import Path

from red_rlhf.data.text import read_text


def read_records(path: str | Path, fields: tuple[str, ...]) -> list[dict]:
    """Records (dicts) from a JSON-lines file; each needs every field in `fields` as a string. Blank lines skip.

    Raises FileNotFoundError for a missing file and ValueError naming the line for anything malformed.
    """
    return [record for _, record in numbered_records(path, fields)]


def numbered_records(path: str | Path, fields: tuple[str, ...]) -> list[tuple[int, dict]]:
    """(line number, record) pairs of a JSON-lines file, checked as by read_records."""
    file = Path(path)
    if file.is_dir():
        raise FileNotFoundError(f"input file {path} is a directory, not a JSON-lines file")
    if not file.is_file():
        raise FileNotFoundError(f"input file {path} does not exist")
    try:
        lines = read_text(file).splitlines()  # UTF-8, its byte-order mark removed (data/text.py)
    except OSError as err:
        raise ValueError(f"cannot read {path}: {err.strerror or err}") from err
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {number}: not valid JSON ({err.msg})") from err
        if not isinstance(record, dict) or not all(isinstance(record.get(f), str) for f in fields):
            names = ", ".join(f'"{f}"' for f in fields)
            raise ValueError(f"{path}, line {number}: each line needs string field(s) {names}")
        records.append((number, record))
    if not records:
        raise ValueError(f"{path} holds no records")
    return records


def read_responses(path: str | Path) -> tuple[list[str], list[str]]:
    """Prompts and responses to score, from a JSON-lines file with fields "prompt" and "response"."""
    records = read_records(path, ("prompt", "response"))
    return [r["prompt"] for r in records], [r["response"] for r in records]
