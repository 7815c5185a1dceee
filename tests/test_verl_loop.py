"""verl's own PPO trainer (`RayPPOTrainer.fit()`) end to end on CPU with the RED reward manager.

The recipe examples/verl/red_ppo.yaml is composed through verl's Hydra config with tiny local models and the CPU
settings of tests/verl_loop_support.py (which also lists, with verl's file:line, what stands in for the GPU parts:
the LLM server, the device, the worker processes). Everything between the dataset and the optimizer step is verl's.
Each run trains 2 steps and is checked from inside fit(): the rows of token_level_scores against red_rlhf's own
scorer on the same texts, GAE against a written-out reference, the weights, the logged metrics.
Skipped when verl is not installed (`make verl`). `pytest -s` prints one row beside the scorer's.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("verl", reason="verl is not installed: run `make verl` (README 'Scaling out on verl')")

from tests import verl_loop_support as support  # noqa: E402

from red_rlhf.models.scorer import TokenRewardScorer  # noqa: E402
from red_rlhf.models.sources import HFRewardModel  # noqa: E402
from red_rlhf.models.tiny import CHATML_TEMPLATE, save_tiny_reward_model, tiny_reward_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STEPS, BATCH, RESPONSE_LENGTH = 2, 4, 16  # per run: 2 PPO steps of 4 prompts, responses of up to 16 tokens
RECIPE = ROOT / "examples" / "verl"
PROMPTS = ["The movie was", "Hello world, how are you", "What a delightful", "Please explain how",
           "It rains in the city", "The food was cold", "I loved every minute", "A bad film with"]


def char_tokenizer():
    """A chat-template policy tokenizer with one token per character: every generated id sequence decodes to a text
    that encodes back to the same ids, so the generated rows can be re-scored from their text."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    specials = ["<|endoftext|>", "<pad>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(specials + chars)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.decoder = decoders.Fuse()
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<pad>",
                                      additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    wrapped.chat_template = CHATML_TEMPLATE
    return wrapped


def tiny_llama(tok, seed: int = 0):
    """The policy (and, with verl's token-classification head, the critic): a one-layer Llama, an architecture verl's
    FSDP engine and flops counter know (GPT-2's config has no num_key_value_heads, verl/utils/flops_counter.py)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Policy (chat template, char tokenizer), reward models with its tokenizer and with another, the prompt files."""
    root = tmp_path_factory.mktemp("verl-loop")
    tok = char_tokenizer()
    policy = root / "policy"
    tiny_llama(tok).save_pretrained(policy)
    tok.save_pretrained(policy)
    rm_same = root / "rm-same"
    tiny_reward_model("gpt2", len(tok), pad_token_id=tok.pad_token_id, seed=1).save_pretrained(rm_same)
    tok.save_pretrained(rm_same)
    rm_other = save_tiny_reward_model(root / "rm-other", arch="gpt2", seed=2)  # byte-level BPE: other tokens

    sys.path.insert(0, str(RECIPE))
    try:
        from prepare_prompts import write_splits
    finally:
        sys.path.pop(0)
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS + PROMPTS[:2]) + "\n", encoding="utf-8")
    train, val = write_splits(str(prompts), root / "data", val_size=2)
    return {"policy": str(policy), "rm_same": str(rm_same), "rm_other": str(rm_other), "train": str(train),
            "val": str(val), "checkpoints": str(root / "checkpoints"), "tok": tok}


def recipe_config(setup, rm: str, *extra: str, recipe: str = "red_ppo"):
    overrides = [
        f"data.train_files={setup['train']}", f"data.val_files={setup['val']}",
        f"actor_rollout_ref.model.path={setup['policy']}", f"critic.model.path={setup['policy']}",
        f"reward.reward_model.model_path={setup[rm]}", f"reward.reward_kwargs.model={setup[rm]}",
        "actor_rollout_ref.rollout.temperature=1.0",
        f"trainer.default_local_dir={setup['checkpoints']}",
        *support.cpu_overrides(steps=STEPS, batch=BATCH, response_length=RESPONSE_LENGTH), *extra]
    return support.compose_recipe(str(RECIPE), overrides, recipe)


@pytest.fixture(scope="module")
def cpu_verl():
    with support.cpu_verl():
        yield


@pytest.fixture(scope="module")
def scorers(setup):
    """red_rlhf's own scorer (what `red-rlhf score` runs) for each reward model, on the policy's tokens."""
    return {rm: {scheme: TokenRewardScorer(HFRewardModel.from_pretrained(setup[rm]), policy_tokenizer=setup["tok"],
                                           scheme=scheme) for scheme in ("red", "sparse")}
            for rm in ("rm_same", "rm_other")}


def rows_as_text(tok, step, prompt_text: str = "decoded"):
    """Each row's prompt and response as text, from the ids fit() trained on (prompts left-padded, responses right).
    prompt_text "decoded": the prompt ids decoded, chat template included; "last_user": the user's message from
    verl's raw_prompt (the recipe's setting: the reward model reads the message without the policy's template)."""
    prompts, responses, mask = step["prompts"], step["responses"], step["attention_mask"]
    width = prompts.shape[1]
    out = []
    for i in range(prompts.shape[0]):
        p = prompts[i][mask[i, :width].bool()].tolist()
        n = int(mask[i, width:].sum())
        prompt = tok.decode(p, skip_special_tokens=False)
        if prompt_text == "last_user":
            prompt = [m["content"] for m in step["non_tensor"]["raw_prompt"][i] if m["role"] == "user"][-1]
        out.append((prompt, tok.decode(responses[i, :n].tolist(), skip_special_tokens=False), n))
    return out


def gae_reference(rewards, values, mask, gamma: float, lam: float):
    """GAE written out token by token over each row's valid tokens, then whitened over all valid tokens."""
    advantages = torch.zeros_like(rewards, dtype=torch.float64)
    for i in range(rewards.shape[0]):
        n, running, next_value = int(mask[i].sum()), 0.0, 0.0
        for t in reversed(range(n)):
            delta = float(rewards[i, t]) + gamma * next_value - float(values[i, t])
            running = delta + gamma * lam * running
            advantages[i, t], next_value = running, float(values[i, t])
    returns = advantages + values.double() * mask
    valid = advantages[mask.bool()]
    whitened = (advantages - valid.mean()) / torch.sqrt(valid.var(unbiased=True) + 1e-8) * mask
    return whitened, returns


def finite_metrics(metrics: dict) -> dict:
    numbers = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor):
            value = value.item()
        try:
            numbers[key] = float(value)
        except (TypeError, ValueError):
            continue
    return numbers


def check_common(setup, recorder, trainer, before, after, *, critic: bool):
    """What every run must show: fit() ran its steps, weights moved (and reached the rollout), metrics are finite,
    the prompts went through the policy's chat template."""
    assert len(recorder.steps) == STEPS and trainer.global_steps == STEPS + 1  # fit() returned after its last step
    from red_rlhf.integrations.verl import REDRewardManager

    assert trainer.reward_loop_manager.reward_manager_cls is REDRewardManager  # loaded by verl from the recipe
    assert [m["training/global_step"] for m in recorder.metrics] == list(range(1, STEPS + 1))
    for metrics in recorder.metrics:
        numbers = finite_metrics(metrics)
        assert {"actor/pg_loss", "actor/grad_norm", "critic/score/mean", "critic/advantages/mean"} <= set(numbers)
        bad = {k: v for k, v in numbers.items() if not math.isfinite(v)}
        assert not bad, f"non-finite metrics: {bad}"
        if critic:
            assert {"critic/vf_loss", "critic/grad_norm"} <= set(numbers)
    assert set(before) == ({"actor", "critic"} if critic else {"actor"})
    for role in before:
        changed = [n for n in before[role] if not torch.equal(before[role][n], after[role][n])]
        assert len(changed) > len(before[role]) // 2, f"{role}: only {changed} of {list(before[role])} changed"
    rollout = support.actor_rollout_worker(trainer.actor_rollout_wg).rollout
    assert rollout.synced_steps == list(range(STEPS + 1))  # verl's weight sync: before step 1 and after each update
    generated = dict(rollout.model.named_parameters())
    for name, weight in after["actor"].items():  # the model that generates is the one verl trained
        torch.testing.assert_close(generated[name], weight)
    for prompt, _, _ in rows_as_text(setup["tok"], recorder.steps[0]):
        assert prompt.startswith("<|im_start|>user\n") and prompt.endswith("<|im_start|>assistant\n")


def print_row(setup, scorers, recorder, rm: str, scheme: str, prompt_text: str, row: int = 0) -> None:
    """One row of the first step (pytest -s): verl's token_level_scores beside red_rlhf's scorer on the same text."""
    step = recorder.steps[0]
    prompt, response, n = rows_as_text(setup["tok"], step, prompt_text)[row]
    [scored] = scorers[rm][scheme].score([prompt], [response])
    row_sum = float(step["token_level_scores"][row].sum())
    print(f"\n{rm} {scheme}, step 1 row {row}: prompt {prompt!r}\n"
          f"R(x) = {scored.prompt_score:.4f}  R(x, y) = {scored.final_score:.4f}  R(x, y) - R(x) = "
          f"{scored.final_score - scored.prompt_score:.4f}  sum of verl's row = {row_sum:.4f}")
    print(f"{'token':>18} {'verl token_level_scores':>24} {'red_rlhf scorer':>16}")
    for t in range(n):
        print(f"{scored.tokens[t]!r:>18} {float(step['token_level_scores'][row, t]):24.4f} {scored.rewards[t]:16.4f}")


def check_rows_equal_scorer(setup, scorers, recorder, rm: str, scheme: str, prompt_text: str):
    """Every row of token_level_scores that fit() trained on equals red_rlhf's scorer on the same texts; it sums to
    R(x, y) - R(x) under RED; it has one non-zero token under sparse and many under RED."""
    nonzero = []
    for step in recorder.steps:
        rows = rows_as_text(setup["tok"], step, prompt_text)
        scored = scorers[rm][scheme].score([p for p, _, _ in rows], [r for _, r, _ in rows])
        scores = step["token_level_scores"]
        for i, ((_, _, n), expected) in enumerate(zip(rows, scored)):
            assert len(expected.rewards) == n  # the char tokenizer gives back the generated ids
            torch.testing.assert_close(scores[i, :n].double(), torch.tensor(expected.rewards, dtype=torch.float64),
                                       atol=1e-5, rtol=1e-5)
            assert scores[i, n:].abs().sum() == 0
            red_sum = float(step["non_tensor"]["red_score"][i] - step["non_tensor"]["red_prompt_score"][i])
            assert red_sum == pytest.approx(expected.final_score - expected.prompt_score, abs=1e-5)
            if scheme == "red":
                assert float(scores[i].sum()) == pytest.approx(expected.final_score - expected.prompt_score, abs=1e-4)
            nonzero.append((int((scores[i, :n] != 0).sum()), n))
    if scheme == "sparse":
        assert all(k == 1 for k, _ in nonzero), nonzero
    else:
        assert all(k >= min(n, 3) for k, n in nonzero), nonzero  # many per row, ...
        assert sum(k for k, _ in nonzero) >= sum(n for _, n in nonzero) / 2, nonzero  # ... most tokens overall
    return nonzero


def run(setup, rm: str, *extra: str, recipe: str = "red_ppo"):
    recorder = support.Recorder()
    trainer, before, after = support.run_fit(recipe_config(setup, rm, *extra, recipe=recipe), recorder)
    return recorder, trainer, before, after


@pytest.mark.parametrize("rm, scheme, prompt_text", [
    ("rm_same", "red", "decoded"),  # the reward model reads the policy's ids as they are: one forward
    ("rm_other", "red", "last_user"),  # the recipe's setting; other tokens: decoded once and aligned by characters
    ("rm_same", "sparse", "decoded"),
])
def test_verl_ppo_fit_with_red_manager(setup, cpu_verl, scorers, rm, scheme, prompt_text):
    """GAE with verl's critic and the KL in the reward, as examples/verl/red_ppo.yaml sets them."""
    recorder, trainer, before, after = run(setup, rm, f"reward.reward_kwargs.scheme={scheme}",
                                           f"reward.reward_kwargs.prompt_text={prompt_text}")
    check_common(setup, recorder, trainer, before, after, critic=True)
    nonzero = check_rows_equal_scorer(setup, scorers, recorder, rm, scheme, prompt_text)
    print_row(setup, scorers, recorder, rm, scheme, prompt_text)
    print(f"\n{rm} {scheme}: non-zero tokens per row (of response length): {nonzero}")
    config = trainer.config.algorithm
    assert recorder.steps[0]["adv_estimator"] == "gae"
    for step in recorder.steps:
        mask = step["response_mask"].float()
        advantages, returns = gae_reference(step["token_level_rewards"], step["values"], mask, config.gamma, config.lam)
        torch.testing.assert_close(step["returns"].double() * mask, returns, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(step["advantages"].double() * mask, advantages, atol=1e-4, rtol=1e-4)
        if scheme == "red":  # per token: the advantages move within each row, not one value per response
            for i in range(mask.shape[0]):
                n = int(mask[i].sum())
                assert step["advantages"][i, :n].unique().numel() > n // 2
    # verl's KL penalty (use_kl_in_reward) sits between the scores and the rewards once the policy has moved
    last = recorder.steps[-1]
    assert not torch.allclose(last["token_level_rewards"], last["token_level_scores"])
    assert support.ServedRewardModelStandIn.started >= 1  # the route asks verl for its served reward model


GROUP_ESTIMATORS = ["red_grpo", "red_rloo"]


@pytest.mark.parametrize("estimator", GROUP_ESTIMATORS)
def test_verl_fit_with_red_group_estimator(setup, cpu_verl, scorers, estimator):
    """RED's group estimators (registered with verl by red_rlhf.integrations.verl) without a critic."""
    import red_rlhf.integrations.verl  # noqa: F401  (registers them)
    from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY

    from red_rlhf.core.advantages import group_advantages

    assert estimator in ADV_ESTIMATOR_REGISTRY
    recorder, trainer, before, after = run(
        setup, "rm_same", f"algorithm.adv_estimator={estimator}", "critic.enable=false",
        "reward.reward_kwargs.prompt_text=decoded",
        "actor_rollout_ref.rollout.n=2", "algorithm.use_kl_in_reward=false")
    check_common(setup, recorder, trainer, before, after, critic=False)
    check_rows_equal_scorer(setup, scorers, recorder, "rm_same", "red", "decoded")
    for step in recorder.steps:
        mask = step["response_mask"]
        for i in range(mask.shape[0]):
            n = int(mask[i].sum())
            assert step["advantages"][i, :n].unique().numel() > n // 2  # RED's return-to-go, not one value per row
        # the estimator verl ran is ours, on the rows as verl ordered them, grouped by verl's uid
        _, groups = np.unique(step["non_tensor"]["uid"], return_inverse=True)
        ours = group_advantages(step["token_level_rewards"], mask.bool(), torch.as_tensor(groups),
                                estimator.removeprefix("red_"), scale="batch" if estimator == "red_grpo" else "none")
        torch.testing.assert_close(step["advantages"], ours.to(step["advantages"].dtype), atol=1e-5, rtol=1e-5)


def test_installed_trl_lets_verl_build_models(setup):
    """verl 0.9.1 runs `apply_monkey_patch` on every model its FSDP engine builds (policy, reference, critic), and it
    imports trl's AutoModelForCausalLMWithValueHead whenever trl is importable (verl/models/transformers/
    monkey_patch.py:352-356), a class trl 1.16 (`make trl`) no longer has (1.12 has it). So trl and verl in one
    environment break verl for every user, on a GPU too; the loop tests above hide trl from that check
    (verl_loop_support.stand_ins)."""
    from transformers import AutoModelForCausalLM
    from verl.models.transformers.monkey_patch import apply_monkey_patch

    model = AutoModelForCausalLM.from_pretrained(setup["policy"])
    try:
        apply_monkey_patch(model, use_remove_padding=False)
    except ImportError as err:
        import trl

        pytest.fail(f"verl cannot build a model in this environment: trl {trl.__version__} is installed, and verl "
                    f"0.9.1 imports AutoModelForCausalLMWithValueHead from trl when trl is importable "
                    f"(monkey_patch.py:352-356): {err}. Keep trl and verl in separate environments (or a trl that "
                    "still has trl.experimental.ppo, e.g. 1.12).")
