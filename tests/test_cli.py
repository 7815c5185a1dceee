"""Tier 2: the `red-rlhf` command line, in process, on a tiny reward model it builds."""

import json
from html.parser import HTMLParser

import pytest

from red_rlhf.cli import main

VOID = {"meta", "br", "img", "hr", "input", "link"}


class TagChecker(HTMLParser):
    """Checks every opened tag is closed in order, and collects the token spans' text."""

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.tokens, self._in_token = [], [], [], False

    def handle_starttag(self, tag, attrs):
        if tag not in VOID:
            self.stack.append(tag)
        if tag == "span" and ("class", "tok") in attrs:
            self._in_token = True
            self.tokens.append("")

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)
        self._in_token = False

    def handle_data(self, data):
        if self._in_token:
            self.tokens[-1] += data


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory):
    out = tmp_path_factory.mktemp("rm") / "tiny"
    assert main(["tiny-rm", str(out)]) == 0
    return out


def test_score_prints_a_table_and_writes_html_and_json(tiny_rm, tmp_path, capsys):
    pairs = [{"prompt": "Review:", "response": " The movie was <good> & great.<|endoftext|>"},
             {"prompt": "Hello", "response": " world\nand more"}]
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    page, rows_out = tmp_path / "out" / "heat.html", tmp_path / "rows.jsonl"
    code = main(["score", "--reward-model", str(tiny_rm), "--input", str(data), "--html", str(page), "--json", str(rows_out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "prefix score" in printed and "response 2 of 2" in printed and "sum of rewards" in printed
    rows = [json.loads(line) for line in rows_out.read_text().splitlines()]
    checker = TagChecker()
    checker.feed(page.read_text())
    checker.close()
    assert checker.errors == [] and checker.stack == []
    assert checker.tokens == [t or "\u2205" for row in rows for t in row["tokens"]]  # every token, in order
    assert "".join(rows[0]["tokens"]) == pairs[0]["response"]
    assert "<script" not in page.read_text() and "http" not in page.read_text()  # self-contained
    for row in rows:
        assert sum(row["rewards"]) == pytest.approx(row["final_score"] - row["prompt_score"], abs=1e-5)


def test_score_single_pair_with_other_scheme(tiny_rm, capsys):
    assert main(["score", "--reward-model", str(tiny_rm), "--prompt", "Hi", "--response", " there", "--scheme", "sparse"]) == 0
    assert "scheme sparse" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--reward-model", "./no/such/model", "--prompt", "a", "--response", " b"], "path ./no/such/model does not exist"),
        (["--prompt", "a", "--response", ""], "response 1 is empty"),  # whitespace is scored (test_cli_errors)
        (["--input", "missing.jsonl"], "input file missing.jsonl does not exist"),
        (["--prompt", "a"], "give --prompt and --response"),
    ],
)
def test_clear_errors(tiny_rm, args, message, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    if "--reward-model" not in args:
        args = ["--reward-model", str(tiny_rm)] + args
    assert main(["score"] + args) == 2
    assert message in capsys.readouterr().err


def test_unreadable_input_lines(tiny_rm, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": " b"}\n{not json\n')
    assert main(["score", "--reward-model", str(tiny_rm), "--input", str(bad)]) == 2
    assert "bad.jsonl, line 2: not valid JSON" in capsys.readouterr().err
    bad.write_text('{"prompt": "a"}\n')
    assert main(["score", "--reward-model", str(tiny_rm), "--input", str(bad)]) == 2
    assert 'line 1: each line needs string field(s) "prompt", "response"' in capsys.readouterr().err


def test_demo_arguments_become_its_settings(monkeypatch, capsys):
    """`red-rlhf demo` flags reach DemoSettings (counts as numbers, 'all' as None, the rest at their defaults), and
    --section.key=value arguments become the training run's overrides, as on `red-rlhf train`."""
    import red_rlhf.demo
    from red_rlhf.demo import DemoSettings

    ran = []
    monkeypatch.setattr(red_rlhf.demo, "run_demo", ran.append)
    assert main(["demo", "--rm-pairs", "all", "--rm-keep-layers", "2", "--rm-trainable-layers", "0", "--rm-final-only",
                 "--seed", "3", "--output-dir", "out", "--train.steps=3", "--reward.scheme=abc"]) == 0
    changed = dict(rm_pairs=None, rm_keep_layers=2, rm_trainable_layers=0, rm_final_only=True, seed=3,
                   output_dir="out", overrides=("--train.steps=3", "--reward.scheme=abc"))
    assert ran == [DemoSettings(**changed)]
    assert main(["demo"]) == 0
    assert ran[-1] == DemoSettings()  # no flags: every default
    for flag, value, message in [("--rm-pairs", "-1", "expected a number >= 0 or 'all', got '-1'"),
                                 ("--rm-keep-layers", "two", "expected a whole number or 'all', got 'two'")]:
        with pytest.raises(SystemExit):
            main(["demo", flag, value])
        err = capsys.readouterr().err
        assert flag in err and message in err
    assert len(ran) == 2  # the bad ones never ran


def test_demo_flags_of_training_settings_still_work_and_name_their_key(monkeypatch, capsys):
    """--steps, --reward-scheme, --policy-lr, --temperature and --rl-seed are training settings, spelled by their
    configs/demo.yaml key now; the old flags become those overrides with a notice, and the new spelling wins."""
    import red_rlhf.demo

    ran = []
    monkeypatch.setattr(red_rlhf.demo, "run_demo", ran.append)
    assert main(["demo", "--steps", "3", "--reward-scheme", "sparse", "--policy-lr", "1e-4", "--temperature=0.9",
                 "--rl-seed", "5", "--train.steps=4"]) == 0
    assert ran[-1].overrides == ("--train.steps=3", "--reward.scheme=sparse", "--algo.policy_lr=1e-4",
                                 "--rollout.temperature=0.9", "--train.seed=5", "--train.steps=4")
    err = capsys.readouterr().err
    assert "--steps 3 is spelled --train.steps=3 now" in err and "--rl-seed 5 is spelled --train.seed=5 now" in err
    assert len(err.splitlines()) == 5  # one line per old flag


def test_a_bad_demo_override_fails_before_anything_slow(tmp_path, capsys):
    """An unknown key or a bad value is one line naming it, before data are prepared or a model trains."""
    cache = tmp_path / "cache"
    for override, message in [("--train.stepz=3", "unknown config key train.stepz"),
                              ("--reward.scheme=dense", "reward.scheme"), ("--train.steps=many", "train.steps must be")]:
        assert main(["demo", "--cache-dir", str(cache), "--output-dir", str(tmp_path / "out"), override]) == 2
        assert message in capsys.readouterr().err
    assert not cache.exists() and not (tmp_path / "out").exists()


def test_score_does_not_import_training_or_the_demo_pipeline():
    """`red-rlhf score` stays light: the parser reads the demo's settings without its pipeline, trainer or plots."""
    import subprocess
    import sys

    code = ("import sys; from red_rlhf.cli import build_parser; build_parser(); "
            "print(','.join(sorted(m for m in sys.modules if m.startswith(('red_rlhf', 'matplotlib', 'accelerate')))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split(",")
    heavy = [m for m in loaded if m.startswith(("red_rlhf.training", "red_rlhf.demo.", "matplotlib", "accelerate"))]
    assert heavy == [] and "red_rlhf.demo" in [m.strip() for m in loaded]
