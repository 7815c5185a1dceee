"""Atomic, sharding-safe checkpoints that load no code.

Layout: OUTPUT_DIR/checkpoints/step-000010/ and OUTPUT_DIR/checkpoints/latest, a one-line file naming the newest
complete step directory. A save writes a hidden temporary directory, renames it into place (atomic on one file
system), and only then rewrites `latest` (also by rename). A kill at any point leaves `latest` on a complete one.

What a step directory holds (models and optimisers are written by accelerate's save_state, so DDP, FSDP and
DeepSpeed each get their own layout; model 0 is the policy, model 1 the critic):
    model.safetensors, model_1.safetensors      one process / DDP: full weights
    optimizer.bin, optimizer_1.bin              optimiser states, read back with weights_only=True
    pytorch_model_fsdp_0/, optimizer_0/, ...    FSDP SHARDED_STATE_DICT: one __RANK_0.distcp shard per process and a
                                                .metadata index (torch.distributed.checkpoint)
    trainer.json                                step, KL coefficient, prompt order, Lagrange multipliers, LR schedules
    rng-rank{i}.json, rng-rank{i}.safetensors   each process's python / numpy (JSON) and torch (tensors) RNG states

Nothing is unpickled as arbitrary objects: JSON and safetensors cannot hold code; before loading, every torch pickle
is checked against torch's weights_only allow-list (tensors, numbers, containers), and a sharded checkpoint's
.metadata and non-tensor items (which torch itself unpickles freely) against DCP's own dataclasses and
weights_only. A tampered file is refused with CheckpointError naming it.
"""

from __future__ import annotations

import dataclasses
import enum
import io
import json
import os
import pickle
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

TRAINER_STATE = "trainer.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded safely or does not fit this run; the message names the file."""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint file that is truncated, missing or unreadable (an earlier checkpoint may still be whole)."""


def _root(out: Path) -> Path:
    return Path(out) / "checkpoints"


# ---------------------------------------------------------------- RNG states as JSON + safetensors


def _rng_files(directory: Path, rank: int) -> tuple[Path, Path]:
    return directory / f"rng-rank{rank}.json", directory / f"rng-rank{rank}.safetensors"


def save_rng(directory: Path, rank: int) -> None:
    from safetensors.torch import save_file

    version, mt_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    plain = {"python": [version, list(mt_state), gauss],
             "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    as_json, as_tensors = _rng_files(directory, rank)
    as_json.write_text(json.dumps(plain))
    save_file(tensors, str(as_tensors))


def load_rng(directory: Path, rank: int) -> None:
    from safetensors.torch import load_file

    as_json, as_tensors = _rng_files(directory, rank)
    for file in (as_json, as_tensors):
        if not file.is_file():
            raise CheckpointError(f"{file} is missing: resume with as many processes as the run that saved {directory}")
    plain, tensors = _read_json(as_json), _read_safetensors(as_tensors, load_file)
    version, mt_state, gauss = plain["python"]
    random.setstate((version, tuple(mt_state), gauss))
    kind, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda{i}"] for i in range(len(tensors) - 1)]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def _reason(err: Exception) -> str:
    """The line of a weights_only refusal that names the class or function the pickle asked for."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()] or [type(err).__name__]
    return next((line for line in lines if "Unsupported global" in line), lines[0])


def _read_json(file: Path) -> dict:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DamagedCheckpointError(f"{file} is not valid JSON ({err}): the checkpoint is damaged") from err


def _read_safetensors(file: Path, load_file) -> dict:
    try:
        return load_file(str(file))
    except Exception as err:  # safetensors raises its own SafetensorError on a damaged header
        raise DamagedCheckpointError(f"{file} is not a valid safetensors file ({err}): the checkpoint is damaged") from err


# ---------------------------------------------------------------- save / find / load


PICKLED = (".bin", ".pt", ".pth", ".pkl")


def check_files(directory: Path) -> None:
    """Raise CheckpointError naming the file if a safetensors header under `directory` is damaged, or if a torch
    pickle names a class or function outside torch's weights_only allow-list (tensors, numbers, containers): such a
    file could run code when unpickled. Reads headers and pickle opcodes only, no tensor data."""
    from safetensors import safe_open

    for file in sorted(Path(directory).rglob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as f:
                f.keys()
        except Exception as err:  # safetensors' own SafetensorError
            raise DamagedCheckpointError(f"{file} is not a valid safetensors file ({err}): the checkpoint is "
                                         "damaged") from err
    for file in sorted(p for p in Path(directory).rglob("*") if p.suffix in PICKLED and p.is_file()):
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(file))
        except Exception as err:  # not a torch zip file at all
            raise DamagedCheckpointError(f"{file} is not a torch tensor file ({err}): the checkpoint is damaged") from err
        if unsafe:
            raise CheckpointError(f"{file} asks to unpickle {', '.join(unsafe)}, which is not tensor data; refusing to "
                                  "load it, as unpickling it could run code. red-rlhf never writes such files: the "
                                  "checkpoint was altered")
    for meta in sorted(Path(directory).rglob(".metadata")):
        check_sharded(meta.parent)


# What torch.distributed.checkpoint's `.metadata` pickle (FSDP's sharded state) may name besides its own dataclasses
_DCP_GLOBALS = {("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PurePosixPath"), ("torch", "Size"),
                ("torch.serialization", "_get_layout"), ("collections", "OrderedDict")}
_DCP_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem")


class _DCPMetadataUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        obj = super().find_class(module, name) if module.startswith(("torch", "pathlib", "collections")) else None
        plain_class = isinstance(obj, type) and (dataclasses.is_dataclass(obj) or issubclass(obj, enum.Enum))
        if ((module, name) in _DCP_GLOBALS or (module in _DCP_MODULES and plain_class)
                or (module == "torch" and isinstance(obj, torch.dtype))):
            return obj
        raise pickle.UnpicklingError(f"Unsupported global: {module}.{name}")


def check_sharded(directory: Path) -> None:
    """A torch.distributed.checkpoint directory (FSDP's SHARDED_STATE_DICT): torch reads its `.metadata` with
    pickle.load and its non-tensor items with torch.load(weights_only=False), so both are checked here first: the
    metadata with an unpickler that knows only DCP's own dataclasses, each non-tensor item with weights_only=True."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    meta_file = directory / ".metadata"
    try:
        with open(meta_file, "rb") as f:
            meta = _DCPMetadataUnpickler(f).load()
    except Exception as err:
        raise CheckpointError(f"{meta_file} holds more than sharded-checkpoint metadata ({err}); refusing to load it, "
                              "as unpickling it could run code: the checkpoint was altered or damaged") from err
    for index, info in meta.storage_data.items():
        if not isinstance(meta.state_dict_metadata.get(index.fqn), BytesStorageMetadata):
            continue  # tensors: torch reads them with weights_only=True
        item = directory / info.relative_path
        if getattr(info, "transform_descriptors", None):
            raise CheckpointError(f"{item}: item {index.fqn} is stored transformed (compressed); it cannot be checked")
        with open(item, "rb") as f:
            f.seek(info.offset)
            blob = f.read(info.length)
        try:
            torch.load(io.BytesIO(blob), weights_only=True)
        except Exception as err:
            raise CheckpointError(f"{item}: item {index.fqn} holds pickled objects other than plain data "
                                  f"({_reason(err)}); refusing to load it, as unpickling it "
                                  "could run code: the checkpoint was altered") from err


def save(out: Path, step: int, trainer_state: dict, accelerator, keep: int = 2) -> Path:
    """Write step-{step} atomically: accelerate's state (models, optimisers; sharded under FSDP), then ours.

    `trainer_state` must be JSON-serialisable (plain numbers, strings, lists, dicts).
    """
    root = _root(out)
    final, tmp = root / f"step-{step:06d}", root / f".tmp-step-{step:06d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp), safe_serialization=True)
        # accelerate's own RNG file is a pickle; ours (JSON + safetensors) replaces it
        (tmp / f"random_states_{accelerator.process_index}.pkl").unlink(missing_ok=True)
        save_rng(tmp, accelerator.process_index)
        if accelerator.is_main_process:
            (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=1))
    except (OSError, RuntimeError) as err:  # a full disk: OSError ENOSPC, or torch's "unexpected pos" for a pickle
        shutil.rmtree(tmp, ignore_errors=True)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"writing a checkpoint to {tmp} failed ({first}): is the disk full? The last complete "
                              "checkpoint is kept; free space and --resume") from err
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer = root / ".latest.tmp"
        pointer.write_text(final.name + "\n")
        os.replace(pointer, root / "latest")
        for old in to_rotate(root, step, keep):
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def step_dirs(root: Path) -> list[tuple[int, Path]]:
    """(step, directory) of every step-NNNNNN directory under `root`, by step (not by name: step-1000000 sorts
    by name before step-999999)."""
    found = []
    for p in Path(root).glob("step-*"):
        match = re.fullmatch(r"step-(\d+)", p.name)
        if match and p.is_dir():
            found.append((int(match.group(1)), p))
    return sorted(found)


def to_rotate(root: Path, step: int, keep: int) -> list[Path]:
    """The checkpoints a save of `step` removes: those of earlier steps beyond the `keep` newest (the one just
    written counts). Checkpoints of later steps are left alone: they are not this run's to delete (a run that
    resumed from an earlier, whole checkpoint overwrites them when it reaches their step)."""
    earlier = [p for s, p in step_dirs(root) if s <= step]
    return earlier[:-keep] if keep > 0 else []


def holds_checkpoints(out: Path) -> bool:
    """Whether OUTPUT_DIR/checkpoints holds a `latest` pointer or any step directory (whatever `latest` says)."""
    root = _root(out)
    return (root / "latest").exists() or bool(step_dirs(root))


def _pointed(out: Path) -> tuple[Path | None, str]:
    """What `latest` names, if it names an existing step directory; else None and why not (for the message)."""
    root = _root(out)
    pointer = root / "latest"
    if not pointer.is_file():
        return None, f"{pointer} is missing"
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        return None, f"{pointer} cannot be read ({err})"
    if not name:
        return None, f"{pointer} is empty"
    if not re.fullmatch(r"step-\d+", name):
        return None, f"{pointer} names {name[:60]!r}, which is not a step-NNNNNN checkpoint directory"
    if not (root / name).is_dir():
        return None, f"{pointer} names {name}, which does not exist"
    return root / name, ""


def latest(out: Path, must_exist: bool = True, say=None) -> Path | None:
    """The newest checkpoint: the step directory `latest` names; when `latest` is missing, empty or names no
    directory, the newest step directory by step, and `say` (print, by default) is told why. None (or
    FileNotFoundError with must_exist) when there is none."""
    path, why = _pointed(out)
    if path is None:
        steps = step_dirs(_root(out))
        if not steps:
            if must_exist:
                raise FileNotFoundError(f"no checkpoint to resume from in {_root(out)}"
                                        + (f" ({why})" if "missing" not in why else ""))
            return None
        path = steps[-1][1]
        (say or print)(f"{why}; using the newest checkpoint by step, {path.name}")
    if (path / "state.pt").is_file() and not (path / TRAINER_STATE).is_file():
        raise CheckpointError(f"{path} holds its trainer state as a pickle (state.pt), which red-rlhf does not "
                              "load because unpickling can run code; start a new run, or resume with the red-rlhf "
                              "that wrote it")
    return path  # whether its files are whole is `verify`'s question (see `usable`)


def verify(path: Path) -> dict:
    """Read what can be checked without loading: trainer.json, every safetensors header, every pickle's opcodes.
    Returns trainer.json's contents."""
    state = read_trainer_state(path)
    check_files(Path(path))
    return state


def usable(out: Path) -> Path:
    """The checkpoint to resume from: the latest, or, when its files are damaged (a truncated file, a full disk),
    the newest earlier complete one, saying so. A checkpoint that was altered to run code is never skipped."""
    path = latest(out)
    try:
        verify(path)
        return path
    except DamagedCheckpointError as err:
        step = int(path.name.split("-")[1])
        earlier = [p for s, p in reversed(step_dirs(_root(out))) if s < step]
        for candidate in earlier:
            try:
                verify(candidate)
            except DamagedCheckpointError:
                continue
            print(f"{err}\nresuming from the previous complete checkpoint, {candidate.name}, instead")
            return candidate
        raise


def read_trainer_state(path: Path) -> dict:
    """trainer.json of a checkpoint (DamagedCheckpointError naming it when missing or not JSON)."""
    file = Path(path) / TRAINER_STATE
    if not file.is_file():
        raise DamagedCheckpointError(f"checkpoint {path} is incomplete: its {TRAINER_STATE} is missing")
    return _read_json(file)


def load(path: Path, accelerator, strict: bool = True) -> None:
    """Restore the prepared models and optimisers (accelerate's load_state) and this process's RNG states, from a
    checkpoint that passed `verify` (which refuses any file that would unpickle more than plain tensors).
    strict=False: the weights files hold only the trainable weights (the caller checked which; frozen.py)."""
    path = Path(path)
    try:
        accelerator.load_state(str(path), **({} if strict else {"strict": False}))  # optimiser files: torch.load(weights_only=True) with accelerate's allow-list
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{path}: a file in this checkpoint holds pickled objects other than tensors "
                              f"({_reason(err)}); refusing to load it, as unpickling them could run code. "
                              "red-rlhf never writes such files: the checkpoint was altered") from err
    except FileNotFoundError as err:
        raise DamagedCheckpointError(f"checkpoint {path} is incomplete: {err.filename or err} is missing") from err
    except (RuntimeError, KeyError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {path} does not fit this run's models or optimisers ({first}): resume "
                              "with the config that wrote it") from err
    load_rng(path, accelerator.process_index)
