"""One group's per-token advantages from verl's compute_advantage: red_grpo beside verl's own grpo, same rollouts.

    python bench/verl_group_advantages.py [--std]

Two prompts, four responses each (words as tokens). The reward is the toy task's (red_rlhf.data.toy: the share of
"good" among the response's words), scored after every prefix, so the RED rewards are r_t = s_t - s_{t-1}. Both
estimators get the same token_level_rewards through verl's compute_advantage (verl 0.9.1, CPU); the table shows the
first prompt's group. verl's grpo sums each row first, so every token of a response gets one number; red_grpo gives
each token its return-to-go minus the group's mean full return. --std: verl's norm_adv_by_std_in_grpo=True (grpo:
per-group std; red_grpo: one batch-level std).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from verl import DataProto
from verl.trainer.config import AlgoConfig
from verl.trainer.ppo.ray_trainer import compute_advantage

import red_rlhf.integrations.verl_estimators  # noqa: F401  (registers red_grpo / red_rloo)
from red_rlhf.core.redistribute import redistribute
from red_rlhf.data.toy import target_fraction

GROUPS = {
    "the movie was": ["good good bad good", "bad the movie good", "good acting but dull", "dull and bad"],
    "the plot was": ["good", "long and dull", "good good good", "quite good but long"],
}


def rollouts():
    """Token rewards (B, T), mask, uids and the words, from prefix scores of the toy reward."""
    rows = [(prompt, response.split()) for prompt, responses in GROUPS.items() for response in responses]
    width = max(len(words) for _, words in rows)
    scores = torch.zeros(len(rows), width + 1, dtype=torch.float64)  # column 0: the prompt's score s_0
    mask = torch.zeros(len(rows), width + 1, dtype=torch.bool)
    for i, (prompt, words) in enumerate(rows):
        scores[i, 0] = target_fraction(prompt, "")
        for t in range(1, len(words) + 1):
            scores[i, t] = target_fraction(prompt, " ".join(words[:t]))
        mask[i, 1: len(words) + 1] = True
    rewards = redistribute(scores[:, 0], scores[:, 1:], mask[:, 1:]).float()
    return rewards, mask[:, 1:], [prompt for prompt, _ in rows], [words for _, words in rows]


def advantages(name: str, rewards, mask, uids, std: bool) -> torch.Tensor:
    data = DataProto.from_dict(tensors={"token_level_rewards": rewards.clone(), "response_mask": mask.long()},
                               non_tensors={"uid": np.array(uids, dtype=object)})
    config = AlgoConfig(norm_adv_by_std_in_grpo=std)
    return compute_advantage(data, name, config=config, norm_adv_by_std_in_grpo=std).batch["advantages"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--std", action="store_true", help="norm_adv_by_std_in_grpo=True")
    args = parser.parse_args(argv)
    rewards, mask, uids, words = rollouts()
    red = advantages("red_grpo", rewards, mask, uids, args.std)
    plain = advantages("grpo", rewards, mask, uids, args.std)
    prompt = uids[0]
    print(f"prompt {prompt!r}; norm_adv_by_std_in_grpo={args.std}; the same RED token rewards into both estimators")
    print(f"{'response':>8} {'token':>8} {'RED r_t':>8} {'red_grpo':>9} {'grpo':>9}")
    for i, uid in enumerate(uids):
        if uid != prompt:
            continue
        for t, word in enumerate(words[i]):
            print(f"{i:>8} {word:>8} {float(rewards[i, t]):8.3f} {float(red[i, t]):9.3f} {float(plain[i, t]):9.3f}")
        print(f"{'':>8} {'sum':>8} {float(rewards[i].sum()):8.3f}")


if __name__ == "__main__":
    main()
