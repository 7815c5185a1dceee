"""GPU check: a ~1B Llama policy through our Trainer in bf16 with gradient checkpointing, and bf16 vs fp32 losses.

    PYTHONPATH=. python bench/gpu_check.py              # CUDA: ~1B policy, 3 PPO steps (a few minutes)
    PYTHONPATH=. python bench/gpu_check.py --tiny       # CPU: the same code path on a tiny Llama (about a minute)

Nothing is downloaded: the policy is randomly initialised from a LlamaConfig (TinyLlama-1.1B's shape, with the
tiny test tokenizer's vocabulary) and saved to --out, so the Trainer loads it through from_pretrained with the
configured dtype and attention kernel; the reward model is the tiny Llama reward model of the tests. Prints:
    1. the Trainer's memory estimate, next to torch.cuda.max_memory_allocated after the steps
    2. seconds per step (and per phase), and the checkpoint save time
    3. on a smaller Llama and a fixed batch: the first PPO step's losses in fp32 and in bf16 (bf16 weights + autocast)
A JSON summary goes to OUT/gpu_check.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

ONE_B = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
             num_key_value_heads=4)  # TinyLlama-1.1B's shape
SMALL = dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


LAYOUTS = {  # the update's batch layout
    "accum": lambda batch: (f"--algo.mini_batch_size={batch // 2}", "--algo.grad_accum=2"),  # 2 x 2 micro-batches
    "whole": lambda batch: (f"--algo.mini_batch_size={batch}", "--algo.grad_accum=1"),  # one optimiser step an epoch
}


def llama(tok, shape: dict, seed: int = 0, device: str = "cpu"):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False, **shape)
    with torch.device(device):
        return LlamaForCausalLM(config).eval()


def write_models(out: Path, shape: dict, device: str) -> tuple[Path, Path]:
    from red_rlhf.models.tiny import save_tiny_reward_model, tiny_tokenizer

    tok = tiny_tokenizer("llama")
    policy_dir, reward_dir = out / "policy-init", out / "reward-model"
    t0 = time.perf_counter()
    model = llama(tok, shape, device=device)
    model.to(torch.bfloat16).save_pretrained(policy_dir)  # bf16 on disk: half the bytes to write and read
    tok.save_pretrained(policy_dir)
    save_tiny_reward_model(reward_dir, arch="llama", seed=1)
    n = sum(p.numel() for p in model.parameters())
    print(f"policy: Llama {shape} = {n / 1e6:.1f} M parameters, vocab {len(tok)}; built and saved in "
          f"{time.perf_counter() - t0:.1f} s")
    del model
    return policy_dir, reward_dir


def trainer_run(out: Path, policy_dir: Path, reward_dir: Path, args) -> dict:
    from red_rlhf.config import load_config
    from red_rlhf.training.trainer import Trainer

    cuda = torch.cuda.is_available() and not args.tiny
    overrides = [
        f"--policy.name_or_path={policy_dir}", f"--reward.model={reward_dir}", "--reward.scheme=red",
        "--algo.critic_init=policy", "--data.prompts=toy", "--data.eval_size=0", f"--train.steps={args.steps}",
        "--train.save_every=0", "--train.log_with=", f"--train.output_dir={out / 'run'}",
        f"--rollout.batch_size={args.batch}", f"--rollout.max_new_tokens={args.new_tokens}", "--algo.epochs=2",
        *LAYOUTS[args.layout](args.batch),
        f"--precision.policy_dtype={args.trained_dtype}", "--precision.reference_dtype=bf16",
        f"--precision.critic_dtype={args.trained_dtype}",
        "--precision.reward_dtype=bf16", "--precision.mixed_precision=bf16", "--precision.gradient_checkpointing=true",
        f"--precision.attn_implementation={args.attn}",
    ]
    cfg = load_config(None, overrides)
    shutil.rmtree(out / "run", ignore_errors=True)
    t0 = time.perf_counter()
    trainer = Trainer(cfg)
    build_s = time.perf_counter() - t0
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    saves = []
    real_save = trainer.save

    def timed_save():
        s0 = time.perf_counter()
        real_save()
        saves.append(time.perf_counter() - s0)

    trainer.save = timed_save
    history = trainer.train()
    peak = torch.cuda.max_memory_allocated() if cuda else None
    steady = history[1:] or history  # the first step includes CUDA warm-up
    result = {
        "device": torch.cuda.get_device_name() if cuda else "cpu", "layout": args.layout,
        "estimate_gb": trainer.memory.total / 1e9, "max_memory_allocated_gb": peak / 1e9 if peak else None,
        "build_s": build_s, "seconds_per_step": sum(m["time_s"] for m in steady) / len(steady),
        "first_step_s": history[0]["time_s"], "save_s": saves[-1] if saves else None,
        "phases_s": {k: sum(m[k] for m in steady) / len(steady) for k in history[0] if k.startswith("time_") and k != "time_s"},
        "losses": [{k: m[k] for k in ("step", "policy_loss", "value_loss", "kl", "reward_mean")} for m in history],
    }
    print(f"\nmemory: estimate {result['estimate_gb']:.2f} GB (weights, grads, AdamW, logits; no other activations)"
          + (f"; torch.cuda.max_memory_allocated {result['max_memory_allocated_gb']:.2f} GB" if peak else "; CPU run"))
    print(f"time: {result['seconds_per_step']:.2f} s per step after the first ({result['first_step_s']:.2f} s); "
          f"phases " + ", ".join(f"{k[5:-2]} {v:.2f}" for k, v in result["phases_s"].items())
          + (f"; checkpoint save {result['save_s']:.1f} s" if saves else ""))
    for row in result["losses"]:
        print("  step {step}: policy_loss {policy_loss:+.4f} value_loss {value_loss:.4f} kl {kl:.4f} "
              "reward {reward_mean:+.4f}".format(**row))
    if args.resume_check:  # a new Trainer resumes from the last checkpoint and takes one more step
        import gc

        del trainer
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        more = load_config(None, overrides + [f"--train.steps={args.steps + 1}"])
        t0 = time.perf_counter()
        rest = Trainer(more).train(resume=True)  # loads the latest checkpoint, then trains the remaining step
        result["resume"] = {"steps": [m["step"] for m in rest], "seconds": time.perf_counter() - t0,
                            "policy_loss": rest[0]["policy_loss"]}
        print(f"resume: build + load the step-{args.steps} checkpoint + steps {result['resume']['steps']}: "
              f"{result['resume']['seconds']:.1f} s")
    return result


def fixed_batch(policy, critic, tok, device, rows=8, prompt=12, response=16):
    """A fixed rollout batch on `device`, log-probs and values from the float32 models."""
    from red_rlhf.training.rollout import Rollout, response_logits, token_logprobs, truncate_at_eos

    g = torch.Generator().manual_seed(0)
    prompt_ids = torch.randint(5, len(tok), (rows, prompt), generator=g)
    prompt_mask = torch.ones(rows, prompt, dtype=torch.long)
    for i in range(rows):  # left padding of different lengths
        prompt_ids[i, : i % 3], prompt_mask[i, : i % 3] = tok.pad_token_id, 0
    sampled = torch.randint(5, len(tok), (rows, response), generator=g)
    sampled[1, 4] = tok.eos_token_id
    response_ids, response_mask, ended = truncate_at_eos(sampled, tok.eos_token_id, tok.pad_token_id)
    ro = Rollout([""] * rows, prompt_ids.to(device), prompt_mask.to(device), response_ids.to(device),
                 response_mask.to(device), ended.to(device), None, None)
    ids, mask, pos = ro.sequences()
    with torch.no_grad():
        logprobs = token_logprobs(response_logits(policy, ids, mask, pos, prompt, 1.0), ro.response_ids)
        noise = torch.randn(rows, response, generator=g).to(device)
        ro.logprobs, ro.ref_logprobs = logprobs + 0.3 * noise, logprobs  # the sampling policy was a little different
        ro.values = critic(ids, mask, pos)[:, prompt - 1: -1]
    return ro, torch.randn(rows, response, generator=g).to(device)


def bf16_vs_fp32(shape: dict, device: str) -> dict:
    """The first PPO step's losses (SGD with lr 0: the losses at the initial weights) in fp32 and in bf16."""
    import copy

    from red_rlhf.config import load_config
    from red_rlhf.core.advantages import kl_per_token, shape_rewards
    from red_rlhf.models.build import critic_from_policy
    from red_rlhf.models.tiny import tiny_tokenizer
    from red_rlhf.training.ppo import compute_advantages, update

    tok = tiny_tokenizer("llama")
    policy = llama(tok, shape, seed=3).to(device)
    critic = critic_from_policy(policy).to(device)
    torch.nn.init.normal_(critic.head.weight, std=0.1)
    ro, rewards = fixed_batch(policy, critic, tok, device)
    cfg = load_config(None, ["--reward.function=red_rlhf.data.toy:target_fraction", "--algo.critic_init=policy",
                             "--rollout.batch_size=8", "--algo.mini_batch_size=8", "--algo.grad_accum=2",
                             "--algo.epochs=1"])
    exp = compute_advantages(cfg, ro, shape_rewards(rewards, kl_per_token(ro.logprobs, ro.ref_logprobs),
                                                    ro.response_mask, 0.05))
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        p, c = copy.deepcopy(policy).to(dtype), copy.deepcopy(critic).to(dtype)
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=dtype != torch.float32):
            stats = update(cfg, exp, p, c, torch.optim.SGD(p.parameters(), lr=0.0),
                           torch.optim.SGD(c.parameters(), lr=0.0))
        out[name] = {k: stats[k] for k in ("policy_loss", "value_loss", "entropy")}
    n = sum(p.numel() for p in policy.parameters())
    print(f"\nfirst-step losses on a {n / 1e6:.2f} M-parameter Llama, fixed batch of 8 x 16 tokens ({device}):")
    for k in ("policy_loss", "value_loss", "entropy"):
        a, b = out["fp32"][k], out["bf16"][k]
        print(f"  {k:<12} fp32 {a:+.5f}  bf16 {b:+.5f}  |diff| {abs(a - b):.5f}")
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="a tiny Llama on CPU: the same code path, for testing")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16, help="prompts per step")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--attn", default="sdpa", help="precision.attn_implementation (sdpa, eager, flash_attention_2)")
    ap.add_argument("--out", default="runs/gpu_check")
    ap.add_argument("--trained-dtype", default="bf16", choices=("bf16", "fp32"),
                    help="precision.policy_dtype and critic_dtype (bf16 autocast either way)")
    ap.add_argument("--layout", default="accum", choices=tuple(LAYOUTS),
                    help="accum: 2 mini-batches of 2 micro-batches an epoch; whole: one mini-batch in one micro-batch")
    ap.add_argument("--resume-check", action="store_true", help="then resume from the last checkpoint, one more step")
    args = ap.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --tiny for the CPU version")
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"device {'cpu' if args.tiny else torch.cuda.get_device_name()}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.tiny else "cuda"
    policy_dir, reward_dir = write_models(out, TINY if args.tiny else ONE_B, device)
    result = {"trainer": trainer_run(out, policy_dir, reward_dir, args),
              "bf16_vs_fp32": bf16_vs_fp32(TINY if args.tiny else SMALL, device)}
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1))
    print(f"\nsummary: {out / 'gpu_check.json'}")
    return result


if __name__ == "__main__":
    main()
