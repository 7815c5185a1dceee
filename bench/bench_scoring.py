"""Benchmark `red_rlhf.prefix_scores` against a plain forward pass and against naive per-prefix scoring.

Run from the repository root (CPU only, no model hub access, about 3-4 minutes on 2 cores):

    .venv/bin/python bench/bench_scoring.py
    .venv/bin/python bench/bench_scoring.py --quick            # two lengths, fewer repetitions
    .venv/bin/python bench/bench_scoring.py --lengths 64,512   # response lengths to run

What is measured, for a batch of 16 rows (a 32-token prompt plus a response of L/2..L tokens, left-padded):

- plain:  `model(input_ids, attention_mask).logits`, the ordinary sequence score (one score per row).
- red:    `prefix_scores(model, ids, mask, mode="causal")`, the score of every prefix from one pass.
  The two are timed side by side, interleaved in each repetition; target red/plain <= 1.05.
- naive:  `naive_prefix_scores` (one unpadded forward per prefix) and `prefix_scores(mode="prefix")`
  (per-prefix passes, batched). Both are far too slow for the whole batch, so they are measured on a few
  rows (--naive-rows, default 1, chosen with the batch's median length) and scaled linearly to the batch.
- check:  max |causal - naive| over the measured rows (causal scores are taken from the full padded batch).
- abc:    what the trainer runs for the ABC baseline (attention credit): prefix scores plus the last layer's
  attention, on the same weights loaded with eager attention (ABC needs attention weights); timed in the same
  interleaved repetitions as plain and red.
- memory: peak resident memory added by one call of plain, red and abc (each in a fresh subprocess: RSS high-water
  mark after the call minus RSS before it), skipped with --no-memory.

The last lines are one `scoring: <measure> = <value> at T=<total length>` line per measure and length.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
from rich.console import Console
from rich.table import Table
from transformers import GPT2Config, GPT2ForSequenceClassification

from red_rlhf.models import prefix as scoring
from red_rlhf.models.prefix import naive_prefix_scores, pooled_attention, prefix_scores

VOCAB = 8192
PAD_ID = 0  # random token ids are drawn from 1..VOCAB-1, so padding is the only token HF pools past
N_POSITIONS = 1024  # fixed so the model (and its parameter count) does not depend on --lengths

# Rich wraps tables at 80 columns when output is piped; the per-prefix table needs more.
console = Console(highlight=False, width=max(Console().width, 160))


@dataclass
class Result:
    resp_len: int
    total_len: int
    plain: list[float]  # seconds per repetition, full batch
    red: list[float]
    abc: list[float]
    naive_rows: int
    naive_row_len: int  # real tokens in the first measured row
    naive: float  # seconds, measured on naive_rows rows
    prefix: float
    red_rows: float  # seconds, causal prefix_scores on the same reduced rows
    batch: int
    max_diff: float  # max |causal - naive| on the reduced rows
    max_score: float  # max |naive score|, to judge max_diff against

    @property
    def plain_med(self) -> float:
        return statistics.median(self.plain)

    @property
    def red_med(self) -> float:
        return statistics.median(self.red)

    @property
    def abc_med(self) -> float:
        return statistics.median(self.abc)

    @property
    def scale(self) -> float:
        return self.batch / self.naive_rows


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="response lengths 64,256 and 3 repetitions")
    p.add_argument("--lengths", type=str, default=None, help="comma-separated response lengths (default 64,128,256,512)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions of plain vs red (default 9, quick 3)")
    p.add_argument("--warmup", type=int, default=3, help="untimed repetitions before timing (the first length needs them)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--prompt", type=int, default=32, help="prompt tokens in every row")
    p.add_argument("--naive-rows", type=int, default=1, help="rows on which naive / prefix mode are measured")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--memory-probe", nargs=2, metavar=("METHOD", "RESP_LEN"), help=argparse.SUPPRESS)
    args = p.parse_args()
    default_lengths = "64,256" if args.quick else "64,128,256,512"
    args.lengths = [int(x) for x in (args.lengths or default_lengths).split(",")]
    args.reps = args.reps or (3 if args.quick else 9)
    if not 1 <= args.naive_rows <= args.batch:
        p.error("--naive-rows must be between 1 and --batch")
    if args.prompt + max(args.lengths) > N_POSITIONS:
        p.error(f"prompt + response must fit the model's {N_POSITIONS} positions")
    return args


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def build_model(seed: int, attn: str = "sdpa") -> torch.nn.Module:
    """A ~10M-parameter GPT-2 reward model from a config: random weights from `seed`, no hub access."""
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB, n_positions=N_POSITIONS, n_embd=256, n_layer=10, n_head=8,
        num_labels=1, pad_token_id=PAD_ID, bos_token_id=None, eos_token_id=None, attn_implementation=attn,
    )
    model = GPT2ForSequenceClassification(config).to(torch.float32).eval()
    # A random head gives scores near zero; scale it (as red_rlhf.models.tiny does) so max|diff| is judged on O(1) scores.
    with torch.no_grad():
        model.score.weight.mul_(20.0)
    return model


def make_batch(gen: torch.Generator, batch: int, prompt: int, resp_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded (batch, prompt + resp_len) ids and mask; each response has L/2..L tokens, uniformly."""
    width = prompt + resp_len
    lengths = prompt + torch.randint(resp_len // 2, resp_len + 1, (batch,), generator=gen)
    ids = torch.randint(1, VOCAB, (batch, width), generator=gen)
    mask = (torch.arange(width) >= (width - lengths).unsqueeze(1)).long()  # real tokens at the right end
    return ids.masked_fill(mask == 0, PAD_ID), mask


def median_rows(mask: torch.Tensor, k: int) -> list[int]:
    """The k rows whose lengths are closest to the batch median, so scaling by rows is representative."""
    lengths = mask.sum(-1).float()
    return (lengths - lengths.median()).abs().argsort()[:k].tolist()


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_interleaved(candidates: dict[str, Callable[[], object]], reps: int, warmup: int) -> dict[str, list[float]]:
    """Run every candidate once per repetition, so slow drifts of a noisy machine hit all of them alike.

    The order rotates each repetition: whichever runs first after the other may see warmer or colder caches.
    """
    names = list(candidates)
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(warmup + reps):
        order = names[rep % len(names):] + names[: rep % len(names)]
        for name in order:
            t = timed(candidates[name])
            if rep >= warmup:
                times[name].append(t)
    return times


def methods(model, eager) -> dict[str, Callable]:
    """The timed calls, each (ids, mask) -> scores: what a plain forward, RED and the ABC baseline run."""
    return {
        "plain": lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits,
        "red": lambda ids, mask: prefix_scores(model, ids, mask, mode="causal"),
        "abc": lambda ids, mask: (prefix_scores(eager, ids, mask, mode="causal"), pooled_attention(eager, ids, mask)),
    }


def batch_for(args: argparse.Namespace, resp_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    # One generator per length: `--lengths 512` then times the same batch as the full run does.
    gen = torch.Generator().manual_seed(args.seed * 100_003 + resp_len)
    return make_batch(gen, args.batch, args.prompt, resp_len)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    """This process's resident-memory high-water mark (VmHWM). Not ru_maxrss: a child started by fork + exec
    reports its parent's peak there, and the parent here has just run the large ABC batches."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024  # kB


def memory_probe(args: argparse.Namespace) -> None:
    """Subprocess body: one warm-up call on a short batch, then the measured call; prints the peak added MiB."""
    method, resp_len = args.memory_probe[0], int(args.memory_probe[1])
    fns = methods(build_model(args.seed), build_model(args.seed, "eager"))
    ids, mask = batch_for(args, resp_len)
    with torch.no_grad():
        fns[method](ids[:1, -8:], mask[:1, -8:])  # lazy initialisation outside the measurement (left padding)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux: reset the high-water mark to the current RSS (model building peaked higher)
        before = _rss_bytes()
        fns[method](ids, mask)
    print(f"{(_peak_rss_bytes() - before) / 2**20:.1f}")


def peak_memory(args: argparse.Namespace, resp_len: int) -> dict[str, float]:
    import subprocess
    import sys

    out = {}
    for method in ("plain", "red", "abc"):
        cmd = [sys.executable, __file__, "--memory-probe", method, str(resp_len), "--batch", str(args.batch),
               "--prompt", str(args.prompt), "--seed", str(args.seed)]
        out[method] = float(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()[-1])
    return out


def bench_length(model, eager, args: argparse.Namespace, resp_len: int) -> Result:
    ids, mask = batch_for(args, resp_len)
    fns = methods(model, eager)
    console.print(f"[dim]T={ids.shape[1]}: timing plain vs red vs abc ({args.warmup} warm-up + {args.reps} reps)...[/]")
    with torch.no_grad():
        times = time_interleaved({name: (lambda fn=fn: fn(ids, mask)) for name, fn in fns.items()},
                                 reps=args.reps, warmup=args.warmup)
        red_full = prefix_scores(model, ids, mask, mode="causal")

        rows = median_rows(mask, args.naive_rows)
        sub_ids, sub_mask = ids[rows], mask[rows]
        console.print(f"[dim]T={ids.shape[1]}: naive and prefix mode on {len(rows)} row(s), once each...[/]")
        naive_out: list[torch.Tensor] = []
        naive_t = timed(lambda: naive_out.append(naive_prefix_scores(model, sub_ids, sub_mask)))
        prefix_t = timed(lambda: prefix_scores(model, sub_ids, sub_mask, mode="prefix"))
        # A single forward on few rows is short and noisy: take the median of a few.
        red_rows_t = statistics.median(timed(lambda: prefix_scores(model, sub_ids, sub_mask, mode="causal")) for _ in range(5))

    naive = naive_out[0]
    valid = sub_mask.bool()
    return Result(
        resp_len=resp_len,
        total_len=ids.shape[1],
        plain=times["plain"],
        red=times["red"],
        abc=times["abc"],
        naive_rows=len(rows),
        naive_row_len=int(sub_mask[0].sum()),
        naive=naive_t,
        prefix=prefix_t,
        red_rows=red_rows_t,
        batch=args.batch,
        max_diff=float((red_full[rows] - naive)[valid].abs().max()),
        max_score=float(naive[valid].abs().max()),
    )


def full_batch_table(results: list[Result], args: argparse.Namespace) -> Table:
    table = Table(title=f"Full batch (B={args.batch}), measured: median of {args.reps} interleaved reps")
    for col in ("T (prompt+resp)", "plain ms", "red ms", "abc ms", "red/plain", "median paired ratio", "abc/red",
                "plain min..max ms"):
        table.add_column(col, justify="right")
    for r in results:
        paired = statistics.median(b / a for a, b in zip(r.plain, r.red))
        table.add_row(
            f"{r.total_len} ({args.prompt}+{r.resp_len})",
            f"{1e3 * r.plain_med:.1f}",
            f"{1e3 * r.red_med:.1f}",
            f"{1e3 * r.abc_med:.1f}",
            f"{r.red_med / r.plain_med:.3f}",
            f"{paired:.3f}",
            f"{r.abc_med / r.red_med:.2f}",
            f"{1e3 * min(r.plain):.0f}..{1e3 * max(r.plain):.0f}",
        )
    return table


def memory_table(results: list[Result], memory: dict[int, dict[str, float]]) -> Table:
    table = Table(title="Peak memory added by one call (MiB; fresh subprocess each)")
    for col in ("T", "plain", "red", "abc", "red/plain", "abc/red"):
        table.add_column(col, justify="right")
    for r in results:
        m = memory[r.resp_len]
        table.add_row(str(r.total_len), f"{m['plain']:.0f}", f"{m['red']:.0f}", f"{m['abc']:.0f}",
                      f"{m['red'] / m['plain']:.2f}", f"{m['abc'] / m['red']:.2f}")
    return table


def per_prefix_table(results: list[Result]) -> Table:
    rows = results[0].naive_rows
    table = Table(title=f"Per-prefix baselines: measured on {rows} row(s) (1 run), extrapolated x{results[0].scale:g} to the batch")
    columns = (
        "T", "row\nlen", "naive s\nmeas.", "prefix s\nmeas.", "red ms\nmeas.", "naive/red\nmeas.",
        "naive s\nextrap.", "prefix s\nextrap.", "naive/red\nextrap.", "prefix/red\nextrap.", "max|causal\n-naive|",
    )
    for col in columns:
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(
            str(r.total_len),
            str(r.naive_row_len),
            f"{r.naive:.2f}",
            f"{r.prefix:.2f}",
            f"{1e3 * r.red_rows:.1f}",
            f"{r.naive / r.red_rows:.0f}x",
            f"{r.naive * r.scale:.1f}",
            f"{r.prefix * r.scale:.1f}",
            f"{r.naive * r.scale / r.red_med:.0f}x",
            f"{r.prefix * r.scale / r.red_med:.0f}x",
            f"{r.max_diff:.2e}",
        )
    return table


def summary_lines(results: list[Result], memory: dict[int, dict[str, float]]) -> list[str]:
    """One parseable line per measure and length: `scoring: <measure> = <value> at T=<total length>`."""
    lines = []
    for r in results:
        at = f"at T={r.total_len}"
        lines += [
            f"scoring: red/plain = {r.red_med / r.plain_med:.3f} {at}",
            f"scoring: abc/red = {r.abc_med / r.red_med:.2f} {at}",
            f"scoring: naive/red = {r.naive * r.scale / r.red_med:.0f}x {at} (extrapolated from {r.naive_rows} row(s))",
            f"scoring: prefix-mode/red = {r.prefix * r.scale / r.red_med:.0f}x {at} (extrapolated from {r.naive_rows} row(s))",
            f"scoring: max|causal-naive| = {r.max_diff:.2e} {at} (max|score| = {r.max_score:.2f})",
        ]
        if r.resp_len in memory:
            m = memory[r.resp_len]
            lines.append(f"scoring: peak MiB plain/red/abc = {m['plain']:.0f}/{m['red']:.0f}/{m['abc']:.0f} {at}")
    return lines


def main() -> None:
    args = parse_args()
    if args.memory_probe:
        return memory_probe(args)
    seed_everything(args.seed)
    model, eager = build_model(args.seed), build_model(args.seed, "eager")
    n_params = sum(p.numel() for p in model.parameters())
    console.print(
        f"model: GPT2ForSequenceClassification, {n_params:,} parameters "
        f"(n_embd=256, n_layer=10, n_head=8, vocab={VOCAB}, n_positions={N_POSITIONS}), float32, CPU, "
        f"attn={model.config._attn_implementation}"
    )
    console.print(
        f"torch {torch.__version__}, threads={torch.get_num_threads()}; batch={args.batch}, prompt={args.prompt}, "
        f"responses L/2..L for L in {args.lengths}, left padding; prefix mode max_batch_tokens="
        f"{prefix_scores.__kwdefaults__['max_batch_tokens']}; red_rlhf from {scoring.__file__}"
    )
    # Other processes on a 2-core machine shift timings by tens of percent: show the load so a reader can tell.
    console.print(f"load average before: {os.getloadavg()[0]:.2f} (anything near 1 or more means another busy process)")
    start = time.perf_counter()
    results = [bench_length(model, eager, args, resp_len) for resp_len in args.lengths]
    memory = {} if args.no_memory else {n: peak_memory(args, n) for n in args.lengths}
    console.print(full_batch_table(results, args))
    console.print(per_prefix_table(results))
    if memory:
        console.print(memory_table(results, memory))
    console.print(
        "naive = naive_prefix_scores; prefix = prefix_scores(mode='prefix'); red = prefix_scores(mode='causal').\n"
        "meas. = measured on the reduced row(s), red included; extrap. = measured time x (batch / rows), compared "
        "with red measured on the full batch. Rows are picked at the batch's median length."
    )
    console.print(f"total benchmark time: {time.perf_counter() - start:.0f} s; load average (1 min) at the end: "
                  f"{os.getloadavg()[0]:.2f} (this benchmark alone adds about 1)")
    for line in summary_lines(results, memory):
        print(line)


if __name__ == "__main__":
    main()
