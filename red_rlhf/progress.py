"""Progress that also works when output is not a terminal (CI logs, `red-rlhf train > log`).

`Progress(...)` is rich's progress bar on a terminal. Elsewhere rich draws nothing until the end, so a long
phase looks like a hang; there `Progress` is a `PlainProgress`: the same add_task / update calls print one plain
line per change of a task, at most one line per task every `min_interval` seconds, and always the last one.
"""

from __future__ import annotations

import sys
import time


class PlainProgress:
    """rich.progress.Progress's add_task/update/advance, printed as plain lines."""

    def __init__(self, min_interval: float = 5.0, stream=None, disable: bool = False):
        self.min_interval, self.stream, self.disable = min_interval, stream, disable
        self.tasks: dict[int, dict] = {}
        self.start = time.monotonic()

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """Nothing to clear (every line is already printed); the end of the bars, as rich's Progress.stop."""

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields) -> int:
        task = len(self.tasks)
        self.tasks[task] = {"description": description, "total": total, "completed": completed, "fields": fields,
                            "printed_at": None}
        return task

    def update(self, task: int, *, completed: float | None = None, advance: float | None = None,
               description: str | None = None, total: float | None = None, **fields) -> None:
        t = self.tasks[task]
        before = t["completed"]
        if total is not None:
            t["total"] = total
        if completed is not None:
            t["completed"] = completed
        if advance is not None:
            t["completed"] += advance
        if description is not None:
            t["description"] = description
        t["fields"].update({k: v for k, v in fields.items() if k not in ("refresh", "visible")})
        if t["completed"] != before or description is not None:
            self._maybe_print(t)

    def advance(self, task: int, advance: float = 1) -> None:
        self.update(task, advance=advance)

    def _maybe_print(self, t: dict) -> None:
        now, finished = time.monotonic(), t["total"] is not None and t["completed"] >= t["total"]
        if self.disable or (not finished and t["printed_at"] is not None and now - t["printed_at"] < self.min_interval):
            return
        t["printed_at"] = now
        count = f"{t['completed']:g}/{t['total']:g}" if t["total"] is not None else f"{t['completed']:g}"
        info = " ".join(str(v) for v in t["fields"].values() if v != "")
        line = f"{t['description']} {count}" + (f"  {info}" if info else "") + f"  [{now - self.start:.0f}s]"
        print(line, file=self.stream or sys.stdout, flush=True)


def Progress(*columns, disable: bool = False, min_interval: float = 5.0, **kwargs):  # noqa: N802 - rich's name
    """rich's Progress on a terminal, PlainProgress otherwise (same calls)."""
    if sys.stdout.isatty():
        from rich.progress import Progress as RichProgress

        return RichProgress(*columns, disable=disable, **kwargs)
    return PlainProgress(min_interval=min_interval, disable=disable)
