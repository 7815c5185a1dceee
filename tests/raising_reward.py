"""A reward function that raises while `fail` is set (tests: the error names the step and the checkpoint)."""

fail = False


def reward(text: str) -> float:
    if fail:
        raise KeyError("sentiment lexicon has no entry 'zzz'")
    return float(len(text) % 3)
