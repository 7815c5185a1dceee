"""RED under verl's critic-free group estimators: `red_rloo` and `red_grpo` (written against verl 0.9.1).

verl's own `grpo`, `rloo` and the other group estimators sum each response's token rewards into one number first
(`trainer/ppo/core_algos.py:304, :612`), which turns RED back into the sparse reward. These two keep the per-token
credit: each token's advantage is its return-to-go minus the group's baseline of full returns
(`red_rlhf.core.advantages.group_advantages`, where the derivation is):

    red_rloo:  A_{i,t} = G_{i,t} - mean_{j != i} G_{j,1}      unbiased
    red_grpo:  A_{i,t} = G_{i,t} - mean_j G_{j,1}             expected gradient (k - 1) / k of the true one

With verl's sparse reward (one score on the last token, no KL in the reward) they equal verl's `rloo` and `grpo`
(with `norm_adv_by_std_in_grpo=False`) exactly.

Settings come from verl's algorithm config, which `compute_advantage` hands every registered estimator
(`trainer/ppo/ray_trainer.py:250-257`): `algorithm.gamma` discounts the return-to-go; for `red_grpo`,
`algorithm.norm_adv_by_std_in_grpo=True` (verl's default) divides by ONE standard deviation, that of the full returns
over the whole batch, never by a per-group one: a per-group std does not cancel the per-token part of a RED return,
so it would bias the gradient and blow up on near-tied groups. `red_rloo` ignores it, as verl's `rloo` does.

Rows are grouped by verl's `uid` (the `index` argument, one id per prompt, `ray_trainer.py:256-257`), never by row
position: verl reorders rows (sequence-length balancing) before advantages.

Importing this module registers both names with verl's `register_adv_est`; `red_rlhf.integrations.verl` (the reward
manager, which verl imports in the process that computes advantages) imports it. Registering again is a no-op, also
when verl loads a second copy of a module that imports this one (verl loads `file://` paths under a new module name,
`utils/import_utils.py:181-189`).
"""

from __future__ import annotations

import warnings

import torch
from verl.trainer.ppo import core_algos

from red_rlhf.core.advantages import group_advantages, returns_to_go, singleton_groups

ESTIMATORS = {"red_rloo": "rloo", "red_grpo": "grpo"}  # verl's name -> group_advantages' estimator
_MARK = "_red_rlhf_estimator"  # set on our functions, so a repeated registration recognises them


def _setting(config, key: str, default):
    """config.key from verl's AlgoConfig (or a DictConfig / dict); `default` (verl's own default) when unset."""
    if config is None:
        return default
    value = config.get(key, None) if hasattr(config, "get") else getattr(config, key, None)
    return default if value is None else value


def group_ids(index, rows: int, device=None) -> torch.Tensor:
    """verl's per-row uids (any hashable: uuid strings in verl) -> (B,) integer ids, equal exactly where uids are."""
    if index is None:
        raise ValueError("red_rloo / red_grpo group rows by verl's uid, but compute_advantage passed no index: the "
                         "batch has no non_tensor_batch['uid']")
    if len(index) != rows:
        raise ValueError(f"index has {len(index)} uids for {rows} rows")
    seen: dict = {}
    return torch.tensor([seen.setdefault(uid, len(seen)) for uid in index], dtype=torch.long, device=device)


def red_group_advantage(estimator: str, token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index,
                        config=None, epsilon: float = 1e-6, norm_adv_by_std_in_grpo: bool | None = None):
    """(advantages, returns), each (B, R): group_advantages on verl's tensors; returns are the returns-to-go."""
    with torch.no_grad():
        mask = response_mask.bool()
        ids = group_ids(index, token_level_rewards.shape[0], token_level_rewards.device)
        gamma = float(_setting(config, "gamma", 1.0))
        if norm_adv_by_std_in_grpo is None:
            norm_adv_by_std_in_grpo = bool(_setting(config, "norm_adv_by_std_in_grpo", True))
        scale = "batch" if estimator == "grpo" and norm_adv_by_std_in_grpo else "none"
        alone, groups = singleton_groups(ids)
        if alone:
            warnings.warn(f"red_{estimator}: {alone} of {groups} uid groups have a single "
                          "response, so their baseline is 0 (is actor_rollout_ref.rollout.n >= 2?)", stacklevel=3)
        advantages = group_advantages(token_level_rewards, mask, ids, estimator, gamma, scale, epsilon)
        returns = returns_to_go(token_level_rewards, mask, gamma)
    return advantages, returns


def compute_red_rloo_advantage(token_level_rewards, response_mask, index=None, config=None, epsilon: float = 1e-6,
                               **unused):
    """verl's `red_rloo`: leave-one-out baseline of the group's full returns on each token's return-to-go."""
    return red_group_advantage("rloo", token_level_rewards, response_mask, index, config, epsilon)


def compute_red_grpo_advantage(token_level_rewards, response_mask, index=None, config=None, epsilon: float = 1e-6,
                               norm_adv_by_std_in_grpo: bool | None = None, **unused):
    """verl's `red_grpo`: the group's mean full return as baseline on each token's return-to-go; with
    norm_adv_by_std_in_grpo, divided by one batch-level std of full returns."""
    return red_group_advantage("grpo", token_level_rewards, response_mask, index, config, epsilon,
                               norm_adv_by_std_in_grpo)


FUNCTIONS = {"red_rloo": compute_red_rloo_advantage, "red_grpo": compute_red_grpo_advantage}
for _name, _fn in FUNCTIONS.items():
    setattr(_fn, _MARK, _name)


def register() -> None:
    """Register red_rloo and red_grpo with verl; a no-op for names that already hold red_rlhf's estimator."""
    for name, fn in FUNCTIONS.items():
        try:
            current = core_algos.get_adv_estimator_fn(name)
        except ValueError:  # not registered yet
            current = None
        if current is fn or getattr(current, _MARK, None) == name:  # this module, or an earlier copy of it
            continue
        if current is not None:
            raise ValueError(f"verl already has an advantage estimator named {name!r} "
                             f"({getattr(current, '__module__', '?')}.{getattr(current, '__qualname__', current)}), "
                             "which is not red_rlhf's: unregister it or rename it")
        core_algos.register_adv_est(name)(fn)


register()
