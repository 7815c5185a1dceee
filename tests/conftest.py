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
