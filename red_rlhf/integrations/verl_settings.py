"""What the RED reward manager reads from verl's config, checked before any model is loaded (no verl import).

Two things are checked, each with an error that names the key to change:

1. The route. verl 0.9.1 carries a per-token reward tensor into training on one route only: the colocated
   reward-model route (`reward.reward_model.enable=True`, `enable_resource_pool=False`, and
   `reward.custom_reward_function.path` set, so that verl calls the manager's `run_single`; without it verl asks
   its served reward model for one scalar). Every other route keeps one float per response at the last token.
   The advantage estimator must read the rewards token by token: GAE, REINFORCE++, red_rloo / red_grpo (this
   package's group estimators, `verl_estimators`) and a few others do; verl's GRPO, RLOO and the other group
   estimators sum each row first, which turns RED back into the sparse reward. An estimator must also be able to
   run on the trainer in use (see TRAINER_INPUTS).
2. `reward.reward_kwargs`: red_rlhf's own `reward` config section (the keys of `red_rlhf.config.RewardConfig`:
   model / function / sources, scheme, beta_c, first_token, score_shift/scale/clip, missing_eos_penalty, ...),
   validated by red_rlhf's validator, plus the verl-only keys in VERL_KEYS.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from red_rlhf.config import Config, ConfigError, RewardConfig, from_dict, reward_sources, validate

# verl 0.9.1 trainer/ppo/core_algos.py: these estimators use token_level_rewards position by position
# (GAE :216-262, REINFORCE++ :693-731, ReMax's return-to-go :735-767, the optimal token baselines :872, :991).
# red_rloo / red_grpo: red_rlhf.integrations.verl_estimators (returns-to-go minus a group baseline).
TOKEN_WISE_ESTIMATORS = ("gae", "reinforce_plus_plus", "remax", "optimal_token_baseline", "tir_optimal_token_baseline",
                         "red_rloo", "red_grpo")
GROUP_ESTIMATORS = {"red_rloo": "rloo", "red_grpo": "grpo"}  # ours -> verl's summing counterpart
# ... and these sum each row first (`scores = token_level_rewards.sum(dim=-1)`: :304, :350, :501, :562, :612, :665,
# :802, :858; GDPO sums per reward dimension): a per-token reward changes nothing under them.
SUMMING_ESTIMATORS = ("grpo", "grpo_vectorized", "grpo_passk", "gdpo", "reinforce_plus_plus_baseline", "rloo",
                      "rloo_vectorized", "opo", "gpg")

# Inputs an estimator needs that verl's v1 trainer (trainer.use_v1, the default) never puts in the batch it hands
# to compute_advantage: it fetches only uid, response_mask, rm_scores, rollout_log_probs, old_log_probs,
# ref_log_prob and values (trainer/ppo/v1/trainer_base.py:1745); ReMax's greedy baseline is computed by the legacy
# trainer only (ray_trainer.py:1493-1535), the optimal token baselines assert sum_pi_squared (ray_trainer.py:264-271).
TRAINER_INPUTS = {"remax": "reward_baselines", "optimal_token_baseline": "sum_pi_squared",
                  "tir_optimal_token_baseline": "sum_pi_squared"}

KWARGS = "reward.reward_kwargs"
VERL_KEYS = {
    "device": 'where the reward sources run: "auto" (cuda when this process sees a GPU, else cpu), "cpu", "cuda", '
              '"cuda:N"',
    "prompt_text": '"decoded": the prompt is the policy\'s prompt ids decoded (chat template included); "last_user": '
                   'the last user message of verl\'s raw_prompt (needs data.return_raw_chat=True), for reward models '
                   'that apply their own chat template',
    "allow_estimator": "the name of a custom advantage estimator you know reads token_level_rewards token by token",
}
PROMPT_TEXTS = ("decoded", "last_user")


@dataclass
class VerlRewardSettings:
    config: Config  # a red_rlhf config whose reward section is reward.reward_kwargs, validated
    device: str = "auto"
    prompt_text: str = "decoded"
    allow_estimator: str | None = None

    @property
    def reward(self) -> RewardConfig:
        return self.config.reward


def _get(config, dotted: str, default=None):
    """config["a"]["b"]... for a DictConfig or nested dicts; `default` when a key is missing."""
    node = config
    for key in dotted.split("."):
        if node is None:
            return default
        try:
            node = node.get(key, None)
        except AttributeError:
            return default
    return default if node is None else node


def _plain(value):
    """A DictConfig/ListConfig as plain dicts and lists (what red_rlhf's config loader takes)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:
        pass
    return value


def read_settings(reward_kwargs) -> VerlRewardSettings:
    """reward.reward_kwargs -> validated settings; ConfigError names the key under reward.reward_kwargs."""
    kwargs = _plain(reward_kwargs)
    if not kwargs:
        raise ConfigError(f"{KWARGS} is empty: set at least {KWARGS}.model=<reward model path> (or .function / "
                          ".sources); the keys are red_rlhf's reward section (see README 'Scaling out on verl')")
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{KWARGS} must be a mapping of keys, got {kwargs!r}")
    verl_only = {k: kwargs.pop(k) for k in list(kwargs) if k in VERL_KEYS}
    if "lagrangian" in kwargs:
        raise ConfigError(f"{KWARGS}.lagrangian: verl has no place to update a Lagrange multiplier; give each cost "
                          "source a fixed weight instead")
    try:
        cfg = validate(from_dict({"reward": kwargs, "algo": {"critic_init": "policy"}}))
    except ConfigError as err:
        # red_rlhf names its keys reward.<key>; in verl they live under reward.reward_kwargs.<key>
        message = re.sub(r"\breward\.(?!reward_kwargs)", f"{KWARGS}.", str(err))
        if "unknown config key" in message:
            message += f"; verl-only keys: {sorted(VERL_KEYS)}"
        raise ConfigError(message) from None
    for i, source in enumerate(reward_sources(cfg)):
        if source.limit is not None:
            raise ConfigError(f"{KWARGS}.sources[{i}].limit: a cost limit needs red_rlhf's Lagrangian multiplier, which "
                              "verl cannot update; remove the limit and give the cost a fixed weight")
    settings = VerlRewardSettings(config=cfg, **verl_only)
    if settings.prompt_text not in PROMPT_TEXTS:
        raise ConfigError(f"{KWARGS}.prompt_text must be one of {PROMPT_TEXTS}, got {settings.prompt_text!r}")
    if not isinstance(settings.device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", settings.device):
        raise ConfigError(f"{KWARGS}.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {settings.device!r}")
    return settings


ROUTE_FIX = ("reward.reward_model.enable=True reward.reward_model.enable_resource_pool=False "
             "reward.custom_reward_function.path=pkg://red_rlhf.integrations.verl "
             "reward.custom_reward_function.name=compute_score")


def check_route(config) -> None:
    """Refuse the verl settings under which per-token rewards would be dropped or summed away."""
    if not _get(config, "reward.reward_model.enable", False) or _get(config, "reward.reward_model.enable_resource_pool",
                                                                     False):
        raise ConfigError(
            "RED token rewards need verl's colocated reward-model route, but this config takes the streaming route "
            "(reward.reward_model.enable is False, or enable_resource_pool is True): there verl scores each response "
            "while generating and keeps one float per response at its last token (agent_loop.py AgentLoopOutput."
            f"reward_score), so a per-token reward cannot pass. Set: {ROUTE_FIX}")
    if not _get(config, "reward.custom_reward_function.path"):
        raise ConfigError(
            "reward.custom_reward_function.path is not set: verl then sends each response to its served reward model "
            "for one scalar and never calls this manager's run_single. Set: " + ROUTE_FIX)
    estimator = str(_get(config, "algorithm.adv_estimator", "gae"))
    allow_estimator = _get(config, f"{KWARGS}.allow_estimator")
    if estimator in GROUP_ESTIMATORS.values():
        ours = next(name for name, theirs in GROUP_ESTIMATORS.items() if theirs == estimator)
        raise ConfigError(
            f"algorithm.adv_estimator={estimator} sums each response's token rewards before using them, so RED's "
            f"redistribution would change nothing (every row sums to R(x, y) - R(x)); use algorithm.adv_estimator="
            f"{ours}: the same group baseline on each token's return-to-go (equal to {estimator} with the sparse "
            "reward), which red_rlhf.integrations.verl registers with verl. Or gae (PPO with a critic)")
    if estimator in SUMMING_ESTIMATORS:
        raise ConfigError(
            f"algorithm.adv_estimator={estimator} sums each response's token rewards before using them, so RED's "
            "redistribution would change nothing (every row sums to R(x, y) - R(x)); use algorithm.adv_estimator="
            "red_grpo or red_rloo (critic-free, per-token returns-to-go with a group baseline), gae (PPO with a "
            "critic) or reinforce_plus_plus, which read the rewards token by token")
    if estimator not in TOKEN_WISE_ESTIMATORS and estimator != allow_estimator:
        raise ConfigError(
            f"algorithm.adv_estimator={estimator} is not one RED knows to read token_level_rewards token by token "
            f"({', '.join(TOKEN_WISE_ESTIMATORS)}); if it does, set {KWARGS}.allow_estimator={estimator}")
    if estimator in TRAINER_INPUTS and _get(config, "trainer.use_v1", True):
        raise ConfigError(
            f"algorithm.adv_estimator={estimator} needs {TRAINER_INPUTS[estimator]}, which verl's v1 trainer "
            "(trainer.use_v1=True, the default) never fetches for compute_advantage (trainer/ppo/v1/trainer_base.py:"
            "1745): use red_grpo, red_rloo, reinforce_plus_plus or gae, or the legacy trainer (trainer.use_v1=False)")
    if estimator in GROUP_ESTIMATORS:
        n = _get(config, "actor_rollout_ref.rollout.n", 1)
        if int(n) < 2:
            raise ConfigError(
                f"algorithm.adv_estimator={estimator} compares the responses to one prompt, but "
                f"actor_rollout_ref.rollout.n={n}: every group would have one response and baseline 0; set "
                "actor_rollout_ref.rollout.n >= 2 (4 to 8 is usual)")
