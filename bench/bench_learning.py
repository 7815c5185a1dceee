"""Does RED learn faster? The learning study on the embedded demo task: RED vs sparse vs ABC token rewards.

Run from the repository root (it uses the demo's cache, data, SmolLM2 and reward model, and makes it if missing):

    .venv/bin/python bench/bench_learning.py run --workers 2          # every planned run not yet in the results
    .venv/bin/python bench/bench_learning.py run --groups main --seeds 0,1
    .venv/bin/python bench/bench_learning.py report                   # tables, plots, docs/results/learning/summary.json

The plan, in the order it runs (data, reward model and held-out prompts are the demo's, seed 0; the RL seed moves
the prompt order, sampling and LoRA init, and is shared across schemes, so runs of one seed are paired):
  main    red, sparse, abc x RL seeds 0-4, 24 new tokens, configs/demo.yaml (40 steps, KL coefficient 0.05)
  knobs   red with beta_c 0.5, and red with first_token "zero" (the paper's pseudo-code), x RL seeds 0-2
          (beta_c 1 and first_token "difference" are main's red runs)
  long    red, sparse x RL seeds 0-4, 64 new tokens (the same prompts, reward model and judge)
  frontier  sparse with KL coefficient 0.01 x RL seeds 0-2, 64 new tokens: at 0.05 sparse stops at about a third
          of RED's KL, so the frontiers meet only at low KL; a smaller coefficient takes sparse further along it

Every run evaluates the 64 held-out prompts before training and every --eval-every steps (one sampled response per
prompt with a fixed seed per RL seed, the same for every scheme): the training reward model's mean score, the
independent judge's (VADER) mean score and the mean KL to the reference (nats per response), so each run traces
score against step and against KL. A finished run is one line appended to docs/results/learning/runs.jsonl (its
evaluations and its per-step training curve) and its output folder, checkpoints included, is deleted: nothing else
stays on disk. A run already in the results file is skipped, so an interrupted study continues where it stopped (an
interrupted run starts over). With --workers N the runs go to N processes of --threads torch threads each.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

RESULTS = Path("docs/results/learning/runs.jsonl")
TRAIN_KEYS = ("reward_mean", "reward_std", "kl", "kl_coef", "response_length", "ended_with_eos", "entropy",
              "policy_loss", "value_loss", "time_s")


@dataclass(frozen=True)
class RunSpec:
    group: str
    scheme: str
    seed: int
    max_new_tokens: int = 24
    beta_c: float = 1.0
    first_token: str = "difference"
    kl_coef: float = 0.05
    steps: int = 40

    @property
    def name(self) -> str:
        return (f"{self.scheme}-len{self.max_new_tokens}-beta{self.beta_c:g}-{self.first_token}-kl{self.kl_coef:g}"
                f"-steps{self.steps}-seed{self.seed}")

    def overrides(self) -> tuple[str, ...]:
        return (f"--rollout.max_new_tokens={self.max_new_tokens}", f"--reward.beta_c={self.beta_c}",
                f"--reward.first_token={self.first_token}", f"--kl.coef={self.kl_coef}",
                "--train.save_every=0")  # checkpoints only at the end (the folder is deleted after the run)


def plan(groups: list[str], seeds: list[int] | None, steps: int) -> list[RunSpec]:
    """The study's runs in priority order: all of a seed before the next seed, so a partial study stays paired."""
    runs = []
    if "main" in groups:
        runs += [RunSpec("main", scheme, seed, steps=steps) for seed in seeds or range(5) for scheme in ("red", "sparse", "abc")]
    if "knobs" in groups:
        for seed in seeds or range(3):
            runs += [RunSpec("knobs", "red", seed, beta_c=0.5, steps=steps),
                     RunSpec("knobs", "red", seed, first_token="zero", steps=steps)]
    if "long" in groups:
        runs += [RunSpec("long", scheme, seed, max_new_tokens=64, steps=steps)
                 for seed in seeds or range(5) for scheme in ("red", "sparse")]
    if "frontier" in groups:  # sparse with a 5x smaller KL coefficient: does its frontier reach RED's KL and score?
        runs += [RunSpec("frontier", "sparse", seed, max_new_tokens=64, kl_coef=0.01, steps=steps)
                 for seed in seeds or range(3)]
    return runs


def read_results(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_result(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # several workers append to one file
        f.write(json.dumps(record) + "\n")
        fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------------- one run


def evaluate(trainer, prompts: list[str]) -> dict:
    """Held-out means at the trainer's current step (Trainer.eval_samples: fixed seed, training RNG untouched)."""
    from red_rlhf.demo import judge

    begin = time.perf_counter()
    ro, texts, final, kl = trainer.eval_samples(prompts)
    n = len(final)
    return {"step": trainer.step, "rm_score": sum(final) / n, "judge": sum(judge(texts)) / n, "kl": sum(kl) / n,
            "response_length": ro.response_mask.sum(-1).float().mean().item(),
            "ended_with_eos": ro.ended.float().mean().item(), "seconds": time.perf_counter() - begin}


def demo_cache(cache_dir: str) -> tuple[Path, str, Path]:
    """The demo's data, converted SmolLM2 and reward model (seed 0): made once, as `red-rlhf demo` makes them."""
    from red_rlhf.data.sentiment import prepare
    from red_rlhf.demo import DemoSettings
    from red_rlhf.demo.pipeline import reward_model_dir
    from red_rlhf.models.packaged import smollm2_instruct

    cache = Path(cache_dir).expanduser()
    data = prepare(cache, seed=DemoSettings.seed)
    rm, _ = reward_model_dir(DemoSettings(cache_dir=cache_dir), data, cache)
    return data, str(smollm2_instruct(cache)), rm


def train_run(spec: RunSpec, cache_dir: str, work: Path, eval_every: int, eval_prompts: int) -> dict:
    from red_rlhf.data.prompts import read_prompts
    from red_rlhf.demo import DemoSettings
    from red_rlhf.demo.pipeline import train_config
    from red_rlhf.training.trainer import Trainer

    wall, cpu = time.perf_counter(), time.process_time()
    out = work / spec.name
    shutil.rmtree(out, ignore_errors=True)  # an interrupted run starts over
    s = DemoSettings(cache_dir=cache_dir, output_dir=str(out), reward_scheme=spec.scheme, steps=spec.steps,
                     rl_seed=spec.seed)
    data, policy, rm = demo_cache(cache_dir)
    cfg = train_config(s, data, policy, rm, out, extra=spec.overrides())
    trainer = Trainer(cfg)
    prompts = read_prompts(str(data / "prompts_eval.txt"), "demo eval prompts")[:eval_prompts]
    evals = [evaluate(trainer, prompts)]

    def evaluate_now(metrics: dict) -> None:
        if trainer.step % eval_every == 0 or trainer.step == spec.steps:
            evals.append(evaluate(trainer, prompts))
            print(f"[{spec.name}] step {trainer.step}: held-out reward model {evals[-1]['rm_score']:.3f}, "
                  f"judge {evals[-1]['judge']:.3f}, KL {evals[-1]['kl']:.2f}", flush=True)

    trainer.on_step_end.append(evaluate_now)
    history = trainer.train()
    shutil.rmtree(out, ignore_errors=True)  # no checkpoints of benchmark runs stay on disk
    train = [{"step": m["step"], **{k: round(m[k], 6) for k in TRAIN_KEYS if k in m}} for m in history]
    return {"name": spec.name, **asdict(spec), "eval_prompts": len(prompts), "eval_every": eval_every,
            "evals": evals, "train": train, "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
            "torch_threads": _threads(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "commit": _commit()}


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------------- runner


def worker(args: argparse.Namespace) -> None:
    """Take the next planned run nobody has finished or claimed; run it; append it; repeat."""
    import torch

    torch.set_num_threads(args.threads)
    claims = Path(args.work) / "claims"
    claims.mkdir(parents=True, exist_ok=True)
    finished = {r["name"] for r in read_results(Path(args.results))}  # later ones are claimed by their worker
    for spec in plan(args.groups.split(","), _seeds(args.seeds), args.steps):
        if spec.name in finished:
            continue
        try:
            os.close(os.open(claims / spec.name, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            continue  # another worker has it
        print(f"run {spec.name} (pid {os.getpid()}, {args.threads} threads)", flush=True)
        record = train_run(spec, args.cache_dir, Path(args.work), args.eval_every, args.eval_prompts)
        record["workers"] = args.workers
        append_result(Path(args.results), record)
        print(f"done {spec.name} in {record['wall_s'] / 60:.1f} min", flush=True)


def run(args: argparse.Namespace) -> None:
    results = Path(args.results)
    todo = [s for s in plan(args.groups.split(","), _seeds(args.seeds), args.steps)
            if s.name not in {r["name"] for r in read_results(results)}]
    print(f"{len(todo)} runs to do: {', '.join(s.name for s in todo)}", flush=True)
    shutil.rmtree(Path(args.work) / "claims", ignore_errors=True)  # claims of a stopped study are stale
    if todo:
        demo_cache(args.cache_dir)  # once, before workers would race to make it
    if args.workers == 1:
        return worker(args)
    begin = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, __file__, "worker", *sys.argv[2:]]) for _ in range(args.workers)]
    codes = [p.wait() for p in procs]
    print(f"study: {len(todo)} runs in {(time.perf_counter() - begin) / 3600:.2f} h, worker exit codes {codes}")
    if any(codes):
        sys.exit(1)


def _seeds(text: str | None) -> list[int] | None:
    return [int(s) for s in text.split(",")] if text else None


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=("run", "worker", "report"))
    p.add_argument("--groups", default="main,knobs,long,frontier")
    p.add_argument("--seeds", default=None, help="comma-separated RL seeds (default: each group's own)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--eval-every", type=int, default=8)
    p.add_argument("--eval-prompts", type=int, default=64)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: cores / workers)")
    p.add_argument("--cache-dir", default="~/.cache/red-rlhf")
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--work", default="runs/bench-learning", help="run folders while they train (deleted after)")
    p.add_argument("--figures", default=str(RESULTS.parent), help="report: where the plots and summary.json go")
    args = p.parse_args(argv)
    if args.threads is None:
        args.threads = max(1, (os.cpu_count() or 1) // args.workers)
    return args


def main() -> None:
    args = parse_args()
    if args.command == "report":
        from learning_report import report  # bench/learning_report.py

        report(read_results(Path(args.results)), Path(args.figures))
    elif args.command == "worker":
        worker(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
