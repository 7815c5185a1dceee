"""`red-rlhf demo`: human preference data -> reward model -> RED-PPO -> evaluation -> report.html.

1 prepare     preference pairs and prompts from human movie-review ratings (cached; see data.sentiment)
2 reward      a Bradley-Terry reward model on those pairs (cached per setting)
3 train       PPO on token rewards with the settings of configs/demo.yaml (reward.scheme red; sparse / abc to compare)
4 evaluate    held-out prompts before and after: the training reward model and an independent judge (VADER)
5 report      curves, a before/after table and per-token reward heatmaps in one self-contained page

This module is light (the command line reads DemoSettings for its flags); the pipeline lives in `demo.pipeline`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from red_rlhf.models.packaged import DEFAULT_CACHE, DemoRewardModel, setting


@dataclass
class DemoSettings(DemoRewardModel):
    """Everything `red-rlhf demo` can be told, each setting once: how its reward model is trained (DemoRewardModel),
    the rest of the pipeline below, and `overrides` of the training run, whose settings are configs/demo.yaml's.
    Every field but `overrides` is a flag of `red-rlhf demo` (--rm-pairs for rm_pairs; 'all' for None)."""

    cache_dir: str = setting(DEFAULT_CACHE, "downloads, prepared data, converted and trained models")
    output_dir: str = setting("runs/demo", "report.html, summary.json and the training run (OUTPUT_DIR/train)")
    policy: str = setting("smollm2", "HF causal LM name/path (trained with LoRA), 'smollm2' (the packaged "
                          "SmolLM2-135M-Instruct) or 'tiny' (a random toy, for trying the pipeline)")
    rm_eval_pairs: int = setting(256, "held-out preference pairs for the reward model's accuracy")
    eval_prompts: int = setting(64, "held-out prompts evaluated before and after training")
    heatmaps: int = setting(4, "responses shown as per-token reward heatmaps in the report")
    sdist: str | None = setting(None, "a local vaderSentiment-3.3.2.tar.gz instead of downloading it with pip")
    overrides: tuple[str, ...] = ()
    """The training run's settings over configs/demo.yaml, as on `red-rlhf train`: "--section.key=value" (e.g.
    "--train.steps=10", "--reward.scheme=sparse"). They come after the paths and seed the demo fills in, so they win."""


def run_demo(s: DemoSettings) -> Path:
    """Run the whole demo; returns the report's path (see `demo.pipeline.run_demo`)."""
    from red_rlhf.demo.pipeline import run_demo as run

    return run(s)


def judge(texts: list[str]) -> list[float]:
    """The independent judge: VADER's compound sentiment (-1..1), a lexicon scorer no model here was trained on."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    return [analyzer.polarity_scores(t)["compound"] for t in texts]
