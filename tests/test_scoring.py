"""Tier 2: prefix scores of tiny HF reward models equal the per-prefix definition."""

import logging

import pytest
import torch

from red_rlhf.models.prefix import detect_mode, naive_prefix_scores, pooled_attention, prefix_scores
from red_rlhf.models.tiny import tiny_reward_model

TEXTS = ["The movie was good", "A bad film with terrible acting and a dull plot.", "Hi", "I loved every minute of it!"]


def encode(tok, texts, side, **kwargs):
    tok.padding_side = side
    try:
        return tok(texts, padding=True, return_tensors="pt", **kwargs)
    finally:
        tok.padding_side = "right"


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_causal_single_pass_equals_naive(arch, side, request):
    tok, model = request.getfixturevalue(f"{arch}_tok"), request.getfixturevalue(f"{arch}_rm")
    enc = encode(tok, TEXTS, side)
    lengths = enc.attention_mask.sum(-1)
    assert len(set(lengths.tolist())) > 2  # rows of different lengths share the batch
    assert detect_mode(model) == "causal"
    fast = prefix_scores(model, enc.input_ids, enc.attention_mask, mode="causal")
    slow = naive_prefix_scores(model, enc.input_ids, enc.attention_mask)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-5)
    assert fast[enc.attention_mask.bool()].std() > 0.1  # scores really vary from token to token
    assert (fast[~enc.attention_mask.bool()] == 0).all()


def test_padding_side_does_not_change_scores(gpt2_tok, gpt2_rm):
    left, right = encode(gpt2_tok, TEXTS, "left"), encode(gpt2_tok, TEXTS, "right")
    s_left = prefix_scores(gpt2_rm, left.input_ids, left.attention_mask)
    s_right = prefix_scores(gpt2_rm, right.input_ids, right.attention_mask)
    torch.testing.assert_close(s_left[left.attention_mask.bool()], s_right[right.attention_mask.bool()], rtol=0, atol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
def test_bidirectional_per_prefix_equals_naive(bert_tok, bert_rm, side):
    prompts = ["Review:", "Please explain", "Hello world", "Why?"]
    enc = encode(bert_tok, prompts, side, text_pair=TEXTS)
    assert detect_mode(bert_rm) == "prefix"
    kwargs = dict(token_type_ids=enc.token_type_ids, suffix_len=1)  # every prefix keeps the closing [SEP]
    fast = prefix_scores(bert_rm, enc.input_ids, enc.attention_mask, max_batch_tokens=64, **kwargs)
    slow = naive_prefix_scores(bert_rm, enc.input_ids, enc.attention_mask, **kwargs)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-5)
    assert fast[enc.attention_mask.bool()].std() > 0.05
    # the closing [SEP] holds the score of the whole pair, as the model's own forward gives it
    full = bert_rm(**{k: v for k, v in enc.items()}).logits[:, 0] if side == "right" else None
    if full is not None:
        last = enc.attention_mask.sum(-1) - 1
        torch.testing.assert_close(fast[torch.arange(4), last], full, rtol=0, atol=1e-5)


def test_auto_mode_choice_is_logged(gpt2_tok, gpt2_rm, bert_tok, bert_rm, caplog):
    enc = encode(gpt2_tok, TEXTS[:2], "left")
    with caplog.at_level(logging.DEBUG, logger="red_rlhf"):
        prefix_scores(gpt2_rm, enc.input_ids, enc.attention_mask)
        enc_b = encode(bert_tok, TEXTS[:2], "right")
        prefix_scores(bert_rm, enc_b.input_ids, enc_b.attention_mask)
    assert "'causal' for GPT2ForSequenceClassification" in caplog.text
    assert "'prefix' for BertForSequenceClassification" in caplog.text


def test_causal_on_bidirectional_model_is_an_error(bert_tok, bert_rm):
    enc = encode(bert_tok, TEXTS[:2], "right")
    with pytest.raises(ValueError, match="not a causal decoder"):
        prefix_scores(bert_rm, enc.input_ids, enc.attention_mask, mode="causal")


def test_prefix_mode_on_causal_model_agrees_and_chunks(gpt2_tok, gpt2_rm):
    enc = encode(gpt2_tok, TEXTS, "left")
    causal = prefix_scores(gpt2_rm, enc.input_ids, enc.attention_mask, mode="causal")
    chunked = prefix_scores(gpt2_rm, enc.input_ids, enc.attention_mask, mode="prefix", max_batch_tokens=7)
    torch.testing.assert_close(causal, chunked, rtol=0, atol=1e-5)


def test_pad_equals_eos_keeps_the_real_eos(gpt2_tok):
    """A pad id equal to the EOS id must not hide a response's real EOS (trl#3750)."""
    from red_rlhf.models.tiny import tiny_tokenizer

    tok = tiny_tokenizer("gpt2", pad_equals_eos=True)
    assert tok.pad_token_id == tok.eos_token_id
    model = tiny_reward_model("gpt2", len(tok), pad_token_id=tok.pad_token_id, seed=4)
    texts = [t + tok.eos_token for t in TEXTS]
    for side in ("left", "right"):
        enc = encode(tok, texts, side)
        last = enc.attention_mask.sum(-1) - 1 if side == "right" else torch.full((4,), enc.input_ids.shape[1] - 1)
        assert (enc.input_ids[torch.arange(4), last] == tok.eos_token_id).all()
        slow = naive_prefix_scores(model, enc.input_ids, enc.attention_mask)
        for mode in ("causal", "prefix"):
            fast = prefix_scores(model, enc.input_ids, enc.attention_mask, mode=mode)
            torch.testing.assert_close(fast, slow, rtol=0, atol=1e-5)
        # the EOS's own score differs from the token before it: it was really read at the EOS
        assert (slow[torch.arange(4), last] - slow[torch.arange(4), last - 1]).abs().min() > 1e-4


def test_bad_inputs(gpt2_tok, gpt2_rm):
    enc = encode(gpt2_tok, TEXTS[:2], "right")
    empty = enc.attention_mask.clone()
    empty[1] = 0
    with pytest.raises(ValueError, match=r"row\(s\) \[1\] have no tokens"):
        prefix_scores(gpt2_rm, enc.input_ids, empty)
    long_ids = torch.ones(1, gpt2_rm.config.n_positions + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="longer than the reward model's context"):
        prefix_scores(gpt2_rm, long_ids, torch.ones_like(long_ids))
    with pytest.raises(ValueError, match="mode must be one of"):
        prefix_scores(gpt2_rm, enc.input_ids, enc.attention_mask, mode="fast")
    with pytest.raises(ValueError, match="suffix_len applies to prefix mode only"):
        prefix_scores(gpt2_rm, enc.input_ids, enc.attention_mask, mode="causal", suffix_len=1)


def test_several_labels_need_label_index(gpt2_tok):
    model = tiny_reward_model("gpt2", len(gpt2_tok), pad_token_id=gpt2_tok.pad_token_id)
    model.config.num_labels = 2
    model.score = torch.nn.Linear(model.config.n_embd, 2, bias=False)
    enc = encode(gpt2_tok, TEXTS[:2], "right")
    with pytest.raises(ValueError, match="pass label_index"):
        prefix_scores(model, enc.input_ids, enc.attention_mask)
    second = prefix_scores(model, enc.input_ids, enc.attention_mask, label_index=1)
    torch.testing.assert_close(second, naive_prefix_scores(model, enc.input_ids, enc.attention_mask, label_index=1), rtol=0, atol=1e-5)


def test_pooled_attention_needs_eager_and_is_a_distribution(gpt2_tok):
    model = tiny_reward_model("gpt2", len(gpt2_tok), pad_token_id=gpt2_tok.pad_token_id)
    enc = encode(gpt2_tok, TEXTS, "left")
    if model.config._attn_implementation != "eager":
        with pytest.raises(ValueError, match="eager"):
            pooled_attention(model, enc.input_ids, enc.attention_mask)
    model.set_attn_implementation("eager")
    weights = pooled_attention(model, enc.input_ids, enc.attention_mask)
    torch.testing.assert_close(weights.sum(-1), torch.ones(4), rtol=0, atol=1e-5)
    assert (weights[~enc.attention_mask.bool()] == 0).all() and (weights >= 0).all()
