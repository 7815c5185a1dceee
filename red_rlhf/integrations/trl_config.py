"""REDGRPOConfig: TRL's GRPOConfig plus the RED fields, so HfArgumentParser / TrlParser (YAML and command line) take them.

The reward fields are red_rlhf's `reward` section under `red_` names (`red_reward_model` is `reward.model`,
`red_scheme` is `reward.scheme`, ...), validated by red_rlhf's own validator; an error names the field of this
class. Checked in `__post_init__`, before any model loads:

- `scale_rewards="group"` divides by each group's std of full returns. With redistributed rewards (scheme red or
  abc) that std does not shrink the prefix term of a token's return-to-go, which makes the estimator biased and
  explosive on near-tied groups (docs/method and core.advantages.group_advantages), so it is refused; "batch"
  (one std for the whole batch: a step size) and "none" are kept. With every source sparse it is TRL's own GRPO.
- TRL options that read an advantage as one number per completion are refused with RED's (B, T) advantages:
  `multi_objective_aggregation="normalize_then_sum"` (per-group, per-function normalisation of sequence rewards),
  `loss_type="vespo"` and `off_policy_mask_threshold` (both key a sequence-level weight or mask on the sign of
  the advantage; trl/trainer/grpo_trainer.py:2966, :3010 in trl 1.16.0), and `reward_weights` (weights are
  per source: `red_reward_sources[i].weight`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from trl import GRPOConfig

from red_rlhf.config import Config, ConfigError, from_dict, reward_sources, validate
from red_rlhf.core.advantages import GROUP_ESTIMATORS

# this class's field -> the key of red_rlhf's reward section it sets
REWARD_FIELDS = {
    "red_reward_model": "model", "red_reward_function": "function", "red_reward_takes_prompt": "takes_prompt",
    "red_reward_mode": "mode", "red_reward_format": "format", "red_reward_sources": "sources",
    "red_scheme": "scheme", "red_beta_c": "beta_c", "red_first_token": "first_token", "red_abc_beta": "abc_beta",
    "red_score_shift": "score_shift", "red_score_scale": "score_scale", "red_score_clip": "score_clip",
    "red_missing_eos_penalty": "missing_eos_penalty",
}
FIELD_OF = {key: name for name, key in REWARD_FIELDS.items()}
PROMPT_TEXTS = ("auto", "decoded", "last_user")


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class REDGRPOConfig(GRPOConfig):
    """GRPOConfig with RED's per-token rewards and group estimator (see the module docstring and README "Using RED
    from TRL"). Every TRL field keeps its meaning; `scale_rewards` defaults to "none" here (TRL's "group" is
    refused with RED)."""

    red_reward_model: str | None = field(default=None, metadata=_help(
        "HF reward model (name or path) whose prefix scores become per-token rewards. Exactly one of "
        "red_reward_model, red_reward_function and red_reward_sources."))
    red_reward_function: str | None = field(default=None, metadata=_help(
        "A python scorer 'package.module:function', text -> float, called on every prefix of a completion."))
    red_reward_takes_prompt: bool = field(default=False, metadata=_help(
        "red_reward_function is called as f(prompt, completion_prefix) instead of f(prompt + completion_prefix)."))
    red_reward_mode: str = field(default="auto", metadata=_help(
        "Scoring mode of the reward model: 'auto' (from its architecture), 'causal' (one forward) or 'prefix' "
        "(one pass per prefix, for bidirectional models)."))
    red_reward_format: str = field(default="auto", metadata=_help(
        "How the reward model reads prompt and completion: 'auto', 'chat', 'concat' or 'pair'."))
    red_reward_sources: list[dict] | str | None = field(default=None, metadata=_help(
        "Several weighted sources: a list of mappings with red_rlhf's source keys (name, model or function, "
        "takes_prompt, scheme, kind 'reward'/'cost', weight, mode, format), or that list as a JSON string."))
    red_scheme: str = field(default="red", metadata=_help(
        "Token reward placement of the one-source form: 'red' (prefix-score differences), 'sparse' (the score on the "
        "last token: TRL's own GRPO) or 'abc' (spread by the reward model's attention)."))
    red_beta_c: float = field(default=1.0, metadata=_help("RED blend: beta_c * RED + (1 - beta_c) * sparse."))
    red_first_token: str = field(default="difference", metadata=_help(
        "RED reward of the first completion token: 'difference' (s_1 - s_0), 'zero' or 'score'."))
    red_abc_beta: float = field(default=0.5, metadata=_help("ABC: share of the score spread by attention."))
    red_score_shift: float = field(default=0.0, metadata=_help(
        "Prefix scores are normalised as (s - shift) / scale before placement (the sum still telescopes)."))
    red_score_scale: float = field(default=1.0, metadata=_help("See red_score_shift."))
    red_score_clip: float | None = field(default=None, metadata=_help(
        "Clip normalised prefix scores to [-clip, clip]; None: no clipping."))
    red_missing_eos_penalty: float | None = field(default=None, metadata=_help(
        "Subtracted from the last token's reward of a completion cut at max_completion_length without EOS."))
    red_estimator: str = field(default="rloo", metadata=_help(
        "Group baseline of each token's return-to-go: 'rloo' (leave-one-out mean of the other completions' "
        "returns; unbiased) or 'grpo' (group mean, self included, as TRL's GRPO)."))
    red_gamma: float = field(default=1.0, metadata=_help("Discount of the per-token return-to-go."))
    red_prompt_text: str = field(default="auto", metadata=_help(
        "The prompt text a text-path reward source reads: 'auto' (the prompt string; for conversational prompts "
        "the last user message, for reward models with their own chat template), 'decoded' (the policy's prompt "
        "ids decoded, chat template included) or 'last_user'."))
    scale_rewards: str = field(default="none", metadata=_help(
        "'none' (default here) or 'batch' (one std of the whole batch's returns). TRL's 'group' (per-group std) is "
        "refused with scheme red/abc: it biases per-token advantages; with every source sparse it is allowed."))

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.red_reward_sources, str):
            try:
                self.red_reward_sources = json.loads(self.red_reward_sources)
            except json.JSONDecodeError as err:
                raise ConfigError(f"red_reward_sources: not a JSON list of sources: {err}") from None
        self.red_config = red_reward_config(self)
        check_trl_options(self, self.red_config)


def _rename(message: str) -> str:
    """red_rlhf names its keys reward.<key>; here they are fields of REDGRPOConfig."""
    return re.sub(r"\breward\.(\w+)", lambda m: FIELD_OF.get(m.group(1), f"red_{m.group(1)}"), message)


def red_reward_config(args: REDGRPOConfig) -> Config:
    """The RED fields as a red_rlhf Config (its reward section), validated; ConfigError names the field."""
    reward = {"beta_c": args.red_beta_c, "first_token": args.red_first_token, "abc_beta": args.red_abc_beta,
              "score_shift": args.red_score_shift, "score_scale": args.red_score_scale,
              "score_clip": args.red_score_clip, "missing_eos_penalty": args.red_missing_eos_penalty}
    short = {key: getattr(args, name) for name, key in REWARD_FIELDS.items()
             if key in ("model", "function", "takes_prompt", "mode", "format", "scheme")}
    if args.red_reward_sources is not None:
        if not isinstance(args.red_reward_sources, list) or not all(isinstance(s, dict) for s in args.red_reward_sources):
            raise ConfigError(f"red_reward_sources must be a list of mappings, got {args.red_reward_sources!r}")
        if short["model"] is not None or short["function"] is not None:
            raise ConfigError("set either red_reward_sources or red_reward_model / red_reward_function, not both")
        reward["sources"] = args.red_reward_sources
    elif short["model"] is None and short["function"] is None:
        raise ConfigError("no RED reward: set red_reward_model (an HF reward model), red_reward_function "
                          "('module:function') or red_reward_sources")
    else:
        reward.update({k: v for k, v in short.items() if v is not None})
    try:
        cfg = validate(from_dict({"reward": reward, "algo": {"critic_init": "policy"}}))
    except ConfigError as err:
        raise ConfigError(_rename(str(err))) from None
    for i, source in enumerate(reward_sources(cfg)):
        if source.limit is not None:
            raise ConfigError(f"red_reward_sources[{i}].limit: a cost limit needs red_rlhf's Lagrange multiplier, which "
                              "TRL's trainer has no step for; give the cost a fixed weight instead")
    return cfg


def check_trl_options(args: REDGRPOConfig, cfg: Config) -> None:
    """Refuse the TRL settings under which per-token advantages would be biased or read as one number."""
    if args.red_estimator not in GROUP_ESTIMATORS:
        raise ConfigError(f"red_estimator must be one of {GROUP_ESTIMATORS}, got {args.red_estimator!r}")
    if not 0 <= args.red_gamma <= 1:
        raise ConfigError(f"red_gamma must be in [0, 1], got {args.red_gamma}")
    if args.red_prompt_text not in PROMPT_TEXTS:
        raise ConfigError(f"red_prompt_text must be one of {PROMPT_TEXTS}, got {args.red_prompt_text!r}")
    if args.scale_rewards not in ("none", "batch", "group"):
        raise ConfigError(f"scale_rewards must be 'none', 'batch' or 'group', got {args.scale_rewards!r}")
    dense = [s.name for s in reward_sources(cfg) if s.scheme != "sparse"]
    if args.scale_rewards == "group" and dense:
        raise ConfigError(
            f"scale_rewards='group' with RED token rewards (source(s) {dense}, scheme red/abc): dividing each "
            "token's advantage by its group's std of full returns leaves the prefix-score term unscaled by anything "
            "it depends on, which biases the estimator and blows it up on near-tied groups; use scale_rewards="
            "'batch' (one std for the whole batch) or 'none'")
    if args.multi_objective_aggregation != "sum_then_normalize":
        raise ConfigError("multi_objective_aggregation must be 'sum_then_normalize' with RED: the sources are "
                          "weighted and summed per token (red_reward_sources[i].weight), then one estimator runs")
    if args.reward_weights is not None:
        raise ConfigError("reward_weights: with RED each source carries its own weight (red_reward_sources[i].weight)")
    if args.loss_type == "vespo":
        raise ConfigError("loss_type='vespo' weights each completion by the sign of one sequence advantage; RED gives "
                          "every token its own, so choose another loss_type (e.g. 'dapo', 'grpo', 'bnpo')")
    if args.off_policy_mask_threshold is not None:
        raise ConfigError("off_policy_mask_threshold keeps or drops a whole completion by the sign of its advantage; "
                          "RED gives every token its own advantage: leave it None")
