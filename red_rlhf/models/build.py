"""Building what a run trains with: policy (+ LoRA), reference, critic, reward sources, optimisers and schedulers.

`build_run(cfg)` is the one entry point the trainer calls; the pieces are public for tests. Plumbing only: no
accelerate here (the trainer wraps what this returns).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import os

import torch

from dataclasses import dataclass

from red_rlhf.config import Config, ConfigError, SourceConfig, primary_source, reward_sources, source_paths
from red_rlhf.models.precision import attention_kwargs, enable_gradient_checkpointing, set_attention, torch_dtype
from red_rlhf.models.prefix import max_context
from red_rlhf.models.rewards import Source
from red_rlhf.models.sources import FunctionReward, HFRewardModel, RewardSource


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

        from red_rlhf.models.packaged import resolve_model_name

        name = resolve_model_name(name)
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


def apply_precision(cfg: Config, policy, critic, rewards: list) -> None:
    """After the models are built (and LoRA applied): the critic's and HF reward models' dtypes, and gradient
    checkpointing of policy and critic. The policy was loaded in its dtype, the reference copy takes its own.

    HF reward models are loaded in float32 and then cast (their loader is in sources.py): the float32 copy is
    transient, on the CPU.
    """
    p = cfg.precision
    if critic is not None:
        critic.to(torch_dtype(p.critic_dtype))
    for reward in rewards:
        if isinstance(reward, HFRewardModel):
            reward.model.to(torch_dtype(p.reward_dtype))
    if p.gradient_checkpointing:
        enable_gradient_checkpointing(policy)
        if critic is not None:
            enable_gradient_checkpointing(critic)


def place_frozen(run: "Run", device: torch.device) -> None:
    """The frozen models (reference, HF reward models), which accelerate does not prepare, onto `device`."""
    if run.reference is not None:
        run.reference.to(device)
    for source in run.sources:
        if isinstance(source.reward, HFRewardModel):
            source.reward.model.to(device)


@contextlib.contextmanager
def as_reference(policy, ref):
    """Yields the model to compute reference log-probs with: ref, or the LoRA policy with its adapters off."""
    if ref is not None:
        yield ref
    else:
        with policy.disable_adapter():
            yield policy


def import_function(path: str, where: str = "reward.function"):
    module_name, _, attr = path.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except SyntaxError as err:
        raise ConfigError(f"{where}: {path!r}: the module has a syntax error at {err.filename}, line {err.lineno}: "
                          f"{err.msg}") from None
    except ModuleNotFoundError as err:
        raise ConfigError(f"{where}: cannot import {path!r}: {err}{_cwd_hint(module_name)}") from None
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"{where}: cannot import {path!r}: {err}") from err
    if not callable(fn):
        raise ConfigError(f"{where}: {path!r} is not callable")
    return fn


def _cwd_hint(module_name: str) -> str:
    """The installed `red-rlhf` command does not search the current directory (python -m does): say so."""
    import sys
    from pathlib import Path

    top = module_name.split(".")[0]
    here = Path.cwd()
    if ((here / f"{top}.py").is_file() or (here / top).is_dir()) and not any(
            Path(p or ".").resolve() == here.resolve() for p in sys.path):
        return (f"; {top} is in the current directory, which the installed red-rlhf command does not search: run it "
                "with PYTHONPATH=. (or install the module)")
    return ""


def load_source(source: SourceConfig, where: str = "reward"):
    """One reward source: an HFRewardModel or a FunctionReward; load errors name the source."""
    if source.function is not None:
        return FunctionReward(import_function(source.function, f"{where}.function"), takes_prompt=source.takes_prompt,
                              name=source.function)
    from red_rlhf.models.packaged import resolve_model_name

    try:
        return HFRewardModel.from_pretrained(resolve_model_name(os.path.expanduser(source.model)), mode=source.mode,
                                             format=source.format,
                                             attn_implementation="eager" if source.scheme == "abc" else None)
    except (OSError, ValueError) as err:  # FileNotFoundError (a named model not built yet) is an OSError
        raise ConfigError(f"{where}.model: cannot load {source.model!r}: {str(err).splitlines()[0]}") from err


def load_sources(cfg: Config, device: torch.device | str | None = None) -> list[Source]:
    """The reward sources of cfg.reward; with a device, HF models are moved there and frozen (an engine's scorer)."""
    configs = reward_sources(cfg)
    sources = [Source(sc, load_source(sc, where)) for where, sc in zip(source_paths([s.name for s in configs]), configs)]
    for source in sources if device is not None else ():
        if hasattr(source.reward, "model"):
            source.reward.model.to(device).requires_grad_(False)
    return sources


def check_context(policy, cfg: Config) -> None:
    """Longest prompt + longest response must fit the policy's context."""
    context = max_context(policy)
    need = cfg.rollout.max_prompt_tokens + cfg.rollout.max_new_tokens
    if context and need > context:
        raise ConfigError(f"rollout.max_prompt_tokens + rollout.max_new_tokens = {need} exceeds the policy's context "
                          f"of {context} tokens")


def build_critic(cfg: Config, policy, tokenizer, reward: RewardSource) -> Critic | None:
    """PPO's critic per algo.critic_init (None for RLOO). Built before LoRA wraps the policy: it trains all weights."""
    if cfg.algo.algorithm != "ppo":
        return None
    if cfg.algo.critic_init in ("reward", "reward-trunk"):
        if reward.tokenizer.get_vocab() != tokenizer.get_vocab():
            raise ConfigError(f"algo.critic_init {cfg.algo.critic_init!r}: the critic reads the policy's tokens, "
                              "but the reward model uses another tokenizer; use algo.critic_init 'policy'")
        return critic_from_reward_model(reward.model, zero_head=cfg.algo.critic_init == "reward-trunk")
    return critic_from_policy(policy)


@dataclass
class Run:
    """Everything a training run builds before its first step (not yet wrapped by accelerate)."""

    policy: torch.nn.Module
    tokenizer: object
    reference: torch.nn.Module | None  # None with LoRA: the policy with adapters off is the reference
    critic: Critic | None
    sources: list[Source]
    primary: Source  # the source of config.primary_source: the critic's origin and what evaluation reports
    policy_opt: torch.optim.Optimizer
    critic_opt: torch.optim.Optimizer | None
    policy_sched: torch.optim.lr_scheduler.LRScheduler
    critic_sched: torch.optim.lr_scheduler.LRScheduler | None


def schedule(cfg: Config):
    """The learning-rate multiplier per step: constant, or linear decay to 0 over train.steps."""
    if cfg.algo.lr_schedule == "constant":
        return lambda step: 1.0
    return lambda step: max(0.0, 1.0 - step / cfg.train.steps)


def adamw(params, lr: float, eps: float = 1e-5) -> torch.optim.AdamW:
    """AdamW with torch's fused kernel where it has one for the parameters (plain float tensors on CPU or CUDA):
    the same update as the per-tensor loop, several times faster on small models (bench/bench_trl.py). Parameters
    that are not plain tensors (FSDP's DTensor shards) keep torch's default implementation."""
    params = list(params)
    fused = bool(params) and all(type(p) in (torch.Tensor, torch.nn.Parameter) and p.is_floating_point()
                                 and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, lr=lr, eps=eps, fused=fused or None)


def build_run(cfg: Config) -> Run:
    """Policy and tokenizer, reward sources, critic, LoRA, reference, AdamW optimisers and LR schedulers."""
    policy, tokenizer = load_policy(cfg)
    sources = load_sources(cfg)
    primary = next(s for s in sources if s.config is primary_source(cfg))
    critic = build_critic(cfg, policy, tokenizer, primary.reward)
    check_context(policy, cfg)
    policy = apply_lora(policy, cfg)
    reference = reference_model(policy, cfg)
    apply_precision(cfg, policy, critic, [s.reward for s in sources])
    params = [p for p in policy.parameters() if p.requires_grad]
    policy_opt = adamw(params, lr=cfg.algo.policy_lr)
    critic_opt = adamw(critic.parameters(), lr=cfg.algo.critic_lr) if critic else None
    policy_sched = torch.optim.lr_scheduler.LambdaLR(policy_opt, schedule(cfg))
    critic_sched = torch.optim.lr_scheduler.LambdaLR(critic_opt, schedule(cfg)) if critic else None
    return Run(policy, tokenizer, reference, critic, sources, primary, policy_opt, critic_opt, policy_sched, critic_sched)
