"""The toy task: a tiny policy learns to say "good". Built from configs in a second, no download.

Policy: a 2-layer GPT-2 over a word-level vocabulary of a few dozen words (`models.tiny.toy_policy`). Reward: the fraction of response words
that are "good" (a known function of the text, so a test can tell whether training works).
"""

from __future__ import annotations

WORDS = (
    "good bad the a movie film plot acting music was is and but very quite so it this that story scene end "
    "great dull long short funny sad actor actress director script i we they liked hated saw review of"
).split()
TARGET = "good"
PROMPTS = [
    "the movie was", "this film is", "the plot was", "i liked the", "we saw a", "the acting is", "the music was",
    "they hated the", "it was a", "the story is", "the end was", "a review of", "the script was", "this scene is",
    "the actor was", "the director is", "i saw the", "that film was", "so the movie", "the actress was",
]


def _word_mean(response: str, value) -> float:
    """Mean of value(word) over the response's words (0 for an empty response)."""
    words = response.replace("<eos>", " ").split()
    return sum(value(w) for w in words) / len(words) if words else 0.0


def target_fraction(prompt: str, response: str) -> float:
    """Share of the response's words that are "good" (0 for an empty response)."""
    return _word_mean(response, lambda w: w == TARGET)


def praise_score(prompt: str, response: str) -> float:
    """The reward of the toy cost example: 1 per "good", 2 per "great", over the response's words."""
    return _word_mean(response, lambda w: (w == "good") + 2 * (w == "great"))


def great_fraction(prompt: str, response: str) -> float:
    """The planted cost of the toy cost example: the share of the response's words that are "great"."""
    return _word_mean(response, lambda w: w == "great")
