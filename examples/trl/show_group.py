"""One group of completions from TRL's GRPOTrainer: TRL's per-completion advantage beside RED's per-token ones.

    python examples/trl/show_group.py            # CPU, a few seconds: tiny models built from configs, no download

The policy and reward model are tiny random models (red_rlhf.models.tiny); the numbers show the shapes of the two
estimators, not learning. Both columns come from one REDGRPOTrainer batch: TRL computes its own advantages from the
completions' R(x, y) (scale_rewards none: TRL's GRPO with std off) before RED replaces them (red_estimator grpo:
the same group mean, so each completion's first-token advantage equals TRL's number; later tokens differ by the
prefix-score term -(s_{t-1} - s_0)).
"""

import tempfile

import torch
from datasets import Dataset

from red_rlhf.integrations.trl import REDGRPOConfig, REDGRPOTrainer
from red_rlhf.models.tiny import save_tiny_reward_model, tiny_causal_lm


class Showing(REDGRPOTrainer):
    def _token_advantages(self, rows, output):
        self.trl_advantages, self.token_rewards = output["advantages"].clone(), rows.rewards.clone()  # TRL's (B,)
        return super()._token_advantages(rows, output)


def main() -> None:
    from transformers import AutoTokenizer

    root = tempfile.mkdtemp()
    rm = str(save_tiny_reward_model(f"{root}/rm", arch="gpt2", seed=1))
    tok = AutoTokenizer.from_pretrained(rm)
    args = REDGRPOConfig(output_dir=f"{root}/out", red_reward_model=rm, red_estimator="grpo", scale_rewards="none",
                         num_generations=4, per_device_train_batch_size=4, max_completion_length=6, report_to=[],
                         use_cpu=True, save_strategy="no", seed=0, beta=0.0)
    trainer = Showing(model=tiny_causal_lm(tok, seed=0), args=args, processing_class=tok,
                      train_dataset=Dataset.from_dict({"prompt": ["The movie was"]}))
    torch.manual_seed(0)
    trainer.model.train()
    out = trainer._generate_and_score_completions([{"prompt": "The movie was"}] * 4)
    print("prompt: 'The movie was'  (reward model: tiny random GPT-2; red_estimator grpo, scale_rewards none)")
    for i in range(4):
        n = int(out["completion_mask"][i].sum())
        text = tok.decode(out["completion_ids"][i, :n])
        print(f"completion {i}: {text!r}")
        print(f"  TRL advantage (one per completion): {trainer.trl_advantages[i].item():+.4f}")
        print("  RED token rewards r_t:            ", " ".join(f"{r:+.4f}" for r in trainer.token_rewards[i, :n].tolist()))
        print("  RED advantages A_t (per token):   ", " ".join(f"{a:+.4f}" for a in out["advantages"][i, :n].tolist()))


if __name__ == "__main__":
    main()
