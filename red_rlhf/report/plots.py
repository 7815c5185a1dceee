"""Training curves from OUTPUT_DIR/metrics.jsonl to a PNG."""

from __future__ import annotations

import json
from pathlib import Path

PANELS = [
    ("reward_mean", "reward model score (mean)"), ("kl", "KL to reference (per response)"),
    ("policy_loss", "policy loss"), ("value_loss", "value loss"),
    ("entropy", "entropy (per token)"), ("response_length", "response length (tokens)"),
]


SOURCE_PANELS = [("score_", "reward sources (mean final score)"), ("over_limit_", "costs: share over the limit"),
                 ("lambda_", "Lagrange multipliers")]


def _style(ax, title: str) -> None:
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)


def read_metrics(output_dir: str | Path) -> list[dict]:
    path = Path(output_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {output_dir} a training output directory?")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{path} holds no metrics yet")
    return rows


def plot_run(output_dir: str | Path, out: str | Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(output_dir)
    # runs with reward.sources get a third row: each source's score, costs over their limit, Lagrange multipliers
    groups = [(prefix, title) for prefix, title in SOURCE_PANELS if any(k.startswith(prefix) for k in rows[-1])]
    fig, axes = plt.subplots(3 if groups else 2, 3, figsize=(13, 9.5 if groups else 6.5))
    for ax, (key, title) in zip(axes.flat, PANELS):
        points = [(r["step"], r[key]) for r in rows if key in r]
        if points:
            ax.plot(*zip(*points), marker=".", label="train")
        if key in ("reward_mean", "kl"):
            evals = [(r["step"], r[f"eval_{key}"]) for r in rows if f"eval_{key}" in r]
            if evals:
                ax.plot(*zip(*evals), marker="o", linestyle="--", label="held-out")
                ax.legend()
        _style(ax, title)
    for ax, (prefix, title) in zip(axes.flat[len(PANELS):], groups):
        for key in sorted(k for k in rows[-1] if k.startswith(prefix)):
            ax.plot([r["step"] for r in rows if key in r], [r[key] for r in rows if key in r], marker=".",
                    label=key[len(prefix):])
        ax.legend()
        _style(ax, title)
    for ax in axes.flat[len(PANELS) + len(groups):]:
        ax.axis("off")
    fig.suptitle(f"red-rlhf run: {output_dir}")
    fig.tight_layout()
    target = Path(out) if out else Path(output_dir) / "curves.png"
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return target
