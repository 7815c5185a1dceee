"""Atomic checkpoints: a kill during a save never leaves a broken latest checkpoint.

Layout: OUTPUT_DIR/checkpoints/step-000010/{state.pt, rng-rank0.pt, ...} and OUTPUT_DIR/checkpoints/latest, a
one-line file naming the newest complete step directory. A save writes a hidden temporary directory, renames it
into place (atomic on one file system), and only then rewrites `latest` (also by rename).
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import torch


def _root(out: Path) -> Path:
    return Path(out) / "checkpoints"


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Only what training changes (all weights, or the LoRA adapters): the frozen base is rebuilt from its source."""
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    expected = {name for name, p in model.named_parameters() if p.requires_grad}
    if set(state) != expected:
        missing, extra = sorted(expected - set(state))[:3], sorted(set(state) - expected)[:3]
        raise ValueError(f"checkpoint does not fit this model (missing {missing}, unexpected {extra}): "
                         "resume with the config that wrote it")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(out: Path, step: int, state: dict, accelerator, keep: int = 2) -> Path:
    root = _root(out)
    final, tmp = root / f"step-{step:06d}", root / f".tmp-step-{step:06d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(_rng_state(), tmp / f"rng-rank{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        torch.save(state, tmp / "state.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer = root / ".latest.tmp"
        pointer.write_text(final.name + "\n")
        os.replace(pointer, root / "latest")
        steps = sorted(p for p in root.glob("step-*") if p.is_dir())
        for old in steps[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def latest(out: Path, must_exist: bool = True) -> Path | None:
    pointer = _root(out) / "latest"
    if not pointer.is_file():
        if must_exist:
            raise FileNotFoundError(f"no checkpoint to resume from in {_root(out)}")
        return None
    path = _root(out) / pointer.read_text().strip()
    if not (path / "state.pt").is_file():
        raise FileNotFoundError(f"checkpoint {path} named by {pointer} is missing its state.pt")
    return path


def load(path: Path, accelerator) -> dict:
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    rng = path / f"rng-rank{accelerator.process_index}.pt"
    if not rng.is_file():
        raise FileNotFoundError(f"{rng} is missing: resume with as many processes as the run that saved {path}")
    _set_rng_state(torch.load(rng, weights_only=False))
    return state
