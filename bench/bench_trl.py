"""Training-step throughput of our PPO trainer against TRL's PPO trainer: same tiny models, same settings, this CPU.

Run from the repository root (CPU only, no model hub access, about 3 minutes on 2 cores). It needs TRL's PPO
trainer, `trl.experimental.ppo`, which trl 1.12.0 still has and later releases dropped:

    .venv/bin/pip install -e '.[bench]'                        # trl==1.12.0
    .venv/bin/python bench/bench_trl.py
    .venv/bin/python bench/bench_trl.py --quick                # 1 round, 1 warm-up + 3 timed steps per trainer
    .venv/bin/python bench/bench_trl.py --batch 16 --rounds 5  # other settings: see --help

What is measured:

- models: a tiny GPT-2 policy (GPT2LMHeadModel) and a tiny GPT-2 reward model (GPT2ForSequenceClassification,
  one label), built from configs with fixed seeds over `red_rlhf.models.tiny.tiny_tokenizer("gpt2")` (byte-level BPE,
  400 tokens) and saved to a temporary folder; both trainers load the same files with from_pretrained. Both
  trainers hold the same four models: policy, frozen reference (a copy of the policy), reward model, and a value
  model that starts as a copy of the reward model (TRL: value_model loaded from the reward folder; ours:
  algo.critic_init 'reward'). float32, plain PyTorch, no LoRA, the same torch thread count: 1 by default.
  Models this small gain nothing from intra-op threads, and on a 2-core machine with any other busy process two
  OpenMP threads spin against it: a 16-token generate() then took 0.1..4.6 s instead of 0.04 s (--threads 0
  keeps torch's default).
- one step = one batch of prompts: sample --new-tokens tokens per prompt at the same temperature (top_k 0,
  top_p 1), reference log-probs, values, reward, KL-shaped rewards (the same kl coefficient, k1), GAE, then
  --epochs PPO epochs over --mini-batches mini-batches (one optimiser step each) at the same learning rate.
  The saved policy's generation config suppresses the EOS and pad tokens, so every response on both sides is
  exactly --new-tokens long (TRL runs with stop_token None); tokens are counted anyway from each side's real
  responses. Rewards: ours with reward.scheme 'sparse' (the final score on the last token, as TRL does) is the
  like-for-like comparison; ours with 'red' (our default: prefix scores redistributed per token) is reported too.
- time: wall-clock time between the ends of consecutive training steps (bookkeeping and logging included on
  both sides), after --warmup untimed steps; tokens/s = response tokens of the timed steps / their time.
  Each trainer runs in its own subprocess, one after the other, --rounds times in rotating order so that slow
  drifts of a busy machine hit all of them; the table shows the median over rounds.
- memory: peak resident memory (ru_maxrss) of each trainer's subprocess at the end of its last step (imports,
  models and training; TRL's subprocess also imports datasets and pandas), and the part added while training
  (peak minus the resident memory just before the first step).
- phases: where a step's time goes on each side (generate; the rest of the rollout, scoring and advantages;
  the PPO update; gc.collect(), which TRL calls twice a step; everything else: metrics, logging), medians over
  the timed steps of all rounds. Ours from its per-step phase times and a timer around generate(); TRL's from
  timers around its batch_generation, gc.collect and log and a mark at its first PPO forward of the step.

Sides: ours-sparse, ours-red, trl (TRL's PPOTrainer as it is) and trl-nogc (the same with its two per-step
gc.collect() calls made no-ops, so the comparison is of the computation itself). Ours is timed through the
trainer's public hooks and per-phase seconds (`Trainer.on_step_end`, `time_generate_s`), nothing patched.
The last lines are summaries a script can read: `red: step seconds ours-red/ours-sparse = X`, then
`trl: ours/PEER tokens_per_s = R, peak_rss ours/PEER = M (batch B, N new tokens, E epochs)` for PEER trl-nogc and
trl; the very last one is the like-for-like (sparse) one against TRL as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Rich wraps tables at 80 columns when output is piped; the tables need more.
WIDTH = 140
SIDES = ("ours-sparse", "trl", "trl-nogc", "ours-red")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 round of 1 warm-up + 3 timed steps per trainer")
    p.add_argument("--rounds", type=int, default=None, help="subprocess runs per trainer (default 3, quick 1)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per run (default 10, quick 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps before them (default 2, quick 1)")
    p.add_argument("--batch", type=int, default=8, help="prompts (= rollouts) per step")
    p.add_argument("--new-tokens", type=int, default=16, help="response length, tokens")
    p.add_argument("--epochs", type=int, default=4, help="PPO epochs per step")
    p.add_argument("--mini-batches", type=int, default=1, help="mini-batches (optimiser steps) per epoch")
    p.add_argument("--lr", type=float, default=1e-5, help="learning rate of policy and value model on both sides")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--kl-coef", type=float, default=0.02)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads in every trainer; 0: torch's default (default 1, see above)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sides", default=",".join(SIDES), help=f"trainers to run, from {','.join(SIDES)}")
    p.add_argument("--worker", nargs=3, metavar=("SIDE", "MODEL_DIR", "OUT_DIR"), help=argparse.SUPPRESS)
    args = p.parse_args()
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.steps = args.steps or (3 if args.quick else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    args.sides = [s for s in args.sides.split(",") if s]
    if not set(args.sides) <= set(SIDES) or not args.sides:
        p.error(f"--sides must name some of {SIDES}")
    if args.warmup < 1:
        p.error("--warmup must be >= 1 (the first step's interval has no start mark)")
    if args.batch % args.mini_batches:
        p.error("--mini-batches must divide --batch")
    return args


# ---------------------------------------------------------------- the shared models (parent process)


def build_models(args: argparse.Namespace, folder: Path) -> dict:
    """Tokenizer, policy and reward model from configs with fixed seeds, saved under folder/policy, folder/reward."""
    import torch
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

    from red_rlhf.models.tiny import tiny_tokenizer
    from red_rlhf.data.toy import PROMPTS

    tok = tiny_tokenizer("gpt2")
    tok.padding_side = "left"  # TRL pads prompts with its collator and wants them left-padded
    eos, pad = tok.eos_token_id, tok.pad_token_id

    def config(**extra) -> GPT2Config:
        return GPT2Config(vocab_size=len(tok), n_embd=args.n_embd, n_layer=args.n_layer, n_head=args.n_head,
                          n_positions=128, bos_token_id=eos, eos_token_id=eos, pad_token_id=pad, **extra)

    torch.manual_seed(args.seed)
    policy = GPT2LMHeadModel(config())
    # Neither EOS nor pad is ever sampled: every response is exactly --new-tokens long on both sides. Both trainers
    # pass their own GenerationConfig; generate() fills its unset fields (suppress_tokens) from this one.
    policy.generation_config.suppress_tokens = [eos, pad]
    torch.manual_seed(args.seed + 1)
    reward = GPT2ForSequenceClassification(config(num_labels=1))
    for name, model in (("policy", policy), ("reward", reward)):
        model.save_pretrained(folder / name)
        tok.save_pretrained(folder / name)
    (folder / "prompts.txt").write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {"policy_params": count(policy), "reward_params": count(reward), "vocab": len(tok),
            "prompts": len(PROMPTS), "prompt_tokens": sorted(len(tok(p).input_ids) for p in PROMPTS)}


# ---------------------------------------------------------------- workers (one subprocess per trainer run)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def run_ours(args: argparse.Namespace, scheme: str, models: Path, out: Path) -> dict:
    from red_rlhf.config import Config, validate
    from red_rlhf.training.trainer import Trainer

    cfg = Config()
    cfg.policy.name_or_path = str(models / "policy")
    cfg.reward.model, cfg.reward.scheme = str(models / "reward"), scheme
    cfg.data.prompts, cfg.data.eval_size = str(models / "prompts.txt"), 0
    cfg.rollout.batch_size, cfg.rollout.max_new_tokens = args.batch, args.new_tokens
    cfg.rollout.temperature, cfg.rollout.top_p = args.temperature, 1.0
    cfg.kl.coef, cfg.kl.estimator = args.kl_coef, "k1"
    a = cfg.algo
    a.algorithm, a.critic_init, a.epochs = "ppo", "reward", args.epochs
    a.mini_batch_size, a.grad_accum = args.batch // args.mini_batches, 1
    a.policy_lr = a.critic_lr = args.lr
    cfg.train.steps, cfg.train.seed = args.warmup + args.steps, args.seed
    cfg.train.output_dir, cfg.train.save_every, cfg.train.log_with = str(out / "run"), 0, []
    trainer = Trainer(validate(cfg))
    ends = []  # (time, peak RSS) at the end of each step, through the trainer's public hook
    trainer.on_step_end.append(lambda metrics: ends.append((time.perf_counter(), _peak_bytes())))
    rss_start = _rss_bytes()
    history = trainer.train()  # the final checkpoint and export come after the last end mark
    steps = []
    for i in range(args.warmup, len(history)):
        m = history[i]
        interval = ends[i][0] - ends[i - 1][0]
        generate = m["time_generate_s"]
        rest = m["time_rollout_s"] - generate + m["time_score_s"] + m["time_rewards_s"] + m["time_advantages_s"]
        steps.append({"interval": interval, "tokens": m["response_length"] * args.batch, "generate": generate,
                      "rollout_rest": rest, "update": m["time_update_s"], "gc": 0.0,
                      "other": interval - generate - rest - m["time_update_s"]})
    return {"steps": steps, "peak": ends[-1][1], "rss_start": rss_start}


def run_trl(args: argparse.Namespace, models: Path, out: Path, collect_garbage: bool = True) -> dict:
    """TRL's PPOTrainer as it is, or (collect_garbage=False) with its per-step gc.collect() calls made no-ops."""
    import gc

    from datasets import Dataset
    from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer,
                              TrainerCallback)
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as trl_ppo

    tok = AutoTokenizer.from_pretrained(models / "policy")
    tok.padding_side = "left"
    policy = AutoModelForCausalLM.from_pretrained(models / "policy")
    ref = AutoModelForCausalLM.from_pretrained(models / "policy")
    reward = AutoModelForSequenceClassification.from_pretrained(models / "reward")
    value = AutoModelForSequenceClassification.from_pretrained(models / "reward")
    prompts = (models / "prompts.txt").read_text(encoding="utf-8").splitlines()
    dataset = Dataset.from_dict({"input_ids": [tok(p).input_ids for p in prompts]})
    config = PPOConfig(
        output_dir=str(out / "run"), use_cpu=True, report_to=[], seed=args.seed, disable_tqdm=True,
        bf16=False, fp16=False, gradient_checkpointing=False,  # PPOConfig defaults: bf16 and checkpointing on
        save_strategy="no", logging_steps=1, num_sample_generations=0,
        per_device_train_batch_size=args.batch, gradient_accumulation_steps=1, num_mini_batches=args.mini_batches,
        local_rollout_forward_batch_size=args.batch, total_episodes=(args.warmup + args.steps) * args.batch,
        num_ppo_epochs=args.epochs, learning_rate=args.lr, lr_scheduler_type="constant",
        response_length=args.new_tokens, temperature=args.temperature, stop_token=None, stop_token_id=None,
        missing_eos_penalty=None, kl_coef=args.kl_coef, kl_estimator="k1", whiten_rewards=False,
    )

    marks = {"generate": [], "update_start": [], "log": []}
    tokens = []
    batch_generation, forward = trl_ppo.batch_generation, trl_ppo.forward

    def timed_generation(model, queries, *a, **k):
        t = time.perf_counter()
        query_responses, logits = batch_generation(model, queries, *a, **k)
        marks["generate"].append(time.perf_counter() - t)
        response = query_responses[:, queries.shape[1]:]
        is_pad = response == tok.pad_token_id  # TRL trains on the tokens before the first pad
        first_pad = is_pad.int().argmax(-1).masked_fill(~is_pad.any(-1), response.shape[1])
        tokens.append(int(first_pad.sum()))
        return query_responses, logits

    def marked_forward(model, *a, **k):
        if isinstance(model, trl_ppo.PolicyAndValueWrapper) and len(marks["update_start"]) < len(marks["generate"]):
            marks["update_start"].append(time.perf_counter())  # the first PPO forward of the step
        return forward(model, *a, **k)

    gc_calls = []  # (start, seconds) of TRL's gc.collect() calls, two a step

    class TimedGC:
        def __getattr__(self, name):
            return getattr(gc, name)

        def collect(self, *a):
            t = time.perf_counter()
            found = gc.collect(*a) if collect_garbage else 0
            gc_calls.append((t, time.perf_counter() - t))
            return found

    trl_ppo.batch_generation, trl_ppo.forward, trl_ppo.gc = timed_generation, marked_forward, TimedGC()
    ends = []

    class StepEnd(TrainerCallback):
        def on_train_begin(self, *a, **k):
            ends.append((time.perf_counter(), _peak_bytes()))

        def on_step_end(self, *a, **k):
            ends.append((time.perf_counter(), _peak_bytes()))

    trainer = PPOTrainer(args=config, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                         value_model=value, train_dataset=dataset, eval_dataset=dataset, callbacks=[StepEnd()])
    log = trainer.log

    def timed_log(*a, **k):
        marks["log"].append(time.perf_counter())
        return log(*a, **k)

    trainer.log = timed_log
    rss_start = _rss_bytes()
    trainer.train()
    ends = ends[1:]  # drop on_train_begin: ends[i] is the end of step i
    steps = []
    for i in range(args.warmup, len(ends)):
        begin, end, update_start = ends[i - 1][0], ends[i][0], marks["update_start"][i]
        gc_rollout = sum(t for s, t in gc_calls if begin <= s < update_start)
        gc_step = sum(t for s, t in gc_calls if begin <= s < end)
        generate = marks["generate"][i]
        rest = update_start - begin - generate - gc_rollout
        update = marks["log"][i] - update_start
        steps.append({"interval": end - begin, "tokens": tokens[i], "generate": generate, "rollout_rest": rest,
                      "update": update, "gc": gc_step, "other": end - begin - generate - rest - update - gc_step})
    return {"steps": steps, "peak": ends[-1][1], "rss_start": rss_start}


def worker(args: argparse.Namespace) -> None:
    import torch

    side, models, out = args.worker[0], Path(args.worker[1]), Path(args.worker[2])
    if args.threads:
        torch.set_num_threads(args.threads)
    if side.startswith("trl"):
        result = run_trl(args, models, out, collect_garbage=side == "trl")
    else:
        result = run_ours(args, side.split("-")[1], models, out)
    result["threads"] = torch.get_num_threads()
    print("RESULT " + json.dumps(result))


# ---------------------------------------------------------------- the parent: rounds, tables, summary


def run_worker(args: argparse.Namespace, side: str, models: Path, out: Path) -> dict:
    passed = ["--batch", args.batch, "--new-tokens", args.new_tokens, "--epochs", args.epochs,
              "--mini-batches", args.mini_batches, "--lr", args.lr, "--temperature", args.temperature,
              "--kl-coef", args.kl_coef, "--steps", args.steps, "--warmup", args.warmup, "--seed", args.seed]
    passed += ["--threads", args.threads]
    cmd = [sys.executable, __file__, "--worker", side, str(models), str(out)] + [str(x) for x in passed]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", TQDM_DISABLE="1")
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"the {side} worker failed (exit code {proc.returncode}); its output is above")
    result = json.loads(lines[-1][len("RESULT "):])
    result["wall"] = time.perf_counter() - start
    return result


def tokens_per_s(result: dict) -> float:
    return sum(s["tokens"] for s in result["steps"]) / sum(s["interval"] for s in result["steps"])


def main() -> None:
    args = parse_args()
    if args.worker:
        return worker(args)

    from importlib.metadata import PackageNotFoundError, version

    import torch
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, width=max(Console().width, WIDTH))
    say = lambda text: console.print(text, soft_wrap=True)  # noqa: E731  (long lines stay whole in a log)
    try:
        trl_version = version("trl")
    except PackageNotFoundError:
        trl_version = None
    if any(side.startswith("trl") for side in args.sides) and trl_version is None:
        raise SystemExit("trl is not installed: .venv/bin/pip install -e '.[bench]' (trl==1.12.0)")
    versions = {name: version(name) for name in ("torch", "transformers", "accelerate", "datasets")
                if name != "datasets" or trl_version}
    versions["trl"] = trl_version or "not installed"
    say("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + f"; python {sys.version.split()[0]}")
    if args.threads:
        torch.set_num_threads(args.threads)
    # Other processes on a 2-core machine shift timings by tens of percent: show the load so a reader can tell.
    say(f"load average before: {os.getloadavg()[0]:.2f} (anything near 1 or more means another busy process)")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-trl-") as tmp:
        tmp = Path(tmp)
        info = build_models(args, tmp / "models")
        say(
            f"models: policy GPT2LMHeadModel {info['policy_params']:,} parameters, reward and value "
            f"GPT2ForSequenceClassification {info['reward_params']:,} (n_embd={args.n_embd}, n_layer={args.n_layer}, "
            f"n_head={args.n_head}, vocab={info['vocab']}, tiny_tokenizer('gpt2')), float32, CPU, no LoRA")
        say(
            f"settings: batch {args.batch}, {args.new_tokens} new tokens (EOS and pad suppressed), {args.epochs} PPO "
            f"epochs x {args.mini_batches} mini-batch(es) of {args.batch // args.mini_batches}, lr {args.lr:g} "
            f"(policy and value), temperature {args.temperature:g}, kl_coef {args.kl_coef:g} (k1), "
            f"{info['prompts']} toy prompts of {info['prompt_tokens'][0]}..{info['prompt_tokens'][-1]} tokens; "
            f"torch threads {torch.get_num_threads()}; {args.rounds} round(s) x ({args.warmup} warm-up + "
            f"{args.steps} timed steps) per trainer, order rotating each round")
        results: dict[str, list[dict]] = {side: [] for side in args.sides}
        for r in range(args.rounds):
            order = args.sides[r % len(args.sides):] + args.sides[: r % len(args.sides)]
            for side in order:
                res = run_worker(args, side, tmp / "models", tmp / f"{side}-{r}")
                results[side].append(res)
                say(f"[dim]round {r + 1}/{args.rounds} {side:<11}: {tokens_per_s(res):7.1f} tokens/s, "
                              f"peak RSS {res['peak'] / 2**20:.0f} MiB, threads {res['threads']}, "
                              f"subprocess {res['wall']:.0f} s[/]")

    def med(side: str, fn) -> float:
        return statistics.median(fn(res) for res in results[side])

    table = Table(title=f"Training-step throughput, median of {args.rounds} round(s) ({args.steps} timed steps each)")
    for col in ("trainer", "tokens/s", "s/step", "tokens/step", "min..max tokens/s", "peak RSS MiB",
                "added by training MiB", "tokens/s vs trl", "peak RSS vs trl"):
        table.add_column(col, justify="right")
    for side in args.sides:
        tps = [tokens_per_s(res) for res in results[side]]
        row = [side, f"{statistics.median(tps):.1f}",
               f"{med(side, lambda res: statistics.median(s['interval'] for s in res['steps'])):.3f}",
               f"{med(side, lambda res: statistics.mean(s['tokens'] for s in res['steps'])):.0f}",
               f"{min(tps):.0f}..{max(tps):.0f}", f"{med(side, lambda res: res['peak']) / 2**20:.0f}",
               f"{med(side, lambda res: max(0, res['peak'] - res['rss_start'])) / 2**20:.0f}"]
        if "trl" in results and not side.startswith("trl"):
            row += [f"{med(side, tokens_per_s) / med('trl', tokens_per_s):.2f}",
                    f"{med(side, lambda res: res['peak']) / med('trl', lambda res: res['peak']):.2f}"]
        else:
            row += ["", ""]
        table.add_row(*row)
    console.print(table)

    phases = Table(title="Where a step's time goes (ms, median over all timed steps)")
    for col in ("trainer", "generate", "rest of rollout + score + advantages", "PPO update", "gc.collect()",
                "other (metrics, log)", "step", "step - gc"):
        phases.add_column(col, justify="right")
    no_gc = {}  # tokens/s without gc.collect() time, per side
    for side in args.sides:
        steps = [s for res in results[side] for s in res["steps"]]
        step_no_gc = statistics.median(s["interval"] - s["gc"] for s in steps)
        no_gc[side] = statistics.median(s["tokens"] for s in steps) / step_no_gc
        phases.add_row(side, *(f"{1e3 * statistics.median(s[key] for s in steps):.0f}"
                               for key in ("generate", "rollout_rest", "update", "gc", "other", "interval")),
                       f"{1e3 * step_no_gc:.0f}")
    console.print(phases)
    if "trl" in no_gc and "ours-sparse" in no_gc:
        say(f"without TRL's two gc.collect() calls a step, ours-sparse/trl tokens/s would be "
            f"{no_gc['ours-sparse'] / no_gc['trl']:.2f} (median tokens per step / median step time without gc)")
    say(f"total benchmark time: {time.perf_counter() - start:.0f} s; load average (1 min) at the end: "
        f"{os.getloadavg()[0]:.2f} (this benchmark alone adds about 1)")

    setting = f"(batch {args.batch}, {args.new_tokens} new tokens, {args.epochs} epochs)"
    if "ours-red" in results and "ours-sparse" in results:
        cost = med("ours-red", lambda res: statistics.median(s["interval"] for s in res["steps"])) / \
            med("ours-sparse", lambda res: statistics.median(s["interval"] for s in res["steps"]))
        print(f"red: step seconds ours-red/ours-sparse = {cost:.3f} {setting}")
    for peer in [p for p in ("trl-nogc", "trl") if p in results]:
        for side in [s for s in ("ours-red", "ours-sparse") if s in results]:
            name = "ours" if side == "ours-sparse" else "ours-red"
            speed = med(side, tokens_per_s) / med(peer, tokens_per_s)
            memory = med(side, lambda res: res["peak"]) / med(peer, lambda res: res["peak"])
            print(f"trl: {name}/{peer} tokens_per_s = {speed:.2f}, peak_rss {name}/{peer} = {memory:.2f} {setting}")


if __name__ == "__main__":
    main()
