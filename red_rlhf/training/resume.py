"""What `--resume` may change, the run's settings history, and one metrics row per step after a resume.

The rule. A checkpoint continues one run: its weights, critic, optimiser moments, prompt order and RNG states
were made under the run's task settings, so those cannot change on resume and a changed one is refused by name
(policy, reward, data, algorithm, batch composition, seed, ...). What only steers the optimisation or the run's
length and logging may change (RESUMABLE below); the ones a checkpoint restores are set again after loading:

- algo.policy_lr, algo.critic_lr: the optimiser's state dict brings back the old learning rate; the new one is
  set on its param_groups and on the LambdaLR's base_lrs (the schedule's factor at the resumed step kept).
- kl.coef: the checkpoint brings back the (possibly adapted) coefficient; a changed kl.coef replaces it.
Every change is printed and recorded.

OUTPUT_DIR/config-history.jsonl holds one entry per start or resume: {"event", "step", "time", "settings",
"changes"}. The settings a checkpoint of step N was written under are those of the last entry that started
before step N (a later session that started before N is the one that ran step N).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from red_rlhf.config import Config, ConfigError, to_dict

HISTORY = "config-history.jsonl"

RESUMABLE = {
    "algo.policy_lr", "algo.critic_lr", "algo.lr_schedule", "kl.coef", "kl.adaptive", "kl.target", "kl.horizon",
    "algo.epochs", "algo.mini_batch_size", "algo.grad_accum", "algo.clip_range", "algo.value_clip_range",
    "algo.entropy_coef", "algo.gamma", "algo.lam", "algo.whiten_advantages", "algo.whiten_rewards",
    "algo.max_grad_norm", "algo.target_kl", "lagrangian.lr", "rollout.temperature", "rollout.top_p",
    "rollout.max_new_tokens", "train.steps", "train.save_every", "train.eval_every", "train.keep_checkpoints",
    "train.tensorboard", "train.output_dir",  # a run directory may be moved
}
"""Settings that may differ from those the checkpoint was written under; every other one is refused."""


def flat_settings(settings: dict) -> dict[str, object]:
    """{"algo": {"policy_lr": 1e-5}} -> {"algo.policy_lr": 1e-5}. Lists of sections (reward.sources) are
    flattened per item, "reward.sources[1].weight"; the one-source short form reads "reward.scheme"."""
    out = {}
    for section, values in settings.items():
        for key, value in values.items():
            if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
                short = section == "reward" and key == "sources" and len(value) == 1 and value[0].get("name") == "reward"
                for i, item in enumerate(value):
                    for name, v in item.items():
                        out[f"{section}.{name}" if short else f"{section}.{key}[{i}].{name}"] = v
            else:
                out[f"{section}.{key}"] = value
    return out


def read_history(out: Path) -> list[dict]:
    file = Path(out) / HISTORY
    if not file.is_file():
        return []
    entries = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ConfigError(f"{file}, line {number}: not valid JSON ({err.msg}); the settings history is "
                                  "damaged: repair or remove that line") from err
    return entries


def checkpoint_step(path: Path) -> int:
    """The step of a checkpoint directory named step-000010."""
    match = re.fullmatch(r"step-(\d+)", Path(path).name)
    if match is None:
        raise ConfigError(f"checkpoint directory {path} is not named step-NNNNNN")
    return int(match.group(1))


def settings_at(out: Path, step: int) -> dict | None:
    """The settings the run's checkpoint of `step` was written under, or None when the run left no record."""
    earlier = [e for e in read_history(out) if e["step"] < step]
    if earlier:
        return earlier[-1]["settings"]
    started = Path(out) / "config.json"  # a run folder without a settings history: the settings it records
    return json.loads(started.read_text(encoding="utf-8")) if started.is_file() else None


def changed_settings(before: dict, cfg: Config) -> dict[str, tuple[object, object]]:
    """{name: (old, new)} of every setting that differs between a recorded settings dict and cfg."""
    old, new = flat_settings(before), flat_settings(to_dict(cfg))
    absent = "(absent)"  # a source added or removed
    return {name: (old.get(name, absent), new.get(name, absent)) for name in sorted(old.keys() | new.keys())
            if old.get(name, absent) != new.get(name, absent)}


def check_resume(cfg: Config, step: int) -> dict[str, tuple[object, object]]:
    """Raise ConfigError naming every setting that cannot change on resume; return those that change and may."""
    before = settings_at(Path(cfg.train.output_dir), step)
    if before is None:
        return {}
    changes = changed_settings(before, cfg)
    if "algo.algorithm" in changes:
        old, new = changes["algo.algorithm"]
        raise ConfigError(f"algo.algorithm: the checkpoint of step {step} was written by a {old!r} run, this config "
                          f"says {new!r}; a run cannot switch algorithms on resume ({old} and {new} keep different "
                          "models and optimiser state): resume with algo.algorithm="
                          f"{old}, or start a new run in another train.output_dir")
    refused = {name: change for name, change in changes.items() if name not in RESUMABLE}
    if refused:
        listed = "; ".join(f"{name}: {old!r} -> {new!r}" for name, (old, new) in sorted(refused.items()))
        raise ConfigError(f"cannot resume from step {step} with changed settings ({listed}): these define the run the "
                          "checkpoint continues. Resume with the values it was started with, or start a new run in "
                          "another train.output_dir. Settings that may change on resume: "
                          + ", ".join(sorted(RESUMABLE)))
    if cfg.train.steps <= step:
        raise ConfigError(f"train.steps={cfg.train.steps}, but the checkpoint is already at step {step}: raise "
                          "train.steps to continue the run")
    return changes


def set_learning_rate(optimizer, scheduler, lr: float) -> None:
    """A new base learning rate after a state dict brought back the old one; the schedule's factor is kept."""
    scheduler.base_lrs = [lr for _ in optimizer.param_groups]
    factors = [f(scheduler.last_epoch) for f in scheduler.lr_lambdas]
    for group, factor in zip(optimizer.param_groups, factors):
        group["initial_lr"] = lr
        group["lr"] = lr * factor
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def apply_changes(trainer, changes: dict[str, tuple[object, object]]) -> list[str]:
    """After the checkpoint is loaded: set the restored values that this config changes. Returns log lines."""
    cfg, lines = trainer.cfg, []
    optimisers = [("algo.policy_lr", trainer.policy_opt, trainer.policy_sched, cfg.algo.policy_lr)]
    if trainer.critic_sched is not None:
        optimisers.append(("algo.critic_lr", trainer.critic_opt, trainer.critic_sched, cfg.algo.critic_lr))
    for name, optimizer, scheduler, lr in optimisers:
        if scheduler.base_lrs[0] != lr:
            lines.append(f"{name} {scheduler.base_lrs[0]!r} (from the checkpoint) -> {lr!r}")
        set_learning_rate(optimizer, scheduler, lr)  # also applies a changed lr_schedule at this step
    if "kl.coef" in changes or not cfg.kl.adaptive:  # adaptive and unchanged: the controller's value stays
        if trainer.kl.coef != cfg.kl.coef:
            lines.append(f"kl.coef {trainer.kl.coef!r} (from the checkpoint) -> {cfg.kl.coef!r}")
            trainer.kl.coef = cfg.kl.coef
    applied = {line.split()[0] for line in lines}
    for name, (old, new) in sorted(changes.items()):
        if name not in applied and name != "kl.coef":
            lines.append(f"{name} {old!r} -> {new!r}")
    return [f"resume at step {trainer.step}: {line}" for line in lines]


def record(out: Path, event: str, step: int, cfg: Config, changes: list[str] = ()) -> None:
    """Append one start/resume entry to OUTPUT_DIR/config-history.jsonl."""
    entry = {"event": event, "step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "settings": to_dict(cfg), "changes": list(changes)}
    with open(Path(out) / HISTORY, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


def drop_rows_after(file: Path, step: int) -> int:
    """Remove the JSON-lines rows of steps after `step` (a killed run logged them, the resumed run logs them
    again), so a reader sees one row per step. Returns how many were dropped."""
    file = Path(file)
    if not file.is_file():
        return 0
    kept, dropped = [], 0
    for line in file.read_text(encoding="utf-8").splitlines():
        try:
            row_step = json.loads(line).get("step", 0)
        except (json.JSONDecodeError, AttributeError):
            row_step = step + 1  # a line cut by the kill
        if row_step > step:
            dropped += 1
        else:
            kept.append(line + "\n")
    if dropped:
        tmp = file.with_name(f".{file.name}.tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, file)
    return dropped


def begin(trainer, resume: bool) -> None:
    """The start of Trainer.train: check and load (resume) or refuse a used directory (start), set the changed
    values, make the logs hold one row per step, record the settings. Main process writes; all check."""
    from red_rlhf.training import checkpoint

    out, cfg = trainer.out, trainer.cfg
    if resume:
        path = checkpoint.usable(out)  # the latest, or the newest earlier whole one when the latest is damaged
        step = checkpoint_step(path)
        changes = check_resume(cfg, step)
        trainer.load(path)
        lines = apply_changes(trainer, changes)
    else:
        if checkpoint.holds_checkpoints(out):  # even without a `latest` pointer: its steps would be deleted
            raise ValueError(f"{out} already holds checkpoints: pass --resume to continue, or pick another "
                             "train.output_dir")
        step, lines = 0, []
    if trainer.acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        for name in ("metrics.jsonl", "samples.jsonl"):  # rows of a killed session past the step we start from
            dropped = drop_rows_after(out / name, step)
            if dropped:
                lines.append(f"dropped {dropped} row(s) after step {step} from {name} (logged by the stopped run)")
        for line in lines:
            print(line)
        record(out, "resume" if resume else "start", step, cfg, lines)


def preflight(cfg: Config, resume: bool) -> None:
    """Before any model loads: the output directory can take the run, a resume can continue it, local model
    paths exist. Raises ConfigError / FileNotFoundError naming the setting."""
    from red_rlhf.config import reward_sources
    from red_rlhf.models.build import import_function
    from red_rlhf.models.paths import check_model_path, writable_dir
    from red_rlhf.training import checkpoint

    out = writable_dir(cfg.train.output_dir, "train.output_dir")
    if resume:  # quietly: the trainer says which checkpoint it resumes from, and why when `latest` is not used
        check_resume(cfg, checkpoint_step(checkpoint.latest(out, say=lambda line: None)))
    elif checkpoint.holds_checkpoints(out):
        raise ConfigError(f"{out} already holds checkpoints: pass --resume to continue, or pick another "
                          "train.output_dir")
    if cfg.policy.name_or_path != "toy":
        check_model_path(cfg.policy.name_or_path, "policy.name_or_path")
    sources = reward_sources(cfg)
    short = len(sources) == 1 and sources[0].name == "reward"  # the one-source short form: reward.model, ...
    for i, source in enumerate(sources):
        where = "reward" if short else f"reward.sources[{i}]"
        if source.model is not None:
            check_model_path(source.model, f"{where}.model")
        if source.function is not None:  # a missing module or a syntax error, before the policy loads
            import_function(source.function, f"{where}.function")
