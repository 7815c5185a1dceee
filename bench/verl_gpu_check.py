"""The GPU check run for the verl recipe: red_rlhf's reward path (TokenBatch -> HFRewardModel.score_tokens ->
assemble_rewards, kl=None: what REDRewardManager runs per batch) on CUDA, at examples/verl/red_ppo.yaml's size.

A randomly initialised Qwen2ForSequenceClassification with Qwen2.5-0.5B's trunk shape (24 layers, width 896, 14 heads,
2 key-value heads; the tests' small vocabulary), fp32. Rows: prompts P/2..P, responses R/2..R tokens ending in EOS.
Policy "same" reads the reward model's tokenizer (one forward over the ids), "other" a tokenizer with other merges
(decoded once and aligned). Prints seconds per batch (median of 5 after a warm-up), the largest |row sum -
(R(x, y) - R(x))|, and the largest |CUDA - CPU| token reward on 4 rows. Needs CUDA; no verl (the device machine
has no ray). Run there as: SIZES=32,256,128,24 PYTHONPATH=. python3 bench/verl_gpu_check.py
"""
import os, statistics, time, torch
from transformers import Qwen2Config, Qwen2ForSequenceClassification as Q
from red_rlhf.models.tiny import tiny_tokenizer
from red_rlhf.models.sources import HFRewardModel, TokenBatch
from red_rlhf.core.reward_assembly import SourceScores, RewardSettings, assemble_rewards
B, P, R, L = (int(x) for x in os.environ.get("SIZES", "32,256,128,24").split(","))
tok = tiny_tokenizer("gpt2")
torch.manual_seed(0)
m = Q(Qwen2Config(vocab_size=len(tok), hidden_size=896, intermediate_size=4864, num_hidden_layers=L,
      num_attention_heads=14, num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id)).eval()
def rows(t, b):
    g = torch.Generator().manual_seed(1)
    pl, rl = torch.randint(P // 2, P + 1, (b,), generator=g), torch.randint(R // 2, R + 1, (b,), generator=g)
    pm, rm = torch.arange(P) >= P - pl[:, None], torch.arange(R) < rl[:, None]
    pid, rid = torch.full((b, P), t.pad_token_id), torch.full((b, R), t.pad_token_id)
    pid[pm] = torch.randint(10, len(t), (int(pm.sum()),), generator=g)
    rid[rm] = torch.randint(10, len(t), (int(rm.sum()),), generator=g)
    rid[torch.arange(b), rl - 1] = t.eos_token_id
    return [t.decode(pid[i][pm[i]]) for i in range(b)], pid, pm, rid, rm
def run(src, t, b):
    ps, pid, pm, rid, rm = rows(t, b)
    s = src.score_tokens(TokenBatch(ps, pid, pm, rid, rm, t))
    a = assemble_rewards([SourceScores("r", s)], rm, RewardSettings(), kl=None, dtype=torch.float64)
    return a.rewards, (a.rewards.sum(-1) - (s.tokens[torch.arange(b), rm.sum(-1) - 1] - s.prompt)).abs().max()
def timed(src, t, b, n=5):
    run(src, t, b); ts = []
    for _ in range(n):
        torch.cuda.synchronize(); s = time.perf_counter(); out = run(src, t, b); torch.cuda.synchronize()
        ts.append(time.perf_counter() - s)
    return statistics.median(ts), out
other = tiny_tokenizer("gpt2", vocab_size=290, pad_equals_eos=True)
cpu = {k: run(HFRewardModel(m, tok, format="concat"), t, 4)[0] for k, t in (("same", tok), ("other", other))}
src = HFRewardModel(m.cuda(), tok, format="concat")
print(torch.cuda.get_device_name(), torch.__version__, sum(p.numel() for p in m.parameters()) / 1e6, "M params")
for k, t in (("same", tok), ("other", other)):
    print(k, "path", "one forward" if src.reads_policy_tokens(t) else "decode+align")
    for b in (B, 8 * B):
        sec, (rw, err) = timed(src, t, b)
        d = (run(src, t, 4)[0] - cpu[k]).abs().max()
        print(f"verl_gpu: policy={k} rows={b} P={P} R={R} s/batch={sec:.4f} rows/s={b / sec:.0f} sum_err={err:.1e} cpu_diff={d:.1e}")
