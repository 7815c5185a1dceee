"""RED inside TRL's GRPOTrainer: per-token rewards and per-token group advantages (written against trl 1.16).

    from red_rlhf.integrations.trl import REDGRPOConfig, REDGRPOTrainer

    args = REDGRPOConfig(output_dir="out", red_reward_model="Skywork/Skywork-Reward-V2-Qwen3-0.6B", num_generations=4)
    REDGRPOTrainer(model="Qwen/Qwen2.5-0.5B-Instruct", args=args, train_dataset=dataset).train()

Everything but the advantages is TRL's: generation (vLLM included), the clipped loss, the KL term (TRL's `beta`,
k3 as a loss term, so RED's rewards carry no KL), logging and checkpoints. Per generation batch:

1. TRL generates and calls its reward functions (`_calculate_rewards`). The one reward function here,
   `REDScores`, scores every prefix of this process's completions with red_rlhf's sources (one forward when the
   reward model reads the policy's ids as they are, else decoded once and aligned by characters), places the token
   rewards by scheme (`models.rewards.source_rewards`, the function the verl manager and our trainer use), keeps them, and
   hands TRL each completion's R(x, y) (summed over sources by weight), which TRL logs as `rewards/red/mean`.
2. TRL computes its own per-completion advantages from those numbers; `_generate_and_score_completions` then
   replaces them with per-token ones: the token rewards of all processes are gathered (as TRL gathers its rewards,
   grpo_trainer.py:1681, because a group's completions may sit on several processes), `group_advantages` runs on
   the whole batch with groups of `num_generations` consecutive rows (TRL's layout, :2765), and each process keeps
   its rows (TRL's `process_slice`, :2813). TRL's loss takes the (B, T) tensor as it is (:3055-3059).

The TRL internals this relies on are listed once, in TRL_DEPENDENCIES; tests/test_trl.py checks each of them, so a
TRL upgrade that moves one fails that test rather than a user's run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from accelerate.utils import gather
from trl import GRPOTrainer

from red_rlhf.config import ConfigError
from red_rlhf.core.advantages import group_advantages
from red_rlhf.core.masks import pad_rows
from red_rlhf.integrations.trl_config import REDGRPOConfig, _rename
from red_rlhf.models.build import load_sources
from red_rlhf.models.rewards import Source, batch_rewards
from red_rlhf.models.sources import TokenBatch

__all__ = ["REDGRPOConfig", "REDGRPOTrainer", "REDScores", "TRL_DEPENDENCIES"]

# What this module reads or overrides in trl 1.16.0 (trl/trainer/grpo_trainer.py), checked by tests/test_trl.py.
TRL_DEPENDENCIES = {
    "GRPOTrainer._generate_and_score_completions": "overridden: super() then output['advantages'] replaced (:2324)",
    "GRPOTrainer._tokenize_prompts": "the prompt ids TRL generates from (:1684, called by _generate at :2221)",
    "GRPOTrainer._calculate_rewards": "calls each reward function with prompts, completions, completion_ids (:1626)",
    "GRPOTrainer._compute_loss": "takes advantages of shape (B,) or (B, T) (:3055-3059)",
    "GRPOTrainer.num_generations": "group size in training (:783); num_generations_eval in evaluation (:787)",
    "GRPOTrainer.eos_token_ids": "the ids that end a completion (:409-416)",
    "GRPOTrainer._logs['advantages']": "the completions table's advantage column (:2837)",
}


@dataclass
class ScoredRows:
    """One process's completions as REDScores scored them."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    rewards: torch.Tensor  # (b, R) token rewards, 0 past each completion


def _prompt_texts(prompts: list, prompt_ids: list[list[int]], tokenizer, choice: str) -> tuple[list[str], bool]:
    """The prompt text each text-path source reads, and whether the prompt ids are that text tokenized as is."""
    conversational = bool(prompts) and isinstance(prompts[0], list)
    if choice == "decoded" or (choice == "auto" and not conversational):
        if not conversational:
            return list(prompts), True  # TRL tokenised these very strings (_tokenize_prompts)
        return [tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
                for ids in prompt_ids], True
    if not conversational:
        return list(prompts), True
    texts = []
    for i, chat in enumerate(prompts):
        users = [m["content"] for m in chat if m.get("role") == "user" and isinstance(m.get("content"), str)]
        if not users:
            raise ValueError(f"prompt {i} has no user message with text content: {chat!r}")
        texts.append(users[-1])
    return texts, False


class REDScores:
    """TRL's reward-function slot: scores this process's completions with red_rlhf's sources, keeps the token
    rewards for the advantage step, and returns each completion's weighted R(x, y) for TRL's logs."""

    __name__ = "red"  # TRL logs rewards/<name>/mean (trl/trainer/utils.py get_callable_name)

    def __init__(self, trainer: "REDGRPOTrainer"):
        self.trainer = trainer
        self.pending: ScoredRows | None = None

    def __call__(self, prompts, completions, completion_ids, **unused) -> list[float]:
        t = self.trainer
        prompt_ids = [list(ids) for ids in t._tokenize_prompts(prompts)[0]]
        completion_ids = [list(ids) for ids in completion_ids]
        empty = [i for i, ids in enumerate(completion_ids) if not ids]
        if empty:
            raise ValueError(f"completion(s) {empty} have no tokens: there is nothing to reward")
        tok = t.red_tokenizer
        texts, plain = _prompt_texts(prompts, prompt_ids, tok, t.args.red_prompt_text)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        p_ids, p_mask = pad_rows(prompt_ids, pad, side="left")  # (b, P)
        r_ids, r_mask = pad_rows(completion_ids, pad)  # (b, R)
        ended = torch.tensor([ids[-1] in t.eos_token_ids for ids in completion_ids])
        batch = TokenBatch(texts, p_ids, p_mask.bool(), r_ids, r_mask.bool(), tok, plain_prompts=plain, ended=ended)
        scored = batch_rewards(t.red_sources, batch, t.args.red_config.reward)  # no KL: TRL's beta is a loss term
        self.pending = ScoredRows(prompt_ids, completion_ids, scored.rewards)
        return scored.final_combined_raw.tolist()

    def take(self) -> ScoredRows:
        if self.pending is None:
            raise RuntimeError("REDGRPOTrainer: TRL did not call the RED reward function for this batch")
        out, self.pending = self.pending, None
        return out


class REDGRPOTrainer(GRPOTrainer):
    """TRL's GRPOTrainer with RED per-token rewards and advantages. Takes GRPOTrainer's arguments, with `args` a
    REDGRPOConfig; the reward comes from its red_* fields, not `reward_funcs`."""

    def __init__(self, model, reward_funcs=None, args: REDGRPOConfig | None = None, **kwargs):
        if not isinstance(args, REDGRPOConfig):
            raise ConfigError("REDGRPOTrainer needs args=REDGRPOConfig(...) (GRPOConfig's fields plus the red_* ones)")
        if reward_funcs is not None:
            raise ConfigError("REDGRPOTrainer takes its rewards from REDGRPOConfig (red_reward_model, "
                              "red_reward_function or red_reward_sources), not reward_funcs: a python reward "
                              "'module:function' (text -> float) is scored on every prefix as red_reward_function")
        for name in ("tools", "rollout_func", "environment_factory"):
            if kwargs.get(name) is not None:
                raise ConfigError(f"REDGRPOTrainer does not support {name}: completions holding tool or environment "
                                  "output (or prompts a custom rollout tokenised) have tokens the reward sources "
                                  "cannot place rewards on")
        self.red_reward = REDScores(self)
        super().__init__(model, reward_funcs=[self.red_reward], args=args, **kwargs)
        self.red_tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        self.red_sources = self._load_red_sources()

    def _load_red_sources(self) -> list[Source]:
        """The sources of args.red_config, HF models frozen on this process's device; errors name the field."""
        try:
            return load_sources(self.args.red_config, self.accelerator.device)
        except ConfigError as err:
            raise ConfigError(_rename(str(err))) from err

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        rows = self.red_reward.take()
        output["advantages"] = self._token_advantages(rows, output)
        return output

    def _token_advantages(self, rows: ScoredRows, output: dict) -> torch.Tensor:
        """(b, T) per-token advantages for this process's rows, from the whole batch's token rewards."""
        device = output["completion_ids"].device
        width = output["completion_ids"].shape[1]  # T: TRL's padded completion width on this process
        lengths = torch.tensor([len(ids) for ids in rows.completion_ids], device=device)  # (b,)
        if len(rows.completion_ids) != output["completion_ids"].shape[0] or int(lengths.max()) > width or any(
                output["completion_ids"][i, :n].tolist() != ids for i, (n, ids) in enumerate(
                    zip(lengths.tolist(), rows.completion_ids))):
            raise RuntimeError("REDGRPOTrainer: the completions TRL scored differ from those it trains on; this TRL "
                               "version lays out a batch differently (see TRL_DEPENDENCIES)")
        rewards = torch.zeros(len(lengths), width, dtype=torch.float64, device=device)  # (b, T)
        rewards[:, : rows.rewards.shape[1]] = rows.rewards.to(device)
        # every process's rows, in process order: groups of num_generations consecutive rows, as TRL lays them out
        all_rewards = gather(self.accelerator.pad_across_processes(rewards, dim=1))  # (B, T_max)
        all_lengths = gather(lengths)  # (B,)
        mask = torch.arange(all_rewards.shape[1], device=device)[None, :] < all_lengths[:, None]  # (B, T_max)
        group_size = self.num_generations if self.model.training else self.num_generations_eval
        groups = torch.arange(len(all_lengths), device=device) // group_size  # (B,)
        advantages = group_advantages(all_rewards, mask, groups, estimator=self.args.red_estimator,
                                      gamma=self.args.red_gamma, scale=self.args.scale_rewards, eps=1e-4)  # TRL's eps
        self._log_sequence_advantages(advantages, all_lengths)
        start = self.accelerator.process_index * len(lengths)
        return advantages[start: start + len(lengths), :width].float()  # (b, T)

    def _log_sequence_advantages(self, advantages: torch.Tensor, lengths: torch.Tensor) -> None:
        """The completions table shows one advantage per completion: the first token's, A_{i,1} = G_{i,1} - baseline,
        which is the whole completion's (TRL wrote its own per-completion ones there a moment ago)."""
        column = self._logs["advantages"]
        count = min(len(lengths), len(column))  # TRL appended one entry per completion of the whole batch
        for i, value in enumerate(advantages[len(lengths) - count:, 0].tolist()):
            column[len(column) - count + i] = value
