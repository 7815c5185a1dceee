"""Policy token ids -> response text and where each token ends in it, in one pass (linear in length).

The text path of scoring (a reward model with another tokenizer, a python function) needs each response as text
and the character position where each policy token ends ("cuts"). Decoding every prefix would cost O(T^2) and
breaks on decoders that rewrite spaces (SentencePiece drops the leading space of a sequence's first token). Here
each token's text is what it adds to the decode of the few tokens before it (the prompt's last tokens at first),
as streaming detokenizers do, so a token's leading space is kept, and a token that ends inside a multi-byte
character adds nothing until the character is complete (its bytes' text goes to the token that completes it).
"""

from __future__ import annotations

from collections.abc import Sequence

CONTEXT_TOKENS = 6  # tokens of left context decoded with each new token
INCOMPLETE = "\ufffd"  # what decoders give for the bytes of an unfinished UTF-8 character


def _decode(tokenizer, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def response_text(tokenizer, prompt_ids: Sequence[int], response_ids: Sequence[int]) -> tuple[str, list[int]]:
    """(text, cuts): the response's text as it continues the prompt, and the end of each token in that text.

    prompt_ids: the prompt's real tokens (no padding), as left context; response_ids: the response's real tokens.
    cuts is non-decreasing, one per response token; cuts[-1] == len(text).
    """
    ids = list(prompt_ids[-CONTEXT_TOKENS:]) + list(response_ids)
    first = len(ids) - len(response_ids)  # index of the first response token in ids
    text, cuts = "", []
    done = first  # tokens whose text is already out (the context counts as out)
    for t in range(first, len(ids)):
        start = max(0, done - CONTEXT_TOKENS)
        before = _decode(tokenizer, ids[start:done])
        after = _decode(tokenizer, ids[start:t + 1])
        if after.endswith(INCOMPLETE) or not after.startswith(before):
            cuts.append(len(text))  # an unfinished character (or a decode that is not yet stable): wait for more
            continue
        text += after[len(before):]
        done = t + 1
        cuts.append(len(text))
    if done < len(ids):  # the response ends inside a character: keep what the decoder gives for it
        start = max(0, done - CONTEXT_TOKENS)
        text += _decode(tokenizer, ids[start:])[len(_decode(tokenizer, ids[start:done])):]
        cuts[-1] = len(text)
    return text, cuts


def response_texts(tokenizer, prompt_ids, prompt_mask, response_ids, response_mask) -> tuple[list[str], list[list[int]]]:
    """`response_text` for a batch: prompts left-padded (B, P), responses right-padded (B, R); masks from lengths."""
    texts, cuts = [], []
    for p_ids, p_mask, r_ids, r_mask in zip(prompt_ids.tolist(), prompt_mask.tolist(), response_ids.tolist(),
                                            response_mask.tolist()):
        text, row = response_text(tokenizer, [i for i, m in zip(p_ids, p_mask) if m], [i for i, m in zip(r_ids, r_mask) if m])
        texts.append(text)
        cuts.append(row)
    return texts, cuts
