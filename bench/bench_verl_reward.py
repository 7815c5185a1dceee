"""Time the RED reward step as REDRewardManager runs it inside verl, at the size of examples/verl/red_ppo.yaml.

    python bench/bench_verl_reward.py                       # cuda when there is one, else cpu
    python bench/bench_verl_reward.py --device cpu --size tiny --rows 8

What runs is the manager's own scoring path (`rows_to_batch`, then `batch_rewards` on sources from `load_sources`),
without verl's Ray worker around it, so it needs neither verl nor ray. The reward model is randomly initialised
and saved to a temporary folder, then loaded the way the manager loads it (no model hub):

- size "0.5b": a Qwen2ForSequenceClassification with Qwen2.5-0.5B's trunk shape (24 layers, width 896, 14 heads,
  2 key-value heads, MLP 4864) and a small vocabulary (the tests' tokenizer), about 0.36 B parameters.
- size "tiny": the tests' tiny GPT-2 reward model.

Rows are laid out as verl's default (v1) trainer hands them: right-padded prompts of --prompt-len tokens and
right-padded responses of --response-len/2 .. --response-len tokens. It prints the time per batch
(median of --reps after one warm-up), checks that every row's rewards sum to R(x, y) - R(x), and that the first
--check-rows rows score the same on the CPU (max absolute difference). The last line is parseable:
`verl_reward: device=... rows=... seconds_per_batch=... rows_per_second=... max_sum_error=... max_cpu_diff=...`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from red_rlhf.integrations.verl_batch import rows_to_batch
from red_rlhf.integrations.verl_scoring import load_sources
from red_rlhf.models.rewards import batch_rewards
from red_rlhf.integrations.verl_settings import read_settings
from red_rlhf.models.tiny import tiny_reward_model, tiny_tokenizer


class Row:
    """The two attributes of a one-row verl DataProto that the manager reads."""

    def __init__(self, batch: dict, non_tensor_batch: dict | None = None):
        self.batch, self.non_tensor_batch = batch, non_tensor_batch or {}


def save_reward_model(out: Path, size: str, tok, context: int) -> None:
    """context: the longest prompt + response in policy tokens. The tiny model gets 4 positions per policy token:
    with --policy other the text is decoded and read again by the reward model's tokenizer, which can take
    several tokens for one of the policy's."""
    if size == "tiny":
        model = tiny_reward_model("gpt2", len(tok), pad_token_id=tok.pad_token_id, seed=1, context=4 * context)
    else:
        from transformers import Qwen2Config, Qwen2ForSequenceClassification

        torch.manual_seed(0)
        config = Qwen2Config(vocab_size=len(tok), hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                             num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=4096,
                             num_labels=1, pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
        model = Qwen2ForSequenceClassification(config)
    model.save_pretrained(out)
    tok.save_pretrained(out)


def make_rows(tok, rows: int, prompt_len: int, response_len: int, seed: int = 0) -> list[Row]:
    """verl v1 layout: right-padded prompts and responses, pad == eos; responses end with EOS."""
    gen = torch.Generator().manual_seed(seed)
    low = len(tok.all_special_ids) + 5  # ordinary tokens only
    out = []
    for _ in range(rows):
        p = int(torch.randint(prompt_len // 2, prompt_len + 1, (1,), generator=gen))
        r = int(torch.randint(response_len // 2, response_len + 1, (1,), generator=gen))
        prompt = torch.full((prompt_len,), tok.pad_token_id)
        prompt[:p] = torch.randint(low, len(tok), (p,), generator=gen)
        response = torch.full((response_len,), tok.pad_token_id)
        response[: r - 1] = torch.randint(low, len(tok), (r - 1,), generator=gen)
        response[r - 1] = tok.eos_token_id
        attention = torch.zeros(prompt_len + response_len, dtype=torch.long)
        attention[:p], attention[prompt_len: prompt_len + r] = 1, 1
        out.append(Row({"prompts": prompt[None], "responses": response[None], "attention_mask": attention[None]}))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", choices=("0.5b", "tiny"), default="0.5b")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--response-len", type=int, default=128)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--check-rows", type=int, default=2)
    parser.add_argument("--policy", choices=("same", "other"), default="same",
                        help="same: the policy has the reward model's tokenizer (one forward over the policy's ids); "
                             "other: a tokenizer with other merges (decoded once and aligned by characters)")
    args = parser.parse_args()
    rm_tok = tiny_tokenizer("gpt2")
    tok = rm_tok if args.policy == "same" else tiny_tokenizer("gpt2", vocab_size=290, pad_equals_eos=True)
    with tempfile.TemporaryDirectory() as tmp:
        save_reward_model(Path(tmp), args.size, rm_tok, args.prompt_len + args.response_len)
        settings = read_settings({"model": tmp, "device": args.device, "format": "concat"})
        sources = load_sources(settings)
        device = next(sources[0].reward.model.parameters()).device
        path = "one forward" if sources[0].reward.reads_policy_tokens(tok) else "decode + align"
        rows = make_rows(tok, args.rows, args.prompt_len, args.response_len)
        batch = rows_to_batch(rows, tok)

        def run():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            scored = batch_rewards(sources, batch, settings.reward)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - start, scored

        run()  # warm-up
        times, scored = [], None
        for _ in range(args.reps):
            seconds, scored = run()
            times.append(seconds)
        sum_error = float((scored.rewards.sum(-1) - (scored.final_combined_raw - scored.prompt_combined_raw)).abs().max())
        cpu_diff = float("nan")
        if device.type != "cpu" and args.check_rows:
            cpu = read_settings({"model": tmp, "device": "cpu", "format": "concat"})
            on_cpu = batch_rewards(load_sources(cpu), rows_to_batch(rows[: args.check_rows], tok), cpu.reward)
            width = on_cpu.rewards.shape[1]
            cpu_diff = float((on_cpu.rewards - scored.rewards[: args.check_rows, :width]).abs().max())
    per_batch = statistics.median(times)
    params = sum(p.numel() for p in sources[0].reward.model.parameters())
    print(f"reward model: {args.size}, {params / 1e6:.0f} M parameters on {device}, {path}; {args.rows} rows, prompts "
          f"<= {args.prompt_len} and responses <= {args.response_len} tokens; times {['%.3f' % t for t in times]}")
    print(f"verl_reward: device={device} policy={args.policy} rows={args.rows} seconds_per_batch={per_batch:.4f} "
          f"rows_per_second={args.rows / per_batch:.1f} max_sum_error={sum_error:.2e} max_cpu_diff={cpu_diff:.2e}")


if __name__ == "__main__":
    main()
