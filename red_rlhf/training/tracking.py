"""Experiment trackers (through accelerate): which ones a run logs to, its config, and eval heatmaps.

    train:
      log_with: [tensorboard, wandb]     # any of accelerate's trackers, several at once

Metrics go to every tracker through `Accelerator.log`; the flattened config goes with `init_trackers`. At every
evaluation the per-token rewards of a few held-out samples go to the trackers that can show them: wandb as an HTML
heatmap, TensorBoard as an image, MLflow as an HTML artifact; every run also writes them to
OUTPUT_DIR/heatmaps/step_N.html.
"""

from __future__ import annotations

from pathlib import Path

from red_rlhf.config import ConfigError, TrainConfig

HEATMAP_SAMPLES = 4  # held-out samples shown per evaluation
HEATMAP_TAG = "eval/token_rewards"


def tracker_names(train: TrainConfig) -> list[str]:
    """train.log_with, checked: names accelerate knows, packages installed."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS
    from accelerate.tracking import get_available_trackers

    names = list(dict.fromkeys(train.log_with))  # several at once, each once, in the order given
    available = {str(t) for t in get_available_trackers()}
    for name in names:
        if name not in LOGGER_TYPE_TO_CLASS:
            raise ConfigError(f"train.log_with: unknown tracker {name!r}; accelerate has {sorted(LOGGER_TYPE_TO_CLASS)}")
        if name not in available:
            raise ConfigError(f"train.log_with: tracker {name!r} needs its package, which is not installed "
                              f"(pip install {name.replace('_', '-')}); or remove it from train.log_with")
    return names


def flat_config(tree: dict, prefix: str = "") -> dict:
    """Nested config dict -> {"section.key": scalar}: the form trackers show as run parameters."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_config(value, f"{name}."))
        else:
            out[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


def heatmap_rows(trainer, prompts: list[str], responses: list[str]):
    """Per-token rewards of the first few non-empty responses, from the run's primary reward source."""
    from red_rlhf.models.scorer import TokenRewardScorer

    r = trainer.cfg.reward
    pairs = [(p, t) for p, t in zip(prompts, responses) if t.strip()][:HEATMAP_SAMPLES]
    if not pairs:
        return []
    scorer = TokenRewardScorer(trainer.primary.reward, policy_tokenizer=trainer.tokenizer,
                               scheme=trainer.primary.config.scheme, beta_c=r.beta_c, first_token=r.first_token,
                               abc_beta=r.abc_beta)
    return scorer.score(*zip(*pairs))


def log_eval_heatmap(trainer, prompts: list[str], responses: list[str]) -> Path | None:
    """The eval samples' per-token heatmap: OUTPUT_DIR/heatmaps/step_N.html, and to the trackers that show it.

    Runs on the main process only (scoring there needs no other process). Returns the HTML file written.
    """
    from red_rlhf.report.heatmap import heatmap_html

    acc, step = trainer.acc, trainer.step
    if not acc.is_main_process:
        return None
    rows = heatmap_rows(trainer, prompts, responses)
    if not rows:
        return None
    page = heatmap_html(rows, title=f"red-rlhf: held-out samples, step {step}")
    path = Path(trainer.out) / "heatmaps" / f"step_{step:06d}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    for tracker in acc.trackers:
        send_heatmap(tracker, rows, page, path, step)
    return path


def send_heatmap(tracker, rows, page: str, path: Path, step: int) -> bool:
    """One tracker gets the heatmap in the form it shows; returns False for a tracker that shows neither."""
    if tracker.name == "wandb":
        import wandb

        tracker.log({HEATMAP_TAG: wandb.Html(page, inject=False, data_is_not_path=True)}, step=step)
    elif tracker.name == "tensorboard":
        tracker.log_images({HEATMAP_TAG: heatmap_image(rows)[None]}, step=step, dataformats="NHWC")
    elif tracker.name == "mlflow":
        tracker.log_artifact(str(path), artifact_path="heatmaps")
    else:
        return False
    return True


def heatmap_image(rows):
    """The heatmap as an RGB array (H, W, 3) uint8: one row of cells per response, coloured by token reward
    (red negative, green positive, one scale), each cell labelled with its token."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    width = max(len(row.rewards) for row in rows)
    grid = np.full((len(rows), width), np.nan)  # (responses, tokens)
    for i, row in enumerate(rows):
        grid[i, : len(row.rewards)] = row.rewards
    scale = float(np.nanmax(np.abs(grid))) or 1.0
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * width), 0.6 * len(rows) + 0.8), dpi=80)
    ax.imshow(np.ma.masked_invalid(grid), cmap="RdYlGn", vmin=-scale, vmax=scale, aspect="auto")
    for i, row in enumerate(rows):
        for t, token in enumerate(row.tokens):
            ax.text(t, i, token.replace("\n", "\\n")[:8], ha="center", va="center", fontsize=7)
    ax.set_yticks(range(len(rows)), [f"R={row.final_score:+.2f}" for row in rows], fontsize=7)
    ax.set_xticks([])
    ax.set_title(f"per-token rewards ({rows[0].scheme}), colour scale ±{scale:.3g}", fontsize=8)
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image
