"""Dtypes, attention kernels and gradient checkpointing: what the device can run, and switching them on. Plumbing."""

from __future__ import annotations

import importlib.util

import torch

from red_rlhf.config import ConfigError, PrecisionConfig

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
DTYPE_FIELDS = ("policy_dtype", "reference_dtype", "critic_dtype", "reward_dtype")


def torch_dtype(name: str) -> torch.dtype:
    return DTYPES[name]


def check_device(p: PrecisionConfig, device: torch.device) -> None:
    """Refuse, naming the field, any precision option this device cannot run."""
    halves = {f"precision.{name}": getattr(p, name) for name in DTYPE_FIELDS}
    halves["precision.mixed_precision"] = p.mixed_precision
    for field, value in halves.items():
        if value == "fp16" and device.type != "cuda":
            raise ConfigError(f"{field} 'fp16' needs a CUDA GPU (this run is on {device.type}): float16 matmuls "
                              "and loss scaling are GPU features; use 'bf16' or 'fp32'")
        if value == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"{field} 'bf16': this GPU ({torch.cuda.get_device_name(device)}) has no bfloat16 "
                              "support; use 'fp16' mixed precision on fp32 weights, or 'fp32'")
    if p.attn_implementation == "flash_attention_2":
        if importlib.util.find_spec("flash_attn") is None:
            raise ConfigError("precision.attn_implementation 'flash_attention_2' needs the flash-attn package "
                              "(pip install flash-attn --no-build-isolation); use 'sdpa' otherwise")
        if device.type != "cuda":
            raise ConfigError(f"precision.attn_implementation 'flash_attention_2' needs a CUDA GPU (this run is on "
                              f"{device.type}); use 'sdpa'")
        for name in ("policy_dtype", "reference_dtype", "critic_dtype"):
            if getattr(p, name) == "fp32" and p.mixed_precision == "no":
                raise ConfigError(f"precision.attn_implementation 'flash_attention_2' runs in bf16/fp16 only, but "
                                  f"precision.{name} is 'fp32' with no mixed precision; set it to 'bf16' or set "
                                  "precision.mixed_precision")


def attention_kwargs(p: PrecisionConfig) -> dict:
    """from_pretrained keyword for the chosen attention kernel ("auto": none, transformers decides)."""
    return {} if p.attn_implementation == "auto" else {"attn_implementation": p.attn_implementation}


def set_attention(model: torch.nn.Module, p: PrecisionConfig) -> None:
    """Switch a model built from a config (no from_pretrained) to the chosen attention kernel."""
    if p.attn_implementation != "auto":
        model.set_attn_implementation(p.attn_implementation)


def _train_while_grad(layer_class: type) -> type:
    """A subclass of a transformer layer class whose `training` reads True while autograd records (and whenever
    the module was put in train mode), so transformers checkpoints it in the update but not in generation."""

    def get(self) -> bool:
        return self.__dict__.get("_train_mode", False) or torch.is_grad_enabled()

    def set_(self, mode: bool) -> None:
        self.__dict__["_train_mode"] = mode

    return type(f"Checkpointed{layer_class.__name__}", (layer_class,), {"training": property(get, set_)})


def enable_gradient_checkpointing(model: torch.nn.Module) -> int:
    """Recompute every transformer layer in the backward pass; returns how many layers will.

    transformers checkpoints a layer only while that layer is in training mode, and our models stay in eval mode
    (no dropout in RL). A layer in training mode during generation is worse than slow: transformers < 5.2x then
    drops its KV cache (past_key_values=None) and the sampled tokens are silently wrong. So each checkpointed layer
    (the layer module only: its attention and MLP sub-modules, which hold the dropouts, stay in eval mode) reports
    training mode exactly while autograd records, i.e. in the update's forward and never under no_grad.
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    target = getattr(model, "trunk", model)  # our Critic: the transformer trunk
    recompute = {"use_reentrant": False}  # non-reentrant: gradients reach frozen embeddings' inputs (LoRA)
    if hasattr(target, "activation_checkpointing_enable"):  # transformers >= 5.2x; the older name is deprecated there
        target.activation_checkpointing_enable(activation_checkpointing_kwargs=recompute)
    else:
        target.gradient_checkpointing_enable(gradient_checkpointing_kwargs=recompute)
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not layers:
        raise ConfigError(f"precision.gradient_checkpointing: {type(target).__name__} has no checkpointable "
                          "transformer layers")
    classes: dict[type, type] = {}
    for layer in layers:
        if "_train_mode" not in layer.__dict__:  # not yet switched
            mode = layer.__dict__.pop("training")
            layer.__class__ = classes.setdefault(type(layer), _train_while_grad(type(layer)))
            layer.training = mode
    # With the model in eval mode the training forward would still fill a KV cache, and the recompute would append
    # to it a second time; generation keeps its cache (generation_config.use_cache is separate).
    target.config.use_cache = False
    return len(layers)
