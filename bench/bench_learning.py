"""Learning efficiency on the embedded demo task: RED vs sparse vs ABC token rewards, same seeds and settings.

Run from the repository root after `make demo` (it reuses the demo's cache: data, SmolLM2, reward model):

    .venv/bin/python bench/bench_learning.py                                  # 3 schemes x seeds 0,1,2, 16 steps
    .venv/bin/python bench/bench_learning.py --schemes red,sparse --seeds 0 --steps 8

Every run is `red-rlhf demo --reward-scheme S --seed K --steps N` (`red_rlhf.demo.run_demo`): the same reward
model, PPO hyper-parameters and held-out prompts; the seed moves the prompt order, sampling and LoRA init. After
N steps it records the training reward model's mean score, the independent judge's (VADER) mean score and the
KL to the reference on the held-out prompts, and the per-step training curves. Results go to
OUTPUT/results.json and OUTPUT/reward_vs_kl.png; the table prints mean +- standard deviation over seeds, then
one `learning: ...` line per scheme that a script can read. A run already in OUTPUT/runs is read, not rerun,
so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from red_rlhf.demo import DemoSettings, run_demo

MEASURES = ("rm_score_after", "judge_after", "kl_after")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--schemes", default="red,sparse,abc")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--cache-dir", default="~/.cache/red-rlhf")
    p.add_argument("--output", default="runs/bench-learning")
    return p.parse_args()


def one_run(args, scheme: str, seed: int) -> dict:
    out = Path(args.output) / "runs" / f"{scheme}-seed{seed}"
    done = out / "summary.json"
    if done.is_file():
        summary = json.loads(done.read_text())
    else:
        # data and reward model stay the demo's (seed 0): only the RL run varies with the seed
        settings = DemoSettings(cache_dir=args.cache_dir, output_dir=str(out), reward_scheme=scheme,
                                steps=args.steps, rl_seed=seed, heatmaps=2)
        run_demo(settings)
        summary = json.loads(done.read_text())
    curves = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    summary["curve"] = [{"step": m["step"], "reward_mean": m["reward_mean"], "kl": m["kl"]} for m in curves]
    return summary


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def plot(results: dict[str, list[dict]], target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for scheme, runs in results.items():
        colour = {"red": "tab:red", "sparse": "tab:blue", "abc": "tab:green"}.get(scheme)
        for i, run in enumerate(runs):
            steps = [c["step"] for c in run["curve"]]
            left.plot(steps, [c["reward_mean"] for c in run["curve"]], color=colour, alpha=0.5,
                      label=scheme if i == 0 else None)
        left.set_title("training reward-model score per step (each seed)")
        xs, ys = [r["kl_after"] for r in runs], [r["rm_score_after"] for r in runs]
        right.scatter(xs, ys, color=colour, label=scheme)
    right.set_title("held-out: reward-model score vs KL after training")
    right.set_xlabel("KL to the reference (nats per response)")
    right.set_ylabel("reward-model score")
    left.set_xlabel("step")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(target, dpi=100)
    plt.close(fig)


def main() -> None:
    args = parse_args()
    schemes, seeds = args.schemes.split(","), [int(s) for s in args.seeds.split(",")]
    results = {scheme: [one_run(args, scheme, seed) for seed in seeds] for scheme in schemes}
    out = Path(args.output)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "reward_vs_kl.png")
    before = results[schemes[0]][0]
    print(f"\n{args.steps} PPO steps, seeds {seeds}; before training: reward model {before['rm_score_before']:.3f}, "
          f"judge {before['judge_before']:.3f} (seed {seeds[0]})")
    print(f"{'scheme':8} " + " ".join(f"{m:>22}" for m in MEASURES))
    lines = []
    for scheme, runs in results.items():
        stats = {m: mean_sd([r[m] for r in runs]) for m in MEASURES}
        print(f"{scheme:8} " + " ".join(f"{stats[m][0]:>13.3f} +- {stats[m][1]:5.3f}" for m in MEASURES))
        lines.append(f"learning: {scheme} rm_score = {stats['rm_score_after'][0]:.3f} +- {stats['rm_score_after'][1]:.3f}, "
                     f"judge = {stats['judge_after'][0]:.3f} +- {stats['judge_after'][1]:.3f}, "
                     f"kl = {stats['kl_after'][0]:.2f} at step {args.steps} ({len(runs)} seeds)")
    print(f"plot: {out / 'reward_vs_kl.png'}")
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
