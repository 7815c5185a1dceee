"""Broken reward functions for the bad-input tests (named in configs as tests.nan_reward:NAME)."""


def reward(text: str) -> float:
    return float("nan")


def broken(text: str) -> float:
    raise KeyError("no such word")
