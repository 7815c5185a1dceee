"""The reward path: sources give tensors on the policy's tokens (tensor path == text path), and one pure function
(`assemble_rewards`) turns every source's prefix scores into the reward the estimator sees (== its python-loop
reference)."""

import itertools

import pytest
import torch

from red_rlhf.core.reward_assembly import (
    PrefixScores,
    RewardSettings,
    SourceScores,
    assemble_rewards,
    assemble_rewards_reference,
)
from red_rlhf.models.detokenize import response_text, response_texts
from red_rlhf.models.sources import FunctionReward, HFRewardModel, TokenBatch, score_text_path
from red_rlhf.models.tiny import tiny_reward_model, tiny_tokenizer

# ---------------------------------------------------------------- tier 1: the pure function


def random_case(seed: int, n_sources: int, schemes):
    g = torch.Generator().manual_seed(seed)
    B, R = 5, 7
    lengths = torch.randint(1, R + 1, (B,), generator=g)
    mask = torch.arange(R).unsqueeze(0) < lengths.unsqueeze(1)  # (B, R) right-padded responses
    sources = []
    for i in range(n_sources):
        tokens = torch.where(mask, torch.randn(B, R, generator=g, dtype=torch.float64) * 3, 0.0)
        attention = torch.where(mask, torch.rand(B, R, generator=g, dtype=torch.float64) + 0.01, 0.0)
        coef = float(torch.randn((), generator=g))
        prompt = torch.randn(B, generator=g, dtype=torch.float64)
        sources.append(SourceScores(f"s{i}", PrefixScores(prompt, tokens, attention), schemes[i % len(schemes)], coef))
    ended = torch.rand(B, generator=g) > 0.5
    kl = torch.randn(B, R, generator=g, dtype=torch.float64)
    return sources, mask, ended, kl


SETTINGS = [
    RewardSettings(),
    RewardSettings(beta_c=0.5, first_token="zero", score_shift=0.3, score_scale=2.0),
    RewardSettings(first_token="score", score_clip=1.5, missing_eos_penalty=0.7, abc_beta=0.3),
    RewardSettings(beta_c=0.0, score_shift=-1.0, score_scale=0.5, score_clip=2.0, missing_eos_penalty=-0.2),
]


@pytest.mark.parametrize("seed, settings, schemes, n_sources", [
    (seed, settings, schemes, n)
    for seed, settings, (schemes, n) in itertools.product(
        range(3), SETTINGS, [(("red",), 1), (("sparse",), 1), (("abc",), 1), (("red", "sparse", "abc"), 3)])
])
def test_assemble_rewards_equals_the_python_loop_reference(seed, settings, schemes, n_sources):
    sources, mask, ended, kl = random_case(seed, n_sources, schemes)
    fast = assemble_rewards(sources, mask, settings, ended=ended, kl=kl, kl_coef=0.1, dtype=torch.float64)
    slow = assemble_rewards_reference(sources, mask, settings, ended=ended, kl=kl, kl_coef=0.1)
    torch.testing.assert_close(fast.rewards, slow)
    assert torch.all(fast.rewards[~mask] == 0)
    # the log's view: raw and normalised final scores per source, and the combined raw final score
    rows = torch.arange(mask.shape[0])
    last = mask.sum(-1) - 1
    for s in sources:
        torch.testing.assert_close(fast.final_raw[s.name], s.scores.tokens[rows, last])
        expected = (s.scores.tokens[rows, last] - settings.score_shift) / settings.score_scale
        if settings.score_clip is not None:
            expected = expected.clamp(-settings.score_clip, settings.score_clip)
        torch.testing.assert_close(fast.final_normalised[s.name], expected)
    torch.testing.assert_close(fast.final_combined_raw, sum(s.coef * s.scores.tokens[rows, last] for s in sources))


def test_red_rows_telescope_to_the_normalised_difference_and_kl_comes_last():
    sources, mask, ended, kl = random_case(7, 1, ("red",))
    settings = RewardSettings(score_shift=0.5, score_scale=3.0)
    out = assemble_rewards(sources, mask, settings, dtype=torch.float64)
    s = sources[0]
    rows, last = torch.arange(mask.shape[0]), mask.sum(-1) - 1
    expected = s.coef * ((s.scores.tokens[rows, last] - 0.5) / 3 - (s.scores.prompt - 0.5) / 3)
    torch.testing.assert_close(out.rewards.sum(-1), expected)
    with_kl = assemble_rewards(sources, mask, settings, kl=kl, kl_coef=0.2, dtype=torch.float64)
    torch.testing.assert_close(with_kl.score_rewards, out.rewards)
    torch.testing.assert_close(with_kl.rewards, torch.where(mask, out.rewards - 0.2 * kl, 0.0))


@pytest.mark.parametrize("change, message", [
    (lambda s, m: ([], m), "at least one source"),
    (lambda s, m: ([SourceScores("a", PrefixScores(s[0].scores.prompt, s[0].scores.tokens[:, :3]))], m),
     "source 'a': .* do not fit the response mask"),
    (lambda s, m: ([SourceScores("a", PrefixScores(s[0].scores.prompt, s[0].scores.tokens), "dense")], m),
     "source 'a': unknown reward scheme 'dense'"),
    (lambda s, m: ([SourceScores("a", PrefixScores(s[0].scores.prompt, s[0].scores.tokens), "abc")], m),
     "source 'a': scheme 'abc' needs the reward model's attention"),
])
def test_assemble_rewards_names_what_does_not_fit(change, message):
    sources, mask, _, _ = random_case(0, 1, ("red",))
    sources, mask = change(sources, mask)
    with pytest.raises(ValueError, match=message):
        assemble_rewards(sources, mask)


def test_missing_eos_penalty_needs_to_know_which_rows_ended():
    sources, mask, _, _ = random_case(0, 1, ("red",))
    with pytest.raises(ValueError, match="pass ended="):
        assemble_rewards(sources, mask, RewardSettings(missing_eos_penalty=1.0))


# ---------------------------------------------------------------- tier 2: sources give tensors on the policy's tokens

PROMPTS = ["Review:", "Hello world,", "Please explain"]
RESPONSES = [" The movie was good and the acting was great.", " how are you today? I am fine.", " how a transformer reads"]


def policy_batch(tok, prompts=PROMPTS, responses=RESPONSES) -> TokenBatch:
    """Prompts left-padded, responses right-padded, as the trainer lays them out (tokenized as the policy would)."""
    p_ids = [tok(p).input_ids for p in prompts]
    r_ids = [tok(r, add_special_tokens=False).input_ids for r in responses]
    P, R = max(map(len, p_ids)), max(map(len, r_ids))
    prompt_ids = torch.full((len(prompts), P), tok.pad_token_id)
    prompt_mask = torch.zeros(len(prompts), P, dtype=torch.long)
    response_ids = torch.full((len(prompts), R), tok.pad_token_id)
    response_mask = torch.zeros(len(prompts), R, dtype=torch.bool)
    for i, (p, r) in enumerate(zip(p_ids, r_ids)):
        prompt_ids[i, P - len(p):], prompt_mask[i, P - len(p):] = torch.tensor(p), 1
        response_ids[i, : len(r)], response_mask[i, : len(r)] = torch.tensor(r), True
    return TokenBatch(list(prompts), prompt_ids, prompt_mask, response_ids, response_mask, tok)


@pytest.mark.parametrize("style, arch", [("gpt2", "gpt2"), ("llama", "llama"), ("sentencepiece", "llama")])
def test_tensor_path_equals_text_path(style, arch):
    """One forward on the policy's ids gives the numbers that decoding + re-tokenising + aligning gives; the
    SentencePiece-style tokenizer drops the space before a text's first word when decoding a response alone."""
    tok = tiny_tokenizer(style)
    rm = HFRewardModel(tiny_reward_model(arch, len(tok), pad_token_id=tok.pad_token_id, seed=4), tok, format="concat")
    batch = policy_batch(tok)
    assert rm.reads_policy_tokens(tok)
    tensor = rm.score_tokens(batch)
    text = score_text_path(rm, policy_batch(tok))
    torch.testing.assert_close(tensor.prompt, text.prompt, atol=1e-5, rtol=0)
    torch.testing.assert_close(tensor.tokens, text.tokens, atol=1e-5, rtol=0)
    assert torch.all(tensor.tokens[~batch.response_mask] == 0)
    if style == "sentencepiece":  # decoding the response alone loses its leading space; in context it is kept
        ids = batch.response_ids[1][batch.response_mask[1]].tolist()
        assert not tok.decode(ids).startswith(" ")
        assert batch.texts()[0][1] == RESPONSES[1]


def test_tensor_path_does_not_decode_or_tokenize(gpt2_tok, gpt2_rm, monkeypatch):
    rm = HFRewardModel(gpt2_rm, gpt2_tok)
    batch = policy_batch(gpt2_tok)
    monkeypatch.setattr(type(batch), "texts", lambda self: pytest.fail("the tensor path decoded the responses"))
    monkeypatch.setattr(rm, "_encode", lambda *a: pytest.fail("the tensor path re-tokenised the text"))
    scores = rm.score_tokens(batch)
    assert scores.tokens.shape == batch.response_ids.shape


def test_tensor_and_text_path_give_the_same_abc_attention(gpt2_tok):
    model = tiny_reward_model("gpt2", len(gpt2_tok), pad_token_id=gpt2_tok.pad_token_id, seed=8)
    model.set_attn_implementation("eager")
    rm = HFRewardModel(model, gpt2_tok)
    tensor = rm.score_tokens(policy_batch(gpt2_tok), need_attention=True)
    text = score_text_path(rm, policy_batch(gpt2_tok), need_attention=True)
    torch.testing.assert_close(tensor.attention, text.attention, atol=1e-5, rtol=0)


def test_reads_policy_tokens_is_strict(gpt2_tok, gpt2_rm, policy_tok):
    rm = HFRewardModel(gpt2_rm, gpt2_tok)
    assert rm.reads_policy_tokens(gpt2_tok) and rm.reads_policy_tokens(tiny_tokenizer("gpt2"))  # rebuilt: equal
    assert not rm.reads_policy_tokens(policy_tok)  # other merges
    assert not rm.reads_policy_tokens(tiny_tokenizer("gpt2", pad_equals_eos=True))  # other special tokens
    chat_tok = tiny_tokenizer("gpt2", chat=True)
    chat_rm = HFRewardModel(tiny_reward_model("gpt2", len(chat_tok), pad_token_id=chat_tok.pad_token_id), chat_tok)
    assert chat_rm.format == "chat" and not chat_rm.reads_policy_tokens(chat_tok)  # the RM reads a template
    bert_tok = tiny_tokenizer("bert")
    bert_rm = HFRewardModel(tiny_reward_model("bert", len(bert_tok), pad_token_id=bert_tok.pad_token_id), bert_tok,
                            format="concat")
    assert not bert_rm.reads_policy_tokens(bert_tok)  # bidirectional: one pass per prefix, never the tensor path


def test_reads_policy_tokens_never_answers_for_a_tokenizer_that_is_gone(gpt2_tok, gpt2_rm, policy_tok):
    """A long-lived reward model (verl's manager keeps one per process) meets one tokenizer after another, and CPython
    puts a new object where a freed one was: a cached answer must not pass to the tokenizer that takes its address
    (that read another vocabulary's ids as the reward model's own)."""

    class Handle:  # a small object that delegates to a tokenizer: freed at `del`, its address reused at once
        def __init__(self, tok):
            self.tok = tok

        def __getattr__(self, name):
            return getattr(self.tok, name)

        def __call__(self, *args, **kwargs):
            return self.tok(*args, **kwargs)

    rm = HFRewardModel(gpt2_rm, gpt2_tok)
    addresses = []
    for i in range(8):
        tok = Handle((policy_tok, gpt2_tok)[i % 2])  # other merges, then the reward model's own, in turn
        addresses.append(id(tok))
        assert rm.reads_policy_tokens(tok) == (i % 2 == 1), i
        del tok
    assert len(set(addresses)) < len(addresses)  # the case this test is about did occur


def test_a_function_source_gives_tensors_through_the_text_path(gpt2_tok):
    calls = []

    def length(text: str) -> float:
        calls.append(text)
        return float(len(text))

    batch = policy_batch(gpt2_tok)
    scores = FunctionReward(length).score_tokens(batch)
    for i, (prompt, response) in enumerate(zip(PROMPTS, RESPONSES)):
        n = int(batch.response_mask[i].sum())
        assert scores.prompt[i].item() == len(prompt)
        assert scores.tokens[i, n - 1].item() == len(prompt + response)
        assert torch.all(scores.tokens[i, n:] == 0)


# ---------------------------------------------------------------- decoding once, linearly


def test_response_text_is_linear_and_keeps_each_tokens_own_text(gpt2_tok, monkeypatch):
    prompt = gpt2_tok("Review:").input_ids
    encoded = gpt2_tok(" good" * 150, add_special_tokens=False, return_offsets_mapping=True)
    response = encoded.input_ids
    calls = []
    decode = type(gpt2_tok).decode

    def counting(self, ids, **kwargs):
        calls.append(len(ids))
        return decode(self, ids, **kwargs)

    monkeypatch.setattr(type(gpt2_tok), "decode", counting)
    text, cuts = response_text(gpt2_tok, prompt, response)
    assert text == " good" * 150 and cuts == [end for _, end in encoded.offset_mapping]
    assert len(calls) <= 2 * len(response) + 2 and max(calls) <= 8  # a few tokens per decode, not every prefix


def test_multi_byte_characters_go_to_the_token_that_completes_them(gpt2_tok):
    response = gpt2_tok(" party 🎉 time", add_special_tokens=False).input_ids
    text, cuts = response_text(gpt2_tok, gpt2_tok("Hi").input_ids, response)
    assert text == " party 🎉 time"
    pieces = [text[a:b] for a, b in zip([0] + cuts[:-1], cuts)]
    assert "".join(pieces) == text and pieces.count("🎉") == 1 and "\ufffd" not in text
    assert sum(1 for p in pieces if p == "") >= 1  # the emoji's first byte tokens add no text of their own


def test_response_texts_reads_padded_batches(gpt2_tok):
    batch = policy_batch(gpt2_tok)
    texts, cuts = response_texts(gpt2_tok, batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask)
    assert texts == RESPONSES
    assert [len(c) for c in cuts] == batch.response_mask.sum(-1).tolist()
