"""Building the models a run needs: policy (+ LoRA), reference, critic, reward source. Plumbing only."""

from __future__ import annotations

import contextlib
import copy
import importlib
import os

import torch

from red_rlhf.config import Config, ConfigError, SourceConfig
from red_rlhf.models.precision import attention_kwargs, enable_gradient_checkpointing, set_attention, torch_dtype
from red_rlhf.models.sources import FunctionReward, HFRewardModel


class Critic(torch.nn.Module):
    """A transformer trunk and a linear head: one value per position, (B, T)."""

    def __init__(self, trunk: torch.nn.Module, head: torch.nn.Module):
        super().__init__()
        self.trunk, self.head = trunk, head

    def forward(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        hidden = self.trunk(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)[0]  # (B, T, H)
        return self.head(hidden).squeeze(-1).float()


def critic_from_reward_model(reward_model: torch.nn.Module, zero_head: bool = False) -> Critic:
    """The reward model's trunk and score head, copied: values start out as the prefix scores.

    With `zero_head` the head starts at zero instead (values start at 0). That suits RED: its return-to-go from
    token t is score(end) - score(before t), an expected improvement near 0, not the prefix score itself.
    """
    if not isinstance(getattr(reward_model, "score", None), torch.nn.Module):
        raise ConfigError(f"algo.critic_init 'reward' / 'reward-trunk' needs a decoder reward model with a `score` "
                          f"head; {type(reward_model).__name__} has none: use 'policy'")
    head = copy.deepcopy(reward_model.score)
    if zero_head:
        for param in head.parameters():
            torch.nn.init.zeros_(param)
    return Critic(copy.deepcopy(reward_model.base_model), head)


def critic_from_policy(policy: torch.nn.Module) -> Critic:
    """The policy's trunk, copied, with a new zero-initialised value head (values start at 0)."""
    head = torch.nn.Linear(policy.config.hidden_size, 1, bias=True)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    return Critic(copy.deepcopy(policy.base_model), head)


def load_policy(cfg: Config):
    """(policy, tokenizer). "toy" builds the toy task's tiny model; anything else goes to from_pretrained."""
    name = os.path.expanduser(cfg.policy.name_or_path)
    if name == "toy":
        from red_rlhf.models.tiny import toy_policy, toy_tokenizer

        tokenizer = toy_tokenizer()
        policy = toy_policy(tokenizer, seed=cfg.train.seed).to(torch_dtype(cfg.precision.policy_dtype))
        set_attention(policy, cfg.precision)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(name)
            policy = AutoModelForCausalLM.from_pretrained(name, dtype=torch_dtype(cfg.precision.policy_dtype),
                                                         **attention_kwargs(cfg.precision))
        except OSError as err:
            raise ConfigError(f"policy.name_or_path: cannot load {name!r}: {str(err).splitlines()[0]}") from err
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"policy.name_or_path: the tokenizer of {name!r} has no EOS token; responses could never end")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # safe: masks come from lengths, never from ids != pad
    return policy.eval(), tokenizer  # eval: no dropout in RL; gradients still flow


def apply_lora(policy, cfg: Config):
    """Wrap the policy in LoRA adapters (peft) when policy.lora_r > 0; only the adapters train."""
    if not cfg.policy.lora_r:
        return policy
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:
        raise ConfigError("policy.lora_r > 0 needs peft: pip install 'red-rlhf[lora]'") from err
    lora = LoraConfig(r=cfg.policy.lora_r, lora_alpha=cfg.policy.lora_alpha, lora_dropout=0.0,
                      target_modules=cfg.policy.lora_target_modules, task_type="CAUSAL_LM")
    return get_peft_model(policy, lora).eval()


def reference_model(policy, cfg: Config):
    """A frozen copy of the initial policy, or None with LoRA (the base with adapters disabled is the reference)."""
    if cfg.policy.lora_r:
        return None
    ref = copy.deepcopy(policy).eval().to(torch_dtype(cfg.precision.reference_dtype))
    ref.requires_grad_(False)
    return ref


def apply_precision(cfg: Config, policy, critic, ref, rewards: list, device: torch.device) -> None:
    """After the models are built (and LoRA applied): the critic's and HF reward models' dtypes, and gradient
    checkpointing of policy and critic. The policy was loaded in its dtype, the reference copies take theirs.
    The frozen models (reference, HF reward models), which accelerate does not prepare, move to `device` here.

    HF reward models are loaded in float32 and then cast (their loader is in sources.py): the float32 copy is
    transient, on the CPU.
    """
    p = cfg.precision
    if critic is not None:
        critic.to(torch_dtype(p.critic_dtype))
    for reward in rewards:
        if isinstance(reward, HFRewardModel):
            reward.model.to(device=device, dtype=torch_dtype(p.reward_dtype))
    if ref is not None:
        ref.to(device)
    if p.gradient_checkpointing:
        enable_gradient_checkpointing(policy)
        if critic is not None:
            enable_gradient_checkpointing(critic)


@contextlib.contextmanager
def as_reference(policy, ref):
    """Yields the model to compute reference log-probs with: ref, or the LoRA policy with its adapters off."""
    if ref is not None:
        yield ref
    else:
        with policy.disable_adapter():
            yield policy


# Modules that moved in the 0.2 layout: a function path naming the old module still loads, with a notice.
MOVED_MODULES = {"red_rlhf.toy": "red_rlhf.data.toy"}


def import_function(path: str, where: str = "reward.function"):
    module_name, _, attr = path.partition(":")
    if module_name in MOVED_MODULES:
        print(f"notice: {where}: module {module_name} is now {MOVED_MODULES[module_name]}; update {path!r}")
        module_name = MOVED_MODULES[module_name]
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"{where}: cannot import {path!r}: {err}") from err
    if not callable(fn):
        raise ConfigError(f"{where}: {path!r} is not callable")
    return fn


def load_source(source: SourceConfig, where: str = "reward"):
    """One reward source: an HFRewardModel or a FunctionReward; load errors name the source."""
    if source.function is not None:
        return FunctionReward(import_function(source.function, f"{where}.function"), takes_prompt=source.takes_prompt,
                              name=source.function)
    try:
        return HFRewardModel.from_pretrained(os.path.expanduser(source.model), mode=source.mode, format=source.format,
                                             attn_implementation="eager" if source.scheme == "abc" else None)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{where}.model: cannot load {source.model!r}: {str(err).splitlines()[0]}") from err
