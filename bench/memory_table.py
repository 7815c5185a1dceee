"""The start-of-run memory estimate for 1B and 7B Llama runs, from configs alone (meta device: no weights, no GPU).

    PYTHONPATH=. python bench/memory_table.py

Shapes: TinyLlama-1.1B (hidden 2048, 22 layers) and Llama-2-7B (hidden 4096, 32 layers), vocabulary 32000. The
reward model has the policy's shape (a sequence classifier: trunk + 1-output head); the PPO critic starts from it.
Rollouts per step and per process: 8 prompts x 1 sample, 256 prompt + 256 response tokens, micro-batches of 2.
"""

from __future__ import annotations

import torch

from red_rlhf.config import load_config
from red_rlhf.training.memory import ModelSize, estimate

SHAPES = {
    "1B": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4),
    "7B": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32),
}
VOCAB = 32000
BASE = ["--reward.model=rm", "--rollout.batch_size=8", "--rollout.max_prompt_tokens=256", "--rollout.max_new_tokens=256",
        "--algo.mini_batch_size=8", "--algo.grad_accum=4"]
SCENARIOS = [  # (size, processes, FSDP, overrides, title)
    ("1B", 1, False, [], "1B, 1 GPU, the defaults (everything fp32)"),
    ("1B", 1, False, ["--precision.mixed_precision=bf16", "--precision.reference_dtype=bf16",
                      "--precision.reward_dtype=bf16", "--precision.gradient_checkpointing=true"],
     "1B, 1 GPU, recommended: fp32 trained weights + bf16 autocast, bf16 frozen models, checkpointing"),
    ("7B", 8, True, ["--precision.mixed_precision=bf16", "--precision.reference_dtype=bf16",
                     "--precision.reward_dtype=bf16", "--precision.gradient_checkpointing=true"],
     "7B, 8 GPUs FSDP, fp32 trained weights (sharded) + bf16 autocast, bf16 frozen models"),
    ("7B", 8, True, ["--precision.policy_dtype=bf16", "--precision.critic_dtype=bf16", "--precision.reference_dtype=bf16",
                     "--precision.reward_dtype=bf16", "--precision.mixed_precision=bf16",
                     "--precision.gradient_checkpointing=true"],
     "7B, 8 GPUs FSDP, everything bf16"),
    ("7B", 1, False, ["--policy.lora_r=16", "--algo.algorithm=rloo", "--rollout.samples_per_prompt=2",
                      "--rollout.batch_size=4", "--precision.policy_dtype=bf16", "--precision.reference_dtype=bf16",
                      "--precision.reward_dtype=bf16", "--precision.mixed_precision=bf16",
                      "--precision.gradient_checkpointing=true"],
     "7B, 1 GPU, LoRA r=16 + RLOO (no critic), bf16"),
]


def sizes(shape: dict, lora_r: int = 0) -> tuple[ModelSize, ModelSize, ModelSize]:
    """(policy, critic, reward model) parameter counts, from models built on the meta device."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    config = LlamaConfig(vocab_size=VOCAB, tie_word_embeddings=False, num_labels=1, **shape)
    with torch.device("meta"):
        policy = LlamaForCausalLM(config)
        reward = LlamaForSequenceClassification(config)
    if lora_r:
        from peft import LoraConfig, get_peft_model

        policy = get_peft_model(policy, LoraConfig(r=lora_r, task_type="CAUSAL_LM"))
    reward_size = ModelSize.of(reward)
    return ModelSize.of(policy), ModelSize(reward_size.total, reward_size.total), reward_size


def main() -> None:
    for size, processes, sharded, overrides, title in SCENARIOS:
        cfg = load_config(None, BASE + overrides)
        policy, critic, reward = sizes(SHAPES[size], cfg.policy.lora_r)
        est = estimate(cfg, policy, critic if cfg.algo.algorithm == "ppo" else None, [reward], VOCAB, processes, sharded)
        print(f"## {title}\n{est.table()}\n")


if __name__ == "__main__":
    main()
