"""Prompt data: loading, the train/eval split, and a seeded, resumable order of prompts."""

from __future__ import annotations

from pathlib import Path

import torch

from red_rlhf.config import ConfigError, DataConfig
from red_rlhf.data.jsonl import numbered_records


def read_prompts(path: str, field: str = "data.prompts") -> list[str]:
    """Prompts from a .txt file (one a line) or a .jsonl file (field "prompt"); "toy" gives the toy prompts."""
    return [prompt for _, prompt in read_prompt_lines(path, field)]


def read_prompt_lines(path: str, field: str = "data.prompts") -> list[tuple[int, str]]:
    """(line number, prompt) pairs of a prompt file (blank lines skipped); the toy prompts count from 1."""
    if path == "toy":
        from red_rlhf.data.toy import PROMPTS

        return list(enumerate(PROMPTS, start=1))
    file = Path(path).expanduser()
    if file.is_dir():
        raise ConfigError(f"{field}: {path} is a directory, not a prompt file (.txt or .jsonl)")
    if not file.is_file():
        raise ConfigError(f"{field}: prompt file {path} does not exist")
    if file.suffix == ".jsonl":
        try:
            prompts = [(number, r["prompt"]) for number, r in numbered_records(file, ("prompt",))]
        except ValueError as err:
            raise ConfigError(f"{field}: {err}") from err
    else:
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            line = file.read_bytes()[: err.start].count(b"\n") + 1
            raise ConfigError(f"{field}: {path}, line {line}: not UTF-8 text ({err.reason})") from None
        prompts = [(number, line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not prompts:
        raise ConfigError(f"{field}: {path} holds no prompts")
    return prompts


def train_eval_prompts(cfg: DataConfig) -> tuple[list[str], list[str]]:
    prompts = read_prompts(cfg.prompts)
    if cfg.eval_prompts is not None:
        return prompts, read_prompts(cfg.eval_prompts, "data.eval_prompts")
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
