"""The demo pipeline end to end in a reduced mode: tiny models, a fixture of the real data format, two steps."""

import base64
from html.parser import HTMLParser

from red_rlhf.demo import DemoSettings, judge, run_demo
from red_rlhf.report.plots import read_metrics
from tests.helpers import check_curves, fake_sdist, fixture_snippets, png_pixels

PNG_DATA = "data:image/png;base64,"


class Sections(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.images, self.tokens = set(), [], 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "img" and attrs.get("src", "").startswith(PNG_DATA):
            self.images.append(base64.b64decode(attrs["src"][len(PNG_DATA):]))  # the embedded PNG's bytes
        self.tokens += tag == "span" and attrs.get("class") == "tok"


def test_judge_is_an_independent_sentiment_scorer():
    good, bad = judge(["A wonderful, moving film.", "A dull and terrible film."])
    assert good > 0.3 and bad < -0.3


def reduced(tmp_path, *overrides, **changes) -> DemoSettings:
    """The demo on tiny models and a fixture in the real data's format: seconds instead of minutes."""
    sdist = fake_sdist(tmp_path / "vaderSentiment-3.3.2.tar.gz", fixture_snippets(1500))
    settings = dict(cache_dir=str(tmp_path / "cache"), output_dir=str(tmp_path / "demo"), policy="tiny",
                    rm_backbone="tiny", rm_keep_layers=None, rm_pairs=64, rm_eval_pairs=32, eval_prompts=4,
                    heatmaps=2, sdist=str(sdist), overrides=("--train.steps=2", *overrides))
    return DemoSettings(**{**settings, **changes})


def test_the_demo_trains_configs_demo_yaml_with_only_its_paths_and_seed_filled_in(tmp_path):
    """The demo's training run is configs/demo.yaml as written, with the paths and seed the demo fills in; an
    override on the command line changes its key and nothing else (so the demo's numbers follow the file)."""
    from red_rlhf.config import from_dict, read_yaml, to_dict, validate
    from red_rlhf.demo.pipeline import train_config

    data, policy, rm, out = tmp_path / "data", str(tmp_path / "smollm2"), tmp_path / "rm", tmp_path / "demo"

    def expected(seed: int, keys: dict | None = None) -> dict:
        cfg = from_dict(read_yaml("demo"))
        cfg.policy.name_or_path, cfg.reward.model, cfg.data.prompts = policy, str(rm), str(data / "prompts_train.txt")
        cfg.train.output_dir, cfg.train.seed = str(out / "train"), seed
        for key, value in (keys or {}).items():
            section, name = key.split(".")
            setattr(getattr(cfg, section), name, value)
        return to_dict(validate(cfg))

    def resolved(**settings) -> dict:
        return to_dict(train_config(DemoSettings(**settings), data, policy, rm, out))

    assert resolved() == expected(DemoSettings().seed)
    assert resolved(overrides=("--reward.scheme=sparse",)) == expected(DemoSettings().seed, {"reward.scheme": "sparse"})
    # --seed moves data, reward model and RL run; --train.seed=N the RL run alone
    assert resolved(seed=3) == expected(3)
    assert resolved(seed=3, overrides=("--train.seed=5", "--train.steps=7")) == expected(5, {"train.steps": 7})


def test_reduced_demo_produces_every_report_section(tmp_path, drawn_figures, finished_bars):
    settings = reduced(tmp_path)
    report = run_demo(settings)
    page = Sections()
    page.feed(report.read_text())
    assert {"result", "summary", "curves", "samples", "heatmaps"} <= page.ids
    assert len(page.images) == 1 and page.tokens > 0
    # the embedded image is the run's training curves, drawn from its metrics.jsonl
    [metrics] = (tmp_path / "demo").rglob("metrics.jsonl")
    check_curves(page.images[0], drawn_figures[-1], read_metrics(metrics.parent), size=(1300, 650))
    # the reward model's and the training steps' progress bars end full
    bars = list(finished_bars)  # the trainer's phase bar ends full too, after the last step
    assert any(name.startswith("reward model") for name, _, _ in bars) and all(d == t for _, d, t in bars), bars
    assert (tmp_path / "demo" / "summary.json").is_file()
    # the demo leaves what its report needs: the finished run's checkpoints go, its exported policy stays
    assert not (tmp_path / "demo" / "train" / "checkpoints").exists()
    assert (tmp_path / "demo" / "train" / "policy" / "model.safetensors").is_file()
    [rm] = (tmp_path / "cache").glob("rm-tiny-pairs64-*")
    assert (rm / "rm_metrics.json").is_file()
    run_demo(settings)  # a second run reuses the cached data and reward model
    # the other ways to train the reward model (the last block + head, every weight) and the other schemes
    for trainable, scheme in ((1, "sparse"), (None, "abc")):
        report = run_demo(reduced(tmp_path, f"--reward.scheme={scheme}", rm_trainable_layers=trainable, rm_final_only=True))
        page = Sections()
        page.feed(report.read_text())
        assert page.tokens > 0, scheme
    assert len(list((tmp_path / "cache").glob("rm-tiny-pairs64-*"))) == 3


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_report_renders_in_headless_chromium(tmp_path):
    import shutil
    import subprocess

    import numpy as np
    import pytest

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium); the report render check is skipped")
    report = run_demo(reduced(tmp_path))
    profile = tmp_path / "profile"
    base = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
    dom = subprocess.run(base + ["--dump-dom", report.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    page = Sections()
    page.feed(dom.stdout)
    assert {"result", "summary", "curves", "samples", "heatmaps"} <= page.ids and len(page.images) == 1 and page.tokens > 0
    shot = tmp_path / "report.png"
    subprocess.run(base + [f"--screenshot={shot}", "--window-size=1280,2000", report.resolve().as_uri()],
                   capture_output=True, timeout=120)
    pixels = png_pixels(shot)
    assert pixels.shape[:2] == (2000, 1280)  # the window it was rendered in
    # a rendered page, not a blank one: text, curves and heatmap give it many colours (a blank page has one)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50


def test_report_opens_with_the_result_in_a_sentence_and_a_before_after_table():
    from red_rlhf.demo.report import headline_html

    page = headline_html({"steps": 40, "reward_scheme": "red", "eval_prompts": 64, "rm_score_before": -0.488,
                          "rm_score_after": 1.965, "judge_before": 0.137, "judge_after": 0.496, "kl_after": 23.8,
                          "rm_accuracy_after": 0.8125, "wall_s": 452.0})
    assert "40 steps of PPO with red token rewards" in page
    assert "from -0.488 to +1.965" in page and "from +0.137 to +0.496" in page and "KL of 23.8" in page
    assert "<td>-0.488</td><td>+1.965</td>" in page and "81.2%" in page and "7.5 minutes" in page
    assert "n/a" in headline_html({"steps": 1})  # a partial summary still renders
