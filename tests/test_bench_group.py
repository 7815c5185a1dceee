"""bench/bench_group.py on the toy task: three runs with the same rollouts per step, GRPO without a critic."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
try:
    from bench_group import main, summary
finally:
    sys.path.pop(0)


def test_three_runs_with_the_same_rollouts_per_step(tmp_path, capsys):
    out = tmp_path / "group.jsonl"
    records = main(["--task", "toy", "--steps", "2", "--work", str(tmp_path / "work"), "--out", str(out)])
    assert [r["name"] for r in records] == ["ppo-red", "grpo-red", "grpo-sparse"]
    assert len({r["rollouts_per_step"] for r in records}) == 1
    assert [r["samples_per_prompt"] for r in records] == [1, 4, 4]
    assert all(len(r["reward_mean"]) == len(r["time_s"]) == 2 for r in records)
    assert len(out.read_text().splitlines()) == 3
    table = capsys.readouterr().out.splitlines()[-3:]
    assert [line.split()[0] for line in table] == ["ppo-red", "grpo-red", "grpo-sparse"]
    assert summary(records[1])["s_per_step"] == records[1]["time_s"][1]  # the warm-up step is left out
    assert not (tmp_path / "work" / "ppo-red").exists()
