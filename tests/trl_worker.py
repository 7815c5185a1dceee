"""RED advantages through REDGRPOTrainer under torchrun: `torchrun --nproc_per_node N tests/trl_worker.py RM OUT`.

Every process builds the same tiny policy; the global generation batch is 3 prompts x 4 completions (12 rows) with
fixed completion ids (TRL's generation is replaced, so 1 and 2 processes score and train on the same completions).
With 2 processes each holds 6 rows, so the middle group spans both and its baselines need the other process's
rows. Each process saves its rows' advantages, TRL's reward column and the loss of one `_compute_loss` call to
OUT.rank<R>.pt.
"""

import os
import sys

import torch
from datasets import Dataset

from red_rlhf.integrations.trl import REDGRPOConfig, REDGRPOTrainer
from red_rlhf.models.tiny import tiny_causal_lm

PROMPTS = ["The movie was", "Hello world, how are you", "What a delightful"]
GROUP = 4
LENGTHS = [3, 7, 4, 5, 6, 3, 2, 5, 4, 3, 5, 2]  # per global row: process 0 pads to 7 tokens, process 1 to 5


def completion(row: int, vocab: int, eos: int) -> list[int]:
    """Fixed ids for global row `row` (of LENGTHS[row] tokens), every third one ending in EOS."""
    g = torch.Generator().manual_seed(row)
    ids = torch.randint(10, vocab, (LENGTHS[row],), generator=g).tolist()
    return ids[:-1] + [eos] if row % 3 == 0 else ids


def main(rm: str, out: str) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(rm)
    rows = [{"prompt": p} for p in PROMPTS for _ in range(GROUP)]  # (12,) global generation batch, groups in order
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    per_rank = len(rows) // world
    args = REDGRPOConfig(output_dir=f"{out}.dir", red_reward_model=rm, red_estimator="rloo", scale_rewards="batch",
                         num_generations=GROUP, per_device_train_batch_size=per_rank, max_completion_length=8,
                         report_to=[], use_cpu=True, save_strategy="no", seed=0, beta=0.0)
    trainer = REDGRPOTrainer(model=tiny_causal_lm(tok, seed=0), args=args, processing_class=tok,
                             train_dataset=Dataset.from_dict({"prompt": PROMPTS}))
    mine = range(rank * per_rank, (rank + 1) * per_rank)
    fixed = [completion(r, len(tok), tok.eos_token_id) for r in mine]
    trainer._generate_single_turn = lambda prompt_ids, *a, **k: (fixed[: len(prompt_ids)], None)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by train(); the loss divides by it
    output = trainer._generate_and_score_completions([rows[r] for r in mine])
    loss = trainer._compute_loss(trainer.model, output)
    torch.save({"rows": list(mine), "advantages": output["advantages"].cpu(), "mask": output["completion_mask"].cpu(),
                "loss": loss.item(), "logged": list(trainer._logs["advantages"])}, f"{out}.rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
    from red_rlhf.cli import exit_distributed

    exit_distributed(0)
