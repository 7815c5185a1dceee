"""Bradley-Terry reward-model training on preference pairs (prompt, chosen, rejected).

The model is a causal decoder with a score head (any HF *ForSequenceClassification over a decoder), so RED can
later read every prefix score in one pass. Loss, by default as the RED paper's reward models are trained
(holistic): -log sigmoid(R(x, chosen) - R(x, rejected)) on the final scores. With `all_positions`, also every
position after the two responses diverge, as DeepSpeed-Chat and safe-rlhf do, which makes prefix scores more
meaningful as partial-response scores.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from red_rlhf.core.masks import pad_rows
from red_rlhf.data.jsonl import read_records
from red_rlhf.models.prefix import causal_scores, trunk_hidden
from red_rlhf.models.sources import TRAINED_FORMAT_KEY


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

    from transformers.utils import logging as hf_logging

    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the new head is "missing" from the checkpoint by design: no load report
    try:
        model = AutoModelForSequenceClassification.from_pretrained(name_or_path, num_labels=1)
    finally:
        hf_logging.set_verbosity(level)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _blocks(model) -> torch.nn.ModuleList:
    """The transformer blocks of a decoder classifier (Llama-style `layers` or GPT-2-style `h`)."""
    trunk = model.base_model
    for name in ("layers", "h"):
        if isinstance(getattr(trunk, name, None), torch.nn.ModuleList):
            return getattr(trunk, name)
    raise ValueError(f"cannot find the transformer blocks of {type(trunk).__name__}")


def keep_first_layers(model, layers: int) -> None:
    """Cut a decoder classifier to its first `layers` blocks; the final norm and the score head stay.

    Middle layers of a small language model often carry a judgement as well as its last ones do (on the demo's
    sentiment pairs, SmolLM2-135M's block 20 of 30 was among the best for a linear score head), and a shorter trunk
    is cheaper to score with and to copy as a critic. The cut model saves and loads as an ordinary HF model.
    """
    blocks = _blocks(model)
    if not 0 < layers <= len(blocks):
        raise ValueError(f"keep_first_layers: the model has {len(blocks)} blocks, cannot keep {layers}")
    del blocks[layers:]
    config = model.config
    for key in ("num_hidden_layers", "n_layer"):
        if hasattr(config, key):
            setattr(config, key, layers)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:layers]


def train_only_last_layers(model, layers: int) -> None:
    """Freeze a decoder classifier except its last `layers` blocks, final norm and score head.

    Backpropagation then stops at the first trainable block: a fraction of the cost of full training, and
    pretrained features stay as they are.
    """
    trunk = model.base_model
    blocks = _blocks(model)
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
    for side, rows in encoded.items():  # both sides padded to one width
        out[f"{side}_ids"], out[f"{side}_mask"] = pad_rows(rows, pad, width=longest)
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


FEATURE_BATCH = 32  # pairs per no-grad pass of the trunk in head_features


def score_head_ticks(n_train: int, n_held_out: int, iterations: int) -> int:
    """How many times `train_score_head` calls on_step: one per feature batch, one per fitting iteration."""
    return -(-n_train // FEATURE_BATCH) + -(-n_held_out // FEATURE_BATCH) + iterations


@torch.no_grad()
def head_features(model, tokenizer, pairs: list[PreferencePair], max_length: int, all_positions: bool = False,
                  batch_size: int = FEATURE_BATCH, on_batch=None) -> dict[str, torch.Tensor]:
    """Inputs of the score head for the pairs, from one no-grad pass of the (frozen) trunk.

    chosen / rejected: (N, H) at each side's last token; with `all_positions` also chosen_all / rejected_all:
    (M, H) at the aligned positions after the two sides diverge (`divergence_mask`). Pairs are batched by length so
    little of each pass is padding; the order of the rows is not the order of `pairs`.
    """
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i].prompt) + max(len(pairs[i].chosen), len(pairs[i].rejected)))
    out: dict[str, list[torch.Tensor]] = {"chosen": [], "rejected": [], "chosen_all": [], "rejected_all": []}
    for lo in range(0, len(order), batch_size):
        batch = encode_pairs(tokenizer, [pairs[i] for i in order[lo: lo + batch_size]], max_length)
        hidden = {side: trunk_hidden(model, batch[f"{side}_ids"], batch[f"{side}_mask"]).float()
                  for side in ("chosen", "rejected")}
        rows = torch.arange(len(hidden["chosen"]))
        for side in ("chosen", "rejected"):
            out[side].append(hidden[side][rows, batch[f"{side}_mask"].sum(-1) - 1])
        if all_positions:
            mask = divergence_mask(batch["chosen_ids"], batch["chosen_mask"], batch["rejected_ids"], batch["rejected_mask"])
            out["chosen_all"].append(hidden["chosen"][mask])
            out["rejected_all"].append(hidden["rejected"][mask])
        if on_batch is not None:
            on_batch()
    return {key: torch.cat(rows) for key, rows in out.items() if rows}


def train_score_head(model, tokenizer, train: list[PreferencePair], held_out: list[PreferencePair], *,
                     all_positions: bool = False, weight_decay: float = 0.03, iterations: int = 400, lr: float = 1e-2,
                     max_length: int = 256, on_step=None) -> dict[str, float]:
    """Bradley-Terry on the score head alone: the trunk stays frozen, so its features are computed once.

    A linear head on a pretrained trunk's features (a probe) is minutes cheaper than training the trunk and, with
    few pairs, often generalises better. The head is fitted full-batch with Adam on per-feature standardised
    inputs with an L2 penalty `weight_decay` on the standardised weights, then folded back into `model.score`
    (a constant offset cancels in every preference and every RED difference, so none is stored). Same result
    keys as `train_reward_model`. `on_step()` is called after each feature batch and each fitting iteration.
    """
    if not train:
        raise ValueError("no training pairs")
    head = model.score
    if head.weight.shape[0] != 1:
        raise ValueError(f"train_score_head fits a one-output score head, this one has {head.weight.shape[0]} outputs")
    tick = on_step or (lambda: None)
    model.eval()
    feats = head_features(model, tokenizer, train, max_length, all_positions, on_batch=tick)
    held = head_features(model, tokenizer, held_out, max_length, on_batch=tick) if held_out else None

    def accuracy(weight: torch.Tensor) -> float:
        return math.nan if held is None else ((held["chosen"] - held["rejected"]) @ weight > 0).float().mean().item()

    before = accuracy(head.weight[0].detach().float())
    scale = torch.cat([feats["chosen"], feats["rejected"]]).std(0) + 1e-4  # (H,)
    diff = (feats["chosen"] - feats["rejected"]) / scale
    diff_all = (feats["chosen_all"] - feats["rejected_all"]) / scale if all_positions and len(feats["chosen_all"]) else None
    weight = torch.zeros_like(scale, requires_grad=True)
    optimizer = torch.optim.Adam([weight], lr=lr)
    for _ in range(iterations):
        loss = -F.logsigmoid(diff @ weight).mean()
        if diff_all is not None:  # as pair_loss: half final scores, half every aligned position after divergence
            loss = 0.5 * loss - 0.5 * F.logsigmoid(diff_all @ weight).mean()
        optimizer.zero_grad(set_to_none=True)
        (loss + weight_decay * weight.square().sum()).backward()
        optimizer.step()
        tick()
    folded = (weight.detach() / scale).to(head.weight.dtype)
    head.weight.data[0] = folded
    return {"accuracy_before": before, "accuracy_after": accuracy(folded.float()), "last_loss": loss.item()}


def fit_reward_model(model, tokenizer, train: list[PreferencePair], held_out: list[PreferencePair], *,
                     head_only: bool, all_positions: bool, max_length: int, seed: int = 0, epochs: int = 1,
                     lr: float = 1e-5, batch_size: int = 8, weight_decay: float = 0.03,
                     head_iterations: int = 400) -> dict[str, float]:
    """Bradley-Terry training with a progress bar: the score head alone on frozen features (`train_score_head`),
    or the trainable weights (`train_reward_model`). The one entry point of `red-rlhf train-rm` and the demo."""
    from red_rlhf.progress import Progress  # plain lines when output is not a terminal

    with Progress() as bar:
        if head_only:
            task = bar.add_task(f"reward model: features of {len(train)} + {len(held_out)} pairs, then the score head",
                                total=score_head_ticks(len(train), len(held_out), head_iterations))
            return train_score_head(model, tokenizer, train, held_out, all_positions=all_positions,
                                    weight_decay=weight_decay, iterations=head_iterations, max_length=max_length,
                                    on_step=lambda: bar.update(task, advance=1))
        task = bar.add_task(f"reward model ({len(train)} pairs)", total=epochs * -(-len(train) // batch_size))
        return train_reward_model(model, tokenizer, train, held_out, epochs=epochs, lr=lr, batch_size=batch_size,
                                  max_length=max_length, all_positions=all_positions, seed=seed,
                                  on_step=lambda loss: bar.update(task, advance=1,
                                                                  description=f"reward model  loss {loss:.3f}"))


def save_reward_model(model, tokenizer, out: str | Path, metrics: dict) -> Path:
    """The model and tokenizer (from_pretrained loads them), then rm_metrics.json, written last: it marks a
    finished reward model (the demo's cache trusts a folder only when it is there).

    The config records that the model was trained on plain concatenations (`encode_pairs`: prompt + response +
    EOS, no chat template), so `HFRewardModel` scores it the same way by default ("concat"; with the policy's
    tokenizer that is also the one-forward tensor path), even when its tokenizer has a chat template."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    setattr(model.config, TRAINED_FORMAT_KEY, "concat")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "rm_metrics.json").write_text(json.dumps(metrics, indent=2))
    return out
