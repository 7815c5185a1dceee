"""The learning study's statistics (bench/learning_stats.py), checked on cases worked out by hand."""

import dataclasses
import math
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from learning_stats import (at_kl, bootstrap, holm, kl_grid, mean_at_kl, min_detectable, paired_t_test,  # noqa: E402
                            pairwise_accuracy, spearman, step_reaching, t_interval, t_quantile, t_two_sided_p)


def test_t_interval_matches_the_textbook_formula():
    values = [1.0, 2.0, 4.0, 7.0, 6.0]
    mean, lo, hi = t_interval(values)
    half = 2.776 * statistics.stdev(values) / math.sqrt(5)  # t_{0.975, 4}
    assert mean == pytest.approx(4.0)
    assert (lo, hi) == pytest.approx((4.0 - half, 4.0 + half))
    assert math.isnan(t_interval([3.0])[1])
    with pytest.raises(ValueError):
        t_interval([])


def test_at_kl_interpolates_inside_the_trace_and_never_extrapolates():
    kls, scores = [0.0, 4.0, 10.0, 8.0, 20.0], [1.0, 3.0, 6.0, 5.0, 7.0]
    assert at_kl(kls, scores, 2.0) == pytest.approx(2.0)
    assert at_kl(kls, scores, 4.0) == pytest.approx(3.0)
    assert at_kl(kls, scores, 7.0) == pytest.approx(4.5)  # first crossing (4 -> 10), not the dip (10 -> 8)
    assert at_kl(kls, scores, 14.0) == pytest.approx(6.0)  # 8 -> 20, half-way
    assert at_kl(kls, scores, 25.0) is None


def test_step_reaching_is_the_first_interpolated_crossing():
    steps, curve = [0, 8, 16, 24], [0.0, 1.0, 3.0, 2.0]
    assert step_reaching(steps, curve, 2.0) == pytest.approx(12.0)
    assert step_reaching(steps, curve, -1.0) == 0.0
    assert step_reaching(steps, curve, 3.5) is None


def test_bootstrap_counts_missing_draws_and_brackets_the_mean():
    values = [float(v) for v in range(10)]
    share, lo, hi = bootstrap([values], lambda xs: statistics.fmean(xs), draws=500)
    assert share == 1.0 and lo < 4.5 < hi
    share, _, _ = bootstrap([values], lambda xs: None if 9.0 not in xs else 1.0, draws=500)
    assert 0.5 < share < 0.8  # P(9 drawn at least once in 10) = 1 - 0.9^10 = 0.65


def test_t_p_values_match_the_closed_forms_for_one_and_two_degrees_of_freedom_and_the_table():
    for t in (0.3, 1.0, 2.5, 12.0):
        assert t_two_sided_p(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), abs=1e-12)  # Cauchy
        assert t_two_sided_p(-t, 2) == pytest.approx(1 - t / math.sqrt(t * t + 2), abs=1e-12)
    for df, t975 in ((4, 2.776), (8, 2.306), (30, 2.042)):  # the table of T_975: p = 0.05 at the 0.975 quantile
        assert t_two_sided_p(t975, df) == pytest.approx(0.05, abs=5e-4)
        assert t_quantile(0.975, df) == pytest.approx(t975, abs=1e-3)
    assert t_two_sided_p(0.0, 5) == pytest.approx(1.0)


def test_min_detectable_difference_from_table_quantiles():
    # 9 pairs (df 8): t_0.975 = 2.306, t_0.8 = 0.889 (table values), sd 1 -> (2.306 + 0.889) / 3
    assert min_detectable(1.0, 9, 0.05) == pytest.approx((2.306 + 0.889) / 3, abs=1e-3)
    assert min_detectable(2.0, 9, 0.05) == pytest.approx(2 * min_detectable(1.0, 9, 0.05))
    assert min_detectable(1.0, 9, 0.05 / 3) > min_detectable(1.0, 9, 0.05)  # a stricter level needs more


def test_paired_t_test_on_a_hand_worked_case():
    # differences 1, 2, 3: mean 2, sd 1, t = 2 / (1 / sqrt 3) = 2 sqrt 3 on 2 df, p = 1 - t / sqrt(t^2 + 2)
    out = paired_t_test([11.0, 12.0, 13.0], [10.0, 10.0, 10.0])
    t = 2 * math.sqrt(3)
    assert out["n"] == 3 and out["df"] == 2 and out["mean"] == pytest.approx(2.0)
    assert out["t"] == pytest.approx(t) and out["p"] == pytest.approx(1 - t / math.sqrt(t * t + 2))  # 0.0742
    assert (out["low"], out["high"]) == pytest.approx((2 - 4.303 / math.sqrt(3), 2 + 4.303 / math.sqrt(3)))
    assert math.isnan(paired_t_test([1.0, 2.0], [0.0, 1.0])["p"])  # every difference 1: no spread, no test
    with pytest.raises(ValueError, match="pairs"):
        paired_t_test([1.0, 2.0], [1.0])


def test_holm_on_hand_worked_families():
    # sorted 0.01, 0.03, 0.04 -> x3, x2, x1 = 0.03, 0.06, 0.04 -> running max 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.02]) == pytest.approx([0.02])  # one comparison: no correction
    assert holm([0.01, float("nan"), 0.02]) == pytest.approx([0.03, 1.0, 0.04])  # a missing test stays in the family
    with pytest.raises(ValueError):
        holm([1.5])


def test_mean_at_kl_averages_the_interpolated_trace_and_refuses_a_partial_range():
    kls, scores = [0.0, 4.0, 8.0], [0.0, 4.0, 6.0]
    assert kl_grid(2.0, 6.0, 1.0) == [2.0, 3.0, 4.0, 5.0, 6.0]
    assert mean_at_kl(kls, scores, kl_grid(2.0, 6.0, 1.0)) == pytest.approx((2 + 3 + 4 + 4.5 + 5) / 5)
    assert mean_at_kl(kls, scores, kl_grid(2.0, 9.0, 1.0)) is None  # stops at KL 8
    with pytest.raises(ValueError, match="divide"):
        kl_grid(2.0, 6.0, 0.3)


def test_spearman_and_pairwise_accuracy_on_hand_worked_cases():
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # 1 - 6 * 2 / (4 * 15)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))  # tie-averaged ranks
    assert spearman([3, 2, 1], [10, 20, 30]) == pytest.approx(-1.0)
    # pairs (0,1) gap 1 right, (0,2) gap 2.5 right, (1,2) gap 1.5 wrong
    assert pairwise_accuracy([0.0, 1.0, 2.5], [0.0, 2.0, 1.0]) == (pytest.approx(2 / 3), 3)
    assert pairwise_accuracy([0.0, 1.0, 2.5], [0.0, 2.0, 1.0], margin=1.2) == (pytest.approx(0.5), 2)
    assert pairwise_accuracy([0.0, 1.0], [5.0, 5.0]) == (pytest.approx(0.5), 1)  # a tie counts one half


def test_the_plan_runs_every_setting_of_a_seed_before_the_next_seed_and_names_each_run_once():
    from bench_learning import STUDIES, plan

    groups = STUDIES["v1"]["groups"].split(",")
    runs = plan(groups, None, 40)
    assert len({r.name for r in runs}) == len(runs)  # names are the results' resume keys
    for group in groups:
        mine = [r for r in runs if r.group == group]
        seeds = [r.seed for r in mine]
        assert mine and seeds == sorted(seeds), group  # all of a seed before the next: a partial study stays paired
        settings = {}  # seed -> its runs with the seed left out, in plan order
        for r in mine:
            settings.setdefault(r.seed, []).append(dataclasses.replace(r, seed=0))
        assert len({tuple(block) for block in settings.values()}) == 1, group  # every seed runs the same settings
    assert [(r.scheme, r.seed) for r in runs[:6]] == [("red", 0), ("sparse", 0), ("abc", 0), ("red", 1), ("sparse", 1), ("abc", 1)]
    assert {r.max_new_tokens for r in runs if r.group == "long"} == {64}
    assert {(r.beta_c, r.first_token) for r in runs if r.group == "knobs"} == {(0.5, "difference"), (1.0, "zero")}
    assert "--reward.beta_c=0.5" in next(r for r in runs if r.group == "knobs").overrides()
    assert {(r.scheme, r.max_new_tokens, r.kl_coef) for r in runs if r.group == "frontier"} == {("sparse", 64, 0.01)}
    assert "--kl.coef=0.01" in runs[-1].overrides()


def _run(scheme: str, seed: int, scores: list[float], kls: list[float], beta_c: float = 1.0) -> dict:
    evals = [{"step": 8 * i, "rm_score": s, "judge": s / 10, "kl": k} for i, (s, k) in enumerate(zip(scores, kls))]
    return {"scheme": scheme, "seed": seed, "max_new_tokens": 24, "beta_c": beta_c, "first_token": "difference",
            "kl_coef": 0.05, "evals": evals, "wall_s": 60.0}


def test_report_pairs_by_seed_and_reads_scores_at_matched_kl(tmp_path):
    from learning_report import report

    runs = []
    for seed, offset in enumerate((0.0, 0.5, 1.0)):
        runs.append(_run("red", seed, [offset, offset + 2, offset + 4], [0.0, 4.0, 8.0]))
        runs.append(_run("sparse", seed, [offset, offset + 1, offset + 2], [0.0, 4.0, 8.0]))
        runs.append(_run("red", seed, [offset, offset + 4, offset + 8], [0.0, 6.0, 12.0], beta_c=0.5))  # a knob
    summary = report(runs, tmp_path)
    entry = summary["lengths"][24]
    diff = entry["paired_last_step"]["red"]
    assert diff["rm_score"]["per_seed"] == pytest.approx([2.0, 2.0, 2.0])  # the seed offsets cancel in pairs
    assert diff["rm_score"]["interval"] == pytest.approx((2.0, 2.0, 2.0))
    at_6 = entry["equal_kl"]["rm_score"][6]
    assert at_6["red"]["interval"][0] == pytest.approx(0.5 + 3.0)  # mean offset 0.5, half-way from +2 to +4
    assert at_6["red - sparse"]["interval"][0] == pytest.approx(1.5)
    assert at_6["red beta_c=0.5"]["interval"][0] == pytest.approx(0.5 + 4.0)  # its own trace, at its second point
    assert at_6["red beta_c=0.5 - red"]["interval"][0] == pytest.approx(1.0)  # knobs are compared with plain red too
    assert at_6["red beta_c=0.5 - sparse"]["interval"][0] == pytest.approx(2.5)
    assert "red - red" not in at_6 and "sparse - sparse" not in at_6
    assert entry["paired_last_step"]["red beta_c=0.5 - red"]["rm_score"]["per_seed"] == pytest.approx([4.0] * 3)
    # sparse ends at mean 2.5; RED's mean curve (0.5, 2.5, 4.5) reaches it at step 8
    assert entry["steps_to_match"]["rm_score"]["steps"] == pytest.approx(8.0)
    assert {p.name for p in tmp_path.iterdir()} >= {"score_vs_step.png", "score_vs_kl.png", "paired_differences.png",
                                                     "summary.json"}


def test_report_compares_red_with_a_sparse_variant_that_goes_further_along_the_kl_axis(tmp_path):
    from learning_report import report

    runs = []
    for seed, offset in enumerate((0.0, 0.5, 1.0)):
        runs.append(_run("red", seed, [offset, offset + 2, offset + 4], [0.0, 4.0, 8.0]))
        runs.append(_run("sparse", seed, [offset, offset + 1, offset + 2], [0.0, 2.0, 4.0]))
        low_kl = _run("sparse", seed, [offset, offset + 1, offset + 3], [0.0, 4.0, 12.0])
        low_kl["kl_coef"] = 0.01
        runs.append(low_kl)
    entry = report(runs, tmp_path)["lengths"][24]
    at_8 = entry["equal_kl"]["rm_score"][8]
    assert "sparse" not in at_8 and "red - sparse" not in at_8  # sparse stops at KL 4
    assert at_8["sparse kl_coef=0.01"]["interval"][0] == pytest.approx(0.5 + 2.0)  # half-way from +1 to +3
    assert at_8["red - sparse kl_coef=0.01"]["interval"][0] == pytest.approx(2.0)  # RED's +4 at KL 8, minus +2
    assert "sparse kl_coef=0.01 - sparse kl_coef=0.01" not in at_8
    assert entry["equal_kl"]["rm_score"][4]["sparse kl_coef=0.01 - sparse"]["interval"][0] == pytest.approx(-1.0)
    diff = entry["paired_last_step"]["red - sparse kl_coef=0.01"]
    assert diff["rm_score"]["per_seed"] == pytest.approx([1.0] * 3) and diff["kl"]["per_seed"] == pytest.approx([-4.0] * 3)
    # the variant ends at mean 3.5; RED's mean curve (0.5, 2.5, 4.5) reaches it half-way between steps 8 and 16
    match = entry["steps_to_match"]["rm_score vs sparse kl_coef=0.01"]
    assert match["steps"] == pytest.approx(12.0) and match["baseline"] == "sparse kl_coef=0.01"
