"""Rollouts: prompts -> sampled responses, masks and log-probs.

B rollouts; P prompt positions, left-padded (so every response starts at position P); R response positions,
right-padded. Masks are built from lengths (the first EOS ends a response), never from `ids != pad_id`, so a
tokenizer whose pad id equals its EOS id keeps the real EOS.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, fields

import torch

from red_rlhf.config import ConfigError
from red_rlhf.core.masks import pad_rows, position_ids
from red_rlhf.models.sources import TokenBatch


@dataclass
class Rollout:
    prompts: list[str]  # raw prompt texts, B
    prompt_ids: torch.Tensor  # (B, P) left-padded
    prompt_mask: torch.Tensor  # (B, P) long
    response_ids: torch.Tensor  # (B, R) right-padded with the pad id
    response_mask: torch.Tensor  # (B, R) bool, True on response tokens, EOS included
    ended: torch.Tensor  # (B,) bool, the response ends with EOS (False: cut at max_new_tokens)
    logprobs: torch.Tensor  # (B, R) log-probs of the sampling policy (temperature applied)
    ref_logprobs: torch.Tensor  # (B, R) reference model, same temperature
    values: torch.Tensor | None = None  # (B, R) critic values V(prompt + response[:t]), PPO only
    group_ids: torch.Tensor | None = None  # (B,) long: rows sampled from the same prompt share an id (rloo, grpo)

    def __len__(self) -> int:
        return len(self.prompts)

    def select(self, index: torch.Tensor | list[int]) -> "Rollout":
        """The rows `index`, all tensors sliced alike."""
        index = torch.as_tensor(index, dtype=torch.long)
        picked = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "prompts":
                picked[f.name] = [value[i] for i in index.tolist()]
            elif value is not None:
                picked[f.name] = value[index.to(value.device)]
            else:
                picked[f.name] = None
        return Rollout(**picked)

    def token_batch(self, tokenizer, plain_prompts: bool = True) -> TokenBatch:
        """The responses as reward sources read them (ids and masks on the CPU, where text paths decode)."""
        return TokenBatch(self.prompts, self.prompt_ids.cpu(), self.prompt_mask.cpu(), self.response_ids.cpu(),
                          self.response_mask.cpu(), tokenizer, plain_prompts=plain_prompts)

    def sequences(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prompt + response: input_ids, attention_mask and position_ids (from the mask), each (B, P + R)."""
        ids = torch.cat([self.prompt_ids, self.response_ids], dim=1)
        mask = torch.cat([self.prompt_mask.long(), self.response_mask.long()], dim=1)
        return ids, mask, position_ids(mask)


class PromptError(ValueError):
    """One prompt the policy cannot take: `index` is its place in the list, `problem` what is wrong with it."""

    def __init__(self, index: int, problem: str):
        super().__init__(f"prompt {index} {problem}")
        self.index, self.problem = index, problem


def encode_prompts(tokenizer, prompts: list[str], *, max_tokens: int, chat_template: bool = False):
    """Left-padded prompt ids and mask, (B, P). Empty or over-long prompts are errors, never silently cut."""
    if not prompts:
        raise ValueError("the prompt list is empty: give at least one prompt")
    texts = prompts
    if chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError("policy.chat_template is set but the policy tokenizer has no chat template")
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                 for p in prompts]
    encoded = [tokenizer(t, add_special_tokens=not chat_template).input_ids for t in texts]
    for i, ids in enumerate(encoded):
        if not ids:
            raise PromptError(i, f"({prompts[i]!r}) is empty: the policy needs at least one prompt token")
        if len(ids) > max_tokens:
            raise PromptError(i, f"has {len(ids)} tokens, more than rollout.max_prompt_tokens={max_tokens}: shorten "
                                 "it or raise the limit")
    return pad_rows(encoded, tokenizer.pad_token_id, side="left")


def truncate_at_eos(response_ids: torch.Tensor, eos_id: int, pad_id: int):
    """Mask up to and including the first EOS; ids after it become pad. Returns ids, mask (B, R) and ended (B,)."""
    is_eos = response_ids == eos_id
    ended = is_eos.any(-1)
    positions = torch.arange(response_ids.shape[1], device=response_ids.device).expand_as(response_ids)
    first_eos = torch.where(is_eos, positions, response_ids.shape[1]).min(-1).values  # R when there is none
    mask = positions <= first_eos.unsqueeze(1)
    return torch.where(mask, response_ids, pad_id), mask, ended


@torch.no_grad()
def sample(policy, tokenizer, prompt_ids, prompt_mask, *, max_new_tokens: int, temperature: float, top_p: float):
    """Sampled responses: ids, mask (B, R = max_new_tokens) and ended (B,)."""
    from transformers import GenerationConfig

    config = GenerationConfig(do_sample=True, temperature=temperature, top_p=top_p, top_k=0, max_new_tokens=max_new_tokens,
                              min_new_tokens=0, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    out = policy.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config)
    response = out[:, prompt_ids.shape[1]:]  # (B, <= R)
    filler = torch.full((response.shape[0], max_new_tokens - response.shape[1]), tokenizer.pad_token_id,
                        dtype=response.dtype, device=response.device)
    return truncate_at_eos(torch.cat([response, filler], dim=1), tokenizer.eos_token_id, tokenizer.pad_token_id)


def response_logits(model, ids, mask, pos, response_start: int, temperature: float) -> torch.Tensor:
    """Logits that predict each response token, divided by the sampling temperature: (B, R, V).

    Models that take `logits_to_keep` (Hugging Face causal LMs) compute the LM head on the last R + 1 positions
    only, not on the prompt's: the same numbers, without (B, P, V) of work and memory that would be thrown away."""
    keep = ids.shape[1] - response_start + 1  # positions response_start - 1 .. end
    if _takes_logits_to_keep(model):
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=keep).logits  # (B, R + 1, V)
    else:
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -keep:]
    return logits[:, :-1].float() / temperature


def _takes_logits_to_keep(model) -> bool:
    """Whether the model under its wrappers (DDP's .module, PEFT's base model) has a `logits_to_keep` argument."""
    inner = getattr(model, "module", model)
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    return _forward_takes_logits_to_keep(type(inner))


@functools.cache
def _forward_takes_logits_to_keep(cls: type) -> bool:
    """Read once per model class: response_logits runs in every rollout and micro-batch."""
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) under logits, (B, R)."""
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
