"""See RED token rewards come out of verl's own reward step on CPU, before a GPU run.

    python -m red_rlhf.integrations.verl_check --reward-model runs/tiny-rm --prompt "Review of the film:" \\
        --response " The movie was good and the acting was great." [--policy-tokenizer DIR] [--layout v1]

It builds verl's default PPO config with the RED route (as examples/verl/red_ppo.yaml sets it), lays the texts out
as verl does (prompt left-padded (v0) or right-padded (v1), response right-padded, pad == eos allowed), scores them
with verl's RewardLoopWorker (which loads REDRewardManager through verl's load_reward_manager), assembles verl's
rm_scores tensor, and runs verl's compute_advantage (GAE, values 0, gamma = lam = 1) on it. It prints, per response
token: the token, its RED reward, verl's GAE return and verl's (whitened) GAE advantage.

    python -m red_rlhf.integrations.verl_check --config examples/verl/red_ppo.yaml [HYDRA OVERRIDES ...]

checks a whole verl config on CPU before a GPU run: it composes the config as `python -m verl.trainer.main_ppo`
does (Hydra, verl's validate_config), checks the RED route and reward_kwargs, loads the reward sources (on the CPU)
and the policy's tokenizer, reads the first training prompt through verl's own RLHFDataset, and prints that prompt's
row (with --response, or a fixed sample response) as above. It runs no training step: generation and the update
run on verl's GPU workers, which a CPU stand-in would not check (README "Scaling out on verl").
"""

from __future__ import annotations

import argparse
import asyncio

import numpy as np
import torch
from omegaconf import OmegaConf, open_dict
from tensordict import TensorDict
from verl import DataProto
from verl.experimental.reward_loop.reward_loop import RewardLoopWorker, migrate_legacy_reward_impl
from verl.trainer.config import AlgoConfig
from verl.trainer.ppo.core_algos import AdvantageEstimator
from verl.trainer.ppo.ray_trainer import compute_advantage
from verl.trainer.ppo.reward import resolve_reward_manager_cls


def red_config(policy: str, reward_model: str, estimator: str = "gae", **reward_kwargs):
    """verl's own default PPO config (generated ppo_trainer.yaml, legacy keys migrated) on the RED route."""
    import verl.trainer.config as config_dir

    config = migrate_legacy_reward_impl(OmegaConf.load(config_dir.__path__[0] + "/_generated_ppo_trainer.yaml"))
    with open_dict(config):
        config.actor_rollout_ref.model.path = policy
        config.algorithm.adv_estimator = estimator
        reward = config.reward
        reward.reward_manager.source = "importlib"
        reward.reward_manager.name = "REDRewardManager"
        reward.reward_manager.module.path = "pkg://red_rlhf.integrations.verl"
        reward.reward_model.enable = True
        reward.reward_model.enable_resource_pool = False
        reward.reward_model.model_path = reward_model
        reward.custom_reward_function.path = "pkg://red_rlhf.integrations.verl"
        reward.custom_reward_function.name = "compute_score"
        reward.reward_kwargs = {"model": reward_model, "device": "cpu", **reward_kwargs}
    return config


def verl_layout(prompt_rows: list[list[int]], response_rows: list[list[int]], pad_id: int, response_length: int,
                layout: str = "v0", raw_prompts: list[str] | None = None) -> DataProto:
    """Token rows as verl 0.9.1 hands them to the reward step.

    layout "v0": left-padded prompts plus response_mask, input_ids, position_ids (agent_loop.py `_postprocess`);
    "v1": right-padded prompts, only prompts / responses / attention_mask and raw_prompt (the default trainer's
    trainer/ppo/v1/trainer_base.py `_compute_reward_colocate`). Responses longer than response_length are cut.
    """
    if layout not in ("v0", "v1"):
        raise ValueError(f"layout must be 'v0' or 'v1', got {layout!r}")
    response_rows = [r[:response_length] for r in response_rows]
    rows, width = len(prompt_rows), max(map(len, prompt_rows))
    prompt_ids = torch.full((rows, width), pad_id)  # (B, P)
    response_ids = torch.full((rows, response_length), pad_id)  # (B, R)
    attention = torch.zeros((rows, width + response_length), dtype=torch.long)  # (B, P + R)
    for i, (p, r) in enumerate(zip(prompt_rows, response_rows)):
        start = width - len(p) if layout == "v0" else 0
        prompt_ids[i, start: start + len(p)], attention[i, start: start + len(p)] = torch.tensor(p), 1
        response_ids[i, : len(r)], attention[i, width: width + len(r)] = torch.tensor(r), 1
    fields = {"prompts": prompt_ids, "responses": response_ids, "attention_mask": attention}
    if layout == "v0":
        fields.update(input_ids=torch.cat([prompt_ids, response_ids], dim=1), response_mask=attention[:, width:].clone(),
                      position_ids=(attention.cumsum(-1) - 1).clamp(min=0))
    raw = np.empty(rows, dtype=object)
    raw[:] = [[{"role": "user", "content": p}] for p in (raw_prompts or [""] * rows)]
    return DataProto(batch=TensorDict(fields, batch_size=rows), non_tensor_batch={"raw_prompt": raw})


def rm_scores_through_verl(config, data: DataProto) -> tuple[torch.Tensor, list[dict]]:
    """verl's colocated reward step on one worker: RewardLoopWorker scores the rows, the manager class assembles."""
    worker = RewardLoopWorker(config)  # loads the policy tokenizer, then the manager through load_reward_manager
    outputs = asyncio.run(worker.compute_score_batch(data))
    rm_scores = resolve_reward_manager_cls(config).assemble_rm_scores(data, [o["reward_score"] for o in outputs])
    return rm_scores, outputs


def gae_on(data: DataProto, rm_scores: torch.Tensor) -> DataProto:
    """verl's compute_advantage (GAE) with values 0, gamma = lam = 1, no KL: returns are each token's reward-to-go."""
    data.batch["token_level_rewards"] = rm_scores
    data.batch["values"] = torch.zeros_like(rm_scores)
    if "response_mask" not in data.batch.keys():
        width = data.batch["prompts"].shape[1]
        data.batch["response_mask"] = data.batch["attention_mask"][:, width:]
    return compute_advantage(data, AdvantageEstimator.GAE, gamma=1.0, lam=1.0, config=AlgoConfig())


SAMPLE_RESPONSE = "Thank you for asking. Here is a short, helpful answer."


def compose_user_config(config_file: str, overrides: list[str]):
    """A verl config file (+ Hydra overrides) composed and validated as verl's entry point does (main_ppo.py:170-176)."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    path = Path(config_file).expanduser().resolve()
    if not path.is_file():
        raise SystemExit(f"--config {config_file}: no such file")
    with initialize_config_dir(config_dir=str(path.parent), version_base=None):
        config = compose(config_name=path.stem, overrides=overrides)
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    return config


def first_prompt(config, tok) -> tuple[list[int], str]:
    """The first training prompt as verl's RLHFDataset reads it, rendered with the policy's chat template as verl's
    agent loop does (add_generation_prompt); returns (token ids, the last user message)."""
    from verl.utils.dataset.rl_dataset import RLHFDataset

    files = config.data.train_files
    dataset = RLHFDataset(list(files) if not isinstance(files, str) else files, tok, config.data)
    if len(dataset) == 0:
        raise SystemExit(f"data.train_files {files}: no prompts after verl's filters (max_prompt_length "
                         f"{config.data.max_prompt_length})")
    messages = dataset[0]["raw_prompt"]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    user = [m["content"] for m in messages if m.get("role") == "user"]
    return list(ids), (user[-1] if user else "")


def check_user_config(config, response_text: str | None):
    """The route, the reward settings, the sources on CPU, the first prompt; returns (tokenizer, prompt ids, raw
    prompt, response ids, config for the reward step)."""
    from transformers import AutoTokenizer

    from red_rlhf.integrations.verl_settings import check_route, read_settings

    check_route(config)
    read_settings(config.reward.get("reward_kwargs"))
    with open_dict(config):
        if str(config.reward.reward_kwargs.get("device", "auto")) != "cpu":
            print(f"note: reward.reward_kwargs.device={config.reward.reward_kwargs.get('device', 'auto')} is run on "
                  "the cpu for this check")
        config.reward.reward_kwargs.device = "cpu"
    tok = AutoTokenizer.from_pretrained(config.actor_rollout_ref.model.path)
    prompt_ids, raw = first_prompt(config, tok)
    eos = tok.eos_token_id
    response = tok(response_text or SAMPLE_RESPONSE, add_special_tokens=False).input_ids + ([eos] if eos is not None else [])
    return tok, prompt_ids, raw, response, config


def print_row(tok, response: list[int], rm_scores: torch.Tensor, data: DataProto, outputs: list[dict]) -> None:
    info = outputs[0]["reward_extra_info"]
    print(f"R(x) = {info['red_prompt_score']:.4f}   R(x, y) = {info['red_score']:.4f}   "
          f"sum of token rewards = {float(rm_scores[0].sum()):.4f}")
    print(f"{'token':>16} {'reward':>9} {'return':>9} {'advantage':>9}")
    for t, token_id in enumerate(response):
        print(f"{tok.decode([token_id])!r:>16} {float(rm_scores[0, t]):9.4f} {float(data.batch['returns'][0, t]):9.4f} "
              f"{float(data.batch['advantages'][0, t]):9.4f}")


def main(argv: list[str] | None = None) -> None:
    from transformers import AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="a verl config file to check (e.g. examples/verl/red_ppo.yaml); Hydra "
                                         "overrides follow as extra arguments")
    parser.add_argument("--reward-model", help="HF reward model name or local path (without --config)")
    parser.add_argument("--policy-tokenizer", help="the policy's tokenizer (default: the reward model's)")
    parser.add_argument("--prompt", help="the prompt text (without --config)")
    parser.add_argument("--response", help="the response text; the policy's EOS is appended")
    parser.add_argument("--layout", choices=("v0", "v1"), default="v1", help="verl trainer layout (v1 is the default)")
    parser.add_argument("--scheme", default="red")
    args, overrides = parser.parse_known_args(argv)
    if args.config:
        config = compose_user_config(args.config, overrides)
        tok, prompt_ids, raw, response, config = check_user_config(config, args.response)
        layout = "v1" if config.trainer.get("use_v1", True) else "v0"
        print(f"{args.config}: composed and validated by verl; RED route and reward.reward_kwargs accepted; "
              f"adv_estimator={config.algorithm.adv_estimator}; trainer {layout}")
        if config.algorithm.adv_estimator != "gae":
            print(f"note: the return and advantage columns below are GAE's with values 0 on this one row; "
                  f"{config.algorithm.adv_estimator} compares the rollout.n responses of a prompt")
    else:
        if overrides:
            parser.error(f"unrecognised arguments: {' '.join(overrides)} (Hydra overrides go with --config)")
        if not (args.reward_model and args.prompt and args.response):
            parser.error("give --config FILE, or --reward-model, --prompt and --response")
        policy = args.policy_tokenizer or args.reward_model
        tok = AutoTokenizer.from_pretrained(policy)
        response = tok(args.response, add_special_tokens=False).input_ids + [tok.eos_token_id]
        prompt_ids, raw, layout = tok(args.prompt).input_ids, args.prompt, args.layout
        config = red_config(policy, args.reward_model, scheme=args.scheme)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    data = verl_layout([prompt_ids], [response], pad, len(response) + 2, layout, [raw])
    rm_scores, outputs = rm_scores_through_verl(config, data)
    print_row(tok, response, rm_scores, gae_on(data, rm_scores), outputs)


if __name__ == "__main__":
    main()
