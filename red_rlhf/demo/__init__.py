"""`red-rlhf demo`: human preference data -> reward model -> RED-PPO -> evaluation -> report.html.

1 prepare     preference pairs and prompts from human movie-review ratings (cached; see data.sentiment)
2 reward      a Bradley-Terry reward model on those pairs (cached per setting)
3 train       PPO on token rewards with the settings of configs/demo.yaml (reward.scheme red; sparse / abc to compare)
4 evaluate    held-out prompts before and after: the training reward model and an independent judge (VADER)
5 report      curves, a before/after table and per-token reward heatmaps in one self-contained page

This module is light (the command line reads DemoSettings for its help); the pipeline lives in `demo.pipeline`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from red_rlhf.models.packaged import DEFAULT_CACHE, DEMO_REWARD_MODEL


@dataclass
class DemoSettings:
    cache_dir: str = DEFAULT_CACHE
    output_dir: str = "runs/demo"
    policy: str = "smollm2"  # HF causal LM name/path, "smollm2" (packaged SmolLM2-135M-Instruct) or "tiny" (noise)
    rm_backbone: str = DEMO_REWARD_MODEL["backbone"]  # HF decoder name/path for the reward model, "smollm2" or "tiny"
    reward_scheme: str | None = None  # None: configs/demo.yaml's reward.scheme
    steps: int | None = None  # None: configs/demo.yaml's train.steps
    rm_pairs: int | None = DEMO_REWARD_MODEL["pairs"]  # use only the first N training pairs (None: all)
    rm_keep_layers: int | None = DEMO_REWARD_MODEL["keep_layers"]  # cut the trunk to its first N blocks (None: all)
    rm_trainable_layers: int | None = DEMO_REWARD_MODEL["trainable_layers"]  # 0: head only; N: last N blocks; None: all
    rm_all_positions: bool = DEMO_REWARD_MODEL["all_positions"]  # train every position after chosen/rejected diverge
    rm_epochs: int = DEMO_REWARD_MODEL["epochs"]  # when blocks train (rm_trainable_layers != 0)
    rm_eval_pairs: int = 256  # held-out pairs for the accuracy check
    policy_lr: float | None = None  # None: configs/demo.yaml's algo.policy_lr (LoRA adapters, or the whole tiny policy)
    temperature: float | None = None  # None: configs/demo.yaml's rollout.temperature
    eval_prompts: int = 64
    heatmaps: int = 4
    sdist: str | None = None  # a local vaderSentiment sdist instead of pip download
    seed: int = DEMO_REWARD_MODEL["seed"]  # data split, reward model and (unless rl_seed) the RL run
    rl_seed: int | None = None  # the RL run alone (prompt order, sampling, LoRA init): same data and reward model


def run_demo(s: DemoSettings) -> Path:
    """Run the whole demo; returns the report's path (see `demo.pipeline.run_demo`)."""
    from red_rlhf.demo.pipeline import run_demo as run

    return run(s)


def judge(texts: list[str]) -> list[float]:
    """The independent judge: VADER's compound sentiment (-1..1), a lexicon scorer no model here was trained on."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    return [analyzer.polarity_scores(t)["compound"] for t in texts]
