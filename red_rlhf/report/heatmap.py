"""Show per-token rewards to a person: a coloured terminal table and a self-contained HTML heatmap."""

from __future__ import annotations

import html
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from red_rlhf.models.scorer import ScoredResponse


def _scale(rows: Sequence[ScoredResponse]) -> float:
    """One colour scale for all rows: the largest absolute reward (1 when all are 0)."""
    return max((abs(r) for row in rows for r in row.rewards), default=0.0) or 1.0


def _rgb(reward: float, scale: float) -> tuple[int, int, int]:
    """White at 0, green for positive, red for negative rewards, saturating at +-scale."""
    x = max(-1.0, min(1.0, reward / scale))
    fade = int(round(255 * (1 - abs(x))))
    return (fade, 255, fade) if x >= 0 else (255, fade, fade)


def _visible(token: str) -> str:
    return token.replace("\n", "\\n").replace("\t", "\\t") or "∅"


def print_table(rows: Sequence[ScoredResponse], console: Console | None = None) -> None:
    """Each response as its tokens on a coloured background, then a table token | prefix score | reward."""
    console = console or Console()
    scale = _scale(rows)
    for n, row in enumerate(rows):
        console.rule(f"response {n + 1} of {len(rows)}  ·  scheme {row.scheme}")
        console.print(Text("prompt: ", style="bold") + Text(row.prompt))
        line = Text("response: ", style="bold")
        for token, reward in zip(row.tokens, row.rewards):
            line.append(token, style="black on rgb({},{},{})".format(*_rgb(reward, scale)))
        console.print(line)
        table = Table(show_header=True, header_style="bold")
        for name, justify in (("#", "right"), ("token", "left"), ("prefix score", "right"), ("reward", "right")):
            table.add_column(name, justify=justify)
        for t, (token, score, reward) in enumerate(zip(row.tokens, row.prefix_scores, row.rewards)):
            colour = "black on rgb({},{},{})".format(*_rgb(reward, scale))
            table.add_row(str(t + 1), Text(_visible(token)), f"{score:+.4f}", Text(f"{reward:+.4f}", style=colour))
        console.print(table)
        console.print(
            f"R(x) = {row.prompt_score:+.4f}   R(x, y) = {row.final_score:+.4f}   "
            f"sum of rewards = {sum(row.rewards):+.4f}"
        )


# The token strips' style, shared by every page that shows them (this one and the demo's report).
HEATMAP_CSS = """body { font-family: system-ui, sans-serif; margin: 2em; max-width: 80em; color: #222; }
.row { border: 1px solid #ddd; border-radius: 6px; padding: 1em; margin-bottom: 1.5em; }
.prompt { color: #555; white-space: pre-wrap; margin-bottom: .5em; }
.tokens { font-family: ui-monospace, monospace; white-space: pre-wrap; line-height: 1.9; }
.tok { position: relative; padding: 1px 0; border-right: 1px solid rgba(0,0,0,.08); cursor: default; }
.tok:hover::after { content: attr(data-tip); position: absolute; left: 0; top: 1.8em; z-index: 1; white-space: pre;
  background: #222; color: #fff; padding: .3em .5em; border-radius: 4px; font-size: .85em; }
.stats { color: #555; font-size: .9em; margin-top: .5em; }
.legend span { padding: 0 .6em; font-family: ui-monospace, monospace; }
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
{css}</style>
</head>
<body>
<h1>{title}</h1>
<p class="legend">colour = per-token reward (scheme {schemes}):
<span style="background: rgb(255,0,0)">-{scale:.3g}</span><span style="background: #fff">0</span>
<span style="background: rgb(0,255,0)">+{scale:.3g}</span>. Hover a token for its prefix score and reward.</p>
{rows}
</body>
</html>
"""


def _row_html(n: int, row: ScoredResponse, scale: float) -> str:
    spans = []
    for t, (token, score, reward) in enumerate(zip(row.tokens, row.prefix_scores, row.rewards)):
        tip = f"token {t + 1}: {_visible(token)!r}\nprefix score {score:+.4f}\nreward {reward:+.4f}"
        spans.append(
            '<span class="tok" style="background: rgb({},{},{})" data-tip="{}" title="{}">{}</span>'.format(
                *_rgb(reward, scale), html.escape(tip), html.escape(tip), html.escape(token) or "&#8709;"
            )
        )
    return (
        f'<div class="row" id="response-{n + 1}">\n<div class="prompt"><b>prompt</b> {html.escape(row.prompt)}</div>\n'
        f'<div class="tokens">{"".join(spans)}</div>\n'
        f'<div class="stats">R(x) = {row.prompt_score:+.4f} &middot; R(x, y) = {row.final_score:+.4f} &middot; '
        f"sum of rewards = {sum(row.rewards):+.4f} &middot; {len(row.tokens)} tokens</div>\n</div>"
    )


def heatmap_html(rows: Sequence[ScoredResponse], title: str = "red-rlhf: per-token rewards") -> str:
    """A self-contained page (no scripts, no external files): one coloured token strip per response."""
    schemes = ", ".join(sorted({row.scheme for row in rows}))
    return _PAGE.format(title=html.escape(title), css=HEATMAP_CSS, schemes=html.escape(schemes), scale=_scale(rows),
                        rows=heatmap_rows_html(rows))


def heatmap_rows_html(rows: Sequence[ScoredResponse]) -> str:
    """The coloured token strips alone (one div per response, one colour scale), to embed in other pages."""
    scale = _scale(rows)
    return "\n".join(_row_html(n, row, scale) for n, row in enumerate(rows))
