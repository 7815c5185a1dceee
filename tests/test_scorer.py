"""Tier 2: texts in, per-token rewards out, on tiny reward models (same and different tokenizers)."""

import copy
import math

import pytest
import torch

from red_rlhf import FunctionReward, HFRewardModel, TokenRewardScorer
from red_rlhf.models.prefix import naive_prefix_scores
from red_rlhf.models.tiny import tiny_reward_model, tiny_tokenizer
from tests.helpers import model_score

PROMPTS = ["Review:", "Hello world, how are you today?", "Please explain"]
RESPONSES = [" The movie was good and the acting was great.", " I am fine, thank you.", " how a transformer reads"]


def assert_telescopes(rows):
    for row in rows:
        assert len(row.rewards) == len(row.tokens) == len(row.offsets) == len(row.prefix_scores)
        assert sum(row.rewards) == pytest.approx(row.final_score - row.prompt_score, abs=1e-5)


def test_same_tokenizer_scores_are_the_models_prefix_scores(gpt2_tok, gpt2_rm):
    rows = TokenRewardScorer(HFRewardModel(gpt2_rm, gpt2_tok)).score(PROMPTS, RESPONSES)
    assert_telescopes(rows)
    for row in rows:
        assert "".join(row.tokens) == row.response
        # the rewards sit on the reward model's own tokens of the response, one prefix score each
        assert row.token_ids == gpt2_tok(row.response, add_special_tokens=False).input_ids
        assert row.prompt_score == pytest.approx(model_score(gpt2_rm, gpt2_tok, row.prompt), abs=1e-5)
        for (_, end), score in zip(row.offsets, row.prefix_scores):
            assert score == pytest.approx(model_score(gpt2_rm, gpt2_tok, row.prompt + row.response[:end]), abs=1e-5)
        assert row.rewards[0] == pytest.approx(row.prefix_scores[0] - row.prompt_score, abs=1e-5)
        assert all(r == pytest.approx(b - a, abs=1e-5)
                   for r, a, b in zip(row.rewards[1:], row.prefix_scores, row.prefix_scores[1:]))


def test_different_tokenizers_align_by_characters(llama_tok, llama_rm, policy_tok):
    rows = TokenRewardScorer(HFRewardModel(llama_rm, llama_tok), policy_tokenizer=policy_tok).score(PROMPTS, RESPONSES)
    assert_telescopes(rows)
    checked = 0
    for row in rows:
        assert row.token_ids == policy_tok(row.response, add_special_tokens=False).input_ids  # rewards sit on policy tokens
        assert row.final_score == pytest.approx(model_score(llama_rm, llama_tok, row.prompt + row.response), abs=1e-5)
        for (_, end), score in zip(row.offsets, row.prefix_scores):
            # at a word boundary the reward model's own tokens of the prefix text end there too
            if end < len(row.response) and row.response[end] == " ":
                assert score == pytest.approx(model_score(llama_rm, llama_tok, row.prompt + row.response[:end]), abs=1e-5)
                checked += 1
    assert checked >= 10
    assert len(rows[0].tokens) != len(llama_tok(RESPONSES[0], add_special_tokens=False).input_ids)  # really different


def test_reward_model_tokens_the_policy_never_finishes_give_zero(policy_tok):
    """Policy tokens ending inside a reward-model token read the previous score: reward 0, not a neighbour's."""
    coarse = tiny_tokenizer("gpt2", vocab_size=700)  # long merges: words are single tokens
    model = tiny_reward_model("gpt2", len(coarse), pad_token_id=coarse.pad_token_id, seed=5)
    [row] = TokenRewardScorer(HFRewardModel(model, coarse), policy_tokenizer=policy_tok).score(["Review:"], [" terrible"])
    rm_tokens = coarse(" terrible", add_special_tokens=False).input_ids
    assert len(rm_tokens) < len(row.tokens)
    assert row.rewards[:-1].count(0.0) >= len(row.tokens) - len(rm_tokens)
    assert sum(row.rewards) == pytest.approx(row.final_score - row.prompt_score, abs=1e-5)


def test_chat_template_pooled_tail_goes_to_the_last_token(policy_tok):
    tok = tiny_tokenizer("gpt2", chat=True)
    model = tiny_reward_model("gpt2", len(tok), pad_token_id=tok.pad_token_id, seed=6)
    rm = HFRewardModel(model, tok)
    assert rm.format == "chat"
    rows = TokenRewardScorer(rm, policy_tokenizer=policy_tok).score(PROMPTS, RESPONSES)
    assert_telescopes(rows)
    for row in rows:
        convo = [{"role": "user", "content": row.prompt}, {"role": "assistant", "content": row.response}]
        text = tok.apply_chat_template(convo, tokenize=False)
        assert text.endswith("<|im_end|>\n")
        full = model_score(model, tok, text, add_special_tokens=False)
        assert row.final_score == pytest.approx(full, abs=1e-5)
        # the last response token's own prefix score (before the end-of-turn tail) differs from the pooled one
        own = model_score(model, tok, text[: text.rindex(row.response) + len(row.response)], add_special_tokens=False)
        assert abs(own - full) > 1e-4
        assert row.rewards[-1] == pytest.approx(full - row.prefix_scores[-2], abs=1e-5)


def test_bidirectional_reward_model_with_pair_encoding(bert_tok, bert_rm, policy_tok):
    rm = HFRewardModel(bert_rm, bert_tok)
    assert (rm.mode, rm.format) == ("prefix", "pair")
    rows = TokenRewardScorer(rm, policy_tokenizer=policy_tok).score(PROMPTS, RESPONSES)
    assert_telescopes(rows)
    for row in rows:
        enc = bert_tok(row.prompt, row.response, return_tensors="pt")
        assert row.final_score == pytest.approx(bert_rm(**enc).logits[0, 0].item(), abs=1e-5)
        first_word = row.response.index(" ", 1)
        enc = bert_tok(row.prompt, row.response[:first_word], return_tensors="pt")
        t = [end for _, end in row.offsets].index(first_word)
        assert row.prefix_scores[t] == pytest.approx(bert_rm(**enc).logits[0, 0].item(), abs=1e-5)


def test_pad_equals_eos_response_keeps_its_eos_reward():
    tok = tiny_tokenizer("gpt2", pad_equals_eos=True)
    model = tiny_reward_model("gpt2", len(tok), pad_token_id=tok.pad_token_id, seed=7)
    responses = [" The movie was good." + tok.eos_token, " Bad." + tok.eos_token]
    rows = TokenRewardScorer(HFRewardModel(model, tok)).score(PROMPTS[:2], responses)
    assert_telescopes(rows)
    for row in rows:
        assert row.token_ids[-1] == tok.eos_token_id == tok.pad_token_id
        ids = tok(row.prompt + row.response, return_tensors="pt").input_ids
        with_eos = naive_prefix_scores(model, ids, torch.ones_like(ids))[0]
        assert row.final_score == pytest.approx(with_eos[-1].item(), abs=1e-5)
        assert row.rewards[-1] == pytest.approx((with_eos[-1] - with_eos[-2]).item(), abs=1e-5)
        assert abs(row.rewards[-1]) > 1e-4


def test_truncated_response_without_eos_is_scored_at_its_last_token(gpt2_tok, gpt2_rm):
    cut = " The movie was good and the act"  # cut mid-word, no EOS
    [row] = TokenRewardScorer(HFRewardModel(gpt2_rm, gpt2_tok)).score(["Review:"], [cut])
    assert_telescopes([row])
    assert gpt2_tok.eos_token_id not in row.token_ids
    assert row.final_score == pytest.approx(model_score(gpt2_rm, gpt2_tok, "Review:" + cut), abs=1e-5)


def test_one_token_response(gpt2_tok, gpt2_rm):
    [row] = TokenRewardScorer(HFRewardModel(gpt2_rm, gpt2_tok)).score(["Review:"], ["!"])
    assert len(row.tokens) == 1
    assert row.rewards[0] == pytest.approx(row.final_score - row.prompt_score, abs=1e-6)


def test_bad_texts_are_clear_errors(gpt2_tok, gpt2_rm, llama_tok, llama_rm):
    scorer = TokenRewardScorer(HFRewardModel(gpt2_rm, gpt2_tok))
    with pytest.raises(ValueError, match="response 1 is empty"):
        scorer.score(["a", "b"], [" ok", ""])
    with pytest.raises(ValueError, match="R\\(x\\) cannot be read"):
        scorer.score([""], [" ok"])
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        scorer.score(["a", "b"], [" ok"])
    with pytest.raises(ValueError, match="nothing to score"):
        scorer.score([], [])
    with pytest.raises(ValueError, match="longer than the reward model's context"):
        scorer.score(["Review:"], [" good" * 400])
    # a tokenizer that adds BOS gives an empty prompt a token to read R(x) at
    [row] = TokenRewardScorer(HFRewardModel(llama_rm, llama_tok)).score([""], [" ok"])
    assert sum(row.rewards) == pytest.approx(row.final_score - row.prompt_score, abs=1e-5)


def test_python_function_reward_per_prefix(policy_tok):
    calls = []

    def goodness(text):
        calls.append(text)
        return float(text.count("good"))

    [row] = TokenRewardScorer(goodness, policy_tokenizer=policy_tok).score(["Review:"], [" good, so good"])
    assert calls[0] == "Review:" and calls[-1] == "Review: good, so good"
    assert sum(row.rewards) == 2.0
    completing = [t for t, (_, end) in enumerate(row.offsets) if row.response[:end].count("good") > row.response[: row.offsets[t][0]].count("good")]
    for t, reward in enumerate(row.rewards):
        assert reward == (1.0 if t in completing else 0.0)


@pytest.mark.parametrize("path", ["tensor", "text"])
def test_a_reward_model_giving_nan_scores_is_refused_naming_the_rows(gpt2_tok, gpt2_rm, policy_tok, path):
    broken = copy.deepcopy(gpt2_rm)
    torch.nn.init.constant_(broken.score.weight, math.nan)
    rm = HFRewardModel(broken, gpt2_tok)
    policy = gpt2_tok if path == "tensor" else policy_tok  # the reward model's own tokens: one forward on them
    assert rm.reads_policy_tokens(policy) == (path == "tensor")
    with pytest.raises(ValueError, match=r"NaN or infinite in row\(s\) \[0, 1\]"):
        TokenRewardScorer(rm, policy_tokenizer=policy).score(PROMPTS[:2], RESPONSES[:2])


def test_function_reward_with_prompt_argument_and_bad_values(policy_tok):
    scorer = TokenRewardScorer(FunctionReward(lambda p, r: len(r) - len(p), takes_prompt=True), policy_tokenizer=policy_tok)
    [row] = scorer.score(["abc"], [" hello"])
    assert row.prompt_score == -3 and row.final_score == 3 and sum(row.rewards) == 6
    nan_scorer = TokenRewardScorer(FunctionReward(lambda text: math.nan, name="judge"), policy_tokenizer=policy_tok)
    with pytest.raises(ValueError, match="reward is nan for judge"):
        nan_scorer.score(["abc"], [" hello"])
    with pytest.raises(ValueError, match="pass policy_tokenizer"):
        TokenRewardScorer(lambda text: 0.0)
    with pytest.raises(ValueError, match="has none"):
        TokenRewardScorer(lambda text: 0.0, policy_tokenizer=policy_tok, scheme="abc").score(["a"], [" b"])


def test_sparse_and_abc_through_the_scorer(gpt2_tok, policy_tok):
    model = tiny_reward_model("gpt2", len(gpt2_tok), pad_token_id=gpt2_tok.pad_token_id, seed=8)
    model.set_attn_implementation("eager")
    rm = HFRewardModel(model, gpt2_tok)
    sparse = TokenRewardScorer(rm, policy_tokenizer=policy_tok, scheme="sparse").score(PROMPTS, RESPONSES)
    abc = TokenRewardScorer(rm, policy_tokenizer=policy_tok, scheme="abc").score(PROMPTS, RESPONSES)
    for s_row, a_row in zip(sparse, abc):
        assert s_row.rewards[:-1] == [0.0] * (len(s_row.rewards) - 1) and s_row.rewards[-1] == pytest.approx(s_row.final_score)
        assert sum(a_row.rewards) == pytest.approx(a_row.final_score, abs=1e-5)
        sign = 1 if a_row.final_score > 0 else -1
        assert all(sign * r >= 0 for r in a_row.rewards)
        assert sum(1 for r in a_row.rewards if r != 0) > 1  # spread over several tokens


def test_multi_byte_characters_are_shown_once(gpt2_tok, gpt2_rm):
    """A character split over byte-level tokens is shown on the token that completes it, never repeated; each row
    still has one reward per token and the rewards still telescope."""
    [row] = TokenRewardScorer(HFRewardModel(gpt2_rm, gpt2_tok)).score(["Party:"], [" 🎉"])
    assert len(row.tokens) > 2  # the emoji is several byte-level tokens
    assert "".join(row.tokens) == " 🎉" and row.tokens.count("🎉") == 1
    assert all(t in ("", " ", "🎉") for t in row.tokens) and len(row.rewards) == len(row.tokens)
    assert sum(row.rewards) == pytest.approx(row.final_score - row.prompt_score, abs=1e-5)
