"""red_rloo / red_grpo inside verl, on CPU, through verl's own compute_advantage and registry.

Skipped when verl is not installed (`make verl` installs it into .venv; CI does).
"""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("verl", reason="verl is not installed: run `make verl` (README 'Scaling out on verl')")

from omegaconf import OmegaConf, open_dict  # noqa: E402  (verl's dependency)
from verl import DataProto  # noqa: E402
from verl.trainer.config import AlgoConfig  # noqa: E402
from verl.trainer.ppo import core_algos  # noqa: E402
from verl.trainer.ppo.core_algos import AdvantageEstimator  # noqa: E402
from verl.trainer.ppo.ray_trainer import compute_advantage  # noqa: E402
from verl.trainer.ppo.reward import load_reward_manager  # noqa: E402

import red_rlhf.integrations.verl as red_verl  # noqa: E402  (registers red_rloo / red_grpo)
from red_rlhf.config import ConfigError  # noqa: E402
from red_rlhf.core.advantages import group_advantages, group_advantages_reference, returns_to_go  # noqa: E402
from red_rlhf.core.redistribute import redistribute  # noqa: E402
from red_rlhf.integrations import verl_estimators  # noqa: E402
from red_rlhf.integrations.verl_check import red_config  # noqa: E402
from red_rlhf.models.tiny import save_tiny_reward_model, tiny_tokenizer  # noqa: E402
from tests.helpers import bandit_gradients  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OURS = {"red_rloo": "rloo", "red_grpo": "grpo"}


def batch(rewards, mask, uids) -> DataProto:
    return DataProto.from_dict(tensors={"token_level_rewards": rewards.clone(), "response_mask": mask.long()},
                               non_tensors={"uid": np.array(uids, dtype=object)})


def verl_advantages(name, rewards, mask, uids, **algo) -> torch.Tensor:
    """verl's compute_advantage with verl's AlgoConfig; verl's own grpo takes its std switch as an argument."""
    config = AlgoConfig(**algo)
    out = compute_advantage(batch(rewards, mask, uids), name, config=config,
                            norm_adv_by_std_in_grpo=config.norm_adv_by_std_in_grpo)
    return out.batch["advantages"]


def rollouts(seed=0, groups=3, k=4, width=7):
    """Random token rewards for groups x k responses of random lengths, rows shuffled (uids interleaved)."""
    g = torch.Generator().manual_seed(seed)
    rows = groups * k
    lengths = torch.randint(1, width + 1, (rows,), generator=g)
    mask = torch.arange(width)[None, :] < lengths[:, None]
    rewards = torch.where(mask, torch.randn(rows, width, generator=g), 0)
    uids = [f"prompt-{i // k}" for i in range(rows)]  # verl's uids are strings (uuid4)
    order = torch.randperm(rows, generator=g)
    return rewards[order], mask[order], [uids[i] for i in order.tolist()]


def ids_of(uids):
    return torch.tensor([sorted(set(uids)).index(u) for u in uids])


def test_registered_with_verl_on_import_and_registering_again_is_a_no_op(monkeypatch):
    from verl.utils.import_utils import load_extern_object

    for name, fn in verl_estimators.FUNCTIONS.items():
        assert core_algos.get_adv_estimator_fn(name) is fn
    verl_estimators.register()  # again: no error
    # verl loads a file:// module path as a fresh module (import_utils.py:181-189): a second copy of the manager
    # module and of the estimators module, each registering on import
    manager = load_extern_object(str(ROOT / "red_rlhf" / "integrations" / "verl.py"), "REDRewardManager")
    assert manager is not red_verl.REDRewardManager
    copy = load_extern_object(str(ROOT / "red_rlhf" / "integrations" / "verl_estimators.py"), "FUNCTIONS")
    assert copy["red_grpo"] is not verl_estimators.compute_red_grpo_advantage
    for name, fn in verl_estimators.FUNCTIONS.items():
        assert core_algos.get_adv_estimator_fn(name) is fn  # the first registration stays
    monkeypatch.setitem(core_algos.ADV_ESTIMATOR_REGISTRY, "red_grpo", lambda **kw: None)
    with pytest.raises(ValueError, match="named 'red_grpo'.*not red_rlhf's"):
        verl_estimators.register()


@pytest.mark.parametrize("name", ["red_rloo", "red_grpo"])
@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_verl_compute_advantage_equals_ours(name, gamma):
    rewards, mask, uids = rollouts()
    got = verl_advantages(name, rewards, mask, uids, gamma=gamma, norm_adv_by_std_in_grpo=False)
    torch.testing.assert_close(got, group_advantages_reference(rewards, mask, ids_of(uids), OURS[name], gamma))
    # std on: red_grpo divides by ONE std, that of the full returns over the batch; red_rloo ignores it (as rloo)
    scaled = verl_advantages(name, rewards, mask, uids, gamma=gamma, norm_adv_by_std_in_grpo=True)
    std = returns_to_go(rewards, mask, gamma)[:, 0].std()
    torch.testing.assert_close(scaled, got / (std + 1e-6) if name == "red_grpo" else got)


@pytest.mark.parametrize("name", ["red_rloo", "red_grpo"])
def test_permuting_rows_changes_nothing(name):
    rewards, mask, uids = rollouts(seed=1)
    got = verl_advantages(name, rewards, mask, uids)
    order = torch.randperm(len(uids), generator=torch.Generator().manual_seed(5))
    permuted = verl_advantages(name, rewards[order], mask[order], [uids[i] for i in order.tolist()])
    torch.testing.assert_close(permuted, got[order])


def sparse_and_red(seed=2, groups=3, k=4, width=6):
    """Prefix scores s_0 .. s_T per response (s_0 the prompt's, shared by a group) -> RED and sparse token rewards."""
    g = torch.Generator().manual_seed(seed)
    rows = groups * k
    lengths = torch.randint(1, width + 1, (rows,), generator=g)
    mask = torch.arange(width + 1)[None, :] <= lengths[:, None]
    mask[:, 0] = False  # column 0: the last prompt token, where s_0 is read
    scores = torch.randn(rows, width + 1, generator=g, dtype=torch.float64)
    scores[:, 0] = torch.randn(groups, generator=g, dtype=torch.float64).repeat_interleave(k)
    red = redistribute(scores[:, 0], scores[:, 1:], mask[:, 1:])
    last = lengths  # the column of R(x, y)
    sparse = torch.zeros_like(red)
    sparse[torch.arange(rows), last - 1] = scores[torch.arange(rows), last]
    uids = [f"p{i // k}" for i in range(rows)]
    return red, sparse, mask[:, 1:], uids, scores


@pytest.mark.parametrize("name, theirs", [("red_rloo", AdvantageEstimator.RLOO), ("red_grpo", AdvantageEstimator.GRPO)])
def test_with_the_sparse_reward_they_equal_verls_own(name, theirs):
    _, sparse, mask, uids, _ = sparse_and_red()
    ours = verl_advantages(name, sparse, mask, uids, norm_adv_by_std_in_grpo=False)
    torch.testing.assert_close(ours, verl_advantages(theirs, sparse, mask, uids, norm_adv_by_std_in_grpo=False))


@pytest.mark.parametrize("name", ["red_rloo", "red_grpo"])
def test_red_minus_sparse_is_minus_the_prefix_score_gain(name):
    """A_RED - A_sparse = -(s_{t-1} - s_0) on every token: the prefix score acts as a state-dependent baseline."""
    red, sparse, mask, uids, scores = sparse_and_red()
    diff = (verl_advantages(name, red, mask, uids, norm_adv_by_std_in_grpo=False)
            - verl_advantages(name, sparse, mask, uids, norm_adv_by_std_in_grpo=False))
    expected = torch.where(mask, -(scores[:, :-1] - scores[:, :1]), 0)  # column t-1 of scores is s_{t-1}
    torch.testing.assert_close(diff, expected)
    assert expected.abs().max() > 0.5  # the per-token part is really there
    # verl's own estimators give RED and sparse the same advantages: the redistribution is summed away
    torch.testing.assert_close(verl_advantages(OURS[name], red, mask, uids, norm_adv_by_std_in_grpo=False),
                               verl_advantages(OURS[name], sparse, mask, uids, norm_adv_by_std_in_grpo=False))


@pytest.mark.parametrize("name, factor", [("red_rloo", lambda k: 1.0), ("red_grpo", lambda k: (k - 1) / k)])
def test_exact_enumeration_on_a_bandit_through_verl(name, factor):
    k = 3

    def through_verl(rewards, mask, ids):
        return verl_advantages(name, rewards, mask, [f"g{i}" for i in ids.tolist()], norm_adv_by_std_in_grpo=False)

    expected, true = bandit_gradients(through_verl, k)
    for got, want in zip(expected, true):
        torch.testing.assert_close(got, factor(k) * want)


def test_a_singleton_uid_gets_baseline_zero_and_a_warning():
    rewards, mask, _ = rollouts(groups=1, k=3)
    with pytest.warns(UserWarning, match="1 of 2 uid groups have a single response"):
        got = verl_advantages("red_grpo", rewards, mask, ["a", "a", "b"], norm_adv_by_std_in_grpo=False)
    torch.testing.assert_close(got[2], returns_to_go(rewards, mask)[2])


# ---------------------------------------------------------------- the RED manager's settings and the recipe


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("verl-group")
    rm = save_tiny_reward_model(root / "rm", arch="gpt2", seed=1)
    policy = root / "policy"
    tiny_tokenizer("gpt2", pad_equals_eos=True).save_pretrained(policy)
    return {"rm": str(rm), "policy": str(policy)}


def manager_with(paths, **keys):
    config = red_config(paths["policy"], paths["rm"])
    with open_dict(config):
        for key, value in keys.items():
            OmegaConf.update(config, key, value, force_add=True)
    return load_reward_manager(config, tiny_tokenizer("gpt2", pad_equals_eos=True))


@pytest.mark.parametrize("keys, message", [
    ({"algorithm.adv_estimator": "grpo"}, "use algorithm.adv_estimator=red_grpo"),
    ({"algorithm.adv_estimator": "rloo"}, "use algorithm.adv_estimator=red_rloo"),
    ({"algorithm.adv_estimator": "opo"}, "red_grpo or red_rloo"),
    ({"algorithm.adv_estimator": "red_grpo", "actor_rollout_ref.rollout.n": 1}, "actor_rollout_ref.rollout.n=1"),
    ({"algorithm.adv_estimator": "remax"}, "needs reward_baselines, which verl's v1 trainer"),
    ({"algorithm.adv_estimator": "optimal_token_baseline"}, "needs sum_pi_squared"),
])
def test_refusals_name_the_fix(paths, keys, message):
    with pytest.raises(ConfigError) as err:
        manager_with(paths, **keys)
    assert message in str(err.value)


@pytest.mark.parametrize("keys", [
    {"algorithm.adv_estimator": "red_grpo", "actor_rollout_ref.rollout.n": 4},
    {"algorithm.adv_estimator": "red_rloo", "actor_rollout_ref.rollout.n": 2},
    {"algorithm.adv_estimator": "remax", "trainer.use_v1": False},  # the legacy trainer computes ReMax's baseline
])
def test_accepted(paths, keys):
    assert isinstance(manager_with(paths, **keys), red_verl.REDRewardManager)


def compose_recipe(paths, policy_dir):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "examples" / "verl"), version_base=None):
        return compose(config_name="red_grpo", overrides=[
            f"actor_rollout_ref.model.path={policy_dir}", f"reward.reward_model.model_path={paths['rm']}",
            f"reward.reward_kwargs.model={paths['rm']}", "reward.reward_kwargs.device=cpu"])


@pytest.fixture(scope="module")
def policy_dir(paths, tmp_path_factory):
    from transformers import AutoTokenizer

    from tests.helpers import save_tiny_policy

    return save_tiny_policy(AutoTokenizer.from_pretrained(paths["policy"]), tmp_path_factory.mktemp("verl-group-policy"))


def test_recipe_composes_and_passes_the_checks(paths, policy_dir):
    """examples/verl/red_grpo.yaml through verl's Hydra config and validate_config, as main_ppo.py:177-181 does."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    config = compose_recipe(paths, policy_dir)
    assert config.algorithm.adv_estimator == "red_grpo" and config.actor_rollout_ref.rollout.n >= 2
    assert not need_critic(config) and need_reference_policy(config)  # no critic; the reference for the KL loss
    assert config.actor_rollout_ref.actor.use_kl_loss and not config.algorithm.use_kl_in_reward
    validate_config(config=config, use_reference_policy=True, use_critic=False)
    assert isinstance(load_reward_manager(config, tiny_tokenizer("gpt2", pad_equals_eos=True)), red_verl.REDRewardManager)


def test_verls_own_loading_of_the_manager_registers_the_recipes_estimator(paths, policy_dir, tmp_path):
    """In a fresh process, only verl's calls: resolve_reward_manager_cls (what RewardLoopManager runs in the process
    that computes advantages, reward_loop.py:309) and compute_advantage with the recipe's estimator."""
    script = tmp_path / "fresh.py"
    script.write_text(f"""
import sys
import numpy as np, torch
from hydra import compose, initialize_config_dir
from verl import DataProto
from verl.trainer.ppo import core_algos
from verl.trainer.ppo.ray_trainer import compute_advantage
from verl.trainer.ppo.reward import resolve_reward_manager_cls

with initialize_config_dir(config_dir={str(ROOT / 'examples' / 'verl')!r}, version_base=None):
    config = compose(config_name="red_grpo")
name = config.algorithm.adv_estimator
try:
    core_algos.get_adv_estimator_fn(name)
    sys.exit("registered before verl loaded the manager")
except ValueError:
    pass
assert not any(m.startswith("red_rlhf") for m in sys.modules), "red_rlhf imported by someone else"
resolve_reward_manager_cls(config)
data = DataProto.from_dict(tensors={{"token_level_rewards": torch.tensor([[1.0, 0.0], [0.0, 2.0]]),
                                    "response_mask": torch.ones(2, 2, dtype=torch.long)}},
                           non_tensors={{"uid": np.array(["a", "a"], dtype=object)}})
out = compute_advantage(data, name, config=config.algorithm)
print("advantages", out.batch["advantages"].tolist())
""")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # red_grpo, std over the batch of full returns [1, 2]: returns-to-go [[1, 0], [2, 2]] minus the mean 1.5
    std = torch.tensor([1.0, 2.0]).std().item()
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("advantages")
    got = torch.tensor(eval(last.split(" ", 1)[1]))
    torch.testing.assert_close(got, torch.tensor([[-0.5, -1.5], [0.5, 0.5]]) / (std + 1e-6))


def test_warning_free_for_full_groups():
    rewards, mask, uids = rollouts()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        verl_advantages("red_grpo", rewards, mask, uids)
