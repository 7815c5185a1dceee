"""Several reward sources: per-token combination, the Lagrange multiplier, a planted cost, resume, errors."""

import pytest
import torch

from red_rlhf.training import checkpoint
from red_rlhf.config import ConfigError, load_config, validate
from red_rlhf.core.reward_assembly import SourceScores, assemble_rewards
from red_rlhf.models.sources import SourceError
from red_rlhf.training.controllers import LagrangeMultiplier
from red_rlhf.training.trainer import Trainer
from tests.helpers import check_curves


def cost_run(tmp_path, *overrides, name="run", cost_weight=None):
    base = ["--train.log_with=", "--train.eval_every=0", "--data.eval_size=0", "--train.save_every=0",
            f"--train.output_dir={tmp_path / name}"]
    cfg = load_config("configs/toy-cost.yaml", base + list(overrides))
    if cost_weight is not None:
        cfg.reward.sources[1].weight = cost_weight
    return validate(cfg)


def test_combined_token_rewards_are_the_weighted_sum_of_each_sources_own(tmp_path):
    cfg = cost_run(tmp_path, "--lagrangian.enabled=false", cost_weight=0.3)
    cfg.reward.sources[0].weight, cfg.reward.sources[1].scheme = 0.7, "sparse"  # each source keeps its own scheme
    trainer = Trainer(validate(cfg))
    torch.manual_seed(0)
    ro = trainer.rollout(trainer.order.next_batch(cfg.rollout.batch_size))
    scores = trainer.score(ro)
    combined = trainer.assemble(ro, scores, kl=None)
    own = {name: assemble_rewards([SourceScores(name, s, scheme)], ro.response_mask)
           for (name, s), scheme in zip(scores.items(), ("red", "sparse"))}
    expected = 0.7 * own["praise"].rewards - 0.3 * own["great"].rewards
    assert torch.allclose(combined.rewards, expected, atol=1e-6)
    assert torch.allclose(combined.final_combined_raw, 0.7 * own["praise"].final_raw["praise"]
                          - 0.3 * own["great"].final_raw["great"], atol=1e-6)
    assert torch.equal(combined.final_raw["great"], own["great"].final_raw["great"])
    # the sparse cost sits on the last token only; the RED reward is spread over the tokens
    last = ro.response_mask.sum(-1) - 1
    cost_only = own["great"].rewards.clone()
    cost_only[torch.arange(len(last)), last] = 0
    assert torch.count_nonzero(cost_only) == 0


def test_multiplier_rises_over_the_limit_and_falls_not_below_zero():
    m = LagrangeMultiplier(init=1.0, lr=0.5, limit=0.2)
    values = [m.update(cost) for cost in (0.6, 0.6, 0.2) + (0.0,) * 20]
    assert values[:3] == pytest.approx([1.2, 1.4, 1.4])
    assert values[3:6] == pytest.approx([1.3, 1.2, 1.1])
    assert values[-1] == 0.0 and min(values) == 0.0
    with pytest.raises(ValueError, match="starts at >= 0"):
        LagrangeMultiplier(init=-1.0, lr=0.1, limit=0.0)


def test_lagrangian_drives_a_planted_cost_under_its_limit(tmp_path, drawn_figures):
    constrained = Trainer(cost_run(tmp_path, "--train.steps=20", name="lagrangian")).train()
    free = Trainer(cost_run(tmp_path, "--train.steps=16", "--lagrangian.enabled=false", name="free", cost_weight=0.0)).train()
    cost = lambda history: sum(m["score_great"] for m in history[-4:]) / 4  # noqa: E731
    trace = [(round(m["score_great"], 2), round(m["lambda_great"], 2)) for m in constrained]
    assert max(m["score_great"] for m in constrained) > 0.2, trace  # the reward pulls towards "great" first ...
    assert cost(constrained) < 0.05 and max(m["lambda_great"] for m in constrained) > 1.0, trace  # ... then lambda wins
    assert cost(free) > 0.5, [round(m["score_great"], 2) for m in free]  # without the constraint it stays
    assert all(m["lambda_great"] >= 0 and 0 <= m["over_limit_great"] <= 1 for m in constrained)
    assert "lambda_great" not in free[-1] and "score_praise" in free[-1]
    from red_rlhf.report.plots import plot_run, read_metrics

    # the curves get a third row: each source's score, the cost's share over its limit, the multiplier
    png = plot_run(tmp_path / "lagrangian")
    check_curves(png, drawn_figures[-1], read_metrics(tmp_path / "lagrangian"), size=(1300, 950))


def test_checkpoint_and_resume_keep_the_multiplier(tmp_path):
    first = Trainer(cost_run(tmp_path, "--train.steps=3", "--train.save_every=1", "--lagrangian.init=0.5", name="res"))
    first.train()
    saved = first.lambdas["great"].value
    assert saved != 0.5  # it moved
    again = Trainer(cost_run(tmp_path, "--train.steps=3", "--train.save_every=1", name="res"))
    assert again.lambdas["great"].value == 0.0  # the config's init before loading
    again.load(checkpoint.latest(tmp_path / "res"))
    assert again.lambdas["great"].value == saved and again.step == 3


def test_the_primary_source_is_the_first_of_kind_reward_and_evaluation_reports_it(tmp_path):
    from red_rlhf.config import primary_source
    from red_rlhf.data.toy import praise_score

    cfg = cost_run(tmp_path, "--lagrangian.enabled=false")
    cfg.reward.sources[1].function, cfg.reward.sources[1].takes_prompt = "tests.nan_reward:huge", False  # 1e30
    cfg.reward.sources.reverse()  # the cost listed first
    trainer = Trainer(validate(cfg))
    assert primary_source(cfg).name == trainer.primary.name == "praise"
    ro, texts, final, _ = trainer.eval_samples(["the movie was", "i liked the"])
    assert final == pytest.approx([praise_score(p, t) for p, t in zip(ro.prompts, texts)])


def test_source_errors_name_the_source(tmp_path):
    cfg = cost_run(tmp_path, "--train.steps=1")
    cfg.reward.sources[1].function, cfg.reward.sources[1].takes_prompt = "tests.nan_reward:broken", False
    with pytest.raises(SourceError, match="reward source 'great' failed: 'no such word'"):
        Trainer(validate(cfg)).train()
    cfg.reward.sources[1].function = "tests.nan_reward:missing"
    with pytest.raises(ConfigError, match=r"reward.sources\[1\].function: cannot import"):
        Trainer(validate(cfg))
    cfg.reward.sources[1].function, cfg.reward.sources[1].model = None, str(tmp_path / "no-model")
    with pytest.raises(ConfigError, match=r"reward.sources\[1\].model: cannot load"):
        Trainer(validate(cfg))


def zero_weights_unconstrained(cfg):
    for source in cfg.reward.sources:
        source.weight = 0.0
    cfg.lagrangian.enabled = False


@pytest.mark.parametrize("change, message", [
    (lambda c: zero_weights_unconstrained(c), "every reward source has weight 0"),
    (lambda c: setattr(c.reward.sources[1], "name", "praise"), "names must be unique"),
    (lambda c: setattr(c.reward.sources[0], "name", ""), r"reward.sources\[0\].name is empty"),
    (lambda c: setattr(c.reward.sources[1], "limit", None), "lagrangian.enabled needs a reward source of kind 'cost'"),
    (lambda c: setattr(c.reward.sources[0], "kind", "cost"), "at least one source must be of kind 'reward'"),
    (lambda c: setattr(c.reward.sources[1], "scheme", "abc"), r"reward.sources\[1\].scheme 'abc' needs a reward model"),
    (lambda c: setattr(c.reward, "function", "red_rlhf.data.toy:target_fraction"),
     r"reward.function is the one-source short form; with 2 reward.sources set reward.sources\[i\].function"),
    (lambda c: setattr(c.reward.sources[1], "weight", -1.0), r"reward.sources\[1\].weight must be >= 0"),
])
def test_source_config_errors(tmp_path, change, message):
    cfg = cost_run(tmp_path)
    with pytest.raises(ConfigError, match=message):  # a short-form setter refuses at once, the rest in validate
        change(cfg)
        validate(cfg)


def test_sources_from_yaml_check_every_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("reward:\n  sources:\n    - name: r\n      function: red_rlhf.data.toy:praise_score\n      wieght: 2\n")
    with pytest.raises(ConfigError, match=r"unknown config key reward.sources\[0\].wieght"):
        load_config(str(bad))
    bad.write_text("reward:\n  sources:\n    - red_rlhf.data.toy:praise_score\n")
    with pytest.raises(ConfigError, match=r"reward.sources\[0\] must be a mapping"):
        load_config(str(bad))


def test_profanity_cost_and_the_offline_example_config():
    from red_rlhf.config import reward_sources
    from red_rlhf.costs import profanity

    assert profanity("The movie was a delight from start to finish.") < 0.5 < profanity("This fucking movie is shit.")
    cfg = load_config("configs/demo-safe.yaml")
    kinds = {s.name: (s.kind, s.scheme, s.limit) for s in reward_sources(cfg)}
    assert kinds == {"sentiment": ("reward", "red", None), "profanity": ("cost", "red", 0.2)}
    assert cfg.lagrangian.enabled and cfg.algo.critic_init == "reward-trunk"
