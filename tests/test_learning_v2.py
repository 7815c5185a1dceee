"""Study v2's plan and report (bench/bench_learning.py --study v2, bench/learning_report_v2.py) on made-up runs."""

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from learning_stats import holm, paired_t_test, t_interval  # noqa: E402


def test_the_v2_plan_runs_a_seeds_primary_pairs_first_and_grpo_only_when_asked():
    from bench_learning import V2_ORDER, parse_args, plan

    runs = plan(["v2"], None, 20)
    assert len(runs) == 5 * 8 and len({r.name for r in runs}) == 40
    assert [r.arm for r in runs[:5]] == ["ppo-red", "ppo-sparse-rc", "rloo-red", "rloo-sparse", "ppo-sparse"]
    assert {r.seed for r in runs[:5]} == {0} and {r.max_new_tokens for r in runs} == {64}
    with_grpo = plan(["v2", "v2-grpo"], [0], 20)
    assert [r.arm for r in with_grpo] == list(V2_ORDER)
    by_arm = {r.arm: r for r in with_grpo}
    assert "--algo.critic_init=reward" in by_arm["ppo-sparse-rc"].overrides()
    assert "--algo.critic_init=reward-trunk" in by_arm["ppo-red"].overrides()
    rloo = by_arm["rloo-red"].overrides()
    assert {"--algo.algorithm=rloo", "--rollout.samples_per_prompt=4", "--rollout.batch_size=2"} <= set(rloo)
    # the first study's run names (its results' resume keys) are unchanged
    assert plan(["main"], [0], 40)[0].name == "red-len24-beta1-difference-kl0.05-steps40-seed0"
    args = parse_args(["run", "--study", "v2", "--groups", "v2"])
    assert (args.steps, args.eval_every, args.eval_prompts) == (20, 4, 128)
    assert args.results == "docs/results/learning-v2/runs.jsonl"
    assert parse_args(["run"]).results == "docs/results/learning/runs.jsonl"


def _run(arm: str, seed: int, golds: list[float], kls: list[float], commit: str = "abc1234") -> dict:
    evals = [{"step": 4 * i, "gold": g, "rm_score": 2 * g, "judge": g / 4, "kl": k, "response_length": 64 - i}
             for i, (g, k) in enumerate(zip(golds, kls))]
    return {"arm": arm, "seed": seed, "evals": evals, "wall_s": 60.0, "commit": commit}


def _study(tmp_path, rloo_reaching: int = 8):
    runs = []
    for seed in range(8):
        base, noise = 0.1 * seed, 0.05 * (seed % 3 - 1)
        # G over KL 2-8 on a straight trace 0 -> 10 nats is the score at KL 5 (the mean of a linear function)
        runs.append(_run("ppo-red", seed, [base, base + 1.0 + noise, base + 2.0 + 2 * noise], [0, 5, 10]))
        runs.append(_run("ppo-sparse-rc", seed, [base, base + 0.5, base + 1.0], [0, 5, 10]))
        rloo_top = 10 if seed < rloo_reaching else 7  # a run that stops below 8 nats has no G
        runs.append(_run("rloo-red", seed, [base, base + 0.5, base + 1.0], [0, 5, rloo_top]))
        runs.append(_run("rloo-sparse", seed, [base, base + 0.5 + noise, base + 1.0 + 2 * noise], [0, 5, 10]))
    return runs


def test_primary_table_pairs_by_seed_tests_and_holm_corrects(tmp_path):
    from learning_report_v2 import report

    summary = report(_study(tmp_path), tmp_path)
    c1, c2 = summary["primary"]  # no GRPO runs: two comparisons
    assert c1["id"] == "C1" and c1["pairs"] == 8
    noise = [0.05 * (s % 3 - 1) for s in range(8)]
    assert c1["per_seed"] == pytest.approx([0.5 + n for n in noise])  # G(ppo-red) - G(ppo-sparse-rc) at KL 5
    assert c1["p"] == pytest.approx(paired_t_test([0.5 + n for n in noise], [0.0] * 8)["p"])
    assert c2["per_seed"] == pytest.approx([-n for n in noise])
    assert (c1["p_holm"], c2["p_holm"]) == pytest.approx(tuple(holm([c1["p"], c2["p"]])))
    assert c1["finding"] and not c2["finding"] and c2["detectable"] > 0
    assert (tmp_path / "score_vs_kl.png").is_file() and (tmp_path / "summary.json").is_file()


def test_the_per_arm_table_gives_each_arms_g_and_last_evaluation_over_its_seeds(tmp_path, capsys):
    from learning_report_v2 import report

    summary = report(_study(tmp_path, rloo_reaching=5), tmp_path)
    arms = {a["arm"]: a for a in summary["arms"]}
    assert list(arms) == ["ppo-red", "ppo-sparse-rc", "rloo-red", "rloo-sparse"]
    noise = [0.05 * (s % 3 - 1) for s in range(8)]
    g = [0.1 * s + 1.0 + noise[s] for s in range(8)]  # a straight trace 0 -> 10 nats: G is the score at KL 5
    assert arms["ppo-red"]["G_gold"] == pytest.approx(t_interval(g))
    assert arms["ppo-red"]["G_rm_score"] == pytest.approx(t_interval([2 * x for x in g]))
    assert arms["ppo-red"]["G_judge"] == pytest.approx(t_interval([x / 4 for x in g]))
    assert arms["ppo-red"]["last_gold"] == pytest.approx(t_interval([0.1 * s + 2.0 + 2 * noise[s] for s in range(8)]))
    assert arms["ppo-red"]["last_kl"] == pytest.approx((10.0, 10.0, 10.0))
    assert arms["ppo-red"]["last_response_length"] == pytest.approx((62.0, 62.0, 62.0))
    # seeds 5-7 of rloo-red stop at 7 nats: they have no G, and the mean is over the other five
    assert (arms["rloo-red"]["runs"], arms["rloo-red"]["with_g_gold"]) == (8, 5)
    assert arms["rloo-red"]["G_gold"] == pytest.approx(t_interval([0.1 * s + 0.5 for s in range(5)]))
    assert summary["start"]["gold"] == pytest.approx(0.35)  # every run's step 0: 0.1 * seed, seeds 0-7
    out = capsys.readouterr().out.splitlines()
    row = next(line for line in out if line.startswith("| rloo-red | 8 |"))
    assert "(5)" in row
    summary_lines = [line for line in out if line.startswith("learning: ")]
    assert [line.split()[1] for line in summary_lines] == ["C1", "C2"]
    assert summary_lines[1].endswith("5 pairs: not reached: 5 complete pairs, fewer than 6")


def test_the_sensitivity_check_leaves_out_a_seed_whose_two_runs_trained_on_different_proxies(tmp_path):
    from learning_report_v2 import PROXY_REBUILT, proxy_of, report

    runs = _study(tmp_path)
    for r in runs:  # seeds 0-4 before the proxy was rebuilt; seed 5's ppo-red too, its other runs after (amendment 2)
        late = r["seed"] > 5 or (r["seed"] == 5 and r["arm"] != "ppo-red")
        r["finished"] = "2026-12-04T17:00:58" if late else "2026-12-04T13:45:14"
    assert proxy_of(runs[0]) == "original" and proxy_of({"finished": PROXY_REBUILT + ":00"}) == "rebuilt"
    summary = report(runs, tmp_path)
    (c1, c2), (s1, s2) = summary["primary"], summary["same_proxy"]
    assert s1["seeds"] == [0, 1, 2, 3, 4, 6, 7]
    assert s1["per_seed"] == pytest.approx(c1["per_seed"][:5] + c1["per_seed"][6:])
    assert s1["p"] == pytest.approx(paired_t_test([0.5 + 0.05 * (s % 3 - 1) for s in s1["seeds"]], [0.0] * 7)["p"])
    assert s2["seeds"] == c2["seeds"] == list(range(8)) and s2["p"] == pytest.approx(c2["p"])  # one proxy per pair
    assert c1["pairs"] == 8  # the primary analysis keeps every seed, as registered


def test_a_comparison_with_too_few_complete_pairs_has_no_test_but_stays_in_the_family(tmp_path):
    from learning_report_v2 import report

    c1, c2 = report(_study(tmp_path, rloo_reaching=5), tmp_path)["primary"]
    assert c2["pairs"] == 5 and c2["seeds_run"] == 8 and not c2["reached"] and math.isnan(c2["p"])
    assert c1["p_holm"] == pytest.approx(min(1.0, 2 * c1["p"]))  # m = 2 all the same
    assert c2["p_holm"] == 1.0


def test_the_report_refuses_runs_of_several_commits_or_uncommitted_code(tmp_path):
    from learning_report_v2 import report

    runs = _study(tmp_path)
    runs[0]["commit"] = "def5678"
    with pytest.raises(ValueError, match="one clean commit"):
        report(runs, tmp_path)
    for r in runs:
        r["commit"] = "abc1234-dirty"
    with pytest.raises(ValueError, match="one clean commit"):
        report(runs, tmp_path)


def test_a_runs_commit_is_dirty_when_the_code_differs_not_when_results_grow(tmp_path, monkeypatch):
    import subprocess

    from bench_learning import _commit, _strip

    git = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    (tmp_path / "red_rlhf").mkdir()
    (tmp_path / "red_rlhf" / "x.py").write_text("a = 1\n")
    (tmp_path / "runs.jsonl").write_text("{}\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    monkeypatch.chdir(tmp_path)
    head = _commit()
    assert head and not head.endswith("-dirty")
    (tmp_path / "runs.jsonl").write_text("{}\n{}\n")  # the study appends its results: same code
    assert _commit() == head
    (tmp_path / "red_rlhf" / "x.py").write_text("a = 2\n")
    assert _commit() == head + "-dirty"
    assert _strip("Fine film.<|im_end|>", ["<|im_end|>", "<|endoftext|>"]) == "Fine film."


def test_the_pinned_proxy_is_rebuilt_byte_for_byte_without_training_and_a_different_one_is_refused(tmp_path):
    import json

    import torch

    from red_rlhf.models.tiny import tiny_reward_model, tiny_tokenizer
    from red_rlhf.training.reward_model import keep_first_layers, load_backbone, save_reward_model
    from study_proxy import pin, restore

    tok = tiny_tokenizer("gpt2")
    tiny_reward_model("llama", len(tok), pad_token_id=tok.pad_token_id, layers=3).save_pretrained(tmp_path / "bb")
    tok.save_pretrained(tmp_path / "bb")
    model, rm_tok = load_backbone(str(tmp_path / "bb"))  # a head-only proxy, as the demo trains one
    keep_first_layers(model, 2)
    torch.manual_seed(5)
    torch.nn.init.normal_(model.score.weight)
    trained = save_reward_model(model, rm_tok, tmp_path / "trained" / "rm-x", {"accuracy_after": 0.75})
    pinned = tmp_path / "proxy_head.json"
    pin(trained, pinned, keep_layers=2)

    out = restore(tmp_path / "bb", tmp_path / "cache" / "rm-x", pinned)
    assert (out / "model.safetensors").read_bytes() == (trained / "model.safetensors").read_bytes()
    assert json.loads((out / "rm_metrics.json").read_text()) == {"accuracy_after": 0.75}
    assert restore(tmp_path / "bb", out, pinned) == out  # present and the same: kept
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["rm-x"]

    record = json.loads(pinned.read_text())
    pinned.write_text(json.dumps({**record, "model_sha256": "0" * 64}))  # a cache holding another proxy
    with pytest.raises(RuntimeError, match="not the study's pinned proxy"):
        restore(tmp_path / "bb", out, pinned)
    record["score_weight"][0] += 1e-3  # a rebuild whose bytes differ from the pinned sha256
    pinned.write_text(json.dumps(record))
    with pytest.raises(RuntimeError, match="the backbone differs; do not run the study"):
        restore(tmp_path / "bb", tmp_path / "cache2" / "rm-x", pinned)
    assert not (tmp_path / "cache2").exists() or not any((tmp_path / "cache2").iterdir())


def test_two_workers_restoring_the_pinned_proxy_at_once_keep_the_first_complete_folder(tmp_path, monkeypatch):
    import shutil

    import torch

    import red_rlhf.training.reward_model as reward_model
    from red_rlhf.models.tiny import tiny_reward_model, tiny_tokenizer
    from study_proxy import pin, restore

    tok = tiny_tokenizer("gpt2")
    tiny_reward_model("llama", len(tok), pad_token_id=tok.pad_token_id, layers=2).save_pretrained(tmp_path / "bb")
    tok.save_pretrained(tmp_path / "bb")
    model, rm_tok = reward_model.load_backbone(str(tmp_path / "bb"))
    torch.manual_seed(5)
    torch.nn.init.normal_(model.score.weight)
    pinned = tmp_path / "proxy_head.json"
    pin(reward_model.save_reward_model(model, rm_tok, tmp_path / "trained" / "rm-x", {"a": 1}), pinned, keep_layers=2)
    out = tmp_path / "cache" / "rm-x"
    save = reward_model.save_reward_model

    def save_then_other_worker_finishes(m, t, folder, metrics):  # the other worker renames its folder in meanwhile
        done = save(m, t, folder, metrics)
        shutil.copytree(done, out)
        return done

    monkeypatch.setattr(reward_model, "save_reward_model", save_then_other_worker_finishes)
    assert restore(tmp_path / "bb", out, pinned) == out
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["rm-x"]  # this worker's copy removed
    assert (out / "rm_metrics.json").is_file()
