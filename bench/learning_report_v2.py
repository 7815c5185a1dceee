"""Study v2's report (`bench/bench_learning.py report --study v2`), as docs/results/learning-v2/PROTOCOL.md fixes
it: the primary table (one statistic per run, a paired t-test per comparison, Holm over the primary comparisons),
then exploratory tables, the score-vs-KL plot per arm (gold and proxy) and summary.json.

Statistic: G = a run's mean gold score over KL 2-8 nats (`learning_stats.mean_at_kl` on `kl_grid(2, 8, 0.25)`).
A pair (same RL seed) counts when both runs have G; a comparison with fewer than MIN_PAIRS pairs has no test.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

from learning_stats import holm, kl_grid, mean_at_kl, min_detectable, paired_t_test, t_interval

KL_RANGE, KL_STEP, MIN_PAIRS, LEVEL = (2.0, 8.0), 0.25, 6, 0.05
PRIMARY = (("C1", "Q1: RED vs sparse PPO with a reward-model critic", "ppo-red", "ppo-sparse-rc"),
           ("C2", "Q2: RED vs sparse, RLOO (no critic)", "rloo-red", "rloo-sparse"),
           ("C3", "Q3: RED vs sparse, GRPO (no critic)", "grpo-red", "grpo-sparse"))
EXPLORATORY = (("ppo-red", "ppo-sparse"), ("ppo-sparse-rc", "ppo-sparse"))
MEASURES = (("gold", "gold judge"), ("rm_score", "proxy reward model"), ("judge", "VADER"))
ARMS = ("ppo-red", "ppo-sparse-rc", "rloo-red", "rloo-sparse", "grpo-red", "grpo-sparse", "ppo-sparse")
LAST = (("kl", "KL"), ("gold", "gold"), ("rm_score", "proxy"), ("response_length", "length"))
# PROTOCOL.md amendment 2: the cache holding the proxy was lost between two sessions and the runner rebuilt the proxy
# from the same recipe (not bit-identical); runs finished before this moment scored with the original proxy.
PROXY_REBUILT = "2026-12-04T16:28"


def proxy_of(run: dict) -> str:
    return "original" if run.get("finished", "") < PROXY_REBUILT else "rebuilt"


def statistic(run: dict, key: str = "gold") -> float | None:
    evals = run["evals"]
    return mean_at_kl([e["kl"] for e in evals], [e[key] for e in evals], kl_grid(*KL_RANGE, KL_STEP))


def by_arm(runs: list[dict]) -> dict[str, dict[int, dict]]:
    """{arm: {seed: run}}; refuses runs of several commits or of uncommitted code (PROTOCOL.md: one commit)."""
    commits = sorted({r.get("commit", "") for r in runs})
    if len(commits) > 1 or any(c.endswith("-dirty") or not c for c in commits):
        raise ValueError(f"study v2's runs must share one clean commit; these runs have {commits}")
    out: dict[str, dict[int, dict]] = defaultdict(dict)
    for r in runs:
        out[r["arm"]][r["seed"]] = r
    return dict(out)


def compare(arms: dict, a: str, b: str, key: str = "gold", same_proxy: bool = False) -> dict:
    """The paired test of G(a) - G(b) over the seeds where both runs reach the top of the KL range (and, with
    same_proxy, trained on the same proxy: amendment 2's sensitivity check)."""
    seeds = sorted(set(arms.get(a, {})) & set(arms.get(b, {})))
    if same_proxy:
        seeds = [s for s in seeds if proxy_of(arms[a][s]) == proxy_of(arms[b][s])]
    values = [(s, statistic(arms[a][s], key), statistic(arms[b][s], key)) for s in seeds]
    pairs = [(s, x, y) for s, x, y in values if x is not None and y is not None]
    out = {"a": a, "b": b, "measure": key, "seeds_run": len(seeds), "pairs": len(pairs), "seeds": [s for s, _, _ in pairs],
           "per_seed": [x - y for _, x, y in pairs]}
    if len(pairs) < MIN_PAIRS:
        return {**out, "mean": math.nan, "low": math.nan, "high": math.nan, "t": math.nan, "p": math.nan,
                "reached": False}
    return {**out, **paired_t_test([x for _, x, _ in pairs], [y for _, _, y in pairs]), "reached": True}


def primary_table(arms: dict) -> list[dict]:
    """The primary comparisons that exist (C3 only when GRPO arms ran), each with its Holm-adjusted p."""
    rows = []
    for cid, question, a, b in PRIMARY:
        if cid == "C3" and not (a in arms or b in arms):
            continue
        rows.append({"id": cid, "question": question, **compare(arms, a, b)})
    for row, adjusted in zip(rows, holm([r["p"] for r in rows])):
        row["p_holm"] = adjusted
        row["finding"] = row["reached"] and adjusted < LEVEL
        sd = statistics.stdev(row["per_seed"]) if len(row["per_seed"]) > 1 else math.nan
        row["detectable"] = min_detectable(sd, row["pairs"], LEVEL / len(rows)) if row["reached"] else math.nan
    return rows


def arm_table(arms: dict) -> list[dict]:
    """Per arm (exploratory, descriptive): G on each measure over the runs that have it, and the means at the last
    evaluation, each as (mean, low, high) with a 95% t-interval over seeds; `with_g_<measure>` counts the runs with G."""
    rows = []
    for name in (a for a in ARMS if a in arms):
        runs = [arms[name][s] for s in sorted(arms[name])]
        row = {"arm": name, "runs": len(runs)}
        for key, _ in MEASURES:
            values = [v for v in (statistic(r, key) for r in runs) if v is not None]
            row[f"G_{key}"] = t_interval(values) if values else (math.nan,) * 3
            row[f"with_g_{key}"] = len(values)
        for key, _ in LAST:
            row[f"last_{key}"] = t_interval([r["evals"][-1][key] for r in runs])
        rows.append(row)
    return rows


def verdict(row: dict) -> str:
    if not row["reached"]:
        return f"not reached: {row['pairs']} complete pairs, fewer than {MIN_PAIRS}"
    if row["finding"]:
        return f"{'RED ahead' if row['mean'] > 0 else 'RED behind'} (Holm p {row['p_holm']:.3f})"
    return f"no difference found; detectable with power 0.8: {row['detectable']:.3f}"


def _f(x: float, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _interval(comparison: dict) -> tuple[float, float, float]:
    return comparison["mean"], comparison["low"], comparison["high"]


def _ci(interval: tuple[float, float, float], digits: int = 3) -> str:
    mean, low, high = interval
    return f"{_f(mean, digits)} [{_f(low, digits)}, {_f(high, digits)}]"


def plot(arms: dict, path: Path) -> Path:
    """Gold (left axis, solid) and proxy (right axis, dashed) against KL, one panel per arm, a line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [a for a in ARMS if a in arms]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.6), squeeze=False, sharey=True)
    twins = []
    for ax, name in zip(axes[0], names):
        twin = ax.twinx()
        twins.append(twin)
        for run in arms[name].values():
            kls = [e["kl"] for e in run["evals"]]
            ax.plot(kls, [e["gold"] for e in run["evals"]], color="tab:green", lw=1, alpha=0.7)
            twin.plot(kls, [e["rm_score"] for e in run["evals"]], color="tab:purple", lw=1, ls="--", alpha=0.7)
        ax.axvspan(*KL_RANGE, color="0.9", zorder=0)
        ax.set_title(name)
        ax.set_xlabel("KL to reference (nats)")
        twin.set_ylabel("proxy (dashed)", color="tab:purple")
    low, high = min(t.get_ylim()[0] for t in twins), max(t.get_ylim()[1] for t in twins)
    for twin in twins:  # one proxy scale for every panel, as the gold axis is shared
        twin.set_ylim(low, high)
    axes[0][0].set_ylabel("gold judge (solid)", color="tab:green")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(runs: list[dict], folder: Path) -> dict:
    arms = by_arm(runs)
    rows = primary_table(arms)
    print(f"Primary comparisons (PROTOCOL.md): G = mean gold score over KL {KL_RANGE[0]:g}-{KL_RANGE[1]:g} nats; "
          f"paired t-test over seeds; Holm over {len(rows)} comparisons\n")
    print("| comparison | question | pairs | G(RED) - G(sparse) [95% CI] | t | p | Holm p | verdict |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['id']}: {r['a']} - {r['b']} | {r['question']} | {r['pairs']} of {r['seeds_run']} | "
              f"{_ci(_interval(r))} | {_f(r['t'], 2)} | {_f(r['p'])} | "
              f"{_f(r['p_holm'])} | {verdict(r)} |")
    same_proxy = [{"id": r["id"], **compare(arms, r["a"], r["b"], same_proxy=True)} for r in rows]
    print("\nSensitivity (PROTOCOL.md amendment 2; exploratory, uncorrected): the primary comparisons on the seeds "
          "whose two runs trained on the same proxy\n")
    print("| comparison | pairs | seeds left out | G(RED) - G(sparse) [95% CI] | p (uncorrected) |")
    print("|---|---|---|---|---|")
    for r, s in zip(rows, same_proxy):
        left_out = sorted(set(r["seeds"]) - set(s["seeds"]))
        print(f"| {s['id']}: {s['a']} - {s['b']} | {s['pairs']} | {', '.join(map(str, left_out)) or 'none'} | "
              f"{_ci(_interval(s))} | {_f(s['p'])} |")
    exploratory = [compare(arms, a, b, key) for key, _ in MEASURES for a, b in EXPLORATORY + tuple(
        (p[2], p[3]) for p in PRIMARY) if not (key == "gold" and (a, b) in {(p[2], p[3]) for p in PRIMARY})]
    exploratory = [e for e in exploratory if e["seeds_run"]]
    per_arm = arm_table(arms)
    start = {key: statistics.fmean(r["evals"][0][key] for r in runs) for key, _ in MEASURES}
    print("\nPer arm (exploratory, descriptive): G on each measure (runs with G), and the means at the last "
          "evaluation; 95% t-intervals over seeds. Before training (mean of every run's step 0): "
          + ", ".join(f"{label} {_f(start[key])}" for key, label in MEASURES) + "\n")
    print("| arm | runs | G gold (runs) | G proxy | G VADER | last: " + " | ".join(label for _, label in LAST) + " |")
    print("|---" * (5 + len(LAST)) + "|")
    for a in per_arm:
        print(f"| {a['arm']} | {a['runs']} | {_ci(a['G_gold'])} ({a['with_g_gold']}) | {_ci(a['G_rm_score'])} | "
              f"{_ci(a['G_judge'])} | " + " | ".join(_ci(a[f"last_{key}"], 1 if key in ("kl", "response_length") else 3)
                                                    for key, _ in LAST) + " |")
    print("\nExploratory (no correction; not part of the protocol's tests)\n")
    print("| difference | measure | pairs | mean [95% CI] | p (uncorrected) |")
    print("|---|---|---|---|---|")
    for e in exploratory:
        print(f"| {e['a']} - {e['b']} | {dict(MEASURES)[e['measure']]} | {e['pairs']} | {_ci(_interval(e))} | "
              f"{_f(e['p'])} |")
    folder.mkdir(parents=True, exist_ok=True)
    figure = plot(arms, folder / "score_vs_kl.png")
    summary = {"kl_range": KL_RANGE, "primary": rows, "same_proxy": same_proxy, "exploratory": exploratory,
               "arms": per_arm, "start": start,
               "runs": len(runs), "run_hours": sum(r["wall_s"] for r in runs) / 3600, "commit": runs[0]["commit"] if runs else None}
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=lambda x: None) + "\n")
    print(f"\n{len(runs)} runs, {summary['run_hours']:.1f} run-hours; plot: {figure}")
    for r in rows:  # the summary lines `make bench-learning` ends with, one per primary comparison
        print(f"learning: {r['id']} {r['a']} - {r['b']}, G (gold over KL {KL_RANGE[0]:g}-{KL_RANGE[1]:g}) "
              f"{_ci(_interval(r))}, p {_f(r['p'])}, Holm p {_f(r['p_holm'])}, "
              f"{r['pairs']} pairs: {verdict(r)}")
    return summary
