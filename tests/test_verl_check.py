"""`python -m red_rlhf.integrations.verl_check --config FILE`: a user's verl config checked on CPU before a GPU run.

Skipped when verl is not installed (`make verl` installs it into .venv; CI does).
"""

import sys
from pathlib import Path

import pytest

pytest.importorskip("verl", reason="verl is not installed: run `make verl` (README 'Scaling out on verl')")

from red_rlhf.config import ConfigError  # noqa: E402
from red_rlhf.integrations.verl_check import main as verl_check_main  # noqa: E402
from red_rlhf.models.scorer import TokenRewardScorer  # noqa: E402
from red_rlhf.models.sources import HFRewardModel  # noqa: E402
from red_rlhf.models.tiny import save_tiny_reward_model, tiny_tokenizer  # noqa: E402

RECIPES = Path(__file__).resolve().parents[1] / "examples" / "verl"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny chat policy and reward model (same vocabulary) and the recipe's prompts as verl parquet files."""
    from tests.helpers import save_tiny_policy

    root = tmp_path_factory.mktemp("verl-check")
    rm = save_tiny_reward_model(root / "rm", arch="gpt2", seed=1)
    tok = tiny_tokenizer("gpt2", chat=True)
    policy = save_tiny_policy(tok, root / "policy")
    sys.path.insert(0, str(RECIPES))
    try:
        from prepare_prompts import write_splits
    finally:
        sys.path.pop(0)
    (root / "prompts.txt").write_text("Write a review of the film.\nSay hello.\nTell a joke.\n", encoding="utf-8")
    train, val = write_splits(str(root / "prompts.txt"), root / "data", val_size=1)
    overrides = [f"data.train_files={train}", f"data.val_files={val}", f"actor_rollout_ref.model.path={policy}",
                 f"critic.model.path={policy}", f"reward.reward_model.model_path={rm}", f"reward.reward_kwargs.model={rm}"]
    return {"rm": str(rm), "policy": str(policy), "overrides": overrides, "tok": tok}


def table(out: str) -> list[list[str]]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["token", "reward"]) + 1
    return [line.split() for line in lines[start:]]


@pytest.mark.parametrize("recipe, estimator", [("red_ppo", "gae"), ("red_grpo", "red_grpo")])
def test_recipe_checks_and_prints_the_first_prompts_row(setup, capsys, recipe, estimator):
    verl_check_main(["--config", str(RECIPES / f"{recipe}.yaml"), *setup["overrides"]])
    out = capsys.readouterr().out
    assert "composed and validated by verl" in out and f"adv_estimator={estimator}" in out
    assert "reward_kwargs.device=auto is run on the cpu" in out
    rewards = [float(row[-3]) for row in table(out)]
    # the same text through red_rlhf's own scorer: prompt_text last_user reads the user message the dataset holds
    tok = setup["tok"]
    from red_rlhf.integrations.verl_check import SAMPLE_RESPONSE

    scorer = TokenRewardScorer(HFRewardModel.from_pretrained(setup["rm"]), policy_tokenizer=tok)
    [row] = scorer.score(["Write a review of the film."], [SAMPLE_RESPONSE + tok.eos_token])
    assert rewards == pytest.approx(row.rewards, abs=1e-4)
    assert len([r for r in rewards if abs(r) > 1e-6]) > 1  # RED: many tokens carry reward


def test_wrong_route_in_the_users_config_is_refused_with_the_key(setup):
    with pytest.raises(ConfigError, match="algorithm.adv_estimator=grpo"):
        verl_check_main(["--config", str(RECIPES / "red_ppo.yaml"), *setup["overrides"],
                         "algorithm.adv_estimator=grpo", "critic.enable=false"])


def test_missing_config_file_names_it(tmp_path):
    with pytest.raises(SystemExit, match="no such file"):
        verl_check_main(["--config", str(tmp_path / "nope.yaml")])
