"""RED inside TRL's GRPOTrainer, on CPU with TRL's own trainer and tiny models (red_rlhf.integrations.trl).

Skipped when trl is not installed (`pip install -e ".[trl]"`; CI does).
"""

import copy
import inspect
import re
import sys
from functools import partial

import pytest
import torch

trl = pytest.importorskip("trl", reason="trl is not installed: pip install -e '.[trl]' (README 'Using RED from TRL')")

from datasets import Dataset  # noqa: E402  (trl's dependency)
from transformers import AutoTokenizer, HfArgumentParser  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from red_rlhf.config import ConfigError  # noqa: E402
from red_rlhf.core.advantages import group_advantages, group_advantages_reference  # noqa: E402
from red_rlhf.data.toy import PROMPTS as TOY_PROMPTS  # noqa: E402
from red_rlhf.integrations.trl import TRL_DEPENDENCIES, REDGRPOConfig, REDGRPOTrainer  # noqa: E402
from red_rlhf.models.prefix import naive_prefix_scores  # noqa: E402
from red_rlhf.models.sources import HFRewardModel  # noqa: E402
from red_rlhf.models.tiny import save_tiny_reward_model, tiny_causal_lm, tiny_tokenizer, toy_policy, toy_tokenizer  # noqa: E402
from tests.helpers import ROOT, model_score, torchrun  # noqa: E402

PROMPTS = ["The movie was", "Hello world, how are you", "What a delightful"]
GROUP = 4


def char_score(text: str) -> float:
    """A python reward with many distinct values (tests.test_trl:char_score): RED scores it on every prefix."""
    return sum((i % 7 + 1) * ord(c) for i, c in enumerate(text)) % 101 / 10


def trl_char_reward(prompts, completions, completion_ids, tokenizer, **unused):
    """The same reward as a TRL reward function: one number per completion (special tokens kept, as red_rlhf's text
    path keeps them). Bound to the tokenizer with functools.partial."""
    return [char_score(p + tokenizer.decode(ids, skip_special_tokens=False)) for p, ids in zip(prompts, completion_ids)]


@pytest.fixture(scope="module")
def rm_path(tmp_path_factory):
    return str(save_tiny_reward_model(tmp_path_factory.mktemp("trl") / "rm", arch="gpt2", seed=1))


def common(tmp_path, **kw) -> dict:
    return dict(output_dir=str(tmp_path / "out"), num_generations=GROUP, per_device_train_batch_size=len(PROMPTS) * GROUP,
                max_completion_length=8, report_to=[], use_cpu=True, save_strategy="no", seed=0, beta=0.0) | kw


def generated(trainer, prompts=PROMPTS, seed: int = 0) -> dict:
    """One generation batch through TRL's own `_generate_and_score_completions` (groups of GROUP rows in order)."""
    torch.manual_seed(seed)
    trainer.model.train()
    return trainer._generate_and_score_completions([{"prompt": p} for p in prompts for _ in range(GROUP)])


def rows_of(output) -> tuple[list[list[int]], list[list[int]]]:
    """Each row's real prompt ids and completion ids (masks from TRL's own masks)."""
    prompts = [ids[m.bool()].tolist() for ids, m in zip(output["prompt_ids"], output["prompt_mask"])]
    completions = [ids[m.bool()].tolist() for ids, m in zip(output["completion_ids"], output["completion_mask"])]
    return prompts, completions


# ---------------------------------------------------------------- the TRL surface this integration relies on


def test_the_trl_internals_it_relies_on_are_there(tmp_path, rm_path):
    tok = AutoTokenizer.from_pretrained(rm_path)
    trainer = REDGRPOTrainer(model=tiny_causal_lm(tok), args=REDGRPOConfig(**common(tmp_path, red_reward_model=rm_path)),
                             processing_class=tok, train_dataset=Dataset.from_dict({"prompt": PROMPTS}))
    for dotted in TRL_DEPENDENCIES:
        name = re.match(r"GRPOTrainer\.(\w+)", dotted).group(1)
        assert hasattr(GRPOTrainer, name) or hasattr(trainer, name), dotted
    assert list(inspect.signature(GRPOTrainer._calculate_rewards).parameters)[1:] == [
        "inputs", "prompts", "completions", "completion_ids_list"]
    assert isinstance(trainer._logs["advantages"], type(trainer._logs["advantages"])) and trainer.eos_token_ids
    assert trainer.reward_funcs == [trainer.red_reward] and trainer.reward_func_names == ["red"]
    # the installed trl lies in the range the `trl` extra pins (what these tests ran against)
    extra = re.search(r'^trl = \["trl>=([\d.]+),<([\d.]+)"\]', (ROOT / "pyproject.toml").read_text(), re.M)
    version = tuple(int(x) for x in trl.__version__.split(".")[:2])
    low, high = (tuple(int(x) for x in v.split(".")[:2]) for v in extra.groups())
    assert low <= version < high, (trl.__version__, extra.groups())


# ---------------------------------------------------------------- sparse: exactly TRL's own GRPO


@pytest.mark.parametrize("scale", ["none", "batch", "group"])
def test_sparse_scheme_gives_trls_own_advantages_on_the_same_completions(tmp_path, scale):
    tok = tiny_tokenizer("gpt2")
    policy = tiny_causal_lm(tok, seed=0)
    dataset = Dataset.from_dict({"prompt": PROMPTS})
    theirs = GRPOTrainer(model=copy.deepcopy(policy), reward_funcs=[partial(trl_char_reward, tokenizer=tok)], processing_class=tok,
                         args=GRPOConfig(**common(tmp_path, scale_rewards=scale)), train_dataset=dataset)
    ours = REDGRPOTrainer(model=copy.deepcopy(policy), processing_class=tok, train_dataset=dataset, args=REDGRPOConfig(
        **common(tmp_path, scale_rewards=scale), red_reward_function="tests.test_trl:char_score", red_scheme="sparse",
        red_estimator="grpo"))
    a, b = generated(theirs), generated(ours)
    assert torch.equal(a["completion_ids"], b["completion_ids"]) and torch.equal(a["prompt_ids"], b["prompt_ids"])
    assert a["advantages"].shape == (len(PROMPTS) * GROUP,) and b["advantages"].shape == b["completion_ids"].shape
    mask = b["completion_mask"].bool()
    expected = torch.where(mask, a["advantages"][:, None].expand_as(mask), 0.0)  # one number per completion
    assert expected.abs().max() > 0.1  # the rewards differ within groups
    torch.testing.assert_close(b["advantages"], expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- RED: each token's advantage is group_advantages'


def independent_red_rewards(rm, prompts, completions) -> tuple[torch.Tensor, torch.Tensor]:
    """r_t = s_t - s_{t-1} from the reward model's own forward on each unpadded prefix (the slow definition)."""
    width = max(len(c) for c in completions)
    rewards, mask = torch.zeros(len(prompts), width, dtype=torch.float64), torch.zeros(len(prompts), width, dtype=torch.bool)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids = torch.tensor([p + c])
        scores = naive_prefix_scores(rm, ids, torch.ones_like(ids))[0].double()  # (P + n,)
        rewards[i, : len(c)] = scores[len(p):] - scores[len(p) - 1: -1]
        mask[i, : len(c)] = True
    return rewards, mask


@pytest.mark.parametrize("estimator", ["rloo", "grpo"])
def test_red_token_advantages_are_the_group_estimators_on_the_prefix_score_differences(tmp_path, rm_path, estimator):
    tok = AutoTokenizer.from_pretrained(rm_path)  # the reward model's own tokenizer: the one-forward path
    trainer = REDGRPOTrainer(model=tiny_causal_lm(tok, seed=0), processing_class=tok, args=REDGRPOConfig(
        **common(tmp_path), red_reward_model=rm_path, red_estimator=estimator),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}))
    assert trainer.red_sources[0].reward.reads_policy_tokens(tok)
    out = generated(trainer)
    prompts, completions = rows_of(out)
    rewards, mask = independent_red_rewards(trainer.red_sources[0].reward.model, prompts, completions)
    groups = torch.arange(len(prompts)) // GROUP
    expected = group_advantages_reference(rewards, mask, groups, estimator)  # python loops
    got = out["advantages"][:, : expected.shape[1]]
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)
    assert (out["advantages"][:, expected.shape[1]:] == 0).all()
    dense = [len(set(row[m].round(decimals=4).tolist())) for row, m in zip(got, mask)]
    assert max(dense) >= 4, dense  # token by token, not one number per completion


def test_several_weighted_sources_add_up_per_token(tmp_path, rm_path):
    tok = AutoTokenizer.from_pretrained(rm_path)
    sources = [{"name": "helpful", "model": rm_path, "weight": 0.5},
               {"name": "long", "model": rm_path, "kind": "cost", "weight": 0.25, "scheme": "sparse"}]
    trainer = REDGRPOTrainer(model=tiny_causal_lm(tok, seed=0), processing_class=tok, args=REDGRPOConfig(
        **common(tmp_path), red_reward_sources=sources), train_dataset=Dataset.from_dict({"prompt": PROMPTS}))
    out = generated(trainer)
    prompts, completions = rows_of(out)
    red, mask = independent_red_rewards(trainer.red_sources[0].reward.model, prompts, completions)
    final = torch.zeros_like(red)  # the cost's sparse reward: R(x, y) on each completion's last token
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids = torch.tensor([p + c])
        final[i, len(c) - 1] = naive_prefix_scores(trainer.red_sources[1].reward.model, ids, torch.ones_like(ids))[0, -1]
    expected = group_advantages_reference(0.5 * red - 0.25 * final, mask, torch.arange(len(prompts)) // GROUP, "rloo")
    torch.testing.assert_close(out["advantages"][:, : expected.shape[1]].double(), expected, rtol=1e-4, atol=1e-4)


def test_a_reward_model_with_another_tokenizer_scores_the_policys_completions(tmp_path, rm_path):
    tok = tiny_tokenizer("gpt2", vocab_size=290)  # other merges than the reward model's 400-token vocabulary
    trainer = REDGRPOTrainer(model=tiny_causal_lm(tok, seed=0), processing_class=tok, args=REDGRPOConfig(
        **common(tmp_path), red_reward_model=rm_path), train_dataset=Dataset.from_dict({"prompt": PROMPTS}))
    rm: HFRewardModel = trainer.red_sources[0].reward
    assert not rm.reads_policy_tokens(tok)  # the text path: decoded once, scored on the RM's tokens, aligned
    out = generated(trainer)
    _, completions = rows_of(out)
    texts = [tok.decode(c, skip_special_tokens=False) for c in completions]
    prompts = [p for p in PROMPTS for _ in range(GROUP)]
    final = torch.tensor([model_score(rm.model, rm.tokenizer, p + t) for p, t in zip(prompts, texts)])  # R(x, y_i)
    # the first token's return-to-go is R(x, y_i) - R(x); leave-one-out baselines cancel R(x)
    totals = final.view(-1, GROUP)
    expected_first = (totals - (totals.sum(-1, keepdim=True) - totals) / (GROUP - 1)).flatten()
    torch.testing.assert_close(out["advantages"][:, 0].double(), expected_first.double(), rtol=1e-4, atol=1e-4)
    mask = out["completion_mask"].bool()
    dense = [len(set(row[m].round(decimals=4).tolist())) for row, m in zip(out["advantages"], mask)]
    assert max(dense) >= 3, dense


def test_conversational_prompts_reach_a_chat_reward_model_as_the_last_user_message(tmp_path):
    from red_rlhf.models.tiny import tiny_reward_model

    rm_tok = tiny_tokenizer("gpt2", chat=True)  # a reward model that applies its own (ChatML) template
    rm_dir = tmp_path / "chat-rm"
    tiny_reward_model("gpt2", len(rm_tok), pad_token_id=rm_tok.pad_token_id, seed=4).save_pretrained(rm_dir)
    rm_tok.save_pretrained(rm_dir)
    tok = tiny_tokenizer("gpt2", vocab_size=290, chat=True)  # the policy renders its own chat template
    chats = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": p}] for p in PROMPTS]
    trainer = REDGRPOTrainer(model=tiny_causal_lm(tok, seed=0), processing_class=tok, args=REDGRPOConfig(
        **common(tmp_path), red_reward_model=str(rm_dir)), train_dataset=Dataset.from_dict({"prompt": chats}))
    rm: HFRewardModel = trainer.red_sources[0].reward
    assert rm.format == "chat"
    torch.manual_seed(0)
    trainer.model.train()
    out = trainer._generate_and_score_completions([{"prompt": c} for c in chats for _ in range(GROUP)])
    assert "<|im_start|>" in tok.decode(out["prompt_ids"][0])  # the policy saw its chat template
    _, completions = rows_of(out)
    final = []
    for prompt, ids in zip([p for p in PROMPTS for _ in range(GROUP)], completions):
        chat = [{"role": "user", "content": prompt}, {"role": "assistant", "content": tok.decode(ids)}]
        final.append(model_score(rm.model, rm_tok, rm_tok.apply_chat_template(chat, tokenize=False),
                                 add_special_tokens=False))
    totals = torch.tensor(final).view(-1, GROUP)  # R(x, y_i): the last user message and the completion, RM template
    expected_first = (totals - (totals.sum(-1, keepdim=True) - totals) / (GROUP - 1)).flatten()
    torch.testing.assert_close(out["advantages"][:, 0].double(), expected_first.double(), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- a 2-step run: what the loss receives


class Recording(REDGRPOTrainer):
    """Keeps each generation batch (with the token rewards it came from) and every tensor the loss receives."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.batches, self.losses = [], []

    def _token_advantages(self, rows, output):
        advantages = super()._token_advantages(rows, output)
        self.batches.append({"rewards": rows.rewards.clone(), "completion_ids": output["completion_ids"].clone(),
                             "prompt_ids": output["prompt_ids"].clone(), "advantages": advantages.clone(),
                             "mask": output["completion_mask"].bool().clone()})
        return advantages

    def _compute_loss(self, model, inputs):
        self.losses.append({k: inputs[k].clone() for k in ("advantages", "completion_ids", "prompt_ids")})
        return super()._compute_loss(model, inputs)


def test_two_training_steps_on_the_toy_task_feed_the_loss_per_token_advantages(tmp_path):
    tok = toy_tokenizer()
    policy = toy_policy(tok, seed=0)
    before = copy.deepcopy(policy.state_dict())
    args = REDGRPOConfig(**common(tmp_path, max_steps=2, learning_rate=1e-2, per_device_train_batch_size=16,
                                  max_completion_length=12, logging_steps=1),
                         red_reward_function="red_rlhf.data.toy:target_fraction", red_reward_takes_prompt=True)
    trainer = Recording(model=policy, args=args, processing_class=tok,
                        train_dataset=Dataset.from_dict({"prompt": TOY_PROMPTS}))
    trainer.train()
    assert len(trainer.batches) == 2 and len(trainer.losses) == 2  # one generation batch per step here
    for batch, received in zip(trainer.batches, trainer.losses):
        # what was computed: group_advantages on the token rewards REDScores kept, groups of GROUP rows in order
        rewards = torch.zeros(batch["advantages"].shape, dtype=torch.float64)
        rewards[:, : batch["rewards"].shape[1]] = batch["rewards"]
        mask = batch["mask"]  # TRL's completion mask: each completion up to and including its EOS
        groups = torch.arange(len(rewards)) // GROUP
        expected = group_advantages(rewards, mask, groups, "rloo").float()
        torch.testing.assert_close(batch["advantages"], expected)
        # what the loss received: the same (B, T) tensor, rows shuffled by TRL together with their ids
        assert received["advantages"].shape == received["completion_ids"].shape
        for adv, ids, pids in zip(received["advantages"], received["completion_ids"], received["prompt_ids"]):
            same = [i for i in range(len(expected)) if torch.equal(batch["completion_ids"][i], ids)
                    and torch.equal(batch["prompt_ids"][i], pids)]
            assert same and all(torch.equal(adv, batch["advantages"][i]) for i in same)
        varies = [(row[m][1:] != row[m][:-1]).any().item() for row, m in zip(received["advantages"], mask)]
        assert any(varies)  # per-token values, not one number broadcast over a completion
    assert any(not torch.equal(before[n], v) for n, v in policy.state_dict().items())


# ---------------------------------------------------------------- 2 processes equal 1


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo is tested on Linux")
def test_two_processes_give_the_advantages_and_loss_of_one(tmp_path, rm_path):
    torchrun(1, str(ROOT / "tests" / "trl_worker.py"), rm_path, str(tmp_path / "one"))
    torchrun(2, str(ROOT / "tests" / "trl_worker.py"), rm_path, str(tmp_path / "two"))
    one = torch.load(tmp_path / "one.rank0.pt")
    parts = [torch.load(tmp_path / f"two.rank{r}.pt") for r in (0, 1)]
    assert [p["advantages"].shape[1] for p in parts] == [7, 5]  # the processes pad to different widths
    for part in parts:
        rows, width = part["rows"], part["advantages"].shape[1]
        torch.testing.assert_close(part["advantages"], one["advantages"][rows, :width], rtol=1e-5, atol=1e-6)
        assert (one["advantages"][rows, width:] == 0).all()
    # the middle group (rows 4-7) spans both processes: its baselines needed the other process's rows
    assert one["advantages"][4:8].abs().sum() > 0
    assert sum(p["loss"] for p in parts) / 2 == pytest.approx(one["loss"], rel=1e-5, abs=1e-6)
    for part in parts:  # the completions table's per-completion advantage: the first token's, whole batch
        assert part["logged"] == pytest.approx(one["logged"], rel=1e-5, abs=1e-6)
    assert one["logged"] == pytest.approx(one["advantages"][:, 0].tolist(), rel=1e-5, abs=1e-6)


# ---------------------------------------------------------------- configuration the TRL way


def test_the_red_fields_parse_from_the_command_line_like_any_grpo_field():
    (args,) = HfArgumentParser(REDGRPOConfig).parse_args_into_dataclasses([
        "--output_dir", "x", "--use_cpu", "--red_reward_sources",
        '[{"name": "helpful", "function": "tests.test_trl:char_score"}, '
        '{"name": "short", "function": "tests.test_trl:char_score", "kind": "cost", "weight": 0.5, "scheme": "sparse"}]',
        "--red_estimator", "grpo", "--scale_rewards", "batch", "--red_beta_c", "0.5"])
    assert [s.name for s in args.red_config.reward.sources] == ["helpful", "short"]
    assert args.red_config.reward.sources[1].weight == 0.5 and args.red_config.reward.beta_c == 0.5
    assert args.red_estimator == "grpo" and args.scale_rewards == "batch"


@pytest.mark.parametrize("fields, message", [
    ({}, "no RED reward: set red_reward_model"),
    ({"red_reward_function": "tests.test_trl:char_score", "scale_rewards": "group"},
     "scale_rewards='group' with RED token rewards"),
    ({"red_reward_function": "tests.test_trl:char_score", "red_scheme": "dense"}, "red_scheme must be one of"),
    ({"red_reward_function": "tests.test_trl:char_score", "red_beta_c": 2.0}, "red_beta_c must be in [0, 1]"),
    ({"red_reward_function": "tests.test_trl:char_score", "red_estimator": "ppo"}, "red_estimator must be one of"),
    ({"red_reward_function": "tests.test_trl:char_score", "red_gamma": 1.5}, "red_gamma must be in [0, 1]"),
    ({"red_reward_function": "tests.test_trl:char_score", "red_prompt_text": "raw"}, "red_prompt_text must be one of"),
    ({"red_reward_function": "no_colon"}, "red_reward_function must look like 'package.module:function'"),
    ({"red_reward_function": "tests.test_trl:char_score", "red_reward_model": "rm"}, "set exactly one of red_reward_model"),
    ({"red_reward_sources": [{"name": "c", "function": "m:f", "kind": "cost", "limit": 1.0},
                             {"name": "r", "function": "m:f"}]}, "red_reward_sources[0].limit"),
    ({"red_reward_sources": [{"name": "a", "function": "m:f", "weight": -1}]}, "red_reward_sources[0].weight"),
    ({"red_reward_sources": "[not json"}, "red_reward_sources: not a JSON list"),
    ({"red_reward_function": "tests.test_trl:char_score", "reward_weights": [1.0]}, "reward_weights"),
    ({"red_reward_function": "tests.test_trl:char_score", "loss_type": "vespo"}, "loss_type='vespo'"),
    ({"red_reward_function": "tests.test_trl:char_score", "multi_objective_aggregation": "normalize_then_sum"},
     "multi_objective_aggregation"),
    ({"red_reward_function": "tests.test_trl:char_score", "off_policy_mask_threshold": 0.5}, "off_policy_mask_threshold"),
])
def test_bad_red_settings_are_refused_naming_the_field(fields, message):
    with pytest.raises(ConfigError) as err:
        REDGRPOConfig(output_dir="x", use_cpu=True, **fields)
    assert message in str(err.value)


def test_per_group_std_is_allowed_when_every_source_is_sparse():
    args = REDGRPOConfig(output_dir="x", use_cpu=True, red_reward_function="tests.test_trl:char_score",
                         red_scheme="sparse", scale_rewards="group")
    assert args.scale_rewards == "group"


def test_trl_reward_functions_tools_and_a_plain_grpo_config_are_refused(tmp_path, rm_path):
    tok = AutoTokenizer.from_pretrained(rm_path)
    args = REDGRPOConfig(**common(tmp_path, red_reward_model=rm_path))
    with pytest.raises(ConfigError, match="not reward_funcs"):
        REDGRPOTrainer(model=tiny_causal_lm(tok), reward_funcs=[partial(trl_char_reward, tokenizer=tok)], args=args, processing_class=tok)
    with pytest.raises(ConfigError, match="does not support tools"):
        REDGRPOTrainer(model=tiny_causal_lm(tok), args=args, processing_class=tok, tools=[len])
    with pytest.raises(ConfigError, match="REDGRPOConfig"):
        REDGRPOTrainer(model=tiny_causal_lm(tok), args=GRPOConfig(**common(tmp_path)), processing_class=tok)


def test_a_reward_model_that_cannot_load_names_the_field(tmp_path):
    tok = tiny_tokenizer("gpt2")
    args = REDGRPOConfig(**common(tmp_path, red_reward_model=str(tmp_path / "missing")))
    with pytest.raises(ConfigError, match=r"red_reward_model: cannot load"):
        REDGRPOTrainer(model=tiny_causal_lm(tok), args=args, processing_class=tok,
                       train_dataset=Dataset.from_dict({"prompt": PROMPTS}))



def test_the_example_config_parses_and_passes_the_checks():
    from trl import ModelConfig, ScriptArguments, TrlParser

    script, args, model = TrlParser((ScriptArguments, REDGRPOConfig, ModelConfig)).parse_args_and_config(
        ["--config", str(ROOT / "examples" / "trl" / "red_grpo.yaml"), "--use_cpu", "true", "--bf16", "false"])
    assert model.model_name_or_path == "Qwen/Qwen2.5-0.5B-Instruct" and script.dataset_name
    assert args.red_config.reward.model == "Skywork/Skywork-Reward-V2-Qwen3-0.6B" and args.scale_rewards == "batch"
    assert args.red_scheme == "red" and args.red_estimator == "rloo" and args.beta > 0
    with pytest.raises(ConfigError, match="scale_rewards='group'"):  # the command line overrides the file
        TrlParser((ScriptArguments, REDGRPOConfig, ModelConfig)).parse_args_and_config(
            ["--config", str(ROOT / "examples" / "trl" / "red_grpo.yaml"), "--use_cpu", "true", "--bf16", "false",
             "--scale_rewards", "group"])
