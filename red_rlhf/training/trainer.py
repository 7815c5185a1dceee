"""The training loop: one step is a table of contents of numbered phases.

    1 rollout       sample responses, log-probs of policy and reference (and critic values)
    2 score         every reward source's prefix score after every response token
    3 redistribute  token rewards by each source's scheme (red | sparse | abc), combined per token with weights
                    (costs subtracted; Lagrange multipliers in place of the weights of constrained costs)
    4 KL-shape      r_t - kl_coef * KL_t
    5 advantages    GAE (ppo) or leave-one-out returns-to-go (rloo), whitened
    6 update        PPO epochs x mini-batches x micro-batches
    7 log           metrics.jsonl, TensorBoard, progress; checkpoints and evaluation

Accelerate (and through it DDP, FSDP, DeepSpeed) is used here and in the CLI only.
"""

from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path

import torch

from red_rlhf.training import checkpoint, tracking
from red_rlhf.training.export import export_policy
from red_rlhf.core.advantages import kl_per_token, masked_mean, shape_rewards
from red_rlhf.config import Config, ConfigError, reward_sources, to_dict
from red_rlhf.data.prompts import PromptOrder, train_eval_prompts
from red_rlhf.models.build import (apply_lora, as_reference, critic_from_policy, critic_from_reward_model, load_policy,
                             load_source, reference_model)
from red_rlhf.training.ppo import Experience, compute_advantages, update
from red_rlhf.models.sources import place_rewards
from red_rlhf.training.rollout import Rollout, encode_prompts, response_cuts, response_logits, sample, score_responses, token_logprobs
from red_rlhf.training.multi_source import Source, SourceError, coefficients, combine, multipliers


class AdaptiveKL:
    """Ziegler et al. (2019): move the KL coefficient so the per-response KL tracks a target."""

    def __init__(self, coef: float, target: float | None, horizon: int):
        self.coef, self.target, self.horizon = coef, target, horizon

    def update(self, kl: float, n_samples: int) -> None:
        if self.target is None:
            return
        error = max(-0.2, min(0.2, kl / self.target - 1.0))
        self.coef *= 1.0 + error * n_samples / self.horizon


class Trainer:
    def __init__(self, cfg: Config, accelerator=None):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.cfg = cfg
        out = Path(cfg.train.output_dir)
        # cpu=True on machines without an accelerator: only then does accelerate join torchrun's processes (gloo)
        cpu_only = not (torch.cuda.is_available() or torch.backends.mps.is_available())
        self.acc = accelerator or Accelerator(cpu=cpu_only, log_with=tracking.tracker_names(cfg.train) or None,
                                              project_dir=str(out))
        set_seed(cfg.train.seed + self.acc.process_index)
        self.out = out
        self.policy, self.tokenizer = load_policy(cfg)
        self.sources = [Source(sc, load_source(sc, f"reward.sources[{i}]" if cfg.reward.sources else "reward"))
                        for i, sc in enumerate(reward_sources(cfg))]
        self.reward = next(s.reward for s in self.sources if s.config.kind == "reward")  # critic copy, evaluation
        self.lambdas = multipliers(self.sources, cfg.lagrangian)
        self.critic = None
        if cfg.algo.algorithm == "ppo":  # built before LoRA: the critic trains all its weights
            if cfg.algo.critic_init in ("reward", "reward-trunk"):
                if self.reward.tokenizer.get_vocab() != self.tokenizer.get_vocab():
                    raise ConfigError(f"algo.critic_init {cfg.algo.critic_init!r}: the critic reads the policy's tokens, "
                                      "but the reward model uses another tokenizer; use algo.critic_init 'policy'")
                self.critic = critic_from_reward_model(self.reward.model, zero_head=cfg.algo.critic_init == "reward-trunk")
            else:
                self.critic = critic_from_policy(self.policy)
        context = getattr(self.policy.config, "n_positions", None) or getattr(self.policy.config, "max_position_embeddings", None)
        if context and cfg.rollout.max_prompt_tokens + cfg.rollout.max_new_tokens > context:
            raise ConfigError(f"rollout.max_prompt_tokens + rollout.max_new_tokens = "
                              f"{cfg.rollout.max_prompt_tokens + cfg.rollout.max_new_tokens} exceeds the policy's context "
                              f"of {context} tokens")
        self.policy = apply_lora(self.policy, cfg)
        self.ref = reference_model(self.policy, cfg)
        params = [p for p in self.policy.parameters() if p.requires_grad]
        self.policy_opt = torch.optim.AdamW(params, lr=cfg.algo.policy_lr, eps=1e-5)
        self.critic_opt = torch.optim.AdamW(self.critic.parameters(), lr=cfg.algo.critic_lr, eps=1e-5) if self.critic else None
        schedule = (lambda s: 1.0) if cfg.algo.lr_schedule == "constant" else (lambda s: max(0.0, 1.0 - s / cfg.train.steps))
        self.policy_sched = torch.optim.lr_scheduler.LambdaLR(self.policy_opt, schedule)
        self.critic_sched = torch.optim.lr_scheduler.LambdaLR(self.critic_opt, schedule) if self.critic else None
        if self.critic is not None:
            self.policy, self.critic, self.policy_opt, self.critic_opt = self.acc.prepare(
                self.policy, self.critic, self.policy_opt, self.critic_opt)
        else:
            self.policy, self.policy_opt = self.acc.prepare(self.policy, self.policy_opt)
        train_prompts, self.eval_prompts = train_eval_prompts(cfg.data, self.tokenizer, chat_template=cfg.policy.chat_template,
                                                              max_prompt_tokens=cfg.rollout.max_prompt_tokens)
        self.order = PromptOrder(train_prompts, cfg.train.seed, self.acc.process_index, self.acc.num_processes)
        self.kl = AdaptiveKL(cfg.kl.coef, cfg.kl.target if cfg.kl.adaptive else None, cfg.kl.horizon)
        self.step = 0
        self._stop_requested = False

    # ------------------------------------------------------------------ phases

    @torch.no_grad()
    def rollout(self, prompts: list[str]) -> Rollout:
        """Phase 1."""
        c = self.cfg
        prompts = [p for p in prompts for _ in range(c.rollout.samples_per_prompt)]  # k samples of each, adjacent
        policy = self.acc.unwrap_model(self.policy)
        ids, mask = encode_prompts(self.tokenizer, prompts, max_tokens=c.rollout.max_prompt_tokens,
                                   chat_template=c.policy.chat_template)
        ids, mask = ids.to(self.acc.device), mask.to(self.acc.device)
        response, response_mask, ended = sample(policy, self.tokenizer, ids, mask, max_new_tokens=c.rollout.max_new_tokens,
                                                temperature=c.rollout.temperature, top_p=c.rollout.top_p)
        ro = Rollout(prompts, ids, mask, response, response_mask, ended, torch.empty(0), torch.empty(0))
        seq, seq_mask, pos = ro.sequences()
        start = ids.shape[1]
        ro.logprobs = token_logprobs(response_logits(policy, seq, seq_mask, pos, start, c.rollout.temperature), response)
        with as_reference(policy, self.ref) as ref:
            ro.ref_logprobs = token_logprobs(response_logits(ref, seq, seq_mask, pos, start, c.rollout.temperature), response)
        if self.critic is not None:
            ro.values = self.acc.unwrap_model(self.critic)(seq, seq_mask, pos)[:, start - 1: -1]
        return ro

    def score(self, ro: Rollout):
        """Phases 2 and 3: each source's prefix scores on the policy's tokens, placed by its scheme, combined.

        Returns (token rewards (B, R), combined final scores (B,), {source name: its final scores (B,)}).
        """
        r = self.cfg.reward
        texts, cuts = response_cuts(self.tokenizer, ro.response_ids, ro.response_mask)
        per_source, finals = [], {}
        for source in self.sources:
            scheme = source.config.scheme
            try:
                scored = score_responses(source.reward, ro.prompts, texts, cuts, need_attention=scheme == "abc")
                rewards, final = place_rewards(scored, ro.response_ids.shape[1], scheme, beta_c=r.beta_c,
                                               first_token=r.first_token, abc_beta=r.abc_beta, shift=r.score_shift,
                                               scale=r.score_scale, clip=r.score_clip)
            except Exception as err:  # a model's tokenizer, a user's function: say which source failed
                raise SourceError(f"reward source {source.name!r} failed: {err}") from err
            per_source.append(rewards)
            finals[source.name] = final
        signed = coefficients(self.sources, self.lambdas)
        rewards = combine(per_source, signed)
        final = combine(list(finals.values()), signed)
        if r.missing_eos_penalty is not None:
            last = (ro.response_mask.sum(-1) - 1).cpu()  # rewards are still on the CPU here
            rows = torch.arange(len(ro))
            rewards[rows, last] -= torch.where(ro.ended.cpu(), 0.0, r.missing_eos_penalty)
        device = self.acc.device
        return rewards.to(device), final.to(device), {name: f.to(device) for name, f in finals.items()}

    def train_step(self) -> dict[str, float]:
        c, t0 = self.cfg, time.perf_counter()
        marks: list[tuple[str, float]] = []

        def phase(number: int, name: str) -> None:
            marks.append((name.split()[0], time.perf_counter()))
            self._phase(number, name)

        phase(1, "rollout")
        ro = self.rollout(self.order.next_batch(c.rollout.batch_size))
        phase(2, "score + redistribute")
        rewards, final, finals = self.score(ro)
        phase(4, "KL-shape")
        kl = kl_per_token(ro.logprobs, ro.ref_logprobs, c.kl.estimator)
        shaped = shape_rewards(rewards, kl, ro.response_mask, self.kl.coef)
        phase(5, "advantages")
        exp = compute_advantages(c, ro, shaped, reduce=self._sum)
        phase(6, "update")
        stats = update(c, exp, self.policy, self.critic, self.policy_opt, self.critic_opt,
                       backward=self.acc.backward, clip_grad=self.acc.clip_grad_norm_, reduce=self._sum,
                       generator=torch.Generator().manual_seed(c.train.seed * 7919 + self.step))
        self.policy_sched.step()
        if self.critic_sched:
            self.critic_sched.step()
        phase(7, "log")
        metrics = self._step_metrics(exp, rewards, final, kl, stats, time.perf_counter() - t0)
        # seconds per phase (rollout, score, KL-shape, advantages, update): where a step's time goes
        metrics.update({f"time_{name.lower().replace('-', '_')}_s": end - begin
                        for (name, begin), (_, end) in zip(marks, marks[1:])})
        metrics.update(self._source_metrics(finals))
        self.kl.update(metrics["kl"], c.rollouts_per_step * self.acc.num_processes)
        return metrics

    def _source_metrics(self, finals: dict[str, torch.Tensor]) -> dict[str, float]:
        """With reward.sources: each source's mean final score, costs' share over their limit, the multipliers
        this step used; then each multiplier moves by the step's mean cost."""
        if not self.cfg.reward.sources:
            return {}
        out = {}
        for source in self.sources:
            name, limit = source.name, source.config.limit
            out[f"score_{name}"] = self._mean(finals[name])
            if source.config.kind == "cost" and limit is not None:
                out[f"over_limit_{name}"] = self._mean((finals[name] > limit).float())
            if name in self.lambdas:
                out[f"lambda_{name}"] = self.lambdas[name].value
                self.lambdas[name].update(out[f"score_{name}"])
        return out

    def _phase(self, number: int, name: str) -> None:
        """Progress of the phases within a step (a second progress bar while training runs)."""

    # ------------------------------------------------------------------ the loop

    def train(self, resume: bool = False) -> list[dict]:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        c = self.cfg
        if resume:
            self.load(checkpoint.latest(self.out))
        elif checkpoint.latest(self.out, must_exist=False) is not None:
            raise ValueError(f"{self.out} already holds checkpoints: pass --resume to continue, or pick another "
                             "train.output_dir")
        if self.acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(to_dict(c), indent=2))
        self.acc.init_trackers("red-rlhf", config=tracking.flat_config(to_dict(c)))
        history = []
        previous = signal.signal(signal.SIGINT, self._on_interrupt) if _main_thread() else None
        try:
            with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                          TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                          disable=not self.acc.is_main_process) as bar:
                task = bar.add_task("train steps", total=c.train.steps, completed=self.step, info="")
                phases = bar.add_task("phase", total=7, info="")
                self._phase = lambda number, name: bar.update(phases, completed=number - 1, info=f"{number} {name}")
                while self.step < c.train.steps:
                    metrics = self.train_step()
                    self.step += 1
                    metrics["step"] = self.step
                    if (c.train.eval_every and self.step % c.train.eval_every == 0) or self.step == c.train.steps:
                        metrics.update(self.evaluate())
                    self._log(metrics)
                    history.append(metrics)
                    bar.update(task, completed=self.step,
                               info=f"reward {metrics['reward_mean']:+.3f}  kl {metrics['kl']:.3f}")
                    if (c.train.save_every and self.step % c.train.save_every == 0) or self.step == c.train.steps:
                        self.save()
                    if self._stop_requested:
                        self.save()
                        raise KeyboardInterrupt
            self.export()
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
            self.acc.end_training()
        return history

    def _on_interrupt(self, signum, frame):
        if self._stop_requested:  # a second Ctrl-C: stop now; the last completed checkpoint stays valid
            raise KeyboardInterrupt
        self._stop_requested = True
        print("\ninterrupted: finishing this step, saving a checkpoint, then stopping (Ctrl-C again to stop now)")

    # ------------------------------------------------------------------ evaluation, logging, checkpoints

    @torch.no_grad()
    def eval_samples(self, prompts: list[str]):
        """One sampled response per prompt, with a fixed seed that leaves the training RNG untouched.

        Returns (rollout, response texts, final reward-model scores, per-response KL to the reference).
        """
        c = self.cfg
        with torch.random.fork_rng(devices=[]):  # evaluation must not move the training RNG (resume equivalence)
            torch.manual_seed(c.train.seed + 12345)
            saved_k, c.rollout.samples_per_prompt = c.rollout.samples_per_prompt, 1
            try:
                ro = self.rollout(prompts)
            finally:
                c.rollout.samples_per_prompt = saved_k
            texts, cuts = response_cuts(self.tokenizer, ro.response_ids, ro.response_mask)
            scored = score_responses(self.reward, ro.prompts, texts, cuts)
        kl = torch.where(ro.response_mask, kl_per_token(ro.logprobs, ro.ref_logprobs, "k1"), 0).sum(-1)
        return ro, texts, [cs.scores[-1] for cs in scored], kl.tolist()

    def evaluate(self) -> dict[str, float]:
        """Mean reward-model score and KL on held-out prompts; a sample table to samples.jsonl."""
        if not self.eval_prompts:
            return {}
        ro, texts, final, kl = self.eval_samples(self.eval_prompts)
        if self.acc.is_main_process:
            with open(self.out / "samples.jsonl", "a", encoding="utf-8") as f:
                for prompt, text, score in zip(ro.prompts, texts, final):
                    f.write(json.dumps({"step": self.step, "prompt": prompt, "response": text, "score": score}) + "\n")
            _print_samples(self.step, ro.prompts, texts, final)
        tracking.log_eval_heatmap(self, ro.prompts, texts)
        return {"eval_reward_mean": sum(final) / len(final), "eval_kl": sum(kl) / len(kl),
                "eval_response_length": ro.response_mask.sum(-1).float().mean().item()}

    def _sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over data-parallel processes (identity on one)."""
        if self.acc.num_processes == 1:
            return x
        return self.acc.reduce(x.to(self.acc.device), reduction="sum").to(x.device)

    def _mean(self, x: torch.Tensor) -> float:
        return (self._sum(x.detach().float().mean()) / self.acc.num_processes).item()

    def _step_metrics(self, exp: Experience, rewards, final, kl, stats, seconds) -> dict[str, float]:
        mask = exp.rollout.response_mask
        per_response_kl = torch.where(mask, kl, 0).sum(-1)
        reward_mean = self._mean(final)
        metrics = {
            "reward_mean": reward_mean, "reward_std": math.sqrt(max(self._mean(final ** 2) - reward_mean ** 2, 0)),
            "token_reward_mean": self._mean(masked_mean(rewards, mask)),
            "kl": self._mean(per_response_kl), "kl_coef": self.kl.coef,
            "response_length": self._mean(mask.sum(-1).float()),
            "ended_with_eos": self._mean(exp.rollout.ended.float()),
            "advantage_mean": self._mean(masked_mean(exp.advantages, mask)),
            "policy_lr": self.policy_sched.get_last_lr()[0],
            "time_s": seconds,
        }
        metrics.update(stats)
        if "value_loss" not in metrics:
            metrics["value_loss"] = 0.0
        return metrics

    def _log(self, metrics: dict) -> None:
        if self.acc.is_main_process:
            with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(metrics) + "\n")
        self.acc.log({k: v for k, v in metrics.items() if k != "step"}, step=self.step)

    def save(self) -> None:
        state = {
            "step": self.step, "kl_coef": self.kl.coef, "prompt_order": self.order.state_dict(),
            "lagrange": {name: m.value for name, m in self.lambdas.items()},
            "policy": checkpoint.trainable_state(self.acc.unwrap_model(self.policy)),
            "policy_opt": self.policy_opt.state_dict(), "policy_sched": self.policy_sched.state_dict(),
        }
        if self.critic is not None:
            state.update(critic=self.acc.unwrap_model(self.critic).state_dict(), critic_opt=self.critic_opt.state_dict(),
                         critic_sched=self.critic_sched.state_dict())
        checkpoint.save(self.out, self.step, state, self.acc, keep=self.cfg.train.keep_checkpoints)

    def load(self, path: Path) -> None:
        state = checkpoint.load(path, self.acc)
        self.step, self.kl.coef = state["step"], state["kl_coef"]
        for name, value in state.get("lagrange", {}).items():
            if name not in self.lambdas:
                raise ConfigError(f"the checkpoint holds a Lagrange multiplier for source {name!r}, which this config "
                                  "does not constrain; resume with the config the run was started with")
            self.lambdas[name].value = value
        self.order.load_state_dict(state["prompt_order"])
        checkpoint.load_trainable_state(self.acc.unwrap_model(self.policy), state["policy"])
        self.policy_opt.load_state_dict(state["policy_opt"])
        self.policy_sched.load_state_dict(state["policy_sched"])
        if self.critic is not None:
            self.acc.unwrap_model(self.critic).load_state_dict(state["critic"])
            self.critic_opt.load_state_dict(state["critic_opt"])
            self.critic_sched.load_state_dict(state["critic_sched"])

    def export(self, hub_api=None) -> None:
        """The trained policy as standard HF folders with a card (training/export.py); train.push_to_hub pushes it."""
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            export_policy(self.acc.unwrap_model(self.policy), self.tokenizer, self.cfg, self.out, self.step, hub_api)


def _print_samples(step: int, prompts, texts, scores, rows: int = 3) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"held-out samples, step {step}", show_lines=False)
    for name in ("prompt", "response", "score"):
        table.add_column(name, overflow="fold")
    for prompt, text, score in list(zip(prompts, texts, scores))[:rows]:
        table.add_row(prompt, text, f"{score:+.3f}")
    Console().print(table)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()

