"""RED token rewards inside verl, on CPU, with verl's own code (loader, reward-loop worker, KL penalty, GAE).

Skipped when verl is not installed (`make verl` installs it into .venv; CI does).
"""

import asyncio

import pytest
import torch

verl = pytest.importorskip("verl", reason="verl is not installed: run `make verl` (README 'Scaling out on verl')")

from omegaconf import OmegaConf, open_dict  # noqa: E402  (verl's dependency)
from verl import DataProto  # noqa: E402
from verl.experimental.reward_loop.reward_loop import RewardLoopWorker  # noqa: E402
from verl.trainer.config import AlgoConfig  # noqa: E402
from verl.trainer.ppo.core_algos import AdvantageEstimator, FixedKLController  # noqa: E402
from verl.trainer.ppo.ray_trainer import apply_kl_penalty, compute_advantage  # noqa: E402
from verl.trainer.ppo.reward import load_reward_manager  # noqa: E402

import red_rlhf.integrations.verl as red_verl  # noqa: E402
from red_rlhf.integrations.verl_check import main as verl_check_main, red_config, rm_scores_through_verl, verl_layout  # noqa: E402
from red_rlhf.config import ConfigError  # noqa: E402
from red_rlhf.models.scorer import TokenRewardScorer  # noqa: E402
from red_rlhf.models.sources import HFRewardModel  # noqa: E402
from red_rlhf.models.tiny import save_tiny_reward_model, tiny_tokenizer  # noqa: E402

PROMPTS = ["The movie was", "Hello world, how are you", "What a delightful"]
RESPONSES = [" good and the acting was great.", " fine, thank you.", " surprise: funny, warm"]


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    """A reward model and two policy tokenizers on disk, as verl loads them (pad == eos in both policies)."""
    root = tmp_path_factory.mktemp("verl")
    rm = save_tiny_reward_model(root / "rm", arch="gpt2", seed=1)
    same = root / "policy-same"
    tiny_tokenizer("gpt2", pad_equals_eos=True).save_pretrained(same)  # the reward model's vocabulary
    other = root / "policy-other"
    tiny_tokenizer("gpt2", vocab_size=290, pad_equals_eos=True).save_pretrained(other)  # other merges
    return {"rm": str(rm), "same": str(same), "other": str(other)}


def policy_tokenizer(paths, policy: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(paths[policy])


def verl_config(policy: str, rm: str, *, estimator: str = "gae", **reward_kwargs):
    return red_config(policy, rm, estimator=estimator, **reward_kwargs)


def verl_batch(tok, prompts, responses, *, response_length: int = 12, eos: bool = True, layout: str = "v0",
               raw_prompts=None) -> DataProto:
    """Texts laid out as verl hands them to the reward step (see verl_layout)."""
    response_rows = [tok(r).input_ids + [tok.eos_token_id] * eos for r in responses]
    return verl_layout([tok(p).input_ids for p in prompts], response_rows, tok.pad_token_id, response_length, layout,
                       raw_prompts or prompts)


def scorer_rows(rm_path, policy_path, prompts, texts, **kw):
    from transformers import AutoTokenizer

    source = HFRewardModel.from_pretrained(rm_path)
    return TokenRewardScorer(source, policy_tokenizer=AutoTokenizer.from_pretrained(policy_path), **kw).score(prompts, texts)


@pytest.mark.parametrize("policy, layout", [("same", "v0"), ("other", "v0"), ("same", "v1"), ("other", "v1"),
                                            ("rm", "v0"), ("rm", "v1")])
def test_rows_equal_red_rlhf_scorer_and_sum_to_score_difference(paths, policy, layout):
    """Policy "rm" is the reward model's own tokenizer (one forward over the policy's ids); "same" has its vocabulary
    but pad == eos, "other" other merges (both: decoded once and aligned by characters)."""
    config = verl_config(paths[policy], paths["rm"])
    tok = policy_tokenizer(paths, policy)
    manager = load_reward_manager(config, tok)
    assert isinstance(manager, red_verl.REDRewardManager)
    assert manager.sources[0].reward.reads_policy_tokens(tok) == (policy == "rm")
    data = verl_batch(tok, PROMPTS, RESPONSES, response_length=24, layout=layout)
    rm_scores, outputs = rm_scores_through_verl(config, data)
    assert rm_scores.shape == data.batch["responses"].shape
    expected = scorer_rows(paths["rm"], paths[policy], PROMPTS, [r + tok.eos_token for r in RESPONSES])
    for i, scored in enumerate(expected):
        n = len(scored.rewards)
        assert int(data.batch["attention_mask"][i, data.batch["prompts"].shape[1]:].sum()) == n
        torch.testing.assert_close(rm_scores[i, :n], torch.tensor(scored.rewards, dtype=torch.float32))
        assert rm_scores[i, n:].abs().sum() == 0  # nothing on padding, even where pad == eos
        torch.testing.assert_close(rm_scores[i].sum().double(),
                                   torch.tensor(scored.final_score - scored.prompt_score, dtype=torch.float64),
                                   atol=1e-5, rtol=0)
        assert outputs[i]["reward_extra_info"]["red_score"] == pytest.approx(scored.final_score, abs=1e-6)


def test_response_without_eos_and_missing_eos_penalty(paths):
    tok = tiny_tokenizer("gpt2", pad_equals_eos=True)
    responses = [" good and the acting was great.", " fine."]  # 9 and 2 tokens: the first is cut at 6, without EOS
    data = verl_batch(tok, PROMPTS[:2], responses, response_length=6)
    plain, _ = rm_scores_through_verl(verl_config(paths["same"], paths["rm"]), data)
    penalised, _ = rm_scores_through_verl(verl_config(paths["same"], paths["rm"], missing_eos_penalty=2.0), data)
    texts = [tok.decode(tok(responses[0]).input_ids[:6]), responses[1] + tok.eos_token]
    for i, scored in enumerate(scorer_rows(paths["rm"], paths["same"], PROMPTS[:2], texts)):
        n = len(scored.rewards)
        assert n == [6, 3][i]
        torch.testing.assert_close(plain[i, :n], torch.tensor(scored.rewards, dtype=torch.float32))
        torch.testing.assert_close(plain[i].sum().double(), torch.tensor(scored.final_score - scored.prompt_score,
                                                                         dtype=torch.float64), atol=1e-5, rtol=0)
    expected = torch.zeros_like(plain)
    expected[0, 5] = -2.0  # only the cut row, on its last token; the row that ended with EOS is untouched
    torch.testing.assert_close(penalised - plain, expected)


def test_prompt_text_last_user_reads_raw_prompt(paths):
    tok = tiny_tokenizer("gpt2", pad_equals_eos=True)
    rendered = ["User: " + p + "\nAssistant:" for p in PROMPTS]  # the policy's own rendering of the chat
    data = verl_batch(tok, rendered, RESPONSES, response_length=24, raw_prompts=PROMPTS)
    rm_scores, _ = rm_scores_through_verl(verl_config(paths["same"], paths["rm"], prompt_text="last_user"), data)
    texts = [r + tok.eos_token for r in RESPONSES]
    for i, scored in enumerate(scorer_rows(paths["rm"], paths["same"], PROMPTS, texts)):
        torch.testing.assert_close(rm_scores[i, : len(scored.rewards)], torch.tensor(scored.rewards, dtype=torch.float32))
    decoded, _ = rm_scores_through_verl(verl_config(paths["same"], paths["rm"]), data)
    assert not torch.allclose(decoded, rm_scores)  # the default reads the rendered prompt instead


def test_verl_kl_penalty_and_gae_on_red_rewards(paths):
    tok = tiny_tokenizer("gpt2", pad_equals_eos=True)
    data = verl_batch(tok, PROMPTS, RESPONSES, response_length=16)
    rm_scores, _ = rm_scores_through_verl(verl_config(paths["same"], paths["rm"]), data)
    mask = data.batch["response_mask"].float()  # (B, R)
    torch.manual_seed(0)
    old_log_probs, ref_log_prob = -torch.rand(mask.shape), -torch.rand(mask.shape)
    data.batch["token_level_scores"] = rm_scores
    data.batch["old_log_probs"], data.batch["ref_log_prob"] = old_log_probs, ref_log_prob
    data.batch["values"] = torch.zeros(mask.shape)
    data, _ = apply_kl_penalty(data, FixedKLController(kl_coef=0.1), kl_penalty="kl")
    rewards = data.batch["token_level_rewards"]
    torch.testing.assert_close(rewards, rm_scores - 0.1 * (old_log_probs - ref_log_prob) * mask)
    data = compute_advantage(data, AdvantageEstimator.GAE, gamma=1.0, lam=1.0, config=AlgoConfig())
    # values 0, gamma = lam = 1: GAE's returns are the reward-to-go of each token, so RED's per-token credit survives
    to_go = (rewards * mask).flip(-1).cumsum(-1).flip(-1) * mask
    torch.testing.assert_close(data.batch["returns"] * mask, to_go)
    assert not torch.allclose(to_go[:, 0:1].expand_as(to_go) * mask, to_go)  # returns vary within a row (not sparse)


def test_whole_chunk_is_one_batch_scored_off_the_event_loop(paths, monkeypatch):
    config = verl_config(paths["same"], paths["rm"])
    worker = RewardLoopWorker(config)
    calls = []
    original = red_verl.REDRewardManager.score_rows

    def spy(self, rows):
        import threading

        calls.append((len(rows), threading.current_thread().name))
        return original(self, rows)

    monkeypatch.setattr(red_verl.REDRewardManager, "score_rows", spy)
    data = verl_batch(tiny_tokenizer("gpt2", pad_equals_eos=True), PROMPTS, RESPONSES)
    asyncio.run(worker.compute_score_batch(data))
    assert [n for n, _ in calls] == [len(PROMPTS)]
    assert calls[0][1].startswith("red-reward")


def test_sources_load_once_per_process(paths):
    config = verl_config(paths["same"], paths["rm"], scheme="sparse")
    tok = tiny_tokenizer("gpt2", pad_equals_eos=True)
    first, second = load_reward_manager(config, tok), load_reward_manager(config, tok)
    assert first.sources is second.sources


@pytest.mark.parametrize("change, message", [
    ({"reward.reward_model.enable": False}, "streaming route"),
    ({"reward.reward_model.enable_resource_pool": True}, "streaming route"),
    ({"reward.reward_model.enable": False, "reward.reward_kwargs": {}}, "streaming route"),  # the route comes first
    ({"reward.reward_kwargs": {}}, "reward.reward_kwargs is empty"),
    ({"reward.custom_reward_function.path": None}, "reward.custom_reward_function.path is not set"),
    ({"algorithm.adv_estimator": "grpo"}, "use algorithm.adv_estimator=red_grpo"),
    ({"algorithm.adv_estimator": "rloo"}, "use algorithm.adv_estimator=red_rloo"),
    ({"algorithm.adv_estimator": "my_estimator"}, "reward.reward_kwargs.allow_estimator=my_estimator"),
    ({"reward.reward_kwargs.sheme": "red"}, "unknown config key reward.reward_kwargs.sheme"),
    ({"reward.reward_kwargs.scheme": "dense"}, "reward.reward_kwargs.scheme must be one of"),
    ({"reward.reward_kwargs.beta_c": 2.0}, "reward.reward_kwargs.beta_c must be in [0, 1]"),
    ({"reward.reward_kwargs.device": "gpu"}, "reward.reward_kwargs.device must be"),
    ({"reward.reward_kwargs.model": "/nonexistent/rm"}, "reward.reward_kwargs.model: cannot load '/nonexistent/rm'"),
    ({"reward.reward_kwargs": {"sources": [{"name": "rm", "model": "x"},
                                           {"name": "cost", "model": "x", "kind": "cost", "limit": 1.0}]}},
     "reward.reward_kwargs.sources[1].limit"),
])
def test_refusals_name_the_key(paths, change, message):
    config = verl_config(paths["same"], paths["rm"])
    with open_dict(config):
        for key, value in change.items():
            if key == "reward.reward_kwargs":
                config.reward.reward_kwargs = value  # replaced whole (update would merge it into the old one)
            else:
                OmegaConf.update(config, key, value, force_add=True)
    with pytest.raises(ConfigError) as err:
        load_reward_manager(config, tiny_tokenizer("gpt2", pad_equals_eos=True))
    assert message in str(err.value)


def test_custom_estimator_allowed_by_name(paths):
    config = verl_config(paths["same"], paths["rm"], estimator="my_estimator", allow_estimator="my_estimator")
    assert isinstance(load_reward_manager(config, tiny_tokenizer("gpt2", pad_equals_eos=True)), red_verl.REDRewardManager)


def test_float_rows_are_refused_by_assembly(paths):
    data = verl_batch(tiny_tokenizer("gpt2", pad_equals_eos=True), PROMPTS, RESPONSES)
    with pytest.raises(TypeError, match="one reward per response token"):
        red_verl.REDRewardManager.assemble_rm_scores(data, [1.0, 2.0, 3.0])


@pytest.fixture(scope="module")
def tiny_policy_dir(paths, tmp_path_factory):
    """A tiny causal LM with the pad == eos policy tokenizer: what verl's config checks load as a policy/critic."""
    from transformers import AutoTokenizer

    from tests.helpers import save_tiny_policy

    return save_tiny_policy(AutoTokenizer.from_pretrained(paths["same"]), tmp_path_factory.mktemp("verl-policy"))


def test_recipe_composes_and_passes_the_checks(paths, tiny_policy_dir):
    """examples/verl/red_ppo.yaml through verl's Hydra config and validate_config, model paths swapped for tiny ones."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    recipe = Path(__file__).resolve().parents[1] / "examples" / "verl"
    with initialize_config_dir(config_dir=str(recipe), version_base=None):
        config = compose(config_name="red_ppo", overrides=[
            f"actor_rollout_ref.model.path={tiny_policy_dir}", f"critic.model.path={tiny_policy_dir}",
            f"reward.reward_model.model_path={paths['rm']}", f"reward.reward_kwargs.model={paths['rm']}",
            "reward.reward_kwargs.device=cpu"])
    assert need_critic(config) and need_reference_policy(config)  # GAE's critic; the reference for verl's KL
    validate_config(config=config, use_reference_policy=True, use_critic=True)
    manager = load_reward_manager(config, tiny_tokenizer("gpt2", pad_equals_eos=True))
    assert isinstance(manager, red_verl.REDRewardManager) and manager.settings.prompt_text == "last_user"


def test_prepared_prompts_load_in_verl_dataset(paths, tmp_path):
    import sys
    from pathlib import Path

    from verl.utils.dataset.rl_dataset import RLHFDataset

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "verl"))
    try:
        from prepare_prompts import write_splits
    finally:
        sys.path.pop(0)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("first prompt\nsecond prompt\nthird prompt\n", encoding="utf-8")
    train, val = write_splits(str(prompts), tmp_path / "out", val_size=1)
    dataset = RLHFDataset(str(train), tiny_tokenizer("gpt2", chat=True),  # a chat policy: the length filter renders it
                          OmegaConf.create({"cache_dir": str(tmp_path / "cache"), "return_raw_chat": True}))
    assert len(dataset) == 2
    assert dataset[1]["raw_prompt"] == [{"role": "user", "content": "second prompt"}]


def test_verl_check_prints_the_scorers_row_and_verls_returns(paths, capsys):
    verl_check_main(["--reward-model", paths["rm"], "--policy-tokenizer", paths["same"], "--prompt", PROMPTS[0],
                     "--response", RESPONSES[0]])
    lines = capsys.readouterr().out.splitlines()
    table = [line.split() for line in lines[2:]]
    rewards, returns = [float(r[-3]) for r in table], [float(r[-2]) for r in table]
    tok = tiny_tokenizer("gpt2", pad_equals_eos=True)
    [scored] = scorer_rows(paths["rm"], paths["same"], PROMPTS[:1], [RESPONSES[0] + tok.eos_token])
    assert rewards == pytest.approx(scored.rewards, abs=1e-4)
    assert returns == pytest.approx([sum(scored.rewards[t:]) for t in range(len(scored.rewards))], abs=1e-3)
