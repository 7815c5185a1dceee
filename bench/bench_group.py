"""A first look at critic-free GRPO on RED vs sparse token rewards, and its step time against PPO's.

Run from the repository root:

    .venv/bin/python bench/bench_group.py --steps 8                  # the demo task (its cache is made if missing)
    .venv/bin/python bench/bench_group.py --task toy --steps 6       # the toy task, seconds

Three runs, one RL seed, the same number of rollouts per step (the config's rollout.batch_size prompts x 1 for PPO;
batch_size / k prompts x k samples for GRPO, k = --k):
  ppo-red      the task's own PPO settings (a critic, GAE, the KL in the reward)
  grpo-red     algo.algorithm grpo: each token's return-to-go minus the group's mean full return, the KL as a k3 loss
               term (kl.use_kl_loss), one batch-level std (algo.scale_advantages batch), no critic
  grpo-sparse  the same on the sparse reward (the standard GRPO with a batch std)
Prints one JSON line per run (per-step training reward, seconds per step and per phase) and a table: mean seconds per
step after the first (warm-up), the update phase's, and the training reward of the first step and of the last three.
One seed and a few steps are a first look, not a comparison of learning (bench/bench_learning.py is the study).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import sys
from pathlib import Path

RUNS = {
    "ppo-red": ("red", "ppo"),
    "grpo-red": ("red", "grpo"),
    "grpo-sparse": ("sparse", "grpo"),
}


def grpo_overrides(batch_size: int, k: int) -> list[str]:
    if batch_size % k:
        raise SystemExit(f"--k {k} must divide the config's rollout.batch_size {batch_size} (same rollouts per step)")
    return ["--algo.algorithm=grpo", f"--rollout.batch_size={batch_size // k}", f"--rollout.samples_per_prompt={k}",
            "--kl.use_kl_loss=true", "--kl.estimator=k3", "--algo.whiten_advantages=false",
            "--algo.scale_advantages=batch"]


def config_for(task: str, scheme: str, algorithm: str, steps: int, seed: int, k: int, out: Path, cache_dir: str):
    from red_rlhf.config import load_config

    common = [f"--reward.scheme={scheme}", f"--train.steps={steps}", f"--train.seed={seed}", "--train.save_every=0",
              "--train.eval_every=0", "--train.log_with=", f"--train.output_dir={out}"]
    if task == "toy":
        base = load_config("configs/toy.yaml", ["--data.eval_size=0"])
        extra = grpo_overrides(base.rollout.batch_size, k) if algorithm == "grpo" else []
        return load_config("configs/toy.yaml", ["--data.eval_size=0", *common, *extra])
    from red_rlhf.demo import DemoSettings
    from red_rlhf.demo.pipeline import train_config

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        from bench_learning import demo_cache  # the demo's data, SmolLM2 and reward model, as the study uses them
    finally:
        sys.path.pop(0)
    data, policy, rm = demo_cache(cache_dir)
    s = DemoSettings(cache_dir=cache_dir, output_dir=str(out), overrides=tuple(common))
    base = train_config(s, data, policy, rm, out)
    extra = grpo_overrides(base.rollout.batch_size, k) if algorithm == "grpo" else []
    return train_config(dataclasses.replace(s, overrides=tuple(common + extra)), data, policy, rm, out)


def run_one(name: str, args) -> dict:
    from red_rlhf.training.trainer import Trainer

    scheme, algorithm = RUNS[name]
    out = Path(args.work) / name
    shutil.rmtree(out, ignore_errors=True)
    cfg = config_for(args.task, scheme, algorithm, args.steps, args.seed, args.k, out, args.cache_dir)
    history = Trainer(cfg).train()
    shutil.rmtree(out, ignore_errors=True)
    phases = sorted(k for k in history[0] if k.startswith("time_") and k.endswith("_s"))
    return {"name": name, "task": args.task, "scheme": scheme, "algorithm": algorithm, "seed": args.seed,
            "rollouts_per_step": cfg.rollouts_per_step, "samples_per_prompt": cfg.rollout.samples_per_prompt,
            "reward_mean": [round(m["reward_mean"], 5) for m in history],
            **{key: [round(m[key], 4) for m in history] for key in phases}}


def summary(record: dict) -> dict:
    after_first = slice(1, None) if len(record["time_s"]) > 1 else slice(None)
    reward = record["reward_mean"]
    return {"run": record["name"], "s_per_step": statistics.mean(record["time_s"][after_first]),
            "update_s": statistics.mean(record["time_update_s"][after_first]),
            "rollout_s": statistics.mean(record["time_rollout_s"][after_first]),
            "reward_first": reward[0], "reward_last3": statistics.mean(reward[-3:])}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=("demo", "toy"), default="demo")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, default=4, help="GRPO samples per prompt")
    p.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, of {', '.join(RUNS)}")
    p.add_argument("--cache-dir", default="~/.cache/red-rlhf")
    p.add_argument("--work", default="runs/bench-group", help="run folders while they train (deleted after)")
    p.add_argument("--out", default=None, help="append the JSON lines to this file")
    args = p.parse_args(argv)
    names = [n for n in args.runs.split(",") if n]
    unknown = sorted(set(names) - set(RUNS))
    if unknown:
        p.error(f"unknown runs {unknown}; choose from {', '.join(RUNS)}")
    records = []
    for name in names:
        record = run_one(name, args)
        records.append(record)
        print(json.dumps(record), flush=True)
        if args.out:
            with open(args.out, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
    print(f"{'run':<12} {'s/step':>8} {'update s':>9} {'rollout s':>10} {'reward step 1':>14} {'last 3 steps':>13}")
    for record in records:
        s = summary(record)
        print(f"{s['run']:<12} {s['s_per_step']:8.2f} {s['update_s']:9.2f} {s['rollout_s']:10.2f} "
              f"{s['reward_first']:14.3f} {s['reward_last3']:13.3f}")
    return records


if __name__ == "__main__":
    main()
