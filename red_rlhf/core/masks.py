"""Padding and positions: lists of token ids -> padded (B, T) tensors, and position ids from a mask. Pure torch.

Masks always come from lengths, never from `ids != pad_id`, so a pad id equal to the EOS id keeps the real EOS.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pad_rows(rows: Sequence[Sequence[int]], pad: int, *, side: str = "right", width: int | None = None,
             device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), each (B, width) long: the rows padded on `side` ("left" or "right") with `pad`; mask 1 on real
    tokens. width defaults to the longest row."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    width = max((len(r) for r in rows), default=0) if width is None else width
    if any(len(r) > width for r in rows):
        raise ValueError(f"a row of {max(len(r) for r in rows)} tokens does not fit width {width}")
    ids = torch.full((len(rows), width), pad, dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for i, row in enumerate(rows):
        if not len(row):
            continue
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span] = torch.as_tensor(list(row), dtype=torch.long, device=device)
        mask[i, span] = 1
    return ids, mask


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T): 0 at each row's first real token, counting real tokens only (left padding does not shift positions)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
