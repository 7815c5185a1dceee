"""verl's own PPO trainer (`RayPPOTrainer.fit()`) end to end on CPU with the RED reward manager.

The recipe examples/verl/red_ppo.yaml is composed through verl's Hydra config with tiny local models and the CPU
settings of tests/verl_loop_support.py (which also lists, with verl's file:line, what stands in for the GPU parts:
the LLM server, the device, the worker processes). Everything between the dataset and the optimizer step is verl's.
Skipped when verl is not installed (`make verl`).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("verl", reason="verl is not installed: run `make verl` (README 'Scaling out on verl')")

from tests import verl_loop_support as support  # noqa: E402

from red_rlhf.models.scorer import TokenRewardScorer  # noqa: E402
from red_rlhf.models.sources import HFRewardModel  # noqa: E402
from red_rlhf.models.tiny import CHATML_TEMPLATE, save_tiny_reward_model, tiny_reward_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "examples" / "verl"
PROMPTS = ["The movie was", "Hello world, how are you", "What a delightful", "Please explain how",
           "It rains in the city", "The food was cold", "I loved every minute", "A bad film with"]


def char_tokenizer():
    """A chat-template policy tokenizer with one token per character: every generated id sequence decodes to a text
    that encodes back to the same ids, so the generated rows can be re-scored from their text."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    specials = ["<|endoftext|>", "<pad>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(specials + chars)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.decoder = decoders.Fuse()
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<pad>",
                                      additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    wrapped.chat_template = CHATML_TEMPLATE
    return wrapped


def tiny_llama(tok, seed: int = 0):
    """The policy (and, with verl's token-classification head, the critic): a one-layer Llama, an architecture verl's
    FSDP engine and flops counter know (GPT-2's config has no num_key_value_heads, verl/utils/flops_counter.py)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Policy (chat template, char tokenizer), reward models with its tokenizer and with another, the prompt files."""
    root = tmp_path_factory.mktemp("verl-loop")
    tok = char_tokenizer()
    policy = root / "policy"
    tiny_llama(tok).save_pretrained(policy)
    tok.save_pretrained(policy)
    rm_same = root / "rm-same"
    tiny_reward_model("gpt2", len(tok), pad_token_id=tok.pad_token_id, seed=1).save_pretrained(rm_same)
    tok.save_pretrained(rm_same)
    rm_other = save_tiny_reward_model(root / "rm-other", arch="gpt2", seed=2)  # byte-level BPE: other tokens

    sys.path.insert(0, str(RECIPE))
    try:
        from prepare_prompts import write_splits
    finally:
        sys.path.pop(0)
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS + PROMPTS[:2]) + "\n", encoding="utf-8")
    train, val = write_splits(str(prompts), root / "data", val_size=2)
    return {"policy": str(policy), "rm_same": str(rm_same), "rm_other": str(rm_other), "train": str(train),
            "val": str(val), "cache": str(root / "cache"), "tok": tok}


def recipe_config(setup, rm: str, *extra: str):
    overrides = [
        f"data.train_files={setup['train']}", f"data.val_files={setup['val']}",
        f"actor_rollout_ref.model.path={setup['policy']}", f"critic.model.path={setup['policy']}",
        f"reward.reward_model.model_path={setup[rm]}", f"reward.reward_kwargs.model={setup[rm]}",
        "reward.reward_kwargs.prompt_text=decoded", "actor_rollout_ref.rollout.temperature=1.0",
        *support.cpu_overrides(steps=2, batch=4, response_length=16), *extra]
    return support.compose_recipe(str(RECIPE), overrides)


@pytest.fixture(scope="module")
def cpu_verl():
    with support.cpu_verl():
        yield


def run(setup, rm: str, *extra: str):
    recorder = support.Recorder()
    trainer, before, after = support.run_fit(recipe_config(setup, rm, *extra), recorder)
    return recorder, trainer, before, after


@pytest.mark.parametrize("rm", ["rm_same", "rm_other"])
def test_fit_with_red_rewards(setup, cpu_verl, rm):
    recorder, trainer, before, after = run(setup, rm)
    assert len(recorder.steps) == 2 and trainer.global_steps == 3  # fit() ran both steps to the end
    print(recorder.steps[0]["token_level_scores"])
