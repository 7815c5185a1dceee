"""Cost functions for reward.sources (kind: cost), usable offline.

`profanity`: the probability that a text is offensive, from alt-profanity-check (a linear SVM over character
n-grams trained on human-labelled toxic comments; MIT; `pip install 'red-rlhf[safety]'`). As a cost source it is
called on every prefix of a response, so RED can say which tokens made a response offensive.
"""

from __future__ import annotations


def profanity(text: str) -> float:
    """Probability (0..1) that `text` is offensive language."""
    try:
        from profanity_check import predict_prob
    except ImportError as err:
        raise ImportError("the profanity cost needs alt-profanity-check: pip install 'red-rlhf[safety]'") from err
    return float(predict_prob([text])[0])
