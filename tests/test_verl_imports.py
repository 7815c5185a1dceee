"""`make verl` installs everything `python -m verl.trainer.main_ppo` imports for our recipes (v1 and legacy trainers).

A dependency that verl lists only in one of its own extras (TransferQueue is in `verl-core`, which a --no-deps install
skips) fails here, on CPU, instead of at the start of a user's GPU job. Not checked here: the rollout server itself
(vLLM / SGLang), which is a GPU-machine install (README "Scaling out on verl").
Skipped when verl is not installed (`make verl` installs it into .venv; CI does).
"""

import importlib
from pathlib import Path

import pytest

pytest.importorskip("verl", reason="verl is not installed: run `make verl` (README 'Scaling out on verl')")

RECIPES = Path(__file__).resolve().parents[1] / "examples" / "verl"

# What the entry point imports on its way to fit(), verl 0.9.1 (file:line in site-packages/verl):
ENTRY = [
    "verl.trainer.main_ppo",  # the module run by `python -m`; hydra, ray, validate_config at its top
    "verl.trainer.constants_ppo",  # get_ppo_ray_runtime_env (main_ppo.py:22)
]
V1 = [  # trainer.use_v1=True, the default (main_ppo.py:183-187 -> TaskRunnerV1)
    "transfer_queue",  # main_ppo.py:137
    "verl.trainer.ppo.v1",  # get_trainer_cls, AgentLoopManagerTQ (main_ppo.py:118, 139)
    "verl.trainer.ppo.v1.trainer_base",
    "verl.trainer.ppo.v1.agent_loop_tq",
    "verl.experimental.reward_loop",  # the reward loop that builds our manager
    "verl.experimental.agent_loop",
    "verl.workers.engine_workers",  # actor/rollout/ref and critic workers
    "verl.single_controller.ray",
    "verl.checkpoint_engine",
    "verl.utils.dataset.rl_dataset",
    "verl.utils.tracking",
]
LEGACY = [  # trainer.use_v1=False (main_ppo.py:189 -> main_ppo_v0.TaskRunner)
    "verl.trainer.main_ppo_v0",
    "verl.trainer.ppo.ray_trainer",  # RayPPOTrainer, apply_kl_penalty, compute_advantage
    "verl.workers.engine_workers",  # main_ppo_v0.py:39, 60
    "verl.single_controller.ray",  # main_ppo_v0.py:37
    "verl.workers.config",  # main_ppo_v0.py:187
    "verl.workers.utils.losses",  # ray_trainer.py:888
    "verl.experimental.reward_loop",  # ray_trainer.py:910
    "verl.experimental.agent_loop",  # ray_trainer.py:944
    "verl.checkpoint_engine",  # ray_trainer.py:973
    "verl.trainer.ppo.rollout_corr_helper",  # ray_trainer.py:1577
]


@pytest.mark.parametrize("module", sorted(set(ENTRY + V1 + LEGACY)))
def test_entry_point_module_imports(module):
    importlib.import_module(module)


@pytest.mark.parametrize("recipe", ["red_ppo", "red_grpo"])
def test_recipe_names_only_importable_classes(recipe, tmp_path):
    """Every class the recipe makes the entry point load by name: the v1 trainer for its mode, the reward manager
    and the custom reward function (both through verl's own loaders)."""
    from hydra import compose, initialize_config_dir
    from verl.trainer.ppo.reward import resolve_reward_manager_cls
    from verl.trainer.ppo.v1 import get_trainer_cls
    from verl.utils.import_utils import load_extern_object

    import red_rlhf.integrations.verl as red_verl

    with initialize_config_dir(config_dir=str(RECIPES), version_base=None):
        config = compose(config_name=recipe)
    assert config.trainer.use_v1, "the recipe should run verl's default trainer"
    assert get_trainer_cls(config.trainer.v1.trainer_mode) is not None
    assert resolve_reward_manager_cls(config) is red_verl.REDRewardManager
    function = config.reward.custom_reward_function
    assert load_extern_object(function.path, function.name) is red_verl.compute_score


def test_a_trl_that_breaks_verl_is_named_when_the_manager_module_loads(tmp_path):
    """trl 1.16 beside verl: the manager module says so on import, instead of verl's workers failing on a GPU."""
    import subprocess
    import sys

    fake = tmp_path / "trl"
    fake.mkdir()
    (fake / "__init__.py").write_text("__version__ = '1.16.0'\n")  # a trl without AutoModelForCausalLMWithValueHead
    run = subprocess.run([sys.executable, "-W", "ignore", "-c", "import red_rlhf.integrations.verl"],
                         capture_output=True, text=True, env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)})
    assert run.returncode != 0
    assert "trl 1.16.0 is installed beside verl" in run.stderr and "make trl" in run.stderr
