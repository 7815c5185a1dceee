"""Reward sources: anything that scores the prefixes of a response.

A source implements `score_cuts(prompts, responses, cuts, need_attention=False) -> list[CutScores]`:
for each response, the score of the prompt alone, the score of prompt + response[:c] for every cut c
(policy token ends, in response characters) where the last one is the full response's score as the
reward model reads it, and optionally ABC attention shares per policy token.

- `HFRewardModel`: any Hugging Face sequence classifier (causal single pass or bidirectional per-prefix).
- `FunctionReward`: a python function text -> float, called once per prefix.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from red_rlhf.core.alignment import check_cuts, scores_at_cuts, sums_between_cuts
from red_rlhf.core.redistribute import token_rewards
from red_rlhf.models.prefix import pooled_attention, prefix_scores, resolve_mode

FORMATS = ("auto", "chat", "concat", "pair")


@dataclass
class CutScores:
    prompt_score: float  # R(x): the score of the prompt alone
    scores: list[float]  # score after each policy token; the last is R(x, y)
    attention: list[float] | None = None  # ABC: the reward model's attention summed per policy token


class RewardSource(Protocol):
    def score_cuts(
        self, prompts: Sequence[str], responses: Sequence[str], cuts: Sequence[Sequence[int]], need_attention: bool = False
    ) -> list[CutScores]: ...


def _finite(value: float, what: str) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"the reward is {value} for {what}: rewards must be finite numbers")
    return value


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
        value = self.fn(prompt, prefix) if self.takes_prompt else self.fn(prompt + prefix)
        return _finite(value, f"{self.name} on prompt {prompt[:40]!r} + response prefix {prefix[-40:]!r}")

    def score_cuts(self, prompts, responses, cuts, need_attention=False):
        if need_attention:
            raise ValueError("scheme 'abc' needs a reward model's attention; a python function has none")
        out = []
        for prompt, response, row_cuts in zip(prompts, responses, cuts, strict=True):
            check_cuts(row_cuts, len(response))
            out.append(CutScores(self._call(prompt, ""), [self._call(prompt, response[:c]) for c in row_cuts]))
        return out


@dataclass
class _Encoded:
    input_ids: list[int]
    token_type_ids: list[int] | None
    response_ends: list[int]  # end (in response characters) of each reward-model response token
    first: int  # index of the first response token
    last: int  # index of the last response token


class HFRewardModel:
    """A Hugging Face *ForSequenceClassification reward model and its (fast) tokenizer.

    format: how prompt and response become the reward model's input:
      "chat"    the tokenizer's chat template (user turn, assistant turn); default when it has one
      "pair"    tokenizer(prompt, response) (BERT/DeBERTa-style pair encoding); default for bidirectional models
      "concat"  tokenizer(prompt + response); default otherwise
    mode: "auto" | "causal" | "prefix", see `prefix_scores`.
    """

    def __init__(self, model, tokenizer, *, mode: str = "auto", format: str = "auto", label_index: int | None = None,
                 batch_size: int = 8, max_batch_tokens: int = 4096):
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("the reward model's tokenizer must be a fast tokenizer (it needs character offsets)")
        if format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.mode = resolve_mode(model, mode)
        if format == "auto":
            format = "chat" if getattr(tokenizer, "chat_template", None) else ("concat" if self.mode == "causal" else "pair")
        self.format = format
        self.label_index, self.batch_size, self.max_batch_tokens = label_index, batch_size, max_batch_tokens

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, attn_implementation: str | None = None, **kwargs) -> "HFRewardModel":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
        model = AutoModelForSequenceClassification.from_pretrained(name_or_path, **extra)
        if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
            model.config.pad_token_id = tokenizer.pad_token_id
        return cls(model, tokenizer, **kwargs)

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
        return _Encoded(list(enc["input_ids"]), enc.get("token_type_ids"), ends, index[0], index[-1])

    def _batch_scores(self, rows: list[_Encoded], need_attention: bool):
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        width = max(len(r.input_ids) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        types = torch.zeros((len(rows), width), dtype=torch.long) if rows[0].token_type_ids is not None else None
        for i, r in enumerate(rows):  # right padding; prefix_scores handles either side
            ids[i, : len(r.input_ids)] = torch.tensor(r.input_ids)
            mask[i, : len(r.input_ids)] = 1
            if types is not None:
                types[i, : len(r.input_ids)] = torch.tensor(r.token_type_ids)
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
            for i, (row, (_, response, row_cuts)) in enumerate(zip(rows, batch)):
                check_cuts(row_cuts, len(response))
                s = scores[i].tolist()
                rm_scores = s[row.first: row.last + 1]
                final = s[len(row.input_ids) - 1]  # where a causal classifier pools: the last real token
                for value in rm_scores + [final, s[row.first - 1]]:
                    _finite(value, f"response {response[:40]!r}")
                shares = None
                if attention is not None:
                    shares = sums_between_cuts(row.response_ends, attention[i, row.first: row.last + 1].tolist(), row_cuts)
                out.append(CutScores(s[row.first - 1], scores_at_cuts(row.response_ends, rm_scores, s[row.first - 1], final, row_cuts), shares))
        return out


def place_rewards(scored: list[CutScores], width: int, scheme: str, *, beta_c: float = 1.0,
                  first_token: str = "difference", abc_beta: float = 0.5, shift: float = 0.0,
                  scale: float = 1.0, clip: float | None = None, dtype: torch.dtype = torch.float32
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rewards (B, width) on right-padded response positions, and the final scores R(x, y) (B,).

    Rows are laid out as [prompt score | response prefix scores | padding] and placed by `token_rewards`.
    Normalisation (s - shift) / scale and clipping act on every prefix score s_t alike, before placement,
    so RED rewards still telescope to the normalised R(x, y) - R(x).
    """
    scores = torch.zeros(len(scored), 1 + width, dtype=torch.float64)
    mask = torch.zeros(len(scored), 1 + width, dtype=torch.bool)
    attention = torch.zeros_like(scores) if scheme == "abc" else None
    for i, cs in enumerate(scored):
        n = len(cs.scores)
        scores[i, 0], scores[i, 1: n + 1], mask[i, 1: n + 1] = cs.prompt_score, torch.tensor(cs.scores, dtype=torch.float64), True
        if attention is not None:
            attention[i, 1: n + 1] = torch.tensor(cs.attention, dtype=torch.float64)
    scores = (scores - shift) / scale
    if clip is not None:
        scores = scores.clamp(-clip, clip)
    scores = torch.where(mask | (torch.arange(1 + width) == 0), scores, torch.zeros_like(scores))
    rewards = token_rewards(scheme, scores, mask, beta_c=beta_c, first_token=first_token, attention=attention, abc_beta=abc_beta)
    final = torch.tensor([cs.scores[-1] for cs in scored], dtype=torch.float64)
    return rewards[:, 1:].to(dtype), final.to(dtype)
