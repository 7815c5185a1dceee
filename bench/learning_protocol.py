"""The numbers behind the v2 study's protocol (docs/results/learning-v2/PROTOCOL.md), from the old study's
64-token runs (docs/results/learning/runs.jsonl): the power calculation and the compute estimate.

    .venv/bin/python bench/learning_protocol.py [--runs docs/results/learning/runs.jsonl]

Power: the primary statistic (a run's mean score over a KL range, `learning_stats.mean_at_kl`) is computed for the
old runs of RED and sparse (64 new tokens, KL coefficient 0.05, 5 seeds), for the two scores they have (the proxy
reward model's and VADER's; the gold judge did not exist). The spread of the per-seed differences, sd_d, gives the
smallest true difference a paired t-test over n seeds detects with power 0.8 at the Holm family's strictest level
alpha / m (m = 2 or 3 primary comparisons):  (t_{1 - alpha / 2m, n - 1} + t_{0.8, n - 1}) * sd_d / sqrt(n)
(`learning_stats.min_detectable`, the usual t approximation of the non-central t). In units of sd_d this is the standardised effect d_z the study can see.

Compute: seconds per training step and per evaluated prompt from the same runs, taken from quiet runs (the median
over the runs' steps and evaluations), scaled to a plan's steps, evaluations and prompts.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from learning_stats import kl_grid, mean_at_kl, min_detectable

RANGES = ((2.0, 8.0), (2.0, 10.0), (1.0, 6.0))
PRIMARY_RANGE = (2.0, 8.0)
GRID_STEP = 0.25


def old_long_runs(runs: list[dict]) -> dict[str, dict[int, dict]]:
    out: dict[str, dict[int, dict]] = {"red": {}, "sparse": {}}
    for r in runs:
        if r["max_new_tokens"] == 64 and r["kl_coef"] == 0.05 and r["scheme"] in out:
            out[r["scheme"]][r["seed"]] = r
    return out


def statistic(r: dict, key: str, low: float, high: float) -> float | None:
    return mean_at_kl([e["kl"] for e in r["evals"]], [e[key] for e in r["evals"]], kl_grid(low, high, GRID_STEP))


def power_table(groups: dict[str, dict[int, dict]]) -> list[dict]:
    rows = []
    seeds = sorted(set(groups["red"]) & set(groups["sparse"]))
    for key in ("rm_score", "judge"):
        for low, high in RANGES:
            red = [statistic(groups["red"][s], key, low, high) for s in seeds]
            sparse = [statistic(groups["sparse"][s], key, low, high) for s in seeds]
            pairs = [(a, b) for a, b in zip(red, sparse) if a is not None and b is not None]
            diffs = [a - b for a, b in pairs]
            gain = [b - groups["sparse"][s]["evals"][0][key] for s, (_, b) in zip(seeds, pairs)]
            row = {"score": key, "range": (low, high), "pairs": len(pairs), "mean_diff": statistics.fmean(diffs),
                   "sd_diff": statistics.stdev(diffs), "sd_sparse": statistics.stdev(b for _, b in pairs),
                   "sparse_gain": statistics.fmean(gain)}
            for m in (2, 3):
                for n in (5, 6, 8, 10, 12):
                    row[f"mde_m{m}_n{n}"] = min_detectable(row["sd_diff"], n, 0.05 / m)
            rows.append(row)
    return rows


def timings(runs: list[dict]) -> dict:
    """Median seconds per training step and per evaluated prompt of the quiet 64-token runs (1 torch thread: a
    quiet run's wall time is its CPU time; runs beside other work show wall >> CPU and are left out)."""
    quiet = [r for r in runs if r["max_new_tokens"] == 64 and r["wall_s"] < 1.1 * r["cpu_s"]]
    step = statistics.median(t["time_s"] for r in quiet for t in r["train"] if "time_s" in t)
    per_prompt = statistics.median(e["seconds"] / r["eval_prompts"] for r in quiet for e in r["evals"])
    run = statistics.median(r["wall_s"] for r in quiet)
    return {"quiet_runs": len(quiet), "step_s": step, "eval_s_per_prompt": per_prompt, "run_s_40_steps": run}


def run_hours(t: dict, runs: int, steps: int, eval_every: int, eval_prompts: int, step_factor: float = 1.0) -> float:
    evals = steps // eval_every + 1  # step 0 too
    return runs * (steps * t["step_s"] * step_factor + evals * eval_prompts * t["eval_s_per_prompt"]) / 3600


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="docs/results/learning/runs.jsonl")
    args = p.parse_args()
    runs = [json.loads(line) for line in Path(args.runs).read_text().splitlines() if line.strip()]
    groups = old_long_runs(runs)
    print(f"old 64-token runs, KL coefficient 0.05: red seeds {sorted(groups['red'])}, sparse seeds {sorted(groups['sparse'])}")
    print("\n| score | KL range | pairs | mean diff (red - sparse) | sd of diffs | sd of sparse | sparse gain over step 0 | "
          "MDE n=5 | n=6 | n=8 | n=10 | n=12 (alpha 0.05/2) | n=8 (alpha 0.05/3) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in power_table(groups):
        mde = " | ".join(f"{r[f'mde_m2_n{n}']:.3f}" for n in (5, 6, 8, 10, 12))
        print(f"| {r['score']} | {r['range'][0]:g}-{r['range'][1]:g} | {r['pairs']} | {r['mean_diff']:.3f} | "
              f"{r['sd_diff']:.3f} | {r['sd_sparse']:.3f} | {r['sparse_gain']:.3f} | {mde} | {r['mde_m3_n8']:.3f} |")
    for n in (5, 6, 8, 10, 12):
        print(f"d_z detectable (power 0.8): n={n}: alpha 0.05/2 {min_detectable(1.0, n, 0.05 / 2):.2f}, "
              f"0.05/3 {min_detectable(1.0, n, 0.05 / 3):.2f}")
    for dz in (0.5, 1.0):
        n = next(n for n in range(3, 500) if min_detectable(1.0, n, 0.05 / 2) <= dz)
        print(f"seeds needed for d_z = {dz} (power 0.8, alpha 0.05/2): {n}")
    t = timings(runs)
    print(f"\ntimings from {t['quiet_runs']} quiet 64-token runs: {t['step_s']:.1f} s a PPO step, "
          f"{t['eval_s_per_prompt']:.2f} s an evaluated prompt, {t['run_s_40_steps'] / 60:.1f} min a 40-step run "
          f"(6 evaluations of 64 prompts)")
    for steps in (16, 20, 24, 32, 40):
        one = run_hours(t, 1, steps, 4, 128) * 60
        print(f"plan: {steps} steps, 128 prompts every 4 steps: {one:.1f} min a run; "
              f"40 runs {run_hours(t, 40, steps, 4, 128):.1f} h, 56 runs {run_hours(t, 56, steps, 4, 128):.1f} h")


if __name__ == "__main__":
    main()
