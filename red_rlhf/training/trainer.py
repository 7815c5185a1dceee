"""The training loop: one step is a table of contents of numbered phases (`Trainer.train_step`).

    1 rollout      sample responses; log-probs of policy and reference; critic values
    2 score        every reward source's prefix scores on the policy's tokens
    3 rewards      the per-token reward: placement, weights, costs, missing-EOS penalty, KL (core.reward_assembly)
    4 advantages   GAE (ppo) or group baselines on returns-to-go (rloo, grpo), whitened or scaled
    5 update       PPO epochs x mini-batches x micro-batches
    6 controllers  the adaptive KL coefficient and the Lagrange multipliers move, from this step's statistics
    7 log          metrics (metrics.jsonl, trackers), progress

Accelerate (and through it DDP, FSDP, DeepSpeed) is used here and in the CLI only.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from red_rlhf.config import Config, ConfigError, to_dict
from red_rlhf.core.advantages import kl_per_token, masked_mean
from red_rlhf.core.reward_assembly import AssembledRewards, PrefixScores
from red_rlhf.data.prompts import PromptOrder, train_eval_prompts
from red_rlhf.models.build import as_reference, build_run, place_frozen
from red_rlhf.models.precision import check_device
from red_rlhf.models.rewards import score_sources, source_rewards
from red_rlhf.models.sources import SourceError
from red_rlhf.training import checkpoint, frozen, lock, memory, stops, tracking
from red_rlhf.training.controllers import AdaptiveKL, multipliers
from red_rlhf.training.export import export_policy
from red_rlhf.training.guards import ensure_finite
from red_rlhf.training.ppo import Experience, compute_advantages, update
from red_rlhf.training.prompt_check import check_prompts
from red_rlhf.training.resume import begin as begin_run
from red_rlhf.training.rollout import Rollout, encode_prompts, response_logits, sample, token_logprobs


@dataclass(frozen=True)
class Phase:
    number: int
    title: str  # shown beside the progress bar
    metric: str  # its seconds in metrics.jsonl


ROLLOUT = Phase(1, "rollout", "time_rollout_s")
SCORE = Phase(2, "score", "time_score_s")
REWARDS = Phase(3, "rewards", "time_rewards_s")
ADVANTAGES = Phase(4, "advantages", "time_advantages_s")
UPDATE = Phase(5, "update", "time_update_s")
CONTROLLERS = Phase(6, "controllers", "time_controllers_s")
LOG = Phase(7, "log", "time_log_s")
PHASES = (ROLLOUT, SCORE, REWARDS, ADVANTAGES, UPDATE, CONTROLLERS, LOG)
GENERATE_METRIC = "time_generate_s"  # the part of the rollout spent in generate()


class Trainer:
    """PPO / RLOO / GRPO on token-level rewards. Hooks for callers (benchmarks, notebooks), each a list of callables:
    `on_phase(phase)` when a phase starts, `on_step_end(metrics)` after a step's metrics are logged."""

    def __init__(self, cfg: Config, accelerator=None):
        from accelerate import Accelerator
        from accelerate.utils import DistributedType, set_seed

        self.cfg = cfg
        self.out = Path(cfg.train.output_dir).expanduser()
        # cpu=True on machines without an accelerator: only then does accelerate join torchrun's processes (gloo)
        cpu_only = not (torch.cuda.is_available() or torch.backends.mps.is_available())
        check_device(cfg.precision, torch.device("cpu" if cpu_only else "cuda" if torch.cuda.is_available() else "mps"))
        self.acc = accelerator or Accelerator(cpu=cpu_only, log_with=tracking.tracker_names(cfg.train) or None,
                                              project_dir=str(self.out),
                                              mixed_precision=cfg.precision.mixed_precision)
        set_seed(cfg.train.seed + self.acc.process_index)
        run = build_run(cfg)
        self.tokenizer, self.ref, self.sources, self.primary = run.tokenizer, run.reference, run.sources, run.primary
        self.policy_sched, self.critic_sched = run.policy_sched, run.critic_sched
        self.memory = memory.estimate_for(cfg, run.policy, run.critic, [s.reward for s in run.sources], self.acc)
        place_frozen(run, self.acc.device)
        # one model and its optimiser per call (FSDP2 refuses two models in one call); this order names the
        # checkpoint files: model.safetensors is the policy, model_1.safetensors the critic
        self.policy, self.policy_opt = self.acc.prepare(run.policy, run.policy_opt)
        self.critic, self.critic_opt = (self.acc.prepare(run.critic, run.critic_opt) if run.critic is not None
                                        else (None, None))
        # checkpoints hold what training changes: a LoRA policy's frozen base stays out (training/frozen.py)
        self.trainable_only = self.acc.distributed_type not in (DistributedType.FSDP, DistributedType.DEEPSPEED,
                                                                DistributedType.MEGATRON_LM)
        if self.trainable_only:
            self.acc.register_save_state_pre_hook(frozen.keep_trainable)
        self._fingerprints: dict[str, str | None] | None = None
        train_prompts, self.eval_prompts = train_eval_prompts(cfg.data, self.tokenizer)
        check_prompts(cfg, self.tokenizer)  # every prompt fits, named by file and line, before the first step
        self.order = PromptOrder(train_prompts, cfg.train.seed, self.acc.process_index, self.acc.num_processes)
        self.kl = AdaptiveKL(cfg.kl.coef, cfg.kl.target if cfg.kl.adaptive else None, cfg.kl.horizon)
        self.lambdas = multipliers([s.config for s in self.sources], cfg.lagrangian)
        self.on_phase: list[Callable[[Phase], None]] = []
        self.on_step_end: list[Callable[[dict], None]] = []
        self.step = 0
        self._stop_requested: str | bool = False  # the name of the signal that asked to stop

    # ------------------------------------------------------------------ one step

    def train_step(self) -> dict[str, float]:
        c, seconds = self.cfg, {}
        with self._phase(ROLLOUT, seconds):
            ro = self.rollout(self.order.next_batch(c.rollout.batch_size), seconds=seconds)
        with self._phase(SCORE, seconds):
            scores = self.score(ro)
        with self._phase(REWARDS, seconds):
            kl = kl_per_token(ro.logprobs, ro.ref_logprobs, c.kl.estimator)  # (B, R)
            rewards = self.assemble(ro, scores, None if c.kl.use_kl_loss else kl)  # kl.use_kl_loss: in the update
            ensure_finite(self.step + 1, "rewards", token_rewards=rewards.rewards, kl=torch.where(ro.response_mask, kl, 0))
        with self._phase(ADVANTAGES, seconds):
            exp = compute_advantages(c, ro, rewards.rewards, reduce=self._sum)
        with self._phase(UPDATE, seconds):
            stats = update(c, exp, self.policy, self.critic, self.policy_opt, self.critic_opt,
                           backward=self.acc.backward, clip_grad=self.acc.clip_grad_norm_, reduce=self._sum,
                           generator=torch.Generator().manual_seed(c.train.seed * 7919 + self.step), step=self.step + 1,
                           kl_loss_coef=self.kl.coef if c.kl.use_kl_loss else 0.0)
            self.policy_sched.step()
            if self.critic_sched:
                self.critic_sched.step()
        with self._phase(CONTROLLERS, seconds):
            used = self.move_controllers(ro, rewards, kl)
        with self._phase(LOG, seconds):
            metrics = self._step_metrics(exp, rewards, kl, stats, used)
        metrics.update(seconds)
        metrics["time_s"] = sum(seconds[p.metric] for p in PHASES)
        return metrics

    @torch.no_grad()
    def rollout(self, prompts: list[str], samples_per_prompt: int | None = None, seconds: dict | None = None) -> Rollout:
        """Phase 1: k samples of each prompt (adjacent rows, sharing a group id), their log-probs under policy and
        reference, values."""
        c = self.cfg
        k = c.rollout.samples_per_prompt if samples_per_prompt is None else samples_per_prompt
        group_ids = torch.arange(len(prompts), device=self.acc.device).repeat_interleave(k)  # (B,) the prompt's index
        prompts = [p for p in prompts for _ in range(k)]
        policy = self.acc.unwrap_model(self.policy)
        ids, mask = encode_prompts(self.tokenizer, prompts, max_tokens=c.rollout.max_prompt_tokens,
                                   chat_template=c.policy.chat_template)
        ids, mask = ids.to(self.acc.device), mask.to(self.acc.device)
        begin = time.perf_counter()
        response, response_mask, ended = sample(policy, self.tokenizer, ids, mask, max_new_tokens=c.rollout.max_new_tokens,
                                                temperature=c.rollout.temperature, top_p=c.rollout.top_p)
        if seconds is not None:
            seconds[GENERATE_METRIC] = time.perf_counter() - begin
        ro = Rollout(prompts, ids, mask, response, response_mask, ended, torch.empty(0), torch.empty(0),
                     group_ids=group_ids)
        seq, seq_mask, pos = ro.sequences()
        start = ids.shape[1]
        ro.logprobs = token_logprobs(response_logits(policy, seq, seq_mask, pos, start, c.rollout.temperature), response)
        critic = None if self.critic is None else self.acc.unwrap_model(self.critic)
        ro.values = None if critic is None else critic(seq, seq_mask, pos)[:, start - 1: -1]  # V(prompt + response[:t])
        with as_reference(policy, self.ref) as ref:
            ro.ref_logprobs = token_logprobs(response_logits(ref, seq, seq_mask, pos, start, c.rollout.temperature), response)
        return ro

    def score(self, ro: Rollout, sources=None) -> dict[str, PrefixScores]:
        """Phase 2: each source's prefix scores on the policy's tokens (one forward on the ids where the reward
        model reads them as they are; else decoded once and aligned by characters)."""
        batch = ro.token_batch(self.tokenizer, plain_prompts=not self.cfg.policy.chat_template)
        return score_sources(self.sources if sources is None else sources, batch)

    def assemble(self, ro: Rollout, scores: dict[str, PrefixScores], kl: torch.Tensor | None) -> AssembledRewards:
        """Phase 3: the per-token rewards the estimator sees, from every source's scores (`source_rewards`),
        with this step's signed weights (Lagrange multipliers in place of constrained costs' weights)."""
        multipliers = {name: m.value for name, m in self.lambdas.items()}
        assembled = source_rewards(self.sources, scores, ro.response_mask.cpu(), self.cfg.reward, ended=ro.ended.cpu(),
                                   multipliers=multipliers, kl=None if kl is None else kl.detach().cpu(),
                                   kl_coef=self.kl.coef)
        return assembled.to(self.acc.device)

    def move_controllers(self, ro: Rollout, rewards: AssembledRewards, kl: torch.Tensor) -> dict[str, float]:
        """Phase 6: the adaptive KL coefficient follows this step's KL; each Lagrange multiplier follows its cost's
        mean final score (global means over processes). Returns the values this step used, for the log."""
        used = {"kl_coef": self.kl.coef}
        used.update({f"lambda_{name}": m.value for name, m in self.lambdas.items()})
        per_response_kl = torch.where(ro.response_mask, kl, 0).sum(-1)
        self.kl.update(self._mean(per_response_kl), self.cfg.rollouts_per_step * self.acc.num_processes)
        for name, multiplier in self.lambdas.items():
            multiplier.update(self._mean(rewards.final_raw[name]))
        return used

    @contextlib.contextmanager
    def _phase(self, phase: Phase, seconds: dict):
        for hook in self.on_phase:
            hook(phase)
        begin = time.perf_counter()
        try:
            yield
        finally:
            seconds[phase.metric] = time.perf_counter() - begin

    # ------------------------------------------------------------------ the loop

    def train(self, resume: bool = False) -> list[dict]:
        from rich.progress import BarColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        from red_rlhf.progress import Progress  # plain lines when output is not a terminal

        c = self.cfg
        held = self._lock()  # one trainer per output folder (training/lock.py)
        history, show, previous = [], None, {}
        try:
            begin_run(self, resume)  # checks what a resume may change, sets it, one metrics row per step, history
            if self.acc.is_main_process:
                (self.out / "config.json").write_text(json.dumps(to_dict(c), indent=2))
            self.acc.init_trackers("red-rlhf", config=tracking.flat_config(to_dict(c)))
            previous = stops.install(self._on_stop_signal) if _main_thread() else {}
            with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                          TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                          disable=not self.acc.is_main_process) as bar:
                task = bar.add_task("train steps", total=c.train.steps, completed=self.step, info="")
                phases = bar.add_task("phase", total=len(PHASES), info="")
                # "phase 6/7  controllers": the count is the running phase's number, the label its name
                show = lambda p: bar.update(phases, completed=p.number, info=p.title)  # noqa: E731
                self.on_phase.append(show)
                while self.step < c.train.steps:
                    try:
                        metrics = self.train_step()
                    except SourceError as err:  # a user's function or model: the step, and where to go on from
                        raise SourceError(f"step {self.step + 1}, phase score: {err}; {self._resume_hint()}") from err
                    bar.update(phases, completed=len(PHASES), info="step done")
                    self.step += 1
                    metrics["step"] = self.step
                    if (c.train.eval_every and self.step % c.train.eval_every == 0) or self.step == c.train.steps:
                        metrics.update(self.evaluate())
                    self._log(metrics)
                    history.append(metrics)
                    bar.update(task, completed=self.step,
                               info=f"reward {metrics['reward_mean']:+.3f}  kl {metrics['kl']:.3f}")
                    saved = (c.train.save_every and self.step % c.train.save_every == 0) or self.step == c.train.steps
                    if saved:
                        self.save()
                    stop = self._agreed_stop()  # every process stops after the same step (a collective)
                    if stop is not None and self.step < c.train.steps:  # the last step: saved, on to the export
                        if not saved:
                            self.save()
                        raise stops.Stopped(stop, self.step, self.out)
            self.export()
        finally:
            if show in self.on_phase:
                self.on_phase.remove(show)
            stops.restore(previous)
            self.acc.end_training()
            lock.release(held)
        return history

    def _resume_hint(self) -> str:
        saved = checkpoint.latest(self.out, must_exist=False, say=lambda line: None)
        if saved is None:
            return "no checkpoint was saved yet: fix it and start again"
        return f"the last checkpoint is {saved}: fix it and continue with --resume"

    def _lock(self):
        """The main process takes OUTPUT_DIR/train.lock; every process learns whether it did (a collective), so
        that a refused run stops on all of them rather than leaving the others waiting."""
        held, refusal = None, None
        if self.acc.is_main_process:
            try:
                held = lock.acquire(self.out)
            except lock.FolderLocked as err:
                refusal = err
        if self.acc.num_processes > 1 and self._sum(torch.tensor(float(refusal is not None))).item() > 0:
            refusal = refusal or lock.FolderLocked(f"{self.out} is in use by another trainer (see the main process)")
        if refusal is not None:
            raise refusal
        return held

    def _on_stop_signal(self, signum, frame):
        name = signal.Signals(signum).name
        if self._stop_requested:  # a second signal: stop now; the last completed checkpoint stays valid
            raise stops.Stopped(name, None, self.out)
        self._stop_requested = name
        how = "Ctrl-C" if signum == signal.SIGINT else name
        stops.say(f"\n{how}: finishing this step, saving a checkpoint, then stopping ({how} again to stop now)")

    def _agreed_stop(self) -> str | None:
        """The signal that asks this run to stop, if any process got one. Under several processes every one takes
        part in a max of the flags (signal numbers) at each step boundary, so all stop after the same step and save together (a
        scheduler's SIGTERM reaches the processes at slightly different moments)."""
        local = self._stop_requested or None
        if self.acc.num_processes == 1:
            return local
        flag = torch.tensor(stops.code_of(local), dtype=torch.float32)
        agreed = int(self.acc.reduce(flag.to(self.acc.device), reduction="max").item())
        return local or stops.name_of(agreed)

    # ------------------------------------------------------------------ evaluation, logging, checkpoints

    @torch.no_grad()
    def eval_samples(self, prompts: list[str]):
        """One sampled response per prompt, with a fixed seed that leaves the training RNG untouched.

        Returns (rollout, response texts, final scores of the first reward source, per-response KL to the reference).
        """
        with torch.random.fork_rng(devices=[]):  # evaluation must not move the training RNG (resume equivalence)
            torch.manual_seed(self.cfg.train.seed + 12345)
            ro = self.rollout(prompts, samples_per_prompt=1)
            scores = self.score(ro, sources=[self.primary])[self.primary.name]
        last = ro.response_mask.sum(-1).cpu() - 1
        final = scores.tokens[torch.arange(len(ro)), last].tolist()
        texts = ro.token_batch(self.tokenizer).texts()[0]
        kl = torch.where(ro.response_mask, kl_per_token(ro.logprobs, ro.ref_logprobs, "k1"), 0).sum(-1)
        return ro, texts, final, kl.tolist()

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

    def _step_metrics(self, exp: Experience, rewards: AssembledRewards, kl, stats, used) -> dict[str, float]:
        mask = exp.rollout.response_mask
        final = rewards.final_combined_raw
        reward_mean = self._mean(final)
        metrics = {
            "reward_mean": reward_mean, "reward_std": math.sqrt(max(self._mean(final ** 2) - reward_mean ** 2, 0)),
            "token_reward_mean": self._mean(masked_mean(rewards.score_rewards, mask)),
            "kl": self._mean(torch.where(mask, kl, 0).sum(-1)),
            "response_length": self._mean(mask.sum(-1).float()),
            "ended_with_eos": self._mean(exp.rollout.ended.float()),
            "advantage_mean": self._mean(masked_mean(exp.advantages, mask)),
            "policy_lr": self.policy_sched.get_last_lr()[0],
            **used,
        }
        if len(self.sources) > 1 or self.lambdas:
            for source in self.sources:  # each source's mean final score; costs' share over their limit
                name, limit = source.name, source.config.limit
                metrics[f"score_{name}"] = self._mean(rewards.final_raw[name])
                if source.config.kind == "cost" and limit is not None:
                    metrics[f"over_limit_{name}"] = self._mean((rewards.final_raw[name] > limit).float())
        metrics.update(stats)
        metrics.setdefault("value_loss", 0.0)
        return metrics

    def _log(self, metrics: dict) -> None:
        if self.acc.is_main_process:
            with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(metrics) + "\n")
        self.acc.log({k: v for k, v in metrics.items() if k != "step"}, step=self.step)
        for hook in self.on_step_end:
            hook(metrics)

    def save(self) -> None:
        """Models and optimisers through accelerate (sharded under FSDP); the rest as JSON (checkpoint.py). Frozen
        weights stay out, identified by a fingerprint (training/frozen.py)."""
        state = {
            "step": self.step, "kl_coef": self.kl.coef, "prompt_order": self.order.state_dict(),
            "lagrange": {name: m.value for name, m in self.lambdas.items()},
            "policy_sched": self.policy_sched.state_dict(),
            "critic_sched": self.critic_sched.state_dict() if self.critic is not None else None,
            "weights": "trainable" if self.trainable_only else "all", "frozen": self.fingerprints(),
        }
        checkpoint.save(self.out, self.step, state, self.acc, keep=self.cfg.train.keep_checkpoints)

    def fingerprints(self) -> dict[str, str | None]:
        """The frozen weights' fingerprint of each model (computed once: frozen weights do not change). None under
        FSDP / DeepSpeed: their checkpoints hold the whole model, and each process holds only a shard."""
        if self._fingerprints is None:
            models = {"policy": self.policy, "critic": self.critic} if self.trainable_only else {}
            self._fingerprints = {name: frozen.fingerprint(self.acc.unwrap_model(model))
                                  for name, model in models.items() if model is not None}
        return self._fingerprints

    def load(self, path: Path) -> None:
        state = checkpoint.verify(path)  # damaged or tampered files are named before anything reads them
        trainable_only = state.get("weights") == "trainable"
        models = [(name, m) for name, m in (("policy", self.policy), ("critic", self.critic)) if m is not None]
        if trainable_only:  # the frozen base came from its source; the file must hold every trainable weight
            frozen.check_checkpoint_weights(Path(path), models)
        checkpoint.load(path, self.acc, strict=not trainable_only)
        sources = {"policy": self.cfg.policy.name_or_path, "critic": f"algo.critic_init={self.cfg.algo.critic_init}"}
        frozen.check_fingerprints(Path(path), state.get("frozen") or {}, self.fingerprints(), sources)
        self.step, self.kl.coef = state["step"], state["kl_coef"]
        for name, value in state.get("lagrange", {}).items():
            if name not in self.lambdas:
                raise ConfigError(f"the checkpoint holds a Lagrange multiplier for source {name!r}, which this config "
                                  "does not constrain; resume with the config the run was started with")
            self.lambdas[name].value = value
        self.order.load_state_dict(state["prompt_order"])
        self.policy_sched.load_state_dict(state["policy_sched"])
        if self.critic is not None:
            self.critic_sched.load_state_dict(state["critic_sched"])

    def export(self, hub_api=None) -> None:
        """The trained policy as standard HF folders with a card (training/export.py); train.push_to_hub pushes it."""
        self.acc.wait_for_everyone()
        weights = self.acc.get_state_dict(self.policy)  # every process takes part: it gathers FSDP shards
        if self.acc.is_main_process:
            export_policy(self.acc.unwrap_model(self.policy), self.tokenizer, self.cfg, self.out, self.step, hub_api,
                          state_dict=weights)


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

