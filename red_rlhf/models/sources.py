"""Reward sources: anything that scores the prefixes of a response, as tensors on the policy's tokens.

Every source implements `score_tokens(batch, need_attention=False) -> PrefixScores`: for a `TokenBatch` of
responses as the policy produced them, the score of each prompt alone (R(x), (B,)) and the score after each
response token ((B, R); at the last one R(x, y)), and for ABC the attention on each response token.

Two paths lead there:
- tensor path: an `HFRewardModel` that reads the policy's token ids as they are (`reads_policy_tokens`: same
  vocabulary, special tokens and encoding, a causal model fed the plain concatenation) scores the batch's ids in
  one forward pass. No decoding, no re-tokenising.
- text path: everything else (another tokenizer, a bidirectional or chat-template reward model, a python function)
  decodes each response once (`detokenize.response_texts`, linear in length), scores the reward model's own tokens
  (`score_cuts`) and maps them to the policy's tokens by character offsets (`core.alignment`).
Both give the same numbers where both apply (tested). Scores come back as the model gives them: `assemble_rewards`,
which every scoring path ends in, refuses a NaN or infinite one, naming the source and the rows.

- `HFRewardModel`: any Hugging Face sequence classifier (causal single pass or bidirectional per-prefix).
- `FunctionReward`: a python function text -> float, called once per prefix.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from red_rlhf.config import INPUT_FORMATS
from red_rlhf.core.alignment import check_cuts, scores_at_cuts, sums_between_cuts
from red_rlhf.core.reward_assembly import PrefixScores
from red_rlhf.core.masks import pad_rows
from red_rlhf.models.detokenize import response_texts
from red_rlhf.models.prefix import pooled_attention, prefix_scores, resolve_mode, sequence_scores

TRAINED_FORMAT_KEY = "red_rlhf_input_format"  # in a reward model's config: how its training inputs were laid out


class SourceError(ValueError):
    """A reward source failed; the message names it."""


@dataclass
class TokenBatch:
    """Responses as the policy produced them. B rows, P prompt positions (left-padded), R response positions
    (right-padded); masks from lengths (so a pad id equal to the EOS id keeps the real EOS)."""

    prompts: list[str]  # the prompt texts (what a text-path source reads as the prompt)
    prompt_ids: torch.Tensor  # (B, P) left-padded policy ids
    prompt_mask: torch.Tensor  # (B, P) 1 on prompt tokens
    response_ids: torch.Tensor  # (B, R) right-padded policy ids
    response_mask: torch.Tensor  # (B, R) bool, True on response tokens (EOS included)
    tokenizer: object  # the policy's tokenizer
    plain_prompts: bool = True  # prompt_ids are tokenizer(prompt) as is (False: e.g. wrapped in a chat template)
    ended: torch.Tensor | None = None  # (B,) bool: the response ends with EOS (what missing_eos_penalty reads)
    _texts: tuple[list[str], list[list[int]]] | None = field(default=None, repr=False)

    def __post_init__(self):
        if len(self.prompts) != self.response_ids.shape[0] or self.prompt_ids.shape[0] != self.response_ids.shape[0]:
            raise ValueError(f"TokenBatch: {len(self.prompts)} prompts, {self.prompt_ids.shape[0]} prompt rows and "
                             f"{self.response_ids.shape[0]} response rows must agree")
        if self.response_mask.shape != self.response_ids.shape or self.prompt_mask.shape != self.prompt_ids.shape:
            raise ValueError("TokenBatch: each mask must have the shape of its ids")

    def __len__(self) -> int:
        return len(self.prompts)

    def texts(self) -> tuple[list[str], list[list[int]]]:
        """Each response's text and the end of each of its tokens in it (decoded once, then cached)."""
        if self._texts is None:
            self._texts = response_texts(self.tokenizer, self.prompt_ids, self.prompt_mask, self.response_ids,
                                         self.response_mask)
            for i, text in enumerate(self._texts[0]):
                if not text:
                    raise ValueError(f"response {i} decodes to empty text; a text-path reward source cannot score it")
        return self._texts


def from_cut_scores(scored: Sequence["CutScores"], width: int) -> PrefixScores:
    """Text-path results (one CutScores per row) laid out as right-padded tensors of `width` response positions."""
    prompt = torch.tensor([cs.prompt_score for cs in scored], dtype=torch.float64)
    tokens = torch.zeros(len(scored), width, dtype=torch.float64)
    attention = torch.zeros_like(tokens) if scored and scored[0].attention is not None else None
    for i, cs in enumerate(scored):
        tokens[i, : len(cs.scores)] = torch.tensor(cs.scores, dtype=torch.float64)
        if attention is not None:
            attention[i, : len(cs.attention)] = torch.tensor(cs.attention, dtype=torch.float64)
    return PrefixScores(prompt, tokens, attention)


def score_text_path(source, batch: TokenBatch, need_attention: bool = False) -> PrefixScores:
    """Decode once, score the source's own way (`score_cuts`), map to the policy's tokens."""
    texts, cuts = batch.texts()
    scored = source.score_cuts(batch.prompts, texts, cuts, need_attention=need_attention)
    return from_cut_scores(scored, batch.response_ids.shape[1])


@dataclass
class CutScores:
    prompt_score: float  # R(x): the score of the prompt alone
    scores: list[float]  # score after each policy token; the last is R(x, y)
    attention: list[float] | None = None  # ABC: the reward model's attention summed per policy token


class RewardSource(Protocol):
    def score_tokens(self, batch: TokenBatch, need_attention: bool = False) -> PrefixScores: ...

    def score_cuts(
        self, prompts: Sequence[str], responses: Sequence[str], cuts: Sequence[Sequence[int]], need_attention: bool = False
    ) -> list[CutScores]: ...


class FunctionReward:
    """A python function as the reward, scored on every prefix (len(response) + 1 calls per response).

    fn(text) receives prompt + response prefix; with takes_prompt=True, fn(prompt, response_prefix).
    """

    def __init__(self, fn: Callable[..., float], *, takes_prompt: bool = False, name: str | None = None):
        if not callable(fn):
            raise TypeError(f"FunctionReward needs a callable, got {type(fn).__name__}")
        self.fn = fn
        self.takes_prompt = takes_prompt
        self.name = name or getattr(fn, "__name__", "reward function")

    def _call(self, prompt: str, prefix: str) -> float:
        value = float(self.fn(prompt, prefix) if self.takes_prompt else self.fn(prompt + prefix))
        if not math.isfinite(value):  # checked here, the one place that knows which text the function was given
            raise ValueError(f"the reward is {value} for {self.name} on prompt {prompt[:40]!r} + response prefix "
                             f"{prefix[-40:]!r}: rewards must be finite numbers")
        return value

    def score_tokens(self, batch: TokenBatch, need_attention: bool = False) -> PrefixScores:
        return score_text_path(self, batch, need_attention)

    def score_cuts(self, prompts, responses, cuts, need_attention=False):
        if need_attention:
            raise ValueError("scheme 'abc' needs a reward model's attention; a python function has none")
        out = []
        for prompt, response, row_cuts in zip(prompts, responses, cuts, strict=True):
            check_cuts(row_cuts, len(response))
            out.append(CutScores(self._call(prompt, ""), [self._call(prompt, response[:c]) for c in row_cuts]))
        return out


PROBE_TEXTS = ("Hello, world! It's 3.14 o'clock - naïve café, 日本語 🎉", " leading space\ttab\nnew line  two spaces")


def same_tokenizer(a, b) -> bool:
    """The same vocabulary, special tokens and encoding of probe texts (with and without special tokens)."""
    if a is b:
        return True
    if a.get_vocab() != b.get_vocab() or a.all_special_ids != b.all_special_ids:
        return False
    if (a.bos_token_id, a.eos_token_id) != (b.bos_token_id, b.eos_token_id):
        return False
    return all(a(t, add_special_tokens=special).input_ids == b(t, add_special_tokens=special).input_ids
               for t in PROBE_TEXTS for special in (True, False))


@dataclass
class _Encoded:
    input_ids: list[int]
    token_type_ids: list[int] | None
    response_ends: list[int]  # end (in response characters) of each reward-model response token
    first: int  # index of the first response token
    last: int  # index of the last response token
    prompt_alone: list[int] | None = None  # the prompt encoded on its own, when a token spans the boundary


class HFRewardModel:
    """A Hugging Face *ForSequenceClassification reward model and its (fast) tokenizer.

    format: how prompt and response become the reward model's input ("auto": the format recorded in the model's
    config by `red-rlhf train-rm`, else as below):
      "chat"    the tokenizer's chat template (user turn, assistant turn); default when it has one
      "pair"    tokenizer(prompt, response) (BERT/DeBERTa-style pair encoding); default for bidirectional models
      "concat"  tokenizer(prompt + response); default otherwise
    mode: "auto" | "causal" | "prefix", see `prefix_scores`.
    """

    def __init__(self, model, tokenizer, *, mode: str = "auto", format: str = "auto", label_index: int | None = None,
                 batch_size: int = 8, max_batch_tokens: int = 4096):
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("the reward model's tokenizer must be a fast tokenizer (it needs character offsets)")
        if format not in INPUT_FORMATS:
            raise ValueError(f"format must be one of {INPUT_FORMATS}, got {format!r}")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.mode = resolve_mode(model, mode)
        if format == "auto":  # the format the model was trained on, when its config says (red-rlhf train-rm writes it)
            format = getattr(model.config, TRAINED_FORMAT_KEY, None) or (
                "chat" if getattr(tokenizer, "chat_template", None) else ("concat" if self.mode == "causal" else "pair"))
        self.format = format
        self.label_index, self.batch_size, self.max_batch_tokens = label_index, batch_size, max_batch_tokens
        self._reads_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> answer, while it lives

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, attn_implementation: str | None = None, **kwargs) -> "HFRewardModel":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
        model = AutoModelForSequenceClassification.from_pretrained(name_or_path, **extra)
        if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
            model.config.pad_token_id = tokenizer.pad_token_id
        return cls(model, tokenizer, **kwargs)

    def reads_policy_tokens(self, tokenizer) -> bool:
        """True when this reward model reads the policy's token ids exactly as they are, so the tensor path applies.

        Strict on purpose: a causal model (one pass gives every prefix score) fed the plain concatenation
        (format "concat"), a tokenizer with the same vocabulary (every token -> id, added tokens included), the
        same special tokens, and the same ids for probe texts with and without special tokens. Anything else
        (another tokenizer, a chat template, pair encoding, a bidirectional model) takes the text path.
        """
        # Keyed by the tokenizer itself, held weakly: an id() key outlives its tokenizer, and a new tokenizer at the
        # freed address would inherit the answer (another vocabulary read as this one's ids).
        try:
            answer = self._reads_cache.get(tokenizer)
        except TypeError:  # an object that cannot be weakly referenced: answered each time, not cached
            return self._reads(tokenizer)
        if answer is None:
            answer = self._reads_cache[tokenizer] = self._reads(tokenizer)
        return answer

    def _reads(self, tokenizer) -> bool:
        return self.mode == "causal" and self.format == "concat" and same_tokenizer(self.tokenizer, tokenizer)

    def score_tokens(self, batch: TokenBatch, need_attention: bool = False) -> PrefixScores:
        """Prefix scores on the policy's tokens: one forward over the policy's ids when `reads_policy_tokens`."""
        if not (batch.plain_prompts and self.reads_policy_tokens(batch.tokenizer)):
            return score_text_path(self, batch, need_attention)
        width = batch.prompt_ids.shape[1]  # left padding: the prompt's last token sits at width - 1 in every row
        device = next(self.model.parameters()).device
        ids = torch.cat([batch.prompt_ids, batch.response_ids], dim=1)  # (B, P + R)
        mask = torch.cat([batch.prompt_mask.long(), batch.response_mask.long()], dim=1)  # (B, P + R)
        scores, attention = [], []
        for lo in range(0, len(batch), self.batch_size):
            chunk_ids, chunk_mask = ids[lo: lo + self.batch_size].to(device), mask[lo: lo + self.batch_size].to(device)
            scores.append(prefix_scores(self.model, chunk_ids, chunk_mask, mode="causal", label_index=self.label_index).cpu())
            if need_attention:
                attention.append(pooled_attention(self.model, chunk_ids, chunk_mask).cpu())
        scores = torch.cat(scores).double()  # (B, P + R)
        response_mask = batch.response_mask.bool().cpu()
        tokens = torch.where(response_mask, scores[:, width:], 0.0)
        shares = torch.cat(attention).double()[:, width:] if need_attention else None
        return PrefixScores(scores[:, width - 1], tokens, None if shares is None else torch.where(response_mask, shares, 0.0))

    def _encode(self, prompt: str, response: str) -> _Encoded:
        tok = self.tokenizer
        if self.format == "pair":
            enc = tok(prompt, response, return_offsets_mapping=True)
            in_response = [sid == 1 for sid in enc.sequence_ids()]
            ends = [end for (_, end), r in zip(enc["offset_mapping"], in_response) if r]
        else:
            if self.format == "chat":
                head = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
                text = tok.apply_chat_template(
                    [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenize=False
                )
                if not text.startswith(head) or not text[len(head):].startswith(response):
                    raise ValueError(
                        "the reward model's chat template does not render the response right after the generation "
                        "prompt; use format='concat' or a template that does"
                    )
            else:
                head, text = prompt, prompt + response
            start, stop = len(head), len(head) + len(response)
            enc = tok(text, return_offsets_mapping=True, add_special_tokens=self.format != "chat")
            in_response = [e > start and s < stop and e > s for s, e in enc["offset_mapping"]]
            ends = [min(e, stop) - start for (s, e), r in zip(enc["offset_mapping"], in_response) if r]
            if any(s < start < e for s, e in enc["offset_mapping"]):
                # A token spans the prompt/response boundary (prompt "...was go", response "od fun"): the joint
                # encoding has no prefix that is the prompt, so R(x) is read from the prompt encoded alone.
                # The straddling token counts as the response's first: rows still sum to R(x, y) - R(x).
                alone = tok(head, add_special_tokens=self.format != "chat").input_ids
                return self._encoded(enc, in_response, ends, prompt, response, alone)
        return self._encoded(enc, in_response, ends, prompt, response, None)

    @staticmethod
    def _encoded(enc, in_response, ends, prompt, response, prompt_alone) -> _Encoded:
        index = [i for i, r in enumerate(in_response) if r]
        if not index:
            raise ValueError(f"the response {response!r} gives the reward model no tokens")
        if index != list(range(index[0], index[-1] + 1)):
            raise ValueError("the reward model's response tokens are not contiguous; check the input format")
        if index[0] == 0:
            raise ValueError(
                f"prompt {prompt[:40]!r} gives the reward model no token before the response, so R(x) cannot be "
                "read: give a non-empty prompt or use a tokenizer that adds a BOS token"
            )
        return _Encoded(list(enc["input_ids"]), enc.get("token_type_ids"), ends, index[0], index[-1], prompt_alone)

    def _batch_scores(self, rows: list[_Encoded], need_attention: bool):
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids, mask = pad_rows([r.input_ids for r in rows], pad)  # right padding; prefix_scores handles either side
        types = pad_rows([r.token_type_ids for r in rows], 0)[0] if rows[0].token_type_ids is not None else None
        device = next(self.model.parameters()).device
        ids, mask = ids.to(device), mask.to(device)
        tails = [len(r.input_ids) - 1 - r.last for r in rows] if self.mode == "prefix" else 0
        scores = prefix_scores(self.model, ids, mask, mode=self.mode, token_type_ids=None if types is None else types.to(device),
                               suffix_len=tails, label_index=self.label_index, max_batch_tokens=self.max_batch_tokens)
        attention = pooled_attention(self.model, ids, mask) if need_attention else None
        return scores.cpu(), None if attention is None else attention.cpu()

    def score_cuts(self, prompts, responses, cuts, need_attention=False):
        out = []
        for lo in range(0, len(prompts), self.batch_size):
            batch = list(zip(prompts[lo: lo + self.batch_size], responses[lo: lo + self.batch_size], cuts[lo: lo + self.batch_size], strict=True))
            rows = [self._encode(p, r) for p, r, _ in batch]
            scores, attention = self._batch_scores(rows, need_attention)
            straddling = [i for i, row in enumerate(rows) if row.prompt_alone is not None]
            alone = {}
            if straddling:  # R(x) of prompts whose last token the response continues: one more pass, those rows only
                pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
                values = sequence_scores(self.model, [rows[i].prompt_alone for i in straddling], pad,
                                         label_index=self.label_index)
                alone = dict(zip(straddling, values.tolist()))
            for i, (row, (_, response, row_cuts)) in enumerate(zip(rows, batch)):
                check_cuts(row_cuts, len(response))
                s = scores[i].tolist()
                rm_scores = s[row.first: row.last + 1]
                final = s[len(row.input_ids) - 1]  # where a causal classifier pools: the last real token
                prompt_score = alone.get(i, s[row.first - 1])
                shares = None
                if attention is not None:
                    shares = sums_between_cuts(row.response_ends, attention[i, row.first: row.last + 1].tolist(), row_cuts)
                out.append(CutScores(prompt_score, scores_at_cuts(row.response_ends, rm_scores, prompt_score, final,
                                                                  row_cuts), shares))
        return out
