"""Tier 1: typed config, YAML + overrides, validation errors that name the field."""

import pytest

from red_rlhf.config import ConfigError, from_dict, load_config, shipped_configs, to_dict, validate

TOY = ["--reward.function=red_rlhf.data.toy:target_fraction", "--algo.critic_init=policy"]


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("reward:\n  function: red_rlhf.data.toy:target_fraction\nalgo:\n  critic_init: policy\n  epochs: 2\n")
    cfg = load_config(str(path), ["--algo.epochs=3", "--kl.coef=0.1", "--algo.target_kl=none", "--train.log_with=",
                                  "--policy.lora_target_modules=c_attn,c_proj"])
    assert cfg.algo.epochs == 3 and cfg.kl.coef == 0.1 and cfg.algo.target_kl is None
    assert cfg.train.log_with == [] and cfg.policy.lora_target_modules == ["c_attn", "c_proj"]
    assert cfg.reward.function == "red_rlhf.data.toy:target_fraction"


@pytest.mark.parametrize("name", shipped_configs())
def test_every_shipped_config_loads_and_round_trips(name):
    """Each shipped config validates, and its dump (config.json of a run) loads back to the same config."""
    cfg = load_config(name)
    assert validate(from_dict(to_dict(cfg))) == cfg
    assert to_dict(load_config(f"configs/{name}.yaml")) == to_dict(cfg)  # by name and by path alike


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--algo.epoch=2"], "unknown config key algo.epoch"),
        (["--optim.lr=1"], "unknown config section 'optim'"),
        (["--algo.mini_batch_size=5"], "algo.mini_batch_size=5 must divide rollout.batch_size"),
        (["--algo.grad_accum=3"], "algo.grad_accum=3 must divide algo.mini_batch_size=8"),
        (["--algo.epochs=two"], "algo.epochs must be a number"),
        (["--algo.epochs=1.5"], "algo.epochs must be a number (int), got '1.5'"),
        (["--reward.scheme=dense"], "reward.scheme must be one of"),
        (["--reward.beta_c=2"], "reward.beta_c must be in [0, 1]"),
        (["--algo.algorithm=rloo"], "needs rollout.samples_per_prompt >= 2"),
        (["--algo.critic_init=reward"], "algo.critic_init 'reward' copies the reward model"),
        (["--reward.scheme=abc"], "needs a reward model's attention; a function (reward) has none"),
        (["--reward.model=some/rm"], "exactly one of reward.model"),
        (["--rollout.temperature=0"], "rollout.temperature must be > 0"),
        (["algo.epochs"], "must look like --section.key=value"),
        (["--train.output_dir="], "train.output_dir is empty"),
        (["--train.output_dir=  "], "train.output_dir is empty"),
        (["--data.prompts="], "data.prompts is empty"),
        (["--algo.entropy_coef=-0.1"], "algo.entropy_coef must be >= 0"),
        (["--algo.target_kl=0"], "algo.target_kl must be > 0"),
        (["--algo.value_clip_range=-1"], "algo.value_clip_range must be > 0"),
        (["--algo.clip_range=3"], "algo.clip_range must be <= 1.0"),
        (["--reward.missing_eos_penalty=-1"], "reward.missing_eos_penalty must be >= 0"),
        (["--kl.coef=-0.1"], "kl.coef must be >= 0"),
        (["--policy.lora_r=-2"], "policy.lora_r must be >= 0"),
    ],
)
def test_clear_errors(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, TOY + overrides)
    assert message in str(err.value)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "none.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("algo: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))
    bad.write_text("algo: 3\n")
    with pytest.raises(ConfigError, match="section 'algo' must be a mapping"):
        load_config(str(bad))


def _float_fields(cls, prefix=""):
    """Every float setting of the config, as "section.key" (Optional[float] ones included)."""
    import dataclasses
    import typing

    out = []
    for name, hint in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(hint):
            out += _float_fields(hint, f"{name}.")
        elif hint is float or float in typing.get_args(hint):
            out.append(prefix + name)
    return out


def test_every_float_setting_is_checked_for_finiteness():
    from red_rlhf.config import Config

    fields = _float_fields(Config)
    assert len(fields) >= 20 and "reward.score_scale" in fields and "kl.coef" in fields
    for name in fields:
        for bad in ("nan", "inf", "-inf"):
            with pytest.raises(ConfigError) as err:
                load_config(None, TOY + [f"--{name}={bad}"])
            assert f"{name} must be a finite number" in str(err.value), (name, bad)


def test_non_finite_source_settings_name_the_source(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("reward:\n  sources:\n    - {name: good, function: red_rlhf.data.toy:target_fraction}\n"
                    "    - {name: cost, function: red_rlhf.data.toy:target_fraction, kind: cost, weight: .inf}\n"
                    "algo:\n  critic_init: policy\n")
    with pytest.raises(ConfigError, match=r"reward.sources\[1\].weight must be a finite number, got inf"):
        load_config(str(path))


def test_a_limit_on_a_reward_source_is_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("reward:\n  sources:\n    - {name: good, function: red_rlhf.data.toy:target_fraction, limit: 0.5}\n"
                    "algo:\n  critic_init: policy\n")
    with pytest.raises(ConfigError, match=r"reward.sources\[0\].limit applies to sources of kind 'cost'; 'good'"):
        load_config(str(path))


def test_shipped_configs_load_by_name_outside_a_clone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here: the names resolve to the configs inside the package
    from red_rlhf.config import shipped_configs

    assert {"toy", "toy-rloo", "toy-cost", "demo", "demo-safe"} <= set(shipped_configs())
    assert load_config("toy").reward.function == "red_rlhf.data.toy:target_fraction"
    assert load_config("configs/toy.yaml").rollout.batch_size == load_config("toy").rollout.batch_size
    with pytest.raises(ConfigError, match="shipped configs, usable by name: .*toy"):
        load_config("nonesuch")


def test_demo_safe_builds_on_demo():
    demo, safe = load_config("demo"), load_config("demo-safe")
    for section in ("policy", "rollout", "kl", "algo"):  # the training settings come from the base
        assert getattr(safe, section) == getattr(demo, section)
    assert [s.name for s in safe.reward.sources] == ["sentiment", "profanity"]  # the reward is replaced whole
    assert safe.reward.sources[0].model == demo.reward.model == "demo-reward-model"
    assert safe.train.output_dir == "runs/demo-safe" and safe.train.steps == demo.train.steps


def test_base_chains_merge_key_by_key_and_loops_are_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("base: toy\nalgo:\n  epochs: 1\n")
    (tmp_path / "b.yaml").write_text(f"base: {tmp_path / 'a.yaml'}\nkl:\n  coef: 0.5\n")
    cfg = load_config(str(tmp_path / "b.yaml"))
    assert cfg.algo.epochs == 1 and cfg.kl.coef == 0.5 and cfg.algo.policy_lr == load_config("toy").algo.policy_lr
    (tmp_path / "a.yaml").write_text(f"base: {tmp_path / 'b.yaml'}\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(str(tmp_path / "b.yaml"))


def test_the_one_source_short_form_is_a_list_of_one():
    cfg = load_config(None, TOY)
    assert len(cfg.reward.sources) == 1 and cfg.reward.sources[0].name == "reward"
    assert cfg.reward.sources[0].function == cfg.reward.function == "red_rlhf.data.toy:target_fraction"
    several = load_config("toy-cost")
    with pytest.raises(ConfigError, match=r"reward.scheme is the one-source short form; with 2 reward.sources"):
        several.reward.scheme = "sparse"
    with pytest.raises(ConfigError, match=r"reward.model is the one-source short form"):
        load_config("toy-cost", ["--reward.model=x"])


def test_source_paths_name_the_short_form_reward_and_listed_sources_by_index():
    from red_rlhf.config import source_paths

    assert source_paths(["reward"]) == ["reward"]  # reward.model, reward.scheme, ...
    assert source_paths(["good"]) == ["reward.sources[0]"]  # a list of one, named otherwise
    assert source_paths(["reward", "cost"]) == ["reward.sources[0]", "reward.sources[1]"]


def _accepts(call) -> bool:
    try:
        call()
    except (ValueError, SystemExit):  # ConfigError is a ValueError; argparse exits on a bad choice
        return False
    return True


def test_config_cli_and_reward_model_take_the_same_scoring_modes_and_input_formats(gpt2_tok, gpt2_rm):
    from red_rlhf.cli import build_parser
    from red_rlhf.config import INPUT_FORMATS, SCORING_MODES
    from red_rlhf.models.sources import HFRewardModel

    parser = build_parser()
    for key, values in (("mode", SCORING_MODES), ("format", INPUT_FORMATS)):
        for value in (*values, "other"):
            takes = {"config": _accepts(lambda: load_config(None, TOY + [f"--reward.{key}={value}"])),
                     "cli": _accepts(lambda: parser.parse_args(["score", "--reward-model", "m", f"--{key}", value])),
                     "model": _accepts(lambda: HFRewardModel(gpt2_rm, gpt2_tok, **{key: value}))}
            assert set(takes.values()) == {value in values}, (key, value, takes)


def test_the_demo_reward_model_by_name_says_how_to_make_it(tmp_path, monkeypatch):
    from red_rlhf.models.packaged import resolve_model_name

    with pytest.raises(FileNotFoundError, match="run `red-rlhf demo` once"):
        resolve_model_name("demo-reward-model", cache=tmp_path)
    assert resolve_model_name("some/other-model", cache=tmp_path) == "some/other-model"
