"""The demo's self-contained report page: summary, curves, before/after samples, per-token heatmaps."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from red_rlhf.demo import judge
from red_rlhf.report.heatmap import HEATMAP_CSS, heatmap_rows_html


def headline_html(summary: dict) -> str:
    """The result in one sentence and a before/after table: what a reader opens the report for."""
    def number(key: str, fmt: str) -> str:
        value = summary.get(key)
        return format(value, fmt) if isinstance(value, (int, float)) else "n/a"

    sentence = (f"{summary.get('steps', '?')} steps of PPO with {html.escape(str(summary.get('reward_scheme', '?')))} "
                f"token rewards moved the mean reward-model score on {summary.get('eval_prompts', '?')} held-out prompts "
                f"from {number('rm_score_before', '+.3f')} to {number('rm_score_after', '+.3f')}, and the independent "
                f"judge's from {number('judge_before', '+.3f')} to {number('judge_after', '+.3f')}, at a KL of "
                f"{number('kl_after', '.1f')} nats from the starting policy.")
    minutes = summary.get("wall_s")
    rows = [("reward model score", number("rm_score_before", "+.3f"), number("rm_score_after", "+.3f")),
            ("judge (VADER, -1..1)", number("judge_before", "+.3f"), number("judge_after", "+.3f")),
            ("KL to the starting policy", "0", number("kl_after", ".1f"))]
    table = "".join(f"<tr><th>{html.escape(name)}</th><td>{b}</td><td>{a}</td></tr>" for name, b, a in rows)
    time = f" Whole run: {minutes / 60:.1f} minutes." if isinstance(minutes, (int, float)) else ""
    facts = (f"<p>The reward model ranks {number('rm_accuracy_after', '.1%')} of held-out human preference pairs "
             f"correctly.{time}</p>")
    return (f"<p class=\"headline\">{sentence}</p><table><tr><th></th><th>before</th><th>after</th></tr>{table}</table>"
            f"{facts}")


def report_html(summary, curves: Path, prompts, before, after, before_rm, after_rm, heat_rows) -> str:
    image = base64.b64encode(curves.read_bytes()).decode()
    judge_before, judge_after = judge(before), judge(after)
    rows = "\n".join(
        f"<tr><td>{html.escape(p)}</td><td>{html.escape(b)}</td><td>{rb:+.3f} / {jb:+.2f}</td>"
        f"<td>{html.escape(a)}</td><td>{ra:+.3f} / {ja:+.2f}</td></tr>"
        for p, b, a, rb, ra, jb, ja in zip(prompts, before, after, before_rm, after_rm, judge_before, judge_after))
    facts = "".join(f"<tr><th>{html.escape(k)}</th><td>{v:.4g}</td></tr>" if isinstance(v, float) else
                    f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in summary.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>red-rlhf demo report</title>
<style>{HEATMAP_CSS}table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
td, th {{ border: 1px solid #ddd; padding: .3em .6em; vertical-align: top; text-align: left; }} img {{ max-width: 100%; }}
</style></head>
<body><h1>red-rlhf demo report</h1>
<h2 id="result">Result</h2>{headline_html(summary)}
<h2 id="curves">Training curves</h2><img alt="training curves" src="data:image/png;base64,{image}">
<h2 id="samples">Held-out prompts, before and after training</h2>
<p>Scores: training reward model / independent judge (VADER compound, -1..1).</p>
<table><tr><th>prompt</th><th>before</th><th>score</th><th>after</th><th>score</th></tr>
{rows}</table>
<h2 id="heatmaps">Per-token rewards of responses after training</h2>
{heatmap_rows_html(heat_rows)}
<h2 id="summary">All settings and timings</h2><table>{facts}</table>
</body></html>
"""
