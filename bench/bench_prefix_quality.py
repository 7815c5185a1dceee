"""How meaningful are a reward model's prefix scores? Pairwise accuracy on partial responses.

RED reads the reward model's score of every prefix; its token rewards are only as good as those scores. For
held-out preference pairs this script cuts chosen and rejected to the same fraction of their tokens (25%, 50%,
75%, 100%) and counts how often the chosen prefix scores higher, from one causal pass per side (the scores RED
uses). Run from the repository root after `make demo` (the demo's reward model by default):

    .venv/bin/python bench/bench_prefix_quality.py
    .venv/bin/python bench/bench_prefix_quality.py --reward-model DIR --pairs FILE.jsonl

The last lines are `prefix-quality: accuracy = A at F of the tokens` for each fraction F.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from red_rlhf.training.reward_model import encode_pairs, read_pairs
from red_rlhf.models.sources import HFRewardModel
from red_rlhf.models.prefix import causal_scores

FRACTIONS = (0.25, 0.5, 0.75, 1.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cache = Path("~/.cache/red-rlhf").expanduser()
    p.add_argument("--reward-model", default=str(cache / "rm-smollm2-pairs800-keep20-train0-all-ep1-seed0"))
    p.add_argument("--pairs", default=str(cache / "sentiment" / "pairs_eval.jsonl"))
    p.add_argument("--limit", type=int, default=256, help="held-out pairs to use")
    args = p.parse_args()
    rm = HFRewardModel.from_pretrained(args.reward_model)
    model, tok = rm.model, rm.tokenizer
    pairs = read_pairs(args.pairs)[: args.limit]
    wins = {f: 0 for f in FRACTIONS}
    with torch.no_grad():
        for lo in range(0, len(pairs), 32):
            batch = encode_pairs(tok, pairs[lo: lo + 32], max_length=512)  # prompt + response + EOS
            scores = {side: causal_scores(model, batch[f"{side}_ids"], batch[f"{side}_mask"]) for side in ("chosen", "rejected")}
            lengths = {side: batch[f"{side}_mask"].sum(-1) - 1 for side in scores}  # tokens before the EOS
            rows = torch.arange(len(lengths["chosen"]))
            for f in FRACTIONS:
                # the score after the first ceil(f * n) response tokens (f = 1: the full response with its EOS)
                at = {side: (lengths[side] if f == 1.0 else (lengths[side].float() * f).ceil().long() - 1)
                      for side in scores}
                wins[f] += int((scores["chosen"][rows, at["chosen"]] > scores["rejected"][rows, at["rejected"]]).sum())
    print(f"reward model {args.reward_model}; {len(pairs)} held-out pairs from {args.pairs}")
    for f in FRACTIONS:
        print(f"prefix-quality: accuracy = {wins[f] / len(pairs):.3f} at {f:.2f} of the tokens")


if __name__ == "__main__":
    main()
