"""The learning study's report (`bench/bench_learning.py report`): tables (printed as markdown), plots and
summary.json from the finished runs in docs/results/learning/runs.jsonl.

Units: seeds. Every interval is a two-sided 95% Student-t interval over RL seeds (learning_stats.t_interval), except
steps-to-match, whose interval is a paired bootstrap over seeds (2000 draws, percentile). "Paired" means the same RL
seed: same prompt order, same held-out samples before training, same LoRA init.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

from learning_stats import at_kl, bootstrap, step_reaching, t_interval

MEASURES = (("rm_score", "reward-model score"), ("judge", "judge (VADER)"), ("kl", "KL to reference"))
KL_TARGETS = (2, 4, 6, 8, 10, 12, 15, 20, 25, 30, 40)
COLOURS = {"red": "tab:red", "sparse": "tab:blue", "abc": "tab:green"}
VARIANT_COLOURS = ("tab:orange", "tab:purple", "tab:brown", "tab:olive", "tab:cyan")


def setting(r: dict) -> str:
    """A run's setting, e.g. "red", "sparse", "red beta_c=0.5", "red first_token=zero"; the length is the group's."""
    name = r["scheme"]
    if r["beta_c"] != 1.0:
        name += f" beta_c={r['beta_c']:g}"
    if r["first_token"] != "difference":
        name += f" first_token={r['first_token']}"
    if r["kl_coef"] != 0.05:
        name += f" kl_coef={r['kl_coef']:g}"
    return name


def by_setting(runs: list[dict], length: int) -> dict[str, dict[int, dict]]:
    """{setting: {seed: run}} for one response length (main and knobs share 24 tokens)."""
    out: dict[str, dict[int, dict]] = defaultdict(dict)
    for r in runs:
        if r["max_new_tokens"] == length:
            out[setting(r)][r["seed"]] = r
    return dict(out)


def baselines(name: str, names) -> list[str]:
    """The settings `name` is compared with, paired by seed: sparse; a RED knob ("red beta_c=0.5") also plain red;
    plain red also each sparse variant ("sparse kl_coef=0.01", which goes further along the KL axis)."""
    out = ["sparse"] + (["red"] if name.startswith("red ") else [])
    if name == "red":
        out += sorted(n for n in names if n.startswith("sparse ") and " - " not in n)
    return [b for b in out if b != name and b in names]


def final(r: dict, key: str) -> float:
    return r["evals"][-1][key]


def fmt(mean: float, lo: float, hi: float, digits: int = 3) -> str:
    if math.isnan(lo):
        return f"{mean:.{digits}f} (1 seed)"
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def equal_steps(groups: dict[str, dict[int, dict]]) -> dict:
    """Per setting, at every evaluated step: mean and interval over seeds of each measure."""
    table = {}
    for name, seeds in groups.items():
        steps = sorted({e["step"] for r in seeds.values() for e in r["evals"]})
        rows = {}
        for step in steps:
            row = {}
            for key, _ in MEASURES:
                values = [e[key] for r in seeds.values() for e in r["evals"] if e["step"] == step]
                row[key] = t_interval(values)
            rows[step] = row
        table[name] = {"seeds": sorted(seeds), "by_step": rows}
    return table


def paired(groups, a: str, b: str) -> dict | None:
    """a - b per shared seed at the last evaluation, each measure: per-seed values, mean and interval."""
    if a not in groups or b not in groups:
        return None
    seeds = sorted(set(groups[a]) & set(groups[b]))
    if not seeds:
        return None
    out = {"seeds": seeds}
    for key, _ in MEASURES:
        diffs = [final(groups[a][s], key) - final(groups[b][s], key) for s in seeds]
        out[key] = {"per_seed": diffs, "interval": t_interval(diffs)}
    return out


def trace(r: dict, key: str) -> tuple[list[float], list[float]]:
    return [e["kl"] for e in r["evals"]], [e[key] for e in r["evals"]]


def equal_kl(groups, key: str, min_seeds: int = 3) -> dict:
    """Score at matched KL: per setting, interpolated within each run at each KL target that >= min_seeds runs reach;
    the paired difference against each of its baselines() where both runs of a seed reach it."""
    out = {}
    for target in KL_TARGETS:
        row = {}
        for name, seeds in groups.items():
            values = {s: at_kl(*trace(r, key), target) for s, r in seeds.items()}
            values = {s: v for s, v in values.items() if v is not None}
            if len(values) >= min_seeds:
                row[name] = {"n": len(values), "interval": t_interval(list(values.values())), "per_seed": values}
        for name in list(row):
            for base in baselines(name, row):
                shared = sorted(set(row[name]["per_seed"]) & set(row[base]["per_seed"]))
                if len(shared) >= min_seeds:
                    diffs = [row[name]["per_seed"][s] - row[base]["per_seed"][s] for s in shared]
                    row[f"{name} - {base}"] = {"n": len(shared), "interval": t_interval(diffs)}
        if row:
            out[target] = row
    return out


def steps_to_match(groups, a: str = "red", b: str = "sparse", key: str = "rm_score") -> dict | None:
    """Steps a's mean held-out curve needs to reach b's mean final score; paired bootstrap over seeds."""
    if a not in groups or b not in groups:
        return None
    seeds = sorted(set(groups[a]) & set(groups[b]))
    if len(seeds) < 2:
        return None

    def statistic(pairs):
        level = statistics.fmean(final(groups[b][s], key) for s in pairs)
        steps = [e["step"] for e in groups[a][pairs[0]]["evals"]]
        curve = [statistics.fmean(groups[a][s]["evals"][i][key] for s in pairs) for i in range(len(steps))]
        return step_reaching(steps, curve, level)

    share, lo, hi = bootstrap([seeds], statistic)
    return {"seeds": seeds, "steps": statistic(seeds), "reached_share": share, "low": lo, "high": hi,
            "final_step": groups[b][seeds[0]]["evals"][-1]["step"], "measure": key, "baseline": b}


# ---------------------------------------------------------------------------------------------------- plots


def plot(groups_by_length: dict[int, dict], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    lengths = sorted(groups_by_length)
    # 1. held-out score vs step (each seed thin, mean thick), one row per length
    fig, axes = plt.subplots(len(lengths), 3, figsize=(15, 4 * len(lengths)), squeeze=False)
    for row, length in zip(axes, lengths):
        for name, seeds in groups_by_length[length].items():
            style = _style(name)
            for col, (key, title) in enumerate(MEASURES):
                for r in seeds.values():
                    row[col].plot([e["step"] for e in r["evals"]], [e[key] for e in r["evals"]], alpha=0.2, **style)
                steps = [e["step"] for e in next(iter(seeds.values()))["evals"]]
                mean = [statistics.fmean(r["evals"][i][key] for r in seeds.values()) for i in range(len(steps))]
                row[col].plot(steps, mean, lw=2.5, label=f"{name} ({len(seeds)} seeds)", **style)
                row[col].set_title(f"{length} new tokens: held-out {title}")
                row[col].set_xlabel("PPO step")
    paths.append(_finish(fig, axes, folder / "score_vs_step.png", plt))
    # 2. held-out score vs KL: each run's trace (the frontier)
    fig, axes = plt.subplots(len(lengths), 2, figsize=(11, 4 * len(lengths)), squeeze=False)
    for row, length in zip(axes, lengths):
        for name, seeds in groups_by_length[length].items():
            style = _style(name)
            for col, key in enumerate(("rm_score", "judge")):
                for i, r in enumerate(seeds.values()):
                    row[col].plot(*trace(r, key), marker="o", ms=3, alpha=0.6, label=name if i == 0 else None, **style)
                row[col].set_title(f"{length} new tokens: held-out {dict(MEASURES)[key]} vs KL (each run)")
                row[col].set_xlabel("KL to the reference (nats per response)")
    paths.append(_finish(fig, axes, folder / "score_vs_kl.png", plt))
    # 3. per-seed paired differences at the last step: each setting minus sparse (same seed)
    fig, axes = plt.subplots(len(lengths), 3, figsize=(15, 3.6 * len(lengths)), squeeze=False)
    for row, length in zip(axes, lengths):
        groups = groups_by_length[length]
        others = [n for n in groups if n != "sparse"]
        for col, (key, title) in enumerate(MEASURES):
            for x, name in enumerate(others):
                diff = paired(groups, name, "sparse")
                if diff is None:
                    continue
                values = diff[key]["per_seed"]
                mean, lo, hi = diff[key]["interval"]
                row[col].scatter([x] * len(values), values, color=_style(name)["color"], alpha=0.7)
                for s, v in zip(diff["seeds"], values):
                    row[col].annotate(str(s), (x, v), xytext=(4, 0), textcoords="offset points", fontsize=7)
                if not math.isnan(lo):
                    row[col].errorbar([x + 0.15], [mean], yerr=[[mean - lo], [hi - mean]], fmt="k_", capsize=4)
            row[col].axhline(0, color="grey", lw=1)
            row[col].set_xticks(range(len(others)), [f"{n}\n- sparse" for n in others], fontsize=8)
            row[col].set_title(f"{length} new tokens: {title}, paired, last step")
            row[col].grid(alpha=0.3)
    paths.append(_save(fig, folder / "paired_differences.png", plt))
    return paths


def _style(name: str) -> dict:
    """Schemes solid in their colour; a scheme's variants (RED's knobs) dashed, each in a colour of its own."""
    scheme = name.split()[0]
    if name == scheme:
        return {"color": COLOURS.get(scheme, "black"), "ls": "-"}
    return {"color": VARIANT_COLOURS[sum(map(ord, name)) % len(VARIANT_COLOURS)], "ls": "--"}


def _finish(fig, axes, path: Path, plt) -> Path:
    """Grid on every panel, a legend on each row's first, then save."""
    for row in axes:
        for ax in row:
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=8)
    return _save(fig, path, plt)


def _save(fig, path: Path, plt) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------------- report


def report(runs: list[dict], folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    lengths = sorted({r["max_new_tokens"] for r in runs})
    groups_by_length = {n: by_setting(runs, n) for n in lengths}
    summary = {"runs": len(runs), "hours": sum(r["wall_s"] for r in runs) / 3600, "lengths": {}}
    for length in lengths:
        groups = groups_by_length[length]
        entry = {"equal_steps": equal_steps(groups), "equal_kl": {k: equal_kl(groups, k) for k in ("rm_score", "judge")},
                 "paired_last_step": {n: paired(groups, n, "sparse") for n in groups if n != "sparse"},
                 "steps_to_match": {k: steps_to_match(groups, key=k) for k in ("rm_score", "judge")}}
        if "abc" in groups:
            entry["paired_last_step"]["red - abc"] = paired(groups, "red", "abc")
        for name in groups:
            for base in baselines(name, groups):
                if base != "sparse":  # "red beta_c=0.5 - red", "red - sparse kl_coef=0.01"
                    entry["paired_last_step"][f"{name} - {base}"] = paired(groups, name, base)
                    if name == "red":  # does RED reach the variant's final score, and in how many steps?
                        for k in ("rm_score", "judge"):
                            entry["steps_to_match"][f"{k} vs {base}"] = steps_to_match(groups, b=base, key=k)
        summary["lengths"][length] = entry
        _print_length(length, groups, entry)
    for length, entry in summary["lengths"].items():  # one line per comparison a script can read
        for name, diff in entry["paired_last_step"].items():
            if diff:
                label = name if " - " in name else f"{name} - sparse"
                mean, lo, hi = diff["rm_score"]["interval"]
                kl = diff["kl"]["interval"]
                print(f"learning: {length} tokens, {label}: reward-model score {mean:+.3f} [{lo:+.3f}, {hi:+.3f}], "
                      f"KL {kl[0]:+.2f} [{kl[1]:+.2f}, {kl[2]:+.2f}] at the last step ({len(diff['seeds'])} seeds)")
    paths = plot(groups_by_length, folder)
    (folder / "summary.json").write_text(json.dumps(summary, indent=1, default=_plain))
    print(f"\n{len(runs)} runs, {summary['hours']:.1f} run-hours; plots: {', '.join(str(p) for p in paths)}")
    return summary


def _print_length(length: int, groups, entry) -> None:
    print(f"\n### {length} new tokens\n")
    print("Held-out means at the last step, 95% t-interval over seeds:\n")
    print("| setting | seeds | reward-model score | judge | KL |\n|---|---|---|---|---|")
    for name, table in entry["equal_steps"].items():
        last = table["by_step"][max(table["by_step"])]
        print(f"| {name} | {len(table['seeds'])} | " + " | ".join(fmt(*last[k]) for k, _ in MEASURES) + " |")
    for key in ("rm_score", "kl"):
        steps = sorted({step for table in entry["equal_steps"].values() for step in table["by_step"]})
        print(f"\nHeld-out {dict(MEASURES)[key]} by step, mean over seeds:\n")
        print("| setting | " + " | ".join(f"step {s}" for s in steps) + " |\n|---|" + "---:|" * len(steps))
        for name, table in entry["equal_steps"].items():
            cells = [f"{table['by_step'][s][key][0]:.2f}" if s in table["by_step"] else "" for s in steps]
            print(f"| {name} | " + " | ".join(cells) + " |")
    print("\nPaired differences at the last step (same seed), 95% t-interval:\n")
    print("| difference | seeds | reward-model score | judge | KL |\n|---|---|---|---|---|")
    for name, diff in entry["paired_last_step"].items():
        if diff:
            label = name if " - " in name else f"{name} - sparse"
            print(f"| {label} | {len(diff['seeds'])} | " + " | ".join(fmt(*diff[k]["interval"]) for k, _ in MEASURES) + " |")
    for key in ("rm_score", "judge"):
        table = entry["equal_kl"][key]
        if not table:
            continue
        names = sorted({n for row in table.values() for n in row})
        knob = lambda n: n.split(" - ")[0].startswith("red ")  # noqa: E731  "red beta_c=0.5", "red beta_c=0.5 - red"
        knobs = [n for n in names if knob(n) and not n.endswith(" - sparse")]  # knob, knob - red
        for columns, what in (([n for n in names if not knob(n)], "the schemes"), (knobs, "RED's knobs")):
            rows = {t: row for t, row in table.items() if any(n in row for n in columns)}
            if not columns or not rows:
                continue
            print(f"\nHeld-out {dict(MEASURES)[key]} at matched KL, {what} (interpolated within each run; n = seeds "
                  "reaching it):\n")
            print("| KL | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns))
            for target, row in rows.items():
                cells = [f"{fmt(*row[n]['interval'], digits=2)} n={row[n]['n']}" if n in row else "" for n in columns]
                print(f"| {target} | " + " | ".join(cells) + " |")
    for match in entry["steps_to_match"].values():
        if match:
            steps = "never within the run" if match["steps"] is None else f"{match['steps']:.1f}"
            print(f"\nSteps RED's mean curve needs to reach {match['baseline']}'s mean "
                  f"{dict(MEASURES)[match['measure']]} at step "
                  f"{match['final_step']}: {steps} (paired bootstrap over {len(match['seeds'])} seeds: reached in "
                  f"{100 * match['reached_share']:.0f}% of draws, 95% interval of those [{match['low']:.1f}, "
                  f"{match['high']:.1f}])")


def _plain(x):
    if isinstance(x, float) and math.isnan(x):
        return None
    raise TypeError(type(x))
