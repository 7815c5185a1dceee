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

Study v2 (`--study v2`, docs/results/learning-v2/PROTOCOL.md, pre-registered): 64 new tokens, 20 steps, RL seeds
0-7, 128 held-out prompts every 4 steps scored by the gold judge (bench/gold_judge.py), the proxy (the trained
reward model) and VADER; the arms of V2_ARMS in the order of V2_ORDER, results in docs/results/learning-v2/runs.jsonl:

    .venv/bin/python bench/bench_learning.py run --study v2 --workers 2
    .venv/bin/python bench/bench_learning.py report --study v2

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
RESULTS_V2 = Path("docs/results/learning-v2/runs.jsonl")
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
    arm: str = ""  # study v2's arm name (V2_ARMS); "" for the first study
    algorithm: str = "ppo"
    critic_init: str = "reward-trunk"  # configs/demo.yaml's
    samples_per_prompt: int = 1
    batch_size: int = 8  # prompts a step

    @property
    def name(self) -> str:
        name = (f"{self.scheme}-len{self.max_new_tokens}-beta{self.beta_c:g}-{self.first_token}-kl{self.kl_coef:g}"
                f"-steps{self.steps}-seed{self.seed}")
        if self.algorithm != "ppo":  # the first study's names stay as they were
            name += f"-{self.algorithm}-k{self.samples_per_prompt}x{self.batch_size}"
        return name + ("-critic-reward" if self.critic_init == "reward" and self.algorithm == "ppo" else "")

    def overrides(self) -> tuple[str, ...]:
        extra = ()
        if self.arm:  # study v2 states every setting it changes
            extra = (f"--algo.algorithm={self.algorithm}", f"--algo.critic_init={self.critic_init}",
                     f"--rollout.samples_per_prompt={self.samples_per_prompt}", f"--rollout.batch_size={self.batch_size}")
        return (f"--rollout.max_new_tokens={self.max_new_tokens}", f"--reward.beta_c={self.beta_c}",
                f"--reward.first_token={self.first_token}", f"--kl.coef={self.kl_coef}",
                "--train.save_every=0", *extra)  # checkpoints only at the end (the folder is deleted after the run)


# Study v2's arms (PROTOCOL.md): the critic-free ones take 4 samples of 2 prompts, 8 responses a step like PPO's 8 x 1.
V2_ARMS = {
    "ppo-red": {"scheme": "red"},
    "ppo-sparse-rc": {"scheme": "sparse", "critic_init": "reward"},  # the control: the critic starts as the reward model
    "rloo-red": {"scheme": "red", "algorithm": "rloo", "samples_per_prompt": 4, "batch_size": 2},
    "rloo-sparse": {"scheme": "sparse", "algorithm": "rloo", "samples_per_prompt": 4, "batch_size": 2},
    "grpo-red": {"scheme": "red", "algorithm": "grpo", "samples_per_prompt": 4, "batch_size": 2},
    "grpo-sparse": {"scheme": "sparse", "algorithm": "grpo", "samples_per_prompt": 4, "batch_size": 2},
    "ppo-sparse": {"scheme": "sparse"},  # exploratory: the first study's sparse arm
}
V2_ORDER = ("ppo-red", "ppo-sparse-rc", "rloo-red", "rloo-sparse", "grpo-red", "grpo-sparse", "ppo-sparse")
V2_SEEDS = range(8)


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
    if "v2" in groups or "v2-grpo" in groups:  # seeds outer, a seed's primary pairs first (PROTOCOL.md)
        arms = [a for a in V2_ORDER if ("v2-grpo" if a.startswith("grpo") else "v2") in groups]
        runs += [RunSpec("v2", max_new_tokens=64, steps=steps, arm=arm, seed=seed, **V2_ARMS[arm])
                 for seed in (V2_SEEDS if seeds is None else seeds) for arm in arms]
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


def evaluate(trainer, prompts: list[str], gold=None) -> dict:
    """Held-out means at the trainer's current step (Trainer.eval_samples: fixed seed, training RNG untouched).
    With a gold judge (study v2): its mean score of prompt + response, the text the proxy scores, and 4 samples."""
    from red_rlhf.demo import judge

    begin = time.perf_counter()
    ro, texts, final, kl = trainer.eval_samples(prompts)
    n = len(final)
    out = {"step": trainer.step, "rm_score": sum(final) / n, "judge": sum(judge(texts)) / n, "kl": sum(kl) / n,
           "response_length": ro.response_mask.sum(-1).float().mean().item(),
           "ended_with_eos": ro.ended.float().mean().item()}
    if gold is not None:  # the policy's special tokens (its EOS, which the proxy reads) are not text to the judge
        specials = trainer.tokenizer.all_special_tokens
        full = [p + _strip(r, specials) for p, r in zip(ro.prompts, texts)]
        golds = gold.score(full)
        out["gold"] = sum(golds) / n
        out["samples"] = [{"text": t, "gold": round(g, 4), "proxy": round(f, 4)} for t, g, f in zip(full[:4], golds, final)]
    out["seconds"] = time.perf_counter() - begin
    return out


def _strip(text: str, specials: list[str]) -> str:
    for token in specials:
        text = text.replace(token, "")
    return text


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


def study_data(cache_dir: str) -> Path:
    """Study v2's data: the demo's preparation with 128 evaluation prompts, in <cache>/study-v2 (PROTOCOL.md). The
    preference pairs must be the demo's, which trained the proxy."""
    from red_rlhf.data.sentiment import SDIST_NAME, prepare

    demo, _, _ = demo_cache(cache_dir)
    cache = Path(cache_dir).expanduser()
    data = prepare(cache / "study-v2", sdist=cache / "downloads" / SDIST_NAME, seed=0, eval_prompts=128)
    for name in ("pairs_train.jsonl", "pairs_eval.jsonl"):
        if (data / name).read_bytes() != (demo / name).read_bytes():
            raise RuntimeError(f"{data / name} differs from the demo's {demo / name}: the proxy trained on the demo's")
    return data


def train_run(spec: RunSpec, cache_dir: str, work: Path, eval_every: int, eval_prompts: int, gold=None) -> dict:
    from red_rlhf.data.prompts import read_prompts
    from red_rlhf.demo import DemoSettings
    from red_rlhf.demo.pipeline import train_config
    from red_rlhf.training.trainer import Trainer

    wall, cpu, commit = time.perf_counter(), time.process_time(), _commit()  # the code this run starts with
    out = work / spec.name
    shutil.rmtree(out, ignore_errors=True)  # an interrupted run starts over
    s = DemoSettings(cache_dir=cache_dir, output_dir=str(out), overrides=(
        f"--reward.scheme={spec.scheme}", f"--train.steps={spec.steps}", f"--train.seed={spec.seed}", *spec.overrides()))
    data, policy, rm = demo_cache(cache_dir)
    if spec.arm:
        data = study_data(cache_dir)
    cfg = train_config(s, data, policy, rm, out)
    trainer = Trainer(cfg)
    prompts = read_prompts(str(data / "prompts_eval.txt"), "demo eval prompts")[:eval_prompts]
    evals = [evaluate(trainer, prompts, gold)]

    def evaluate_now(metrics: dict) -> None:
        if trainer.step % eval_every == 0 or trainer.step == spec.steps:
            evals.append(evaluate(trainer, prompts, gold))
            gold_text = f", gold {evals[-1]['gold']:.3f}" if gold is not None else ""
            print(f"[{spec.name}] step {trainer.step}: held-out reward model {evals[-1]['rm_score']:.3f}, "
                  f"judge {evals[-1]['judge']:.3f}{gold_text}, KL {evals[-1]['kl']:.2f}", flush=True)

    trainer.on_step_end.append(evaluate_now)
    history = trainer.train()
    shutil.rmtree(out, ignore_errors=True)  # no checkpoints of benchmark runs stay on disk
    train = [{"step": m["step"], **{k: round(m[k], 6) for k in TRAIN_KEYS if k in m}} for m in history]
    return {"name": spec.name, **asdict(spec), "eval_prompts": len(prompts), "eval_every": eval_every,
            "evals": evals, "train": train, "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
            "torch_threads": _threads(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "commit": commit}


def _threads() -> int:
    import torch

    return torch.get_num_threads()


CODE = ("red_rlhf", "bench", "configs")  # what a run executes; results and docs change while a study runs


def _commit() -> str:
    """HEAD's short hash, with "-dirty" when the code (CODE) differs from it: the run's code is not that commit's."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *CODE],
                               capture_output=True, text=True).stdout
    except OSError:
        return ""
    return head + ("-dirty" if dirty.strip() else "")


# ---------------------------------------------------------------------------------------------------- runner


def worker(args: argparse.Namespace) -> None:
    """Take the next planned run nobody has finished or claimed; run it; append it; repeat."""
    import torch

    torch.set_num_threads(args.threads)
    claims = Path(args.work) / "claims"
    claims.mkdir(parents=True, exist_ok=True)
    finished = {r["name"] for r in read_results(Path(args.results))}  # later ones are claimed by their worker
    gold = None
    if args.study == "v2":
        from gold_judge import GoldJudge  # bench/gold_judge.py

        gold = GoldJudge.load(args.cache_dir)
    for spec in _plan(args):
        if spec.name in finished:
            continue
        try:
            os.close(os.open(claims / spec.name, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            continue  # another worker has it
        print(f"run {spec.name} (pid {os.getpid()}, {args.threads} threads)", flush=True)
        record = train_run(spec, args.cache_dir, Path(args.work), args.eval_every, args.eval_prompts, gold)
        record["workers"] = args.workers
        if gold is not None:
            record["gold_judge_sha256"] = gold.sha256
        append_result(Path(args.results), record)
        print(f"done {spec.name} in {record['wall_s'] / 60:.1f} min", flush=True)


def run(args: argparse.Namespace) -> None:
    results = Path(args.results)
    todo = [s for s in _plan(args) if s.name not in {r["name"] for r in read_results(results)}]
    print(f"{len(todo)} runs to do: {', '.join(s.name for s in todo)}", flush=True)
    shutil.rmtree(Path(args.work) / "claims", ignore_errors=True)  # claims of a stopped study are stale
    if todo:
        if args.study == "v2":
            from study_proxy import restore_cached

            restore_cached(args.cache_dir)  # the pinned proxy (amendment 2), before the demo's cache would train one
        data, _, rm = demo_cache(args.cache_dir)  # once, before workers would race to make it
        if args.study == "v2":
            from gold_judge import build, minilm_dir
            from red_rlhf.data.sentiment import SDIST_NAME

            study_data(args.cache_dir)
            build(args.cache_dir, data, rm, Path(args.cache_dir).expanduser() / "downloads" / SDIST_NAME)
            minilm_dir(args.cache_dir)  # the judge's encoder too: a copied judge does not fetch it
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


def _plan(args: argparse.Namespace) -> list[RunSpec]:
    runs = plan(args.groups.split(","), _seeds(args.seeds), args.steps)
    if args.arms:
        unknown = set(args.arms.split(",")) - set(V2_ARMS)
        if unknown:
            raise SystemExit(f"--arms: unknown arm(s) {sorted(unknown)}; the arms are {', '.join(V2_ORDER)}")
        runs = [r for r in runs if r.arm in args.arms.split(",")]
    return runs


def grpo_available() -> bool:
    """Whether this commit's trainer accepts algo.algorithm grpo (PROTOCOL.md: the GRPO arms run only then)."""
    from red_rlhf.config import ConfigError, load_config

    try:
        load_config("demo", ["--algo.algorithm=grpo", "--rollout.samples_per_prompt=4", "--rollout.batch_size=2"])
    except ConfigError:
        return False
    return True


STUDIES = {  # the defaults of each study; the command line overrides any of them
    "v1": {"groups": "main,knobs,long,frontier", "steps": 40, "eval_every": 8, "eval_prompts": 64,
           "results": str(RESULTS), "work": "runs/bench-learning"},
    "v2": {"groups": None, "steps": 20, "eval_every": 4, "eval_prompts": 128, "results": str(RESULTS_V2),
           "work": "runs/bench-learning-v2"},
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=("run", "worker", "report"))
    p.add_argument("--study", choices=tuple(STUDIES), default="v1", help="v2: the pre-registered study (PROTOCOL.md)")
    p.add_argument("--groups", default=None, help="v1: main,knobs,long,frontier; v2: v2 and, with GRPO, v2-grpo")
    p.add_argument("--arms", default=None, help="v2: only these arms (a pilot; the study runs them all)")
    p.add_argument("--seeds", default=None, help="comma-separated RL seeds (default: each group's own)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--eval-every", type=int, default=None)
    p.add_argument("--eval-prompts", type=int, default=None)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: cores / workers)")
    p.add_argument("--cache-dir", default="~/.cache/red-rlhf")
    p.add_argument("--results", default=None, help="v1: docs/results/learning/runs.jsonl; v2: learning-v2/runs.jsonl")
    p.add_argument("--work", default=None, help="run folders while they train (deleted after)")
    p.add_argument("--figures", default=None, help="report: where the plots and summary.json go (the results' folder)")
    args = p.parse_args(argv)
    for key, value in STUDIES[args.study].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.groups is None:  # v2: the GRPO arms join if, and only if, this commit's trainer has GRPO
        args.groups = "v2,v2-grpo" if grpo_available() else "v2"
        if args.command == "run":
            print(f"study v2 groups: {args.groups}", flush=True)
    if args.figures is None:
        args.figures = str(Path(args.results).parent)
    if args.threads is None:
        args.threads = max(1, (os.cpu_count() or 1) // args.workers)
    return args


def main() -> None:
    args = parse_args()
    if args.command == "report" and args.study == "v2":
        from learning_report_v2 import report as report_v2  # bench/learning_report_v2.py

        report_v2(read_results(Path(args.results)), Path(args.figures))
    elif args.command == "report":
        from learning_report import report  # bench/learning_report.py

        report(read_results(Path(args.results)), Path(args.figures))
    elif args.command == "worker":
        worker(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
