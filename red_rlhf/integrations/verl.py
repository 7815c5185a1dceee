"""RED token rewards inside verl's PPO: a reward manager for verl's reward loop (written against verl 0.9.1).

verl loads it by config (see README "Scaling out on verl" and examples/verl/):

    reward.reward_manager.source=importlib reward.reward_manager.name=REDRewardManager
    reward.reward_manager.module.path=pkg://red_rlhf.integrations.verl
    reward.reward_model.enable=True reward.reward_model.enable_resource_pool=False
    reward.custom_reward_function.path=pkg://red_rlhf.integrations.verl reward.custom_reward_function.name=compute_score
    +reward.reward_kwargs.model=<reward model> +reward.reward_kwargs.scheme=red    (red_rlhf's reward section)
    algorithm.adv_estimator=gae            (PPO with a critic; or red_grpo / red_rloo without one, rollout.n >= 2)

How a batch flows (verl 0.9.1, experimental/reward_loop/reward_loop.py): the trainer's colocated reward step
splits the batch over `reward.num_workers` Ray workers; each worker calls `run_single` on every one-row DataProto
of its chunk at once (asyncio.gather, :138-143). `run_single` queues its row; the first call of an event-loop turn
schedules one flush, so the whole chunk is scored as one batch in a worker thread (the event loop stays free).
Each row gets back a list with one reward per response token; `assemble_rm_scores` (a classmethod verl calls in
the driver, :361-362) lays the lists into the (B, response_len) `rm_scores` tensor, which becomes
`token_level_scores`, then verl's `apply_kl_penalty` (when algorithm.use_kl_in_reward) and `compute_advantage`.
The reward sources are loaded once per process (a worker may build several managers; they share the models).

Importing this module also registers the critic-free estimators `red_rloo` and `red_grpo` with verl
(`verl_estimators`): verl imports it in the process that computes advantages when it resolves the manager class
(docs/verl.md, "The estimators").
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
from verl import DataProto
from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

from red_rlhf.integrations import verl_estimators  # noqa: F401  (registers red_rloo / red_grpo with verl)
from red_rlhf.integrations.verl_batch import rows_to_batch
from red_rlhf.integrations.verl_scoring import load_sources
from red_rlhf.integrations.verl_settings import check_route, read_settings
from red_rlhf.models.rewards import batch_rewards



def check_no_trl_conflict() -> None:
    """verl 0.9.1 imports trl's AutoModelForCausalLMWithValueHead for every model it builds whenever trl is importable
    (verl/models/transformers/monkey_patch.py:352-356); trl >= 1.13 no longer has it, so verl's workers would fail
    while building the actor. Say so at once, here, rather than from inside a GPU worker."""
    import importlib.util

    if importlib.util.find_spec("trl") is None:
        return
    try:
        from trl.experimental.ppo import AutoModelForCausalLMWithValueHead  # noqa: F401
    except ImportError:
        try:
            from trl import AutoModelForCausalLMWithValueHead  # noqa: F401
        except ImportError:
            import trl

            raise ImportError(
                f"trl {trl.__version__} is installed beside verl: verl 0.9.1 imports trl's "
                "AutoModelForCausalLMWithValueHead for every model it builds when trl is importable "
                "(verl/models/transformers/monkey_patch.py:352-356), and this trl no longer has it. Run verl in an "
                "environment without trl (red-rlhf's `trl` extra has its own: `make trl` makes .venv-trl)") from None


check_no_trl_conflict()
_LOCK = threading.Lock()
_LOADED: dict[str, list] = {}  # settings key -> loaded sources, one copy per process


def compute_score(*args, **kwargs):
    """Only a route marker: verl calls a manager's `run_single` only when reward.custom_reward_function.path is set
    (reward_loop.py:145-148). REDRewardManager never calls this function; anything else that does gets an error."""
    raise RuntimeError("red_rlhf.integrations.verl.compute_score is a route marker for REDRewardManager and scores "
                       "nothing: set reward.reward_manager.name=REDRewardManager (source=importlib, "
                       "module.path=pkg://red_rlhf.integrations.verl)")


def shared_sources(settings) -> list:
    """The reward sources for these settings, loaded on first use in this process and reused after."""
    key = repr(settings)
    with _LOCK:
        if key not in _LOADED:
            _LOADED[key] = load_sources(settings)
        return _LOADED[key]


class REDRewardManager(RewardManagerBase):
    """One RED reward per response token from red_rlhf's reward sources (see the module docstring)."""

    def __init__(self, config, tokenizer, compute_score=None, reward_router_address=None, reward_model_tokenizer=None,
                 **unused):
        check_route(config)  # first: on a wrong route no reward_kwargs can help
        self.settings = read_settings(config.reward.get("reward_kwargs"))
        super().__init__(config, tokenizer, compute_score)
        self.sources = shared_sources(self.settings)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="red-reward")  # one model user at a time
        self._queue: list[tuple[DataProto, asyncio.Future]] = []

    async def run_single(self, data: DataProto) -> dict:
        if len(data) != 1:
            raise ValueError(f"REDRewardManager.run_single takes one row, got {len(data)}")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append((data, future))
        if len(self._queue) == 1:
            loop.call_soon(self._flush, loop)  # runs after every row already handed to this loop has queued
        return await future

    def _flush(self, loop) -> None:
        queued, self._queue = self._queue, []
        job = loop.run_in_executor(self._executor, self.score_rows, [data for data, _ in queued])

        def deliver(job):
            error = job.exception()
            for i, (_, future) in enumerate(queued):
                if future.done():
                    continue
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(job.result()[i])

        job.add_done_callback(deliver)

    def score_rows(self, rows: list[DataProto]) -> list[dict]:
        """verl's one-row DataProtos -> one {"reward_score": [reward per response token], "reward_extra_info"} each."""
        batch = rows_to_batch(rows, self.tokenizer, self.settings.prompt_text)
        scored = batch_rewards(self.sources, batch, self.settings.reward)  # no KL: verl adds its own
        lengths = batch.response_mask.sum(-1).tolist()
        return [
            {"reward_score": scored.rewards[i, :n].tolist(),
             "reward_extra_info": {"red_score": float(scored.final_combined_raw[i]),
                                   "red_prompt_score": float(scored.prompt_combined_raw[i])}}
            for i, n in enumerate(lengths)
        ]

    @classmethod
    def assemble_rm_scores(cls, data: DataProto, scores: list) -> torch.Tensor:
        """Per-row reward lists -> rm_scores (B, response_len), each list on its row's valid response tokens."""
        prompt_length = data.batch["prompts"].size(1)
        valid = data.batch["attention_mask"][:, prompt_length:].sum(-1).tolist()  # (B,) response lengths
        rm_scores = torch.zeros_like(data.batch["responses"], dtype=torch.float32)  # (B, R)
        if len(scores) != len(valid):
            raise ValueError(f"REDRewardManager got {len(scores)} reward rows for a batch of {len(valid)}")
        for i, (row, n) in enumerate(zip(scores, valid)):
            if not isinstance(row, (list, tuple)):
                raise TypeError(f"row {i}: expected one reward per response token from REDRewardManager.run_single, "
                                f"got {type(row).__name__}: was the row scored by another reward function?")
            if len(row) != n:
                raise ValueError(f"row {i}: {len(row)} token rewards for a response of {n} tokens")
            rm_scores[i, :n] = torch.tensor(row, dtype=torch.float32)
        return rm_scores
