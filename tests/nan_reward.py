"""Broken reward functions for the bad-input tests (named in configs as tests.nan_reward:NAME)."""


def reward(text: str) -> float:
    return float("nan")


def huge(text: str) -> float:
    """Finite, but past float32 once divided by a tiny reward.score_scale."""
    return 1e30


def broken(text: str) -> float:
    raise KeyError("no such word")
