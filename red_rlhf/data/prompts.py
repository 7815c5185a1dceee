"""Prompt data: loading, the train/eval split, and a seeded, resumable order of prompts."""

from __future__ import annotations

from pathlib import Path

import torch

from red_rlhf.config import ConfigError, DataConfig
from red_rlhf.data.datasets_source import BUILDERS, column_prompts, load_rows, looks_like_path, messages_prompts
from red_rlhf.data.jsonl import read_records


def read_prompts(path: str, field: str = "data.prompts", *, split: str = "train", column: str = "prompt",
                 messages_column: str | None = None, tokenizer=None) -> list[str]:
    """Prompts from a .txt file (one a line), a .jsonl file (string field `column`), "toy" (the toy prompts), or a
    `datasets` source (see datasets_source: parquet/json/csv/arrow files, directories, hub names), whose `column`
    holds strings or whose `messages_column` holds chats rendered with `tokenizer`'s chat template."""
    if path == "toy":
        from red_rlhf.data.toy import PROMPTS

        return list(PROMPTS)
    file = Path(path).expanduser()
    plain = file.is_file() and (file.suffix not in BUILDERS or (file.suffix == ".jsonl" and messages_column is None))
    if not plain:
        if not file.exists() and looks_like_path(path):
            raise ConfigError(f"{field}: prompt file {path} does not exist")
        rows = load_rows(path, split, field)
        if messages_column:
            return messages_prompts(rows, messages_column, field, tokenizer)
        return column_prompts(rows, column, field, "data.prompt_column")
    if file.suffix == ".jsonl":
        try:
            prompts = [r[column] for r in read_records(file, (column,))]
        except ValueError as err:
            raise ConfigError(f"{field}: {err}") from err
    else:
        prompts = [line for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ConfigError(f"{field}: {path} holds no prompts")
    return prompts


def train_eval_prompts(cfg: DataConfig, tokenizer=None, *, max_prompt_tokens: int | None = None,
                       chat_template: bool = False) -> tuple[list[str], list[str]]:
    """(training prompts, held-out prompts). With a tokenizer and max_prompt_tokens, every prompt's length is
    checked here, before training, so an over-long prompt fails now rather than at the step that samples it."""
    columns = dict(column=cfg.prompt_column, messages_column=cfg.messages_column, tokenizer=tokenizer)
    prompts = read_prompts(cfg.prompts, split=cfg.split, **columns)
    if cfg.eval_prompts is not None:
        held_out = read_prompts(cfg.eval_prompts, "data.eval_prompts", split=cfg.eval_split or cfg.split, **columns)
        prompts = (prompts, held_out)
    elif cfg.eval_size == 0:
        prompts = (prompts, [])
    elif cfg.eval_size >= len(prompts):
        raise ConfigError(f"data.eval_size={cfg.eval_size} leaves no training prompts out of {len(prompts)}")
    else:
        prompts = (prompts[: -cfg.eval_size], prompts[-cfg.eval_size:])
    if tokenizer is not None and max_prompt_tokens is not None:
        for field, texts in zip(("data.prompts", "data.eval_prompts"), prompts):
            check_prompt_lengths(tokenizer, texts, max_prompt_tokens, chat_template, field)
    return prompts


def check_prompt_lengths(tokenizer, prompts: list[str], max_tokens: int, chat_template: bool, field: str) -> None:
    """Every prompt fits rollout.max_prompt_tokens (encoded as the rollout encodes it); the error names the prompt."""
    if chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError("policy.chat_template is set but the policy tokenizer has no chat template")
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                 add_generation_prompt=True) for p in prompts]
    if not prompts:
        return
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=not chat_template).input_ids]
    for i, n in enumerate(lengths):
        if n > max_tokens:
            raise ConfigError(f"{field}: prompt {i} ({prompts[i]!r:.60}) has {n} tokens, more than "
                              f"rollout.max_prompt_tokens={max_tokens}: shorten it or raise the limit")


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
