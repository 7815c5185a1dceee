"""Checkpoints hold what training changes: a model's frozen weights (a LoRA policy's base) stay out of them.

With LoRA the policy's base model never changes, yet a full state dict would store it in every checkpoint (517 MB
of the demo's 1.7 GB for SmolLM2-135M, next to 7 MB of adapters). `keep_trainable` is an accelerate save hook that
drops every parameter with requires_grad=False from the weights accelerate writes (model.safetensors,
model_1.safetensors): adapters and the fully trained critic stay, the base goes. On resume the base is rebuilt from
its source (policy.name_or_path, as at the start of the run) and `fingerprint` checks that it is the same one the
checkpoint's adapters were trained on, refusing by name when it is not. The optimiser states hold only trainable
parameters anyway.

FSDP and DeepSpeed write their own (sharded) layouts through accelerate, which this hook cannot filter: there a
checkpoint holds the whole model.

The same hook drops the second name of weights tied to one tensor (GPT-2's lm_head and embedding): accelerate would
drop it too, with a warning at every save ("Removed shared tensor ... while saving") that a user cannot act on;
loading restores the tie from the remaining name.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch


def _bare(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP / torch.compile wrappers: the names accelerate's weights files use."""
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model)


def _name(key: str) -> str:
    return key.removeprefix("module.")  # a state dict taken through DDP's wrapper


def frozen_names(model: torch.nn.Module) -> set[str]:
    """State-dict names of the parameters training does not change (every alias of a tied one)."""
    return {name for name, p in _bare(model).named_parameters(remove_duplicate=False) if not p.requires_grad}


def _drop_aliases(weights: dict) -> dict:
    """One name per tensor storage (tied weights), the first in the state dict's order."""
    seen, kept = set(), {}
    for name, tensor in weights.items():
        if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
            key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
            if key in seen:
                continue
            seen.add(key)
        kept[name] = tensor
    return kept


def keep_trainable(models: list, weights: list[dict], output_dir) -> None:
    """accelerate save_state pre-hook: leave in each model's weights only what training changes (in place)."""
    for i, (model, state) in enumerate(zip(models, weights)):
        frozen = frozen_names(model)
        kept = _drop_aliases({k: v for k, v in state.items() if _name(k) not in frozen})
        weights[i] = kept


def expected_names(model: torch.nn.Module) -> list[list[str]]:
    """For each trainable parameter tensor, the names it may be stored under (tied aliases share a tensor)."""
    by_tensor: dict[int, list[str]] = {}
    for name, p in _bare(model).named_parameters(remove_duplicate=False):
        if p.requires_grad:
            by_tensor.setdefault(id(p), []).append(name)
    return list(by_tensor.values())


def check_weights_file(model: torch.nn.Module, file, what: str) -> None:
    """Raise ValueError naming the file when it lacks a trainable parameter of `model` (a checkpoint of another
    LoRA rank, other target modules, another critic) or holds names the model does not have."""
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        stored = {_name(key) for key in f.keys()}
    missing = [names[0] for names in expected_names(model) if not stored.intersection(names)]
    unknown = sorted(stored - set(_bare(model).state_dict().keys()))
    if missing or unknown:
        parts = ([f"lacks {len(missing)} trainable weight(s) of the {what} (e.g. {missing[0]})"] if missing else []) + (
            [f"holds {len(unknown)} weight(s) the {what} does not have (e.g. {unknown[0]})"] if unknown else [])
        raise ValueError(f"{file} {' and '.join(parts)}")


def fingerprint(model: torch.nn.Module) -> str | None:
    """sha256 of the frozen parameters (names, dtypes, shapes, bytes), or None when every parameter trains. Prefix
    wrappers (DDP's module., peft's base_model.model.) do not matter: the same wrapping produces the same names."""
    frozen = sorted((name, p) for name, p in model.named_parameters() if not p.requires_grad)
    if not frozen:
        return None
    digest = hashlib.sha256()
    for name, p in frozen:
        data = p.detach().cpu().contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def check_checkpoint_weights(path: Path, models: list[tuple[str, torch.nn.Module]]) -> None:
    """A trainable-only checkpoint's weights files (model.safetensors, model_1.safetensors in the order the models
    were prepared) hold every trainable weight of this run's models; CheckpointError naming the file if not."""
    from red_rlhf.training.checkpoint import CheckpointError, DamagedCheckpointError

    for i, (what, model) in enumerate(models):
        file = path / ("model.safetensors" if i == 0 else f"model_{i}.safetensors")
        if not file.is_file():
            raise DamagedCheckpointError(f"checkpoint {path} is incomplete: {file} is missing")
        try:
            check_weights_file(model, file, what)
        except ValueError as err:
            raise CheckpointError(f"{err}: it does not fit this run's {what}; resume with the config that wrote "
                                  "it") from None


def check_fingerprints(path: Path, saved: dict, now: dict, sources: dict[str, str]) -> None:
    """The frozen weights rebuilt from their sources are those the checkpoint was trained on."""
    from red_rlhf.training.checkpoint import CheckpointError

    for name, before in saved.items():
        if before is not None and now.get(name) != before:
            raise CheckpointError(
                f"{path}: the frozen weights of the {name} loaded from {sources.get(name, '?')} differ from those the "
                f"checkpoint was trained on (fingerprint {now.get(name)} != {before}); the checkpoint stores only what "
                "training changes, so it must be resumed on the same base model: restore that model at its path")
