"""Typed training configuration: dataclasses, loadable from YAML, overridable as --section.key=value.

Every field is documented once, here. `validate` checks the whole config up front and names the field at fault;
derived sizes are computed in `Config.derived` and nowhere else.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from red_rlhf.core.advantages import GROUP_ESTIMATORS, GROUP_SCALES, KL_ESTIMATORS
from red_rlhf.core.redistribute import FIRST_TOKEN_RULES, SCHEMES


class ConfigError(ValueError):
    """A config value that cannot work; the message names the field."""


@dataclass
class PolicyConfig:
    name_or_path: str = "toy"
    """HF causal LM name or path; "toy" builds a tiny GPT-2 and word tokenizer from a config (no download)."""
    chat_template: bool = False
    """Wrap each prompt in the policy tokenizer's chat template (user turn + generation prompt)."""
    lora_r: int = 0
    """LoRA rank through peft; 0 trains all weights. With LoRA the reference model is the base with adapters off."""
    lora_alpha: int = 16
    """LoRA scaling numerator."""
    lora_target_modules: list[str] | None = None
    """Module names LoRA adapts; None lets peft choose for the architecture."""


@dataclass
class SourceConfig:
    """One of several reward sources (reward.sources): scored, redistributed by its own scheme, weighted, summed."""

    name: str = ""
    """Names the source in metrics (score_NAME, over_limit_NAME, lambda_NAME) and in error messages."""
    model: str | None = None
    """HF reward or cost model name or path. Exactly one of model / function."""
    function: str | None = None
    """A python scorer "package.module:function", text -> float (or (prompt, response) -> float with takes_prompt)."""
    takes_prompt: bool = False
    """The function is called as f(prompt, response_prefix)."""
    scheme: str = "red"
    """Placement of this source's rewards: "red", "sparse" or "abc"."""
    kind: str = "reward"
    """"reward" adds weight * its token rewards; "cost" subtracts them (weight, or the Lagrange multiplier)."""
    weight: float = 1.0
    """Fixed coefficient (>= 0). A cost with a limit under lagrangian.enabled uses its multiplier instead."""
    limit: float | None = None
    """Costs: the constraint mean final cost <= limit (Lagrangian), and the share of responses over it (metric)."""
    mode: str = "auto"
    """Scoring mode of an HF model: "auto", "causal" or "prefix"."""
    format: str = "auto"
    """Input format of an HF model: "auto", "chat", "concat" or "pair"."""


SOURCE_SHORTHAND = ("model", "function", "takes_prompt", "scheme", "mode", "format")


def _shorthand(key: str) -> property:
    """reward.KEY: the one-source short form of reward.sources[0].KEY (a source named "reward")."""

    def get(self):
        return getattr(self.sources[0], key) if len(self.sources) == 1 else getattr(SourceConfig(), key)

    def set(self, value):
        if len(self.sources) > 1:
            raise ConfigError(f"reward.{key} is the one-source short form; with {len(self.sources)} reward.sources set "
                              f"reward.sources[i].{key}")
        if not self.sources:
            self.sources.append(SourceConfig(name="reward"))
        setattr(self.sources[0], key, value)

    return property(get, set, doc=f"Short for reward.sources[0].{key} when there is one source.")


@dataclass
class RewardConfig:
    sources: list[SourceConfig] = field(default_factory=list)
    """The reward sources (YAML list of SourceConfig mappings): each is scored, placed by its own scheme, weighted,
    and their token rewards add up per token. One source is usually written in short form: reward.model (or
    reward.function, reward.takes_prompt), reward.scheme, reward.mode, reward.format set the fields of a single
    source named "reward". beta_c, first_token, abc_beta and the score_* normalisation apply to every source."""
    beta_c: float = 1.0
    """RED blend: beta_c * RED + (1 - beta_c) * sparse. The paper uses 1."""
    first_token: str = "difference"
    """RED reward of the first response token: "difference" (s_1 - s_0), "zero" or "score" (see redistribute)."""
    abc_beta: float = 0.5
    """ABC: share of the score spread by attention; the rest goes on the last token."""
    score_shift: float = 0.0
    """Prefix scores are normalised as (s - score_shift) / score_scale before placement (the sum still telescopes)."""
    score_scale: float = 1.0
    """See score_shift."""
    score_clip: float | None = None
    """Clip normalised prefix scores to [-score_clip, score_clip] before placement; None: no clipping."""
    missing_eos_penalty: float | None = None
    """Subtracted from the last token's reward of a response cut at max_new_tokens without EOS; None: no penalty."""

    model = _shorthand("model")
    function = _shorthand("function")
    takes_prompt = _shorthand("takes_prompt")
    scheme = _shorthand("scheme")
    mode = _shorthand("mode")
    format = _shorthand("format")


@dataclass
class DataConfig:
    prompts: str = "toy"
    """Training prompts: a .txt (one a line) or .jsonl file, "toy" for the built-in toy prompts, or a Hugging Face
    `datasets` source: a .parquet/.json/.csv/.arrow file, a directory (data files or a save_to_disk dataset) or a
    hub dataset name (pip install 'red-rlhf[data]')."""
    eval_prompts: str | None = None
    """Held-out prompts for evaluation, same formats; None: the last eval_size training prompts are held out."""
    eval_size: int = 8
    """How many prompts are held out when eval_prompts is None."""
    split: str = "train"
    """`datasets` sources: the split of data.prompts. A single local file is one split, "train"."""
    eval_split: str | None = None
    """`datasets` sources: the split of data.eval_prompts; None: the same as data.split."""
    prompt_column: str = "prompt"
    """The column (or .jsonl field) holding prompt strings."""
    messages_column: str | None = None
    """A column of chat messages ([{"role", "content"}, ...]) used instead of prompt_column: each row is rendered
    through the policy tokenizer's chat template with a generation prompt; trailing assistant turns are dropped."""


@dataclass
class RolloutConfig:
    batch_size: int = 8
    """Prompts per step, per process."""
    samples_per_prompt: int = 1
    """Responses sampled per prompt (RLOO's k; needs >= 2 for RLOO)."""
    max_new_tokens: int = 16
    """Longest response; longer ones are cut (without EOS)."""
    max_prompt_tokens: int = 64
    """Longest prompt in policy tokens; a longer prompt is an error, not silently cut."""
    temperature: float = 1.0
    """Sampling temperature; the same temperature divides the logits of policy and reference log-probs."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""


@dataclass
class KLConfig:
    coef: float = 0.02
    """KL penalty coefficient beta in r_t - beta * KL_t (the paper's 0.02)."""
    estimator: str = "k1"
    """Per-token KL estimator: "k1" (log-ratio) or "k3"."""
    adaptive: bool = False
    """Adapt coef towards a target KL (Ziegler et al. 2019 controller)."""
    target: float = 6.0
    """Adaptive controller: target KL per response (summed over tokens)."""
    horizon: int = 10000
    """Adaptive controller: horizon in samples."""
    use_kl_loss: bool = False
    """Where the KL to the reference goes (one place, never both). false: in the reward, r_t - coef * KL_t, so the
    advantages carry it (the RED paper, verl's algorithm.use_kl_in_reward). true: as a loss term, coef * the mean
    per-token KL of the current policy added to the policy loss, and no KL in the reward (GRPO's usual form: verl's
    actor.use_kl_loss with kl_loss_coef, TRL's GRPOConfig.beta). coef, adaptive and estimator apply to either; the
    loss needs estimator "k3" (verl's low_var_kl): k1's gradient on the sampled tokens is zero in expectation."""


@dataclass
class AlgoConfig:
    algorithm: str = "ppo"
    """"ppo" (GAE and a critic), or a critic-free group estimator on per-token returns-to-go of the
    rollout.samples_per_prompt samples of each prompt: "rloo" (baseline: the mean full return of the other samples;
    unbiased) or "grpo" (baseline: the group's mean full return, the sample itself included; the expected gradient is
    (k - 1) / k of the true one). See core.advantages.group_advantages for the derivation."""
    epochs: int = 4
    """Passes over each rollout batch."""
    mini_batch_size: int = 8
    """Rollouts per optimiser step; must divide batch_size * samples_per_prompt."""
    grad_accum: int = 1
    """Micro-batches per mini-batch (gradient accumulation); must divide mini_batch_size."""
    policy_lr: float = 1e-5
    """Policy learning rate (the paper: 1e-5)."""
    critic_lr: float = 5e-6
    """Critic learning rate (the paper: 5e-6)."""
    lr_schedule: str = "constant"
    """"constant" or "linear" (decay to 0 over train.steps)."""
    clip_range: float = 0.2
    """PPO ratio clip epsilon."""
    value_clip_range: float | None = 0.2
    """Value clip around the rollout's values; None: plain squared error."""
    entropy_coef: float = 0.0
    """Entropy bonus weight."""
    gamma: float = 1.0
    """Discount."""
    lam: float = 0.95
    """GAE lambda."""
    whiten_advantages: bool = True
    """Normalise advantages to zero mean, unit variance per batch."""
    scale_advantages: str = "none"
    """rloo / grpo only, in place of whiten_advantages: "none"; "batch" divides every advantage by ONE standard
    deviation, that of the full returns over the global batch (a step size; the baselines stay); "group" divides by
    each prompt's std of full returns (the original GRPO; verl's norm_adv_by_std_in_grpo, TRL's scale_rewards
    "group"). "group" is refused unless every token of a sample has the same return (reward.scheme sparse, KL not in
    the reward): a per-group std does not cancel the per-token part of the return, so it biases the gradient and
    blows up on near-tied groups."""
    whiten_rewards: bool = False
    """Scale the KL-shaped per-token rewards to unit variance per batch (mean kept), before GAE."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    target_kl: float | None = None
    """Stop the epochs of a step early once approx KL(old || new) exceeds this; None: never."""
    critic_init: str = "reward"
    """PPO critic: "reward" (a copy of the reward model, its score head as value head: values start as prefix
    scores, the expected return of the sparse scheme), "reward-trunk" (the reward model's trunk with a zero value
    head: values start at 0, the expected return-to-go of RED's score differences) or "policy" (a copy of the
    policy trunk with a zero value head). A reward function has no model: use "policy"."""


@dataclass
class LagrangianConfig:
    """Safe-RLHF's Lagrangian method: a learned multiplier per cost source with a limit, in place of its weight."""

    enabled: bool = False
    """Each cost source with a limit gets a multiplier lambda >= 0 that scales its token rewards."""
    lr: float = 0.05
    """lambda <- max(0, lambda + lr * (mean final cost of the step's rollouts - limit)), after every step."""
    init: float = 1.0
    """Initial lambda (>= 0)."""


@dataclass
class TrainConfig:
    steps: int = 50
    """Training steps (one rollout batch each)."""
    seed: int = 0
    """Seed for torch, python and sampling."""
    output_dir: str = "runs/train"
    """Checkpoints, metrics.jsonl, TensorBoard logs and samples go here."""
    save_every: int = 25
    """Checkpoint every N steps (and at the end, and on Ctrl-C); 0: only at the end."""
    eval_every: int = 0
    """Evaluate on held-out prompts every N steps (and at the end); 0: only at the end."""
    keep_checkpoints: int = 2
    """How many step checkpoints to keep, the newest by step (>= 1). 2: the newest and one to resume from should
    the newest be damaged. Each holds what training changes (with LoRA: adapters, critic, optimiser states)."""
    log_with: list[str] = field(default_factory=lambda: ["tensorboard"])
    """accelerate trackers to log metrics, the config and eval heatmaps to: any of "tensorboard", "wandb", "mlflow",
    "comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio"; several at once; [] logs to metrics.jsonl only."""
    merge_lora: bool = False
    """With LoRA: also export the adapters merged into the base weights (output_dir/policy-merged)."""
    push_to_hub: str | None = None
    """A hub repo id ("user/name"): push the exported policy (the merged one with merge_lora) at the end."""


@dataclass
class PrecisionConfig:
    """Number formats and memory savers (GPU runs); the defaults (float32, nothing saved) suit CPU and the tests.
    Options a device cannot run are refused at start-up (models/precision.py), naming the field."""

    policy_dtype: str = "fp32"
    """Load dtype of the policy: "fp32", "bf16" or "fp16". It trains in this dtype (AdamW keeps its states in it
    too): bf16 halves memory but rounds small updates away; prefer fp32 + mixed_precision unless memory is short.
    fp16 weights cannot be trained (use mixed_precision "fp16" on fp32 weights)."""
    reference_dtype: str = "fp32"
    """Load dtype of the frozen reference (a copy of the initial policy). With LoRA it is the policy's base, so it
    must equal policy_dtype."""
    critic_dtype: str = "fp32"
    """Load dtype of the PPO critic (trained, like the policy: "fp16" is refused)."""
    reward_dtype: str = "fp32"
    """Dtype of HF reward and cost models (frozen; scoring only). Function rewards ignore it."""
    mixed_precision: str = "no"
    """accelerate's mixed precision for the trained models' forward passes: "no", "bf16" (CPU or a GPU with bf16)
    or "fp16" (CUDA only; loss scaling)."""
    gradient_checkpointing: bool = False
    """Recompute each transformer layer's activations in the backward pass instead of keeping them (policy and
    critic): about a third more compute for activations of one layer instead of all."""
    attn_implementation: str = "auto"
    """Attention kernels of policy, reference and critic: "auto" (transformers' default, sdpa where the model has
    it), "eager", "sdpa" or "flash_attention_2" (needs the flash-attn package, CUDA and bf16/fp16 weights). Reward
    models with scheme "abc" always use "eager": ABC reads the attention weights."""


@dataclass
class Config:
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    kl: KLConfig = field(default_factory=KLConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    lagrangian: LagrangianConfig = field(default_factory=LagrangianConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)

    @property
    def rollouts_per_step(self) -> int:
        return self.rollout.batch_size * self.rollout.samples_per_prompt

    @property
    def micro_batch_size(self) -> int:
        return self.algo.mini_batch_size // self.algo.grad_accum


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


def reward_settings(reward: RewardConfig):
    """The reward section's numbers as the pure layer takes them (core.reward_assembly.RewardSettings)."""
    from red_rlhf.core.reward_assembly import RewardSettings

    return RewardSettings(beta_c=reward.beta_c, first_token=reward.first_token, abc_beta=reward.abc_beta,
                          score_shift=reward.score_shift, score_scale=reward.score_scale, score_clip=reward.score_clip,
                          missing_eos_penalty=reward.missing_eos_penalty)


def reward_sources(cfg: Config) -> list[SourceConfig]:
    """The run's reward sources (one, named "reward", when the config uses the short form)."""
    return cfg.reward.sources


def _short_form(cfg: Config) -> bool:
    return len(cfg.reward.sources) == 1 and cfg.reward.sources[0].name == "reward"


def primary_source(cfg: Config) -> SourceConfig:
    """The first source of kind "reward": the one a critic can be copied from and evaluation reports."""
    return next(s for s in reward_sources(cfg) if s.kind == "reward")


def _validate_sources(cfg: Config) -> None:
    single = _short_form(cfg)
    names = []
    for i, s in enumerate(reward_sources(cfg)):
        where = "reward" if single else f"reward.sources[{i}]"
        if not s.name:
            raise ConfigError(f"{where}.name is empty: every source needs a name (it labels metrics and errors)")
        names.append(s.name)
        if (s.model is None) == (s.function is None):
            if single:
                raise ConfigError("set exactly one of reward.model (an HF reward model) and reward.function "
                                  "(module:function)")
            raise ConfigError(f"{where} ({s.name}): set exactly one of model and function")
        if s.function is not None and ":" not in s.function:
            raise ConfigError(f"{where}.function must look like 'package.module:function', got {s.function!r}")
        _choice(f"{where}.scheme", s.scheme, SCHEMES)
        _choice(f"{where}.mode", s.mode, ("auto", "causal", "prefix"))
        _choice(f"{where}.format", s.format, ("auto", "chat", "concat", "pair"))
        _choice(f"{where}.kind", s.kind, ("reward", "cost"))
        _positive(f"{where}.weight", s.weight, allow_zero=True)
        if s.limit is not None and s.kind != "cost":
            raise ConfigError(f"{where}.limit applies to sources of kind 'cost'; {s.name!r} is a {s.kind!r}")
        if s.scheme == "abc" and s.function is not None:
            raise ConfigError(f"{where}.scheme 'abc' needs a reward model's attention; a function ({s.name}) has none")
    if len(set(names)) != len(names):
        raise ConfigError(f"reward.sources: names must be unique, got {names}")
    sources, lag = reward_sources(cfg), cfg.lagrangian
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


# ---------------------------------------------------------------- loading: YAML, overrides, type checks


def _coerce(name: str, value, annotation):
    """Check (and for command-line strings, convert) a value against a field's type annotation."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(name, value, inner[0])
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        return [_coerce(f"{name}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if annotation is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if annotation in (int, float):
        if isinstance(value, str):
            try:
                value = annotation(value)
            except ValueError:
                raise ConfigError(f"{name} must be a number ({annotation.__name__}), got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number ({annotation.__name__}), got {value!r}")
        if annotation is int and float(value) != int(value):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return annotation(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(annotation):
        return _build(name, annotation, value)
    return value


def _build(name: str, cls, value):
    """A nested config dataclass (e.g. one of reward.sources) from a mapping, every key checked."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a mapping of keys, got {value!r}")
    hints, obj = typing.get_type_hints(cls), cls()
    for key, item in value.items():
        if key not in hints:
            raise ConfigError(f"unknown config key {name}.{key}; it has {sorted(hints)}")
        setattr(obj, key, _coerce(f"{name}.{key}", item, hints[key]))
    return obj


REMOVED_KEYS = {
    "train.tensorboard": "drop 'tensorboard' from train.log_with (train.log_with: [] logs to metrics.jsonl only)",
}
"""Keys the config no longer has, with what replaces each: a file or override that still sets one is told so."""


def _apply(cfg: Config, section: str, key: str, value) -> None:
    if f"{section}.{key}" in REMOVED_KEYS:
        raise ConfigError(f"{section}.{key} was removed: {REMOVED_KEYS[f'{section}.{key}']}")
    sections = {f.name: f for f in dataclasses.fields(Config)}
    if section not in sections:
        raise ConfigError(f"unknown config section {section!r}; sections are {sorted(sections)}")
    obj = getattr(cfg, section)
    hints = typing.get_type_hints(type(obj))
    if section == "reward" and key in SOURCE_SHORTHAND:  # the one-source short form of reward.sources
        hints = {key: typing.get_type_hints(SourceConfig)[key]}
    if key not in hints:
        raise ConfigError(f"unknown config key {section}.{key}; {section} has {sorted(hints)}")
    if isinstance(value, str) and value.lower() in ("null", "none") and type(None) in typing.get_args(hints[key]):
        value = None
    setattr(obj, key, _coerce(f"{section}.{key}", value, hints[key]))


def from_dict(data: dict) -> Config:
    cfg = Config()
    if not isinstance(data, dict):
        raise ConfigError("the config must be a mapping of sections")
    for section, values in data.items():
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"config section {section!r} must be a mapping of keys")
        short = sorted(set(values) & set(SOURCE_SHORTHAND))
        if section == "reward" and "sources" in values and short:
            raise ConfigError(f"reward.sources replaces the one-source short form reward.{short[0]}: set either the "
                              "list or the short form")
        for key, value in values.items():
            _apply(cfg, section, key, value)
    return cfg


def parse_override(text: str) -> tuple[str, str, str]:
    """'--section.key=value' or 'section.key=value' -> (section, key, value)."""
    body = text[2:] if text.startswith("--") else text
    if "=" not in body or "." not in body.split("=", 1)[0]:
        raise ConfigError(f"override {text!r} must look like --section.key=value")
    path, value = body.split("=", 1)
    section, key = path.split(".", 1)
    return section, key, value


CONFIG_DIR = Path(__file__).parent / "configs"  # the shipped configs, inside the package


def shipped_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def find_config(name: str) -> Path:
    """A config file's path: the file itself, or a shipped config by name ("toy", "demo", "toy.yaml")."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    shipped = CONFIG_DIR / (path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
    if path.parent in (Path("."), Path("configs")) and shipped.is_file():
        return shipped
    raise ConfigError(f"config file {name} does not exist (shipped configs, usable by name: {', '.join(shipped_configs())})")


def read_yaml(name: str, _seen: tuple[Path, ...] = ()) -> dict:
    """A config file as a mapping of sections. `base: NAME` loads that config first; this file's keys override it
    (section by section, key by key; a list such as reward.sources is replaced whole)."""
    import yaml

    path = find_config(name)
    if path.resolve() in _seen:
        raise ConfigError(f"config file {path}: its base chain loops back to itself")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of sections")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"config file {path}: base must name a config file, got {base!r}")
    merged = read_yaml(base if Path(base).is_absolute() or not (path.parent / base).is_file() else str(path.parent / base),
                       _seen + (path.resolve(),))
    for section, values in data.items():
        if isinstance(values, dict) and isinstance(merged.get(section), dict):
            if section == "reward" and ("sources" in values or set(values) & set(SOURCE_SHORTHAND)):
                for key in ("sources", *SOURCE_SHORTHAND):  # a new reward replaces the base's whole
                    merged[section].pop(key, None)
            merged[section] = {**merged[section], **values}
        else:
            merged[section] = values
    return merged


def load_config(path: str | None, overrides: list[str] = ()) -> Config:
    """YAML file (optional; a path or a shipped config's name) + command-line overrides -> a validated Config."""
    cfg = from_dict(read_yaml(path) if path is not None else {})
    for text in overrides:
        _apply(cfg, *parse_override(text))
    return validate(cfg)


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)
