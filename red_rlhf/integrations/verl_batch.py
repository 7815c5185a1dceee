"""verl's one-row DataProtos -> one `TokenBatch` of policy ids and masks, as red_rlhf's reward sources read them.

verl 0.9.1 hands the reward step a row in one of two layouts:

    prompts         (1, P)      prompt ids, LEFT-padded by the v0 trainer (agent_loop.py `_postprocess`) and
                                RIGHT-padded by the default v1 trainer (trainer/ppo/v1/trainer_base.py
                                `_compute_reward_colocate`, `_lengths_to_mask`)
    responses       (1, R)      right-padded response ids (EOS included when generation stopped on it)
    attention_mask  (1, P + R)  1 on real prompt and response tokens
    response_mask   (1, R)      v0 only: 1 on tokens the policy generated (0 on tool output in multi-turn rollouts)

Both prompt layouts are read (the real tokens must form one block). The pad id may equal the EOS id (Qwen,
Llama), so masks come from attention_mask, never from `ids != pad`.
"""

from __future__ import annotations

import torch

from red_rlhf.models.sources import TokenBatch


def _block(mask: torch.Tensor, row: int, what: str, sides: tuple[str, ...]) -> slice:
    """Where the single block of ones of a 1-D mask lies; it must touch one of `sides` ("left"/"right")."""
    n, width = int(mask.sum()), mask.numel()
    positions = torch.arange(width)
    for side in sides:
        block = slice(0, n) if side == "right" else slice(width - n, width)  # right padding: ones first
        if torch.equal(mask.bool(), (positions >= block.start) & (positions < block.stop)):
            return block
    raise ValueError(f"row {row}: the {what} part of attention_mask is not {' or '.join(sides)}-padded: {mask.tolist()}")


def _last_user_message(non_tensor: dict, row: int) -> str:
    if "raw_prompt" not in non_tensor:
        raise ValueError("reward.reward_kwargs.prompt_text=last_user needs verl's raw_prompt field: set "
                         "data.return_raw_chat=True")
    chat = list(non_tensor["raw_prompt"][0])
    users = [m["content"] for m in chat if isinstance(m, dict) and m.get("role") == "user"]
    if not users or not isinstance(users[-1], str):
        raise ValueError(f"row {row}: raw_prompt has no user message with text content: {chat!r}")
    return users[-1]


def rows_to_batch(rows, tokenizer, prompt_text: str = "decoded") -> TokenBatch:
    """Stack one-row DataProtos (any widths) into left-padded prompts and right-padded responses."""
    prompts, prompt_rows, response_rows = [], [], []
    for i, data in enumerate(rows):
        prompt, response = data.batch["prompts"][0], data.batch["responses"][0]  # (P,), (R,)
        attention = data.batch["attention_mask"][0]  # (P + R,)
        p = _block(attention[: prompt.numel()], i, "prompt", ("left", "right"))
        r = _block(attention[prompt.numel():], i, "response", ("right",)).stop
        if r == 0:
            raise ValueError(f"row {i}: the response is empty (no attended response token); there is nothing to reward")
        if "response_mask" in data.batch.keys() and not torch.equal(data.batch["response_mask"][0][:r].bool(),
                                                                    torch.ones(r, dtype=torch.bool)):
            raise ValueError(f"row {i}: the response holds tokens the policy did not generate (tool output, "
                             "response_mask 0): verl's estimators skip those positions, so their RED rewards would be "
                             "lost; multi-turn tool rollouts are not supported by REDRewardManager")
        prompt_ids, response_ids = prompt[p], response[:r]
        if prompt_text == "last_user":
            prompts.append(_last_user_message(data.non_tensor_batch, i))
        else:
            prompts.append(tokenizer.decode(prompt_ids.tolist(), skip_special_tokens=False,
                                            clean_up_tokenization_spaces=False))
        prompt_rows.append(prompt_ids)
        response_rows.append(response_ids)
    width_p, width_r = max(x.numel() for x in prompt_rows), max(x.numel() for x in response_rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch = len(rows)
    prompt_ids = torch.full((batch, width_p), pad, dtype=torch.long)
    prompt_mask = torch.zeros((batch, width_p), dtype=torch.bool)
    response_ids = torch.full((batch, width_r), pad, dtype=torch.long)
    response_mask = torch.zeros((batch, width_r), dtype=torch.bool)
    for i, (p, r) in enumerate(zip(prompt_rows, response_rows)):
        prompt_ids[i, width_p - p.numel():], prompt_mask[i, width_p - p.numel():] = p, True
        response_ids[i, : r.numel()], response_mask[i, : r.numel()] = r, True
    eos = tokenizer.eos_token_id
    ended = torch.tensor([eos is not None and int(r[-1]) == eos for r in response_rows])
    return TokenBatch(prompts, prompt_ids, prompt_mask, response_ids, response_mask, tokenizer,
                      plain_prompts=prompt_text == "decoded", ended=ended)
