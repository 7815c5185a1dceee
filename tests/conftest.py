"""Shared tiny tokenizers and reward models, built from configs (no hub)."""

import pytest
import torch

from red_rlhf.models.tiny import tiny_reward_model, tiny_tokenizer


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def gpt2_tok():
    return tiny_tokenizer("gpt2")


@pytest.fixture(scope="session")
def gpt2_rm(gpt2_tok):
    return tiny_reward_model("gpt2", len(gpt2_tok), pad_token_id=gpt2_tok.pad_token_id, seed=1)


@pytest.fixture(scope="session")
def llama_tok():
    return tiny_tokenizer("llama")


@pytest.fixture(scope="session")
def llama_rm(llama_tok):
    return tiny_reward_model("llama", len(llama_tok), pad_token_id=llama_tok.pad_token_id, seed=2)


@pytest.fixture(scope="session")
def bert_tok():
    return tiny_tokenizer("bert")


@pytest.fixture(scope="session")
def bert_rm(bert_tok):
    return tiny_reward_model("bert", len(bert_tok), pad_token_id=bert_tok.pad_token_id, seed=3)


@pytest.fixture(scope="session")
def policy_tok():
    """A policy tokenizer with other merges than the reward models' (smaller vocabulary)."""
    return tiny_tokenizer("gpt2", vocab_size=290)


@pytest.fixture
def drawn_figures(monkeypatch):
    """Every matplotlib figure closed during the test, kept for inspection (its axes, lines and their data)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures, close = [], plt.close

    def keep_and_close(fig=None):
        if fig is not None and not isinstance(fig, (str, int)):
            figures.append(fig)
        return close(fig)

    monkeypatch.setattr(plt, "close", keep_and_close)
    return figures


@pytest.fixture
def finished_bars(monkeypatch):
    """(description, completed, total) of every rich progress task when its bar stops: what the user last saw."""
    from rich.progress import Progress

    from red_rlhf.progress import PlainProgress  # what the project shows when output is not a terminal (tests)

    seen, stop, plain_stop = [], Progress.stop, PlainProgress.stop

    def recording_stop(self):
        seen.extend((task.description, task.completed, task.total) for task in self.tasks)
        return stop(self)

    def recording_plain_stop(self):
        seen.extend((t["description"], t["completed"], t["total"]) for t in self.tasks.values())
        return plain_stop(self)

    monkeypatch.setattr(Progress, "stop", recording_stop)
    monkeypatch.setattr(PlainProgress, "stop", recording_plain_stop)
    return seen
