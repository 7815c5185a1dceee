"""Prefix scores from Hugging Face sequence-classifier reward models.

`prefix_scores` returns, for every position t, the reward model's score of the sequence that ends at t:

- causal mode (decoder-only reward models: GPT-2, Llama, Qwen2, Mistral, ... *ForSequenceClassification):
  HF applies the score head to every position and keeps only the last non-pad one. Position t only sees
  tokens <= t, so a single forward pass gives every prefix score; we run the trunk once and keep the whole
  (B, T) row of head outputs. Position ids come from the attention mask, so left and right padding agree.
- prefix mode (bidirectional reward models: BERT, DeBERTa, ...): every position sees the future, so each
  prefix is run on its own, batched by length under a token budget. O(T^2) tokens, bounded memory.

`naive_prefix_scores` is the slow, obvious definition (one model call per prefix); tests hold both modes to it.
"""

from __future__ import annotations

import contextlib
import logging

import torch

from red_rlhf.config import SCORING_MODES
from red_rlhf.core.masks import pad_rows, position_ids

logger = logging.getLogger("red_rlhf")


def _is_bidirectional(model: torch.nn.Module) -> bool:
    """True unless every attention layer declares itself causal (HF modules carry an `is_causal` flag)."""
    flags = {m.is_causal for m in model.modules() if isinstance(getattr(m, "is_causal", None), bool)}
    return getattr(model.config, "is_encoder_decoder", False) or flags != {True}


def detect_mode(model: torch.nn.Module) -> str:
    """'causal' when every attention layer of the model is causal and it has a `score` head, else 'prefix'."""
    has_head = isinstance(getattr(model, "score", None), torch.nn.Module)
    return "causal" if has_head and not _is_bidirectional(model) else "prefix"


def resolve_mode(model: torch.nn.Module, mode: str) -> str:
    if mode not in SCORING_MODES:
        raise ValueError(f"mode must be one of {SCORING_MODES}, got {mode!r}")
    name = type(model).__name__
    if mode == "auto":
        chosen = detect_mode(model)
        logger.debug("prefix_scores: mode 'auto' chose %r for %s", chosen, name)
        return chosen
    if mode == "causal":
        if _is_bidirectional(model):
            raise ValueError(
                f"{name} is not a causal decoder (its attention sees later tokens), so one pass cannot give "
                "prefix scores: use mode='prefix' (or 'auto')"
            )
        if not isinstance(getattr(model, "score", None), torch.nn.Module):
            raise ValueError(f"causal mode reads the `score` head at every position, and {name} has none: use mode='prefix'")
    return mode


def _label_column(model: torch.nn.Module, label_index: int | None) -> int:
    num_labels = int(getattr(model.config, "num_labels", 1))
    if label_index is not None:
        if not 0 <= label_index < num_labels:
            raise ValueError(f"label_index {label_index} is out of range for a model with {num_labels} labels")
        return label_index
    if num_labels != 1:
        raise ValueError(
            f"the reward model has {num_labels} output labels; pass label_index= to say which one is the reward"
        )
    return 0


def max_context(model: torch.nn.Module) -> int | None:
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(model.config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _check_inputs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"input_ids and attention_mask must both be (B, T); got {tuple(input_ids.shape)} and "
            f"{tuple(attention_mask.shape)}"
        )
    if input_ids.is_floating_point() or input_ids.is_complex():
        raise ValueError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
    if attention_mask.dtype != torch.bool:
        odd = attention_mask[(attention_mask != 0) & (attention_mask != 1)]
        if odd.numel():
            raise ValueError(f"attention_mask must hold only 0 and 1 (or be bool), got values {odd.unique().tolist()[:5]}")
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    vocab = getattr(embeddings, "num_embeddings", None)
    if input_ids.numel() and vocab is not None:
        outside = (input_ids < 0) | (input_ids >= vocab)
        if outside.any():
            rows = outside.any(-1).nonzero().flatten().tolist()
            raise ValueError(f"input_ids of row(s) {rows[:8]} hold id(s) {input_ids[outside].unique().tolist()[:5]} "
                             f"outside the reward model's vocabulary of {vocab}: encode with the reward model's tokenizer")
    lengths = attention_mask.long().sum(-1)
    empty = (lengths == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"row(s) {empty} have no tokens (attention_mask is all zero)")
    limit = max_context(model)
    if limit is not None and int(lengths.max()) > limit:
        raise ValueError(
            f"a sequence of {int(lengths.max())} tokens is longer than the reward model's context of {limit}: "
            "shorten prompts/responses or truncate them"
        )


@contextlib.contextmanager
def _pad_token_id(model: torch.nn.Module, value: int | None):
    """Temporarily set the id HF pooling treats as padding (HF pools at the last token != pad_token_id)."""
    old = model.config.pad_token_id
    model.config.pad_token_id = value
    try:
        yield
    finally:
        model.config.pad_token_id = old


def trunk_hidden(model, input_ids, attention_mask) -> torch.Tensor:
    """The input of a decoder classifier's score head at every position, (B, T, H); right or left padding."""
    positions = position_ids(attention_mask)  # (B, T), 0 at the first real token
    return model.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions)[0]


def causal_scores(model, input_ids, attention_mask, column: int = 0) -> torch.Tensor:
    """The score head at every position of a decoder classifier, (B, T), with gradients (reward-model training)."""
    logits = model.score(trunk_hidden(model, input_ids, attention_mask))  # (B, T, num_labels)
    return logits[..., column].float()


def _model_scores(model, input_ids, attention_mask, token_type_ids, column: int) -> torch.Tensor:
    """The model's own pooled score for right-padded rows, (N,)."""
    last_tokens = input_ids.gather(1, (attention_mask.sum(-1, keepdim=True) - 1)).flatten().tolist()
    fill = next(i for i in range(len(last_tokens) + 1) if i not in set(last_tokens))
    input_ids = torch.where(attention_mask.bool(), input_ids, fill)
    kwargs = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
    # HF pools decoder classifiers at the last token != pad_token_id; a fill id that ends no row keeps a real
    # EOS equal to the tokenizer's pad id from being skipped (trl#3750).
    with _pad_token_id(model, fill):
        logits = model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits  # (N, num_labels)
    return logits[:, column].float()


@torch.no_grad()
def sequence_scores(model, rows: list[list[int]], pad: int, *, label_index: int | None = None) -> torch.Tensor:
    """The model's own pooled score of each whole sequence (token id lists, unpadded), (N,) float32."""
    device = next(model.parameters()).device
    ids, mask = pad_rows(rows, pad, device=device)
    return _model_scores(model, ids, mask, None, _label_column(model, label_index)).cpu()


def _suffix_lengths(suffix_len: int | list[int], attention_mask: torch.Tensor) -> list[int]:
    lengths = [suffix_len] * attention_mask.shape[0] if isinstance(suffix_len, int) else list(suffix_len)
    if len(lengths) != attention_mask.shape[0] or any(n < 0 for n in lengths):
        raise ValueError(f"suffix_len must be an int >= 0 or one per row, got {suffix_len}")
    return lengths


def _prefix_index_lists(attention_mask: torch.Tensor, suffix_len: list[int]) -> list[tuple[int, int, list[int]]]:
    """(row, position, token indices) of every prefix; a row's suffix tokens are appended to each prefix."""
    prefixes = []
    for b in range(attention_mask.shape[0]):
        valid = attention_mask[b].nonzero().flatten().tolist()
        n = suffix_len[b]
        if n >= len(valid):
            raise ValueError(f"row {b} has {len(valid)} tokens, not more than its suffix_len={n}")
        body, suffix = valid[: len(valid) - n], valid[len(valid) - n :]
        for j, position in enumerate(body):
            prefixes.append((b, position, body[: j + 1] + suffix))
    return prefixes


def _fill_suffix(scores: torch.Tensor, attention_mask: torch.Tensor, suffix_len: list[int]) -> None:
    """Suffix positions (a trailing [SEP], an end-of-turn) hold the full sequence's score, in place."""
    for b, n in enumerate(suffix_len):
        if n:
            valid = attention_mask[b].nonzero().flatten()
            scores[b, valid[-n:]] = scores[b, valid[-n - 1]].item()


@torch.no_grad()
def _per_prefix_scores(model, input_ids, attention_mask, token_type_ids, column, suffix_len, max_batch_tokens):
    scores = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    prefixes = sorted(_prefix_index_lists(attention_mask, suffix_len), key=lambda p: len(p[2]))
    start = 0
    while start < len(prefixes):
        stop, real = start + 1, len(prefixes[start][2])
        # Sorted by length, a chunk is as wide as its last prefix. Grow it while it stays under the token budget
        # and at least 80% of its tokens are real: padding short prefixes to a long width wastes compute.
        while stop < len(prefixes):
            width, count = len(prefixes[stop][2]), stop - start + 1
            if count * width > max_batch_tokens or real + width < 0.8 * count * width:
                break
            real += width
            stop += 1
        chunk = prefixes[start:stop]
        index, mask = pad_rows([idx for _, _, idx in chunk], 0, device=input_ids.device)  # (N, W) token indices
        rows = torch.tensor([b for b, _, _ in chunk], device=input_ids.device)
        ids = input_ids[rows.unsqueeze(1), index]  # (N, W), right-padded
        types = None if token_type_ids is None else token_type_ids[rows.unsqueeze(1), index] * mask
        values = _model_scores(model, ids, mask, types, column)  # (N,)
        for (b, position, _), value in zip(chunk, values):
            scores[b, position] = value
        start = stop
    _fill_suffix(scores, attention_mask, suffix_len)
    return scores


def prefix_scores(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    mode: str = "auto",
    token_type_ids: torch.Tensor | None = None,
    suffix_len: int | list[int] = 0,
    label_index: int | None = None,
    max_batch_tokens: int = 4096,
) -> torch.Tensor:
    """The reward model's score of the prefix ending at each position: (B, T) float32, 0 at padding.

    mode: "causal" (one pass; decoder classifiers), "prefix" (one pass per prefix; any classifier) or
        "auto" (causal when the architecture allows it; the choice is logged at DEBUG on logger "red_rlhf").
        "causal" on a bidirectional model is an error: it would read scores that saw the future.
    token_type_ids: (B, T), for BERT-style pair encodings; sliced with each prefix (prefix mode).
    suffix_len: prefix mode only: the last `suffix_len` tokens of each row (an int, or one per row: a
        trailing [SEP] or a chat template's end-of-turn) are appended to every prefix, as the model saw them
        in training; those positions hold the full sequence's score.
    label_index: which output is the reward when the model has several labels.
    max_batch_tokens: prefix mode: at most this many tokens (prefixes x width) in one forward pass.

    The reward model is frozen: this runs under torch.no_grad().
    """
    _check_inputs(model, input_ids, attention_mask)
    mode = resolve_mode(model, mode)
    column = _label_column(model, label_index)
    suffix_len = _suffix_lengths(suffix_len, attention_mask)
    if mode == "causal":
        if any(suffix_len):
            raise ValueError("suffix_len applies to prefix mode only: in causal mode position t reads tokens <= t")
        with torch.no_grad():
            scores = causal_scores(model, input_ids, attention_mask, column)
    else:
        scores = _per_prefix_scores(
            model, input_ids, attention_mask, token_type_ids, column, suffix_len, max(1, max_batch_tokens)
        )
    return torch.where(attention_mask.bool(), scores, torch.zeros_like(scores))


@torch.no_grad()
def naive_prefix_scores(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    token_type_ids: torch.Tensor | None = None,
    suffix_len: int | list[int] = 0,
    label_index: int | None = None,
) -> torch.Tensor:
    """The definition, slowly: one unpadded model call per prefix, read from the model's own pooled output."""
    column = _label_column(model, label_index)
    suffix_len = _suffix_lengths(suffix_len, attention_mask)
    scores = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    for b, position, idx in _prefix_index_lists(attention_mask, suffix_len):
        kwargs = {} if token_type_ids is None else {"token_type_ids": token_type_ids[b, idx].unsqueeze(0)}
        with _pad_token_id(model, None):  # one unpadded row: HF then pools at its last token
            logits = model(input_ids=input_ids[b, idx].unsqueeze(0), **kwargs).logits  # (1, num_labels)
        scores[b, position] = logits[0, column].float()
    _fill_suffix(scores, attention_mask, suffix_len)
    return scores


@torch.no_grad()
def pooled_attention(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Last-layer attention from the position the model reads its score at, heads averaged: (B, T).

    Causal models read the last real token, bidirectional ones the first (CLS). Needs eager attention: load
    the reward model with attn_implementation="eager" (or call model.set_attn_implementation("eager")).
    """
    _check_inputs(model, input_ids, attention_mask)
    kwargs = {}
    if not _is_bidirectional(model):
        kwargs["position_ids"] = position_ids(attention_mask)
    out = model.base_model(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True, **kwargs)
    if not out.attentions:
        raise ValueError(
            f"{type(model).__name__} returned no attention weights; ABC needs eager attention: load the reward "
            "model with attn_implementation='eager'"
        )
    last_layer = out.attentions[-1].float().mean(1)  # (B, T, T): heads averaged
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(attention_mask)
    if _is_bidirectional(model):
        query = torch.where(attention_mask.bool(), positions, input_ids.shape[1]).min(-1).values
    else:
        query = torch.where(attention_mask.bool(), positions, -1).max(-1).values
    rows = last_layer[torch.arange(input_ids.shape[0]), query]  # (B, T)
    return torch.where(attention_mask.bool(), rows, torch.zeros_like(rows))
