"""Advantages and the policy/critic update of one step, given a scored rollout.

`compute_advantages` and `update` (phases 4 and 5 of `Trainer.train_step`) take plain tensors and models, so tests
can feed them a fixed batch (the data-parallel equivalence test does). `Reduce` hides the data-parallel sums:
identity on one process, an all-reduce under accelerate.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from red_rlhf.core.advantages import gae, group_advantages, kl_per_token, masked_whiten, singleton_groups
from red_rlhf.config import Config
from red_rlhf.core.losses import entropy_from_logits, policy_loss, value_loss
from red_rlhf.training.guards import STOPPED, NonFiniteError
from red_rlhf.training.rollout import Rollout, response_logits, token_logprobs

Reduce = Callable[[torch.Tensor], torch.Tensor]  # sums a tensor over data-parallel processes


def local_sum(x: torch.Tensor) -> torch.Tensor:
    return x


@dataclass
class Experience:
    rollout: Rollout
    advantages: torch.Tensor  # (B, R)
    returns: torch.Tensor | None  # (B, R) critic targets (PPO)


def compute_advantages(cfg: Config, rollout: Rollout, shaped: torch.Tensor, reduce: Reduce = local_sum) -> Experience:
    """Phase 4: GAE (PPO) or a group estimator on returns-to-go (RLOO, GRPO: `group_advantages`, rows grouped by
    `rollout.group_ids`, never by position), optionally whitened or scaled over the global batch.

    Groups live within one process's rollouts (each process samples all k responses of its own prompts); only the
    whitening and the "batch" std are global (`reduce`)."""
    mask = rollout.response_mask
    a = cfg.algo
    if a.whiten_rewards:
        shaped = masked_whiten(shaped, mask, shift_mean=False, reduce=reduce)
    if a.algorithm == "ppo":
        advantages, returns = gae(shaped, rollout.values, mask, a.gamma, a.lam)
    else:
        if rollout.group_ids is None:
            raise ValueError(f"algo.algorithm {a.algorithm!r} groups rows by prompt, but the rollout has no group_ids: "
                             "give each row the id of its prompt (Rollout.group_ids, (B,))")
        warn_singleton_groups(rollout.group_ids)
        advantages = group_advantages(shaped, mask, rollout.group_ids, a.algorithm, a.gamma, a.scale_advantages,
                                      reduce=reduce)
        returns = None
    if a.whiten_advantages:
        advantages = masked_whiten(advantages, mask, reduce=reduce)
    return Experience(rollout, advantages, returns)


def warn_singleton_groups(group_ids: torch.Tensor) -> None:
    """A group of one sample has no other sample to compare with: group_advantages gives it baseline 0 (its raw
    return-to-go as advantage). Say so, since it usually means rows were filtered or split from their group."""
    alone, groups = singleton_groups(group_ids)
    if alone:
        warnings.warn(f"{alone} of {groups} prompt groups have a single sample: their baseline is 0 (no other "
                      "sample of the prompt to compare with)", stacklevel=3)


def _micro_batches(cfg: Config, size: int, generator: torch.Generator):
    """Index lists: epochs x mini-batches x micro-batches over this process's rollouts (sizes are per process)."""
    if size != cfg.rollouts_per_step:
        raise ValueError(f"got {size} rollouts, but the config makes {cfg.rollouts_per_step} per step")
    mini, micro = cfg.algo.mini_batch_size, cfg.micro_batch_size
    for _ in range(cfg.algo.epochs):
        order = torch.randperm(size, generator=generator)
        yield [[order[i: i + micro] for i in range(lo, lo + mini, micro)] for lo in range(0, size, mini)]


def update(cfg: Config, exp: Experience, policy, critic, policy_opt, critic_opt, *, backward=None, clip_grad=None,
           reduce: Reduce = local_sum, generator: torch.Generator | None = None, step: int = 0,
           kl_loss_coef: float = 0.0) -> dict[str, float]:
    """Phase 5: PPO epochs x mini-batches x gradient-accumulation micro-batches. Returns mean diagnostics.

    `kl_loss_coef` (kl.use_kl_loss): adds kl_loss_coef * the per-token KL (kl.estimator, k3) of the current policy to
    the reference to the policy loss, aggregated like the policy loss.

    Losses are token sums divided by the global token count of their mini-batch (per process, as DDP averages
    gradients), so 2 processes x b rollouts take the same step as 1 process x 2b. backward / clip_grad default to plain torch (accelerate passes its own).
    A NaN or infinite loss or gradient norm raises NonFiniteError (naming `step`, epoch and mini-batch) before
    the optimiser step it would spoil.
    """
    backward = backward or (lambda loss: loss.backward())
    clip_grad = clip_grad or (lambda params, norm: torch.nn.utils.clip_grad_norm_(params, norm))
    generator = generator or torch.Generator().manual_seed(cfg.train.seed)
    ro, a = exp.rollout, cfg.algo
    ids, mask_all, pos = ro.sequences()
    start = ro.prompt_ids.shape[1]
    world = reduce(torch.tensor(1.0)).item()
    totals: dict[str, list[float]] = {}

    def record(key: str, value: float) -> None:
        totals.setdefault(key, []).append(value)

    for epoch_number, epoch in enumerate(_micro_batches(cfg, len(ro), generator), start=1):
        for mini_number, mini in enumerate(epoch, start=1):
            # global token count of this mini-batch, per process: DDP averages the processes' gradients
            tokens = reduce(ro.response_mask[torch.cat(mini)].sum().float()).item() / world
            mini_loss = {"policy_loss": 0.0, "value_loss": 0.0, **({"kl_loss": 0.0} if kl_loss_coef else {})}
            mini_kl = []
            for micro in mini:
                m = ro.response_mask[micro]
                logits = response_logits(policy, ids[micro], mask_all[micro], pos[micro], start, cfg.rollout.temperature)
                logprobs = token_logprobs(logits, ro.response_ids[micro])
                entropy = entropy_from_logits(logits) if a.entropy_coef else None  # (b, R)
                pl = policy_loss(logprobs, ro.logprobs[micro], exp.advantages[micro], m, a.clip_range, normalizer=tokens)
                loss = pl.loss
                if a.entropy_coef:
                    loss = loss - a.entropy_coef * torch.where(m, entropy, 0).sum() / tokens
                if kl_loss_coef:  # the KL as a loss term (GRPO's form), the same token normaliser as the policy loss
                    kl = kl_per_token(logprobs, ro.ref_logprobs[micro], cfg.kl.estimator)
                    kl_term = torch.where(m, kl, 0).sum() / tokens
                    loss = loss + kl_loss_coef * kl_term
                    mini_loss["kl_loss"] += kl_term.item()
                backward(loss)
                if entropy is None:  # a diagnostic only: after the backward, out of the autograd graph
                    with torch.no_grad():
                        entropy = entropy_from_logits(logits.detach())
                mini_loss["policy_loss"] += pl.loss.item()
                mini_kl.append(pl.approx_kl.item())
                record("clip_fraction", pl.clip_fraction.item())
                record("entropy", (torch.where(m, entropy, 0).sum() / m.sum()).item())
                if critic is not None:
                    values = critic(ids[micro], mask_all[micro], pos[micro])[:, start - 1: -1]  # V(prompt + response[:t])
                    vl, vclip = value_loss(values, ro.values[micro], exp.returns[micro], m, a.value_clip_range, normalizer=tokens)
                    backward(vl)
                    mini_loss["value_loss"] += vl.item()
                    record("value_clip_fraction", vclip.item())
            where = f"step {step}, phase update, epoch {epoch_number}, mini-batch {mini_number}"
            grad_norm = float(clip_grad(policy.parameters(), a.max_grad_norm))
            _check_finite(where, policy_loss=mini_loss["policy_loss"], policy_grad_norm=grad_norm)
            record("policy_grad_norm", grad_norm)
            policy_opt.step()
            policy_opt.zero_grad(set_to_none=True)
            if critic is not None:
                grad_norm = float(clip_grad(critic.parameters(), a.max_grad_norm))
                _check_finite(where, value_loss=mini_loss["value_loss"], critic_grad_norm=grad_norm)
                record("critic_grad_norm", grad_norm)
                critic_opt.step()
                critic_opt.zero_grad(set_to_none=True)
            for key, value in mini_loss.items():  # this process's share of the global per-token mean
                record(key, value)
            approx_kl = reduce(torch.tensor(sum(mini_kl) / len(mini_kl))).item() / world
            record("approx_kl", approx_kl)
            if a.target_kl is not None and approx_kl > a.target_kl:
                return _summarise(totals, reduce, world, early_stop=True)
    return _summarise(totals, reduce, world, early_stop=False)


def _check_finite(where: str, **values: float) -> None:
    bad = {name: value for name, value in values.items() if not math.isfinite(value)}
    if bad:
        named = ", ".join(f"{name} = {value}" for name, value in bad.items())
        raise NonFiniteError(f"{where}: {named}; {STOPPED}. Check the rewards, kl.coef and the learning rates")


def _summarise(totals: dict[str, list[float]], reduce: Reduce, world: float, early_stop: bool) -> dict[str, float]:
    """Means over the step and over processes (a process's loss is its token sum over the mean count per process)."""
    out = {}
    for key, values in totals.items():
        out[key] = reduce(torch.tensor(sum(values) / len(values))).item() / world
    out["early_stop"] = float(early_stop)
    return out
