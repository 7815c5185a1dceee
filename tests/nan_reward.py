"""A broken reward function for the bad-input tests."""


def reward(text: str) -> float:
    return float("nan")
