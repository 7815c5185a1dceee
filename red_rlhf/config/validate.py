"""`validate`: the whole config checked up front, raising ConfigError that names the field at fault.

Derived sizes are `Config`'s properties (schema.py), computed nowhere else.
"""

from __future__ import annotations

import dataclasses
import math

from red_rlhf.config.schema import (
    INPUT_FORMATS, SCORING_MODES, Config, ConfigError, primary_source, reward_sources, source_paths,
)
from red_rlhf.core.advantages import GROUP_ESTIMATORS, GROUP_SCALES, KL_ESTIMATORS
from red_rlhf.core.redistribute import FIRST_TOKEN_RULES, SCHEMES


def _choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {tuple(choices)}, got {value!r}")


TEMPERATURE_RANGE = (0.05, 10.0)
"""Sampling temperatures that train. Logits are divided by the temperature for sampling and for the log-probs:
at 0.05 a logit gap of 1 is already a probability ratio of e^-20; much lower and float32 softmax is one-hot."""


def _positive(name: str, value, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def _check_finite(name: str, obj) -> None:
    """Every float field of a config dataclass (nested ones and lists of them too) is a finite number."""
    for f in dataclasses.fields(obj):
        value, where = getattr(obj, f.name), f"{name}.{f.name}" if name else f.name
        if dataclasses.is_dataclass(value):
            _check_finite(where, value)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    _check_finite(f"{where}[{i}]", item)
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, got {value}")


def _at_most(name: str, value, limit) -> None:
    if value > limit:
        raise ConfigError(f"{name} must be <= {limit}, got {value}")


def validate(cfg: Config) -> Config:
    """Check the whole config; raise ConfigError naming the first field that cannot work."""
    _check_finite("", cfg)
    r, ro, a, k, t = cfg.reward, cfg.rollout, cfg.algo, cfg.kl, cfg.train
    if not t.output_dir.strip():
        raise ConfigError("train.output_dir is empty: name the directory for checkpoints and metrics")
    if not cfg.data.prompts.strip():
        raise ConfigError("data.prompts is empty: name a prompt file (.txt or .jsonl) or 'toy'")
    if not r.sources:
        raise ConfigError("no reward: set reward.model (an HF reward model), reward.function (module:function) or "
                          "reward.sources")
    _validate_sources(cfg)
    _choice("reward.first_token", r.first_token, FIRST_TOKEN_RULES)
    if not 0 <= r.beta_c <= 1:
        raise ConfigError(f"reward.beta_c must be in [0, 1], got {r.beta_c}")
    if not 0 <= r.abc_beta <= 1:
        raise ConfigError(f"reward.abc_beta must be in [0, 1], got {r.abc_beta}")
    _positive("reward.score_scale", r.score_scale)
    if r.score_clip is not None:
        _positive("reward.score_clip", r.score_clip)
    if r.missing_eos_penalty is not None:
        _positive("reward.missing_eos_penalty", r.missing_eos_penalty, allow_zero=True)
    for name in ("batch_size", "samples_per_prompt", "max_new_tokens", "max_prompt_tokens"):
        _positive(f"rollout.{name}", getattr(ro, name))
    _positive("rollout.temperature", ro.temperature)
    if not TEMPERATURE_RANGE[0] <= ro.temperature <= TEMPERATURE_RANGE[1]:
        raise ConfigError(
            f"rollout.temperature must be in [{TEMPERATURE_RANGE[0]}, {TEMPERATURE_RANGE[1]}], got {ro.temperature}: "
            + ("below it sampling is greedy in effect and the log-probs divided by it saturate: the sampled tokens' "
               "probabilities are 1, entropy and the policy gradient are 0, and nothing is learned"
               if ro.temperature < TEMPERATURE_RANGE[0] else
               "above it every token is about equally likely (the samples are noise) and the gradient through "
               "logits / temperature vanishes"))
    if not 0 < ro.top_p <= 1:
        raise ConfigError(f"rollout.top_p must be in (0, 1], got {ro.top_p}")
    _choice("kl.estimator", k.estimator, KL_ESTIMATORS)
    _positive("kl.coef", k.coef, allow_zero=True)
    if k.adaptive:
        _positive("kl.target", k.target)
        _positive("kl.horizon", k.horizon)
    _choice("algo.algorithm", a.algorithm, ("ppo", *GROUP_ESTIMATORS))
    _choice("algo.lr_schedule", a.lr_schedule, ("constant", "linear"))
    _choice("algo.critic_init", a.critic_init, ("reward", "reward-trunk", "policy"))
    for name in ("epochs", "mini_batch_size", "grad_accum", "policy_lr", "critic_lr", "clip_range", "max_grad_norm"):
        _positive(f"algo.{name}", getattr(a, name))
    _positive("algo.entropy_coef", a.entropy_coef, allow_zero=True)
    for name in ("value_clip_range", "target_kl"):
        if getattr(a, name) is not None:
            _positive(f"algo.{name}", getattr(a, name))
    _at_most("algo.clip_range", a.clip_range, 1.0)  # a ratio bound: 1 + clip_range, 1 - clip_range >= 0
    if not 0 <= a.gamma <= 1 or not 0 <= a.lam <= 1:
        raise ConfigError(f"algo.gamma and algo.lam must be in [0, 1], got {a.gamma} and {a.lam}")
    if cfg.rollouts_per_step % a.mini_batch_size:
        raise ConfigError(
            f"algo.mini_batch_size={a.mini_batch_size} must divide rollout.batch_size * rollout.samples_per_prompt "
            f"= {cfg.rollouts_per_step}"
        )
    if a.mini_batch_size % a.grad_accum:
        raise ConfigError(f"algo.grad_accum={a.grad_accum} must divide algo.mini_batch_size={a.mini_batch_size}")
    if a.algorithm in GROUP_ESTIMATORS and ro.samples_per_prompt < 2:
        raise ConfigError(f"algo.algorithm {a.algorithm!r} needs rollout.samples_per_prompt >= 2 (a group of one sample "
                          "has no baseline)")
    _validate_group_scaling(cfg)
    if a.algorithm == "ppo" and a.critic_init in ("reward", "reward-trunk") and primary_source(cfg).model is None:
        raise ConfigError(f"algo.critic_init {a.critic_init!r} copies the reward model, but the reward is a function "
                          "(or, with reward.sources, the first reward source is): use 'policy'")
    if a.whiten_advantages and cfg.rollouts_per_step < 2:
        raise ConfigError("algo.whiten_advantages needs at least 2 rollouts per step")
    _positive("train.steps", t.steps)
    _positive("train.save_every", t.save_every, allow_zero=True)
    _positive("train.eval_every", t.eval_every, allow_zero=True)
    _positive("train.keep_checkpoints", t.keep_checkpoints)
    _positive("data.eval_size", cfg.data.eval_size, allow_zero=True)
    _positive("policy.lora_r", cfg.policy.lora_r, allow_zero=True)
    if cfg.policy.lora_r:
        _positive("policy.lora_alpha", cfg.policy.lora_alpha)
    _validate_data(cfg)
    if t.push_to_hub is not None and t.push_to_hub.count("/") != 1:
        raise ConfigError(f"train.push_to_hub must be a hub repo id 'user/name', got {t.push_to_hub!r}")
    if t.merge_lora and not cfg.policy.lora_r:
        raise ConfigError("train.merge_lora merges LoRA adapters, but policy.lora_r is 0 (no adapters)")
    _validate_precision(cfg)
    return cfg


def _validate_group_scaling(cfg: Config) -> None:
    """algo.scale_advantages and kl.use_kl_loss: the combinations that cannot mean what they say."""
    a, k = cfg.algo, cfg.kl
    _choice("algo.scale_advantages", a.scale_advantages, GROUP_SCALES)
    if k.use_kl_loss and k.estimator != "k3":
        raise ConfigError(f"kl.use_kl_loss needs kl.estimator 'k3', got {k.estimator!r}: as a loss on the sampled tokens, "
                          "k1 = log pi - log pi_ref has zero expected gradient (k3 is verl's low_var_kl, TRL's)")
    if a.scale_advantages == "none":
        return
    if a.algorithm not in GROUP_ESTIMATORS:
        raise ConfigError(f"algo.scale_advantages {a.scale_advantages!r} applies to algo.algorithm rloo or grpo; "
                          f"{a.algorithm!r} uses algo.whiten_advantages")
    if a.whiten_advantages:
        raise ConfigError(f"algo.scale_advantages {a.scale_advantages!r} and algo.whiten_advantages both rescale the "
                          "advantages: set algo.whiten_advantages=false")
    if a.scale_advantages == "group":
        dense = [f"reward.scheme {s.scheme!r} for source {s.name}" for s in reward_sources(cfg) if s.scheme != "sparse"]
        if dense:
            raise ConfigError(
                f"algo.scale_advantages 'group' divides each prompt's advantages by the std of its full returns; with "
                f"token-level rewards ({', '.join(dense)}) a token's return-to-go keeps a "
                "per-token part that this std does not cancel, so the estimator is biased and blows up on near-tied "
                "groups (std near 0). Use algo.scale_advantages 'batch' (one std for the whole batch) or 'none'")
        if k.coef > 0 and not k.use_kl_loss:
            raise ConfigError(
                "algo.scale_advantages 'group' with the KL in the reward (kl.coef > 0, kl.use_kl_loss false): each "
                "token's return carries its own KL-to-go, which a per-group std does not cancel (biased, and it blows "
                "up on near-tied groups). Set kl.use_kl_loss=true (and kl.estimator=k3), or use 'batch' or 'none'")


def _validate_data(cfg: Config) -> None:
    d = cfg.data
    for name in ("prompts", "split", "prompt_column"):
        if not getattr(d, name):
            raise ConfigError(f"data.{name} is empty")
    if d.messages_column is not None and not d.messages_column:
        raise ConfigError("data.messages_column is empty: name the column of chat messages, or leave it null")
    if d.messages_column and cfg.policy.chat_template:
        raise ConfigError("data.messages_column renders each conversation through the chat template already: "
                          "set policy.chat_template false (it would wrap the rendered text again)")


DTYPE_NAMES = ("fp32", "bf16", "fp16")


def _validate_precision(cfg: Config) -> None:
    """Choices and combinations that cannot work on any device (device checks: models/precision.py)."""
    p = cfg.precision
    for name in ("policy_dtype", "reference_dtype", "critic_dtype", "reward_dtype"):
        _choice(f"precision.{name}", getattr(p, name), DTYPE_NAMES)
    _choice("precision.mixed_precision", p.mixed_precision, ("no", "bf16", "fp16"))
    _choice("precision.attn_implementation", p.attn_implementation, ("auto", "eager", "sdpa", "flash_attention_2"))
    for name in ("policy_dtype", "critic_dtype"):
        if getattr(p, name) == "fp16":
            raise ConfigError(f"precision.{name} 'fp16': float16 weights cannot be trained (gradients underflow and "
                              "the loss scaler refuses fp16 gradients); load 'fp32' with precision.mixed_precision "
                              "'fp16', or use 'bf16'")
    if cfg.policy.lora_r and p.reference_dtype != p.policy_dtype:
        raise ConfigError(f"precision.reference_dtype {p.reference_dtype!r}: with LoRA the reference is the policy's "
                          f"own base weights, in precision.policy_dtype {p.policy_dtype!r}; set both the same")


def _validate_sources(cfg: Config) -> None:
    sources, lag = reward_sources(cfg), cfg.lagrangian
    names = [s.name for s in sources]
    for where, s in zip(source_paths(names), sources):
        if not s.name:
            raise ConfigError(f"{where}.name is empty: every source needs a name (it labels metrics and errors)")
        if (s.model is None) == (s.function is None):
            if where == "reward":
                raise ConfigError("set exactly one of reward.model (an HF reward model) and reward.function "
                                  "(module:function)")
            raise ConfigError(f"{where} ({s.name}): set exactly one of model and function")
        if s.function is not None and ":" not in s.function:
            raise ConfigError(f"{where}.function must look like 'package.module:function', got {s.function!r}")
        _choice(f"{where}.scheme", s.scheme, SCHEMES)
        _choice(f"{where}.mode", s.mode, SCORING_MODES)
        _choice(f"{where}.format", s.format, INPUT_FORMATS)
        _choice(f"{where}.kind", s.kind, ("reward", "cost"))
        _positive(f"{where}.weight", s.weight, allow_zero=True)
        if s.limit is not None and s.kind != "cost":
            raise ConfigError(f"{where}.limit applies to sources of kind 'cost'; {s.name!r} is a {s.kind!r}")
        if s.scheme == "abc" and s.function is not None:
            raise ConfigError(f"{where}.scheme 'abc' needs a reward model's attention; a function ({s.name}) has none")
    if len(set(names)) != len(names):
        raise ConfigError(f"reward.sources: names must be unique, got {names}")
    if not any(s.kind == "reward" for s in sources):
        raise ConfigError("reward.sources: at least one source must be of kind 'reward'")
    constrained = [s for s in sources if s.kind == "cost" and s.limit is not None]
    if lag.enabled:
        if not constrained:
            raise ConfigError("lagrangian.enabled needs a reward source of kind 'cost' with a limit")
        _positive("lagrangian.lr", lag.lr)
        _positive("lagrangian.init", lag.init, allow_zero=True)
    if all(s.weight == 0 for s in sources) and not (lag.enabled and constrained):
        raise ConfigError("every reward source has weight 0: the policy would be trained on no reward")
