"""Bradley-Terry reward-model training on preference pairs (prompt, chosen, rejected).

The model is a causal decoder with a score head (any HF *ForSequenceClassification over a decoder), so RED can
later read every prefix score in one pass. Loss, by default as the RED paper's reward models are trained
(holistic): -log sigmoid(R(x, chosen) - R(x, rejected)) on the final scores. With `all_positions`, also every
position after the two responses diverge, as DeepSpeed-Chat and safe-rlhf do, which makes prefix scores more
meaningful as partial-response scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from red_rlhf.jsonl import read_records
from red_rlhf.scoring import causal_scores


@dataclass
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str


def read_pairs(path: str | Path) -> list[PreferencePair]:
    """Pairs from a JSON-lines file with string fields prompt, chosen, rejected."""
    pairs = []
    for number, record in enumerate(read_records(path, ("prompt", "chosen", "rejected")), start=1):
        if not record["chosen"].strip() or not record["rejected"].strip():
            raise ValueError(f"{path}, record {number}: empty chosen or rejected response")
        pairs.append(PreferencePair(record["prompt"], record["chosen"], record["rejected"]))
    return pairs


def load_backbone(name_or_path: str):
    """(model, tokenizer): an HF decoder with a new one-output score head; the pad token falls back to EOS."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    model = AutoModelForSequenceClassification.from_pretrained(name_or_path, num_labels=1)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def train_only_last_layers(model, layers: int) -> None:
    """Freeze a decoder classifier except its last `layers` blocks, final norm and score head.

    Backpropagation then stops at the first trainable block: a fraction of the cost of full training, and
    pretrained features stay as they are.
    """
    trunk = model.base_model
    blocks = getattr(trunk, "layers", None)
    if blocks is None:
        blocks = getattr(trunk, "h", None)
    if blocks is None:
        raise ValueError(f"cannot find the transformer blocks of {type(trunk).__name__} to freeze")
    model.requires_grad_(False)
    for block in list(blocks)[-layers:] if layers > 0 else []:
        block.requires_grad_(True)
    for name in ("norm", "ln_f"):
        if isinstance(getattr(trunk, name, None), torch.nn.Module):
            getattr(trunk, name).requires_grad_(True)
    model.score.requires_grad_(True)


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(chosen - rejected), averaged: (N,) scores -> scalar."""
    return -F.logsigmoid(chosen - rejected).mean()


def divergence_mask(chosen_ids, chosen_mask, rejected_ids, rejected_mask) -> torch.Tensor:
    """(N, T) True at positions from the first differing token up to the shorter sequence's last token.

    Right-padded inputs of the same width. Both sequences share the prompt, so before the divergence the two
    prefix scores are equal and carry no preference.
    """
    both = chosen_mask.bool() & rejected_mask.bool()
    differs = (chosen_ids != rejected_ids) & both
    positions = torch.arange(chosen_ids.shape[1], device=chosen_ids.device).expand_as(chosen_ids)
    first = torch.where(differs, positions, chosen_ids.shape[1]).min(-1).values  # (N,)
    return both & (positions >= first.unsqueeze(1))


def pair_loss(model, batch: dict, all_positions: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and (N,) final-score margins chosen - rejected for one batch from `encode_pairs`."""
    c = causal_scores(model, batch["chosen_ids"], batch["chosen_mask"])  # (N, T) with gradients
    r = causal_scores(model, batch["rejected_ids"], batch["rejected_mask"])
    rows = torch.arange(c.shape[0])
    c_final = c[rows, batch["chosen_mask"].sum(-1) - 1]
    r_final = r[rows, batch["rejected_mask"].sum(-1) - 1]
    loss = bradley_terry_loss(c_final, r_final)
    if all_positions:
        mask = divergence_mask(batch["chosen_ids"], batch["chosen_mask"], batch["rejected_ids"], batch["rejected_mask"])
        if mask.any():
            loss = 0.5 * loss + 0.5 * bradley_terry_loss(c[mask], r[mask])
    return loss, (c_final - r_final).detach()


def encode_pairs(tokenizer, pairs: list[PreferencePair], max_length: int) -> dict:
    """Right-padded ids/masks of prompt + response + EOS for both sides, padded to one width."""
    eos = tokenizer.eos_token or ""
    texts = {"chosen": [p.prompt + p.chosen + eos for p in pairs], "rejected": [p.prompt + p.rejected + eos for p in pairs]}
    encoded = {side: [tokenizer(t).input_ids for t in batch] for side, batch in texts.items()}
    longest = max(len(ids) for side in encoded.values() for ids in side)
    if longest > max_length:
        raise ValueError(f"a pair has {longest} tokens, more than max_length={max_length}: raise it or shorten the data")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = {}
    for side, rows in encoded.items():
        ids = torch.full((len(rows), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
        out[f"{side}_ids"], out[f"{side}_mask"] = ids, mask
    return out


@torch.no_grad()
def pairwise_accuracy(model, tokenizer, pairs: list[PreferencePair], max_length: int, batch_size: int = 16) -> float:
    """Share of pairs whose chosen response scores higher than the rejected one."""
    wins = 0
    for lo in range(0, len(pairs), batch_size):
        batch = encode_pairs(tokenizer, pairs[lo: lo + batch_size], max_length)
        _, margins = pair_loss(model, batch, all_positions=False)
        wins += int((margins > 0).sum())
    return wins / len(pairs)


def train_reward_model(model, tokenizer, train: list[PreferencePair], held_out: list[PreferencePair], *, epochs: int = 1,
                       lr: float = 1e-4, batch_size: int = 8, max_length: int = 256, all_positions: bool = False,
                       seed: int = 0, on_step=None) -> dict[str, float]:
    """Train in place with AdamW; returns held-out accuracy before and after, and the last loss."""
    if not train:
        raise ValueError("no training pairs")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.eval()  # no dropout: scores must not depend on the pass
    before = pairwise_accuracy(model, tokenizer, held_out, max_length) if held_out else math.nan
    loss = torch.tensor(math.nan)
    for _ in range(epochs):
        order = torch.randperm(len(train), generator=generator).tolist()
        for lo in range(0, len(order), batch_size):
            batch = encode_pairs(tokenizer, [train[i] for i in order[lo: lo + batch_size]], max_length)
            loss, _ = pair_loss(model, batch, all_positions)
            if not torch.isfinite(loss):
                raise ValueError("the reward-model loss became NaN or infinite: lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            if on_step is not None:
                on_step(loss.item())
    after = pairwise_accuracy(model, tokenizer, held_out, max_length) if held_out else math.nan
    return {"accuracy_before": before, "accuracy_after": after, "last_loss": loss.item()}
