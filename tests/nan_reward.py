"""A broken reward function for the bad-input tests."""


def reward(text: str) -> float:
    return float("nan")


def huge(text: str) -> float:
    """Finite, but past float32 once divided by a tiny reward.score_scale."""
    return 1e30
