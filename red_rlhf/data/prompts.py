"""Prompt data: loading, the train/eval split, and a seeded, resumable order of prompts."""

from __future__ import annotations

from pathlib import Path

import torch

from red_rlhf.config import ConfigError, DataConfig
from red_rlhf.data.datasets_source import BUILDERS, column_prompts, load_rows, looks_like_path, messages_prompts
from red_rlhf.data.jsonl import numbered_records
from red_rlhf.data.text import NotUTF8, read_text


def read_prompts(path: str, field: str = "data.prompts", **source) -> list[str]:
    """Prompts from a .txt file (one a line), a .jsonl file (string field "prompt", or `column`), "toy" (the toy
    prompts), or a `datasets` source (see read_prompt_lines)."""
    return [prompt for _, prompt in read_prompt_lines(path, field, **source)]


def is_datasets_source(path: str, messages_column: str | None = None) -> bool:
    """Read through Hugging Face `datasets` (parquet/json/csv/arrow files, directories, hub names), not as lines."""
    if path == "toy":
        return False
    file = Path(path).expanduser()
    if file.is_file():
        return file.suffix in BUILDERS and not (file.suffix == ".jsonl" and messages_column is None)
    return file.is_dir() or not looks_like_path(path)


def read_prompt_lines(path: str, field: str = "data.prompts", *, split: str = "train", column: str = "prompt",
                      messages_column: str | None = None, tokenizer=None) -> list[tuple[int, str]]:
    """(line number, prompt) pairs of a prompt file (blank lines skipped); the toy prompts count from 1.

    A `datasets` source gives (row index, prompt): the strings of `column` of `split`, or the chats of
    `messages_column` rendered with `tokenizer`'s chat template (datasets_source)."""
    if path == "toy":
        from red_rlhf.data.toy import PROMPTS

        return list(enumerate(PROMPTS, start=1))
    file = Path(path).expanduser()
    if is_datasets_source(path, messages_column):
        rows = load_rows(path, split, field)
        prompts = (messages_prompts(rows, messages_column, field, tokenizer) if messages_column
                   else column_prompts(rows, column, field, "data.prompt_column"))
        return list(enumerate(prompts))
    if not file.is_file():
        raise ConfigError(f"{field}: prompt file {path} does not exist")
    if file.suffix == ".jsonl":
        try:
            prompts = [(number, r[column]) for number, r in numbered_records(file, (column,))]
        except ValueError as err:
            raise ConfigError(f"{field}: {err}") from err
    else:
        try:
            text = read_text(file)
        except NotUTF8 as err:
            raise ConfigError(f"{field}: {err}") from None
        prompts = [(number, line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not prompts:
        raise ConfigError(f"{field}: {path} holds no prompts")
    return prompts


def source_options(cfg: DataConfig, tokenizer=None, eval: bool = False) -> dict:
    """The data config's options for read_prompt_lines (split, column, chat messages) of data.prompts or
    data.eval_prompts."""
    return dict(split=(cfg.eval_split or cfg.split) if eval else cfg.split, column=cfg.prompt_column,
                messages_column=cfg.messages_column, tokenizer=tokenizer)


def train_eval_prompts(cfg: DataConfig, tokenizer=None) -> tuple[list[str], list[str]]:
    """(training prompts, held-out prompts). The tokenizer renders a messages_column through its chat template."""
    prompts = read_prompts(cfg.prompts, **source_options(cfg, tokenizer))
    if cfg.eval_prompts is not None:
        return prompts, read_prompts(cfg.eval_prompts, "data.eval_prompts", **source_options(cfg, tokenizer, eval=True))
    if cfg.eval_size == 0:
        return prompts, []
    if cfg.eval_size >= len(prompts):
        raise ConfigError(f"data.eval_size={cfg.eval_size} leaves no training prompts out of {len(prompts)}")
    return prompts[: -cfg.eval_size], prompts[-cfg.eval_size:]


class PromptOrder:
    """Endless, seeded shuffles of the prompts; each process takes every world_size-th prompt of a shuffle.

    The whole state is (epoch, position): saved in checkpoints, so a resumed run sees the same prompts.
    """

    def __init__(self, prompts: list[str], seed: int, rank: int = 0, world_size: int = 1):
        if not prompts:
            raise ConfigError("data.prompts: the prompt list is empty")
        self.prompts, self.seed, self.rank, self.world_size = prompts, seed, rank, world_size
        self.epoch, self.position = 0, 0

    def _shuffle(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(len(self.prompts), generator=g).tolist()

    def next_batch(self, size: int) -> list[str]:
        """The next `size` prompts of this process (global order: position, position + 1, ... of the shuffle)."""
        out = []
        order = self._shuffle()
        while len(out) < size:
            index = self.position + self.rank
            if index >= len(order):
                self.epoch, self.position = self.epoch + 1, 0
                order = self._shuffle()
                continue
            out.append(self.prompts[order[index]])
            self.position += self.world_size
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
