"""The training configuration's schema: one dataclass per section, each field documented once, here.

Loading (YAML, `base:`, command-line overrides) is `config.load`; the checks that name the field at fault are
`config.validate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from red_rlhf.core.reward_assembly import RewardSettings


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


SCORING_MODES = ("auto", "causal", "prefix")
"""How an HF reward model scores every prefix (models/prefix.py): "causal" in one pass, "prefix" in a pass per
prefix, "auto" by the model's architecture."""
INPUT_FORMATS = ("auto", "chat", "concat", "pair")
"""How prompt and response become an HF reward model's input (models/sources.py, HFRewardModel)."""


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
class RewardConfig(RewardSettings):
    """The reward sources and how their prefix scores become token rewards (the placement knobs, beta_c, first_token,
    abc_beta, score_shift, score_scale, score_clip and missing_eos_penalty, are documented on RewardSettings)."""

    sources: list[SourceConfig] = field(default_factory=list)
    """The reward sources (YAML list of SourceConfig mappings): each is scored, placed by its own scheme, weighted,
    and their token rewards add up per token. One source is usually written in short form: reward.model (or
    reward.function, reward.takes_prompt), reward.scheme, reward.mode, reward.format set the fields of a single
    source named "reward". The placement knobs apply to every source."""

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


def reward_sources(cfg: Config) -> list[SourceConfig]:
    """The run's reward sources (one, named "reward", when the config uses the short form)."""
    return cfg.reward.sources


def primary_source(cfg: Config) -> SourceConfig:
    """The first source of kind "reward": the one a critic can be copied from and evaluation reports."""
    return next(s for s in reward_sources(cfg) if s.kind == "reward")


def source_paths(names: Sequence[str]) -> list[str]:
    """Where each reward source sits in the config, as errors and resume messages name it: "reward" in the
    one-source short form (a single source named "reward": reward.model, reward.scheme, ...), else
    "reward.sources[i]"."""
    short = list(names) == ["reward"]
    return ["reward" if short else f"reward.sources[{i}]" for i in range(len(names))]
