"""Helpers shared by several test modules (test modules import from here, never from each other)."""

from __future__ import annotations

import io
import os
import random
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from red_rlhf.models.prefix import naive_prefix_scores

# ---------------------------------------------------------------- two processes filling one fresh cache


def slow_pip(wheel: bytes, wheel_name: str, calls: list):
    """A stand-in for subprocess.run(pip download ... -d FOLDER) for two callers at once: both wait until both
    have called it (neither found a wheel), then each writes the wheel in pieces, the second 0.3 s after the first
    (so a caller that read a shared path would see the other one's half-written file). `calls` collects the
    folders."""
    started = threading.Barrier(2)

    def run(cmd, **_):
        folder = Path(cmd[cmd.index("-d") + 1])
        folder.mkdir(parents=True, exist_ok=True)  # as pip does
        late = len(calls)
        calls.append(folder)
        started.wait()
        time.sleep(0.3 * late)
        with open(folder / wheel_name, "wb") as f:
            for lo in range(0, len(wheel), 8192):
                f.write(wheel[lo:lo + 8192])
                f.flush()
                time.sleep(0.02)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    return run


def at_once(fn, n: int = 2) -> tuple[list, list]:
    """(results, errors) of calling fn() in n threads started together."""
    results, errors = [], []

    def call():
        try:
            results.append(fn())
        except Exception as e:  # noqa: BLE001 - the caller asserts on it
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


# ---------------------------------------------------------------- reward models' own scores


def model_score(model, tok, text: str, **kwargs) -> float:
    """The reward model's own score of one text: HF's forward on the unpadded sequence, read at its last token."""
    enc = tok(text, return_tensors="pt", **kwargs)
    pair = "token_type_ids" in enc
    extra = {"token_type_ids": enc.token_type_ids} if pair else {}
    return naive_prefix_scores(model, enc.input_ids, enc.attention_mask, **extra, suffix_len=1 if pair else 0)[0, -1].item()


# ---------------------------------------------------------------- the vaderSentiment sdist, faked

SNIPPET_WORDS = "the film was a truly great bad dull warm clever story with plot and music in every scene".split()


def fixture_snippets(n: int = 400, seed: int = 0) -> str:
    """n rated snippets in the format of the real movieReviewSnippets_GroundTruth.txt (id, rating, text; CRLF)."""
    rng = random.Random(seed)
    lines = []
    for i in range(1, n + 1):
        text = " ".join(rng.choice(SNIPPET_WORDS) for _ in range(rng.randint(5, 14)))
        lines.append(f"{i}\t{rng.uniform(-4, 4):.6f}\t{text} ''quoted''.")
    return "\r\n".join(lines) + "\r\n"


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def fake_sdist(path: Path, snippets_text: str) -> Path:
    """A tar.gz laid out as vaderSentiment-3.3.2's sdist (the nested tarball holding the snippets, the licence)."""
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as t:
        add_bytes(t, "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt", snippets_text.encode())
    with tarfile.open(path, "w:gz") as t:
        add_bytes(t, "vaderSentiment-3.3.2/LICENSE.txt", b"The MIT License (MIT)\n")
        add_bytes(t, "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz", inner.getvalue())
    return path


# ---------------------------------------------------------------- images


def png_pixels(source) -> np.ndarray:
    """A PNG (path or bytes) decoded to RGB pixels, (H, W, 3) uint8."""
    from PIL import Image

    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG", image.format
        return np.asarray(image.convert("RGB"))


def colour_pixels(pixels: np.ndarray, hex_colour: str, tolerance: int = 40) -> int:
    """How many pixels lie within `tolerance` (per channel) of a colour like '#1f77b4'."""
    rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels.astype(int) - rgb).max(-1) <= tolerance).sum())


def axes_pixels(pixels: np.ndarray, ax) -> np.ndarray:
    """The pixels inside one matplotlib Axes of a saved figure (saved at the figure's dpi, no bbox_inches)."""
    height = pixels.shape[0]
    box = ax.get_window_extent()  # display coordinates: pixels from the bottom left
    return pixels[height - int(box.y1): height - int(box.y0), int(box.x0): int(box.x1)]


# ---------------------------------------------------------------- tensors


def real(ids: torch.Tensor, mask: torch.Tensor) -> list[int]:
    """The ids of one padded row where its mask is set."""
    return [i for i, m in zip(ids.tolist(), mask.tolist()) if m]


def check_curves(png_path, figure, rows: list[dict], size: tuple[int, int]) -> None:
    """A training-curves PNG shows the run's metrics: it decodes to `size` (width, height); every panel of
    `report.plots` draws its metric's column of `rows` (metrics.jsonl) step by step, and each drawn line's
    colour is on the panel's pixels."""
    from matplotlib.colors import to_hex

    from red_rlhf.report.plots import PANELS, SOURCE_PANELS

    pixels = png_pixels(png_path)
    assert (pixels.shape[1], pixels.shape[0]) == size
    by_title = {ax.get_title(): ax for ax in figure.axes if ax.get_title()}
    expected = {}  # panel title -> {line label: metric key}
    for key, title in PANELS:
        expected[title] = {"train": key}
        if any(f"eval_{key}" in r for r in rows) and key in ("reward_mean", "kl"):
            expected[title]["held-out"] = f"eval_{key}"
    for prefix, title in SOURCE_PANELS:
        keys = sorted(k for k in rows[-1] if k.startswith(prefix))
        if keys:
            expected[title] = {k[len(prefix):]: k for k in keys}
    assert set(by_title) == set(expected), (sorted(by_title), sorted(expected))
    for title, lines in expected.items():
        ax = by_title[title]
        drawn = {line.get_label(): line for line in ax.get_lines()}
        assert set(drawn) == set(lines), (title, sorted(drawn))
        panel = axes_pixels(pixels, ax)
        for label, key in lines.items():
            steps, values = zip(*[(r["step"], r[key]) for r in rows if key in r])
            assert list(drawn[label].get_xdata()) == list(steps), (title, label)
            assert list(drawn[label].get_ydata()) == list(values), (title, label)
            assert colour_pixels(panel, to_hex(drawn[label].get_color())) > 0, (title, label)


# ---------------------------------------------------------------- training runs

ROOT = Path(__file__).resolve().parents[1]


def die_during_step(trainer, step: int) -> None:
    """Make `trainer` raise RuntimeError("killed") as step `step` starts, as if the process died there (after the
    checkpoints of the steps before it)."""
    original_step, done = trainer.train_step, []

    def train_step():
        if len(done) == step - 1:
            raise RuntimeError("killed")
        done.append(1)
        return original_step()

    trainer.train_step = train_step


def save_tiny_policy(tokenizer, out) -> str:
    """A tiny random GPT-2 policy over `tokenizer`, saved with it: what verl's config checks load as a policy/critic."""
    from red_rlhf.models.tiny import tiny_causal_lm

    tiny_causal_lm(tokenizer, width=32, layers=1, context=1024).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def toy(tmp_path, *overrides, name="run"):
    """configs/toy.yaml in tmp_path/name, without trackers, evaluation or periodic saves (each overridable)."""
    from red_rlhf.config import load_config

    base = ["--train.log_with=", "--train.eval_every=0", "--data.eval_size=0", "--train.save_every=0",
            f"--train.output_dir={tmp_path / name}"]
    return load_config("configs/toy.yaml", base + list(overrides))


def torchrun(n: int, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    launcher = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([launcher, "--standalone", f"--nproc_per_node={n}", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


# ---------------------------------------------------------------- a two-token bandit, enumerated exactly


def bandit_gradients(advantage_fn, k: int, scheme: str = "red"):
    """The exact expectation of a per-token policy-gradient estimator on a two-token bandit, and the true gradient.

    Tokens y1, y2 in {0, 1}; tabular policy pi(y1) = softmax(a), pi(y2 | y1) = softmax(b[y1]). The reward model scores
    the prompt s0, the first token s1(y1) and the response R(y1, y2); "red" rewards are s1 - s0 and R - s1, "sparse"
    ones 0 and R. Every group of k samples (all 4^k of them, in one batch, group g's rows sharing id g) goes through
    advantage_fn(rewards (N k, 2), mask (N k, 2), group_ids (N k,)) -> advantages (N k, 2); the estimator is
    sum_i sum_t A_{i,t} grad log pi(y_{i,t} | .) / k. Returns (expected gradient, true gradient), each (grad a, grad b).
    """
    import itertools

    from red_rlhf.core.redistribute import redistribute

    a = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([[0.5, -0.1], [-0.4, 0.2]], dtype=torch.float64, requires_grad=True)
    final = {(0, 0): 1.0, (0, 1): -0.5, (1, 0): 2.0, (1, 1): 0.25}
    s1, s0 = {0: 0.7, 1: -1.3}, 0.4
    outcomes = list(itertools.product([0, 1], repeat=2))
    rows = [y for group in itertools.product(outcomes, repeat=k) for y in group]  # (N k) samples, groups adjacent
    y1, y2 = torch.tensor([y[0] for y in rows]), torch.tensor([y[1] for y in rows])
    scores = torch.tensor([[s0, s1[y[0]], final[y]] for y in rows], dtype=torch.float64)
    if scheme == "red":
        rewards = redistribute(scores[:, 0], scores[:, 1:], torch.ones(len(rows), 2, dtype=torch.bool))
    else:
        rewards = torch.stack([torch.zeros(len(rows), dtype=torch.float64), scores[:, 2]], 1)
    advantages = advantage_fn(rewards, torch.ones(len(rows), 2, dtype=torch.bool), torch.arange(len(rows)) // k)
    token_logps = torch.stack([torch.log_softmax(a, 0)[y1], torch.log_softmax(b, 1)[y1, y2]], 1)  # (N k, 2)
    group_prob = token_logps.sum(1).exp().detach().view(-1, k).prod(1).repeat_interleave(k)  # (N k,)
    surrogate = (group_prob[:, None] * advantages.detach() * token_logps).sum() / k
    expected = torch.autograd.grad(surrogate, (a, b))
    true_objective = sum((torch.log_softmax(a, 0)[y[0]] + torch.log_softmax(b[y[0]], 0)[y[1]]).exp() * final[y]
                         for y in outcomes)
    return expected, torch.autograd.grad(true_objective, (a, b))


def run_workers(n: int, out: Path, algorithm: str = "ppo") -> dict:
    """One step of tests/dp_worker.py (PPO or GRPO) on n processes; what it saved (weights, stats)."""
    torchrun(n, str(ROOT / "tests" / "dp_worker.py"), str(out), algorithm)
    return torch.load(out, weights_only=False)


class RunsCode:
    """Unpickling this calls open(path, "w"): a stand-in for any code a hostile checkpoint could run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))
