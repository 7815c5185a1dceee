"""The verl reward manager's sources: loaded once from reward.reward_kwargs, frozen on the configured device.

Scoring goes through the engine-neutral path (`models.rewards.score_sources` and `source_rewards`); verl adds its
own KL term later (apply_kl_penalty), so the manager passes no KL.
"""

from __future__ import annotations

import re

import torch

from red_rlhf.config import ConfigError
from red_rlhf.models.build import load_sources as build_sources
from red_rlhf.models.rewards import Source


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_sources(settings) -> list[Source]:
    """The reward sources of reward.reward_kwargs, HF models frozen on settings.device; errors name the key."""
    try:
        return build_sources(settings.config, _device(settings.device))
    except ConfigError as err:
        raise ConfigError(re.sub(r"\breward\.(?!reward_kwargs)", "reward.reward_kwargs.", str(err))) from err
