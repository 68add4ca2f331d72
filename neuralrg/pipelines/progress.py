"""Progress displays for the entry points (the ``sampling.progress.Progress`` protocol).

``make_progress(quiet)``: nothing when ``quiet``; a Rich bar (units done/total, ETA, running
acceptance and step size) when stdout is a terminal; else one plain summary line per stage, plus
an interim line every 30 s of a long stage (no control characters, so captured logs stay clean).
"""
from __future__ import annotations

import sys
import time
from typing import IO, Any

from ..sampling.progress import NULL_PROGRESS, Progress

__all__ = ["LineProgress", "RichProgress", "make_progress"]


def _info_text(info: dict[str, float]) -> str:
    parts = []
    if "accept" in info:
        parts.append(f"acceptance {info['accept']:.3f}")
    if "step_size" in info:
        parts.append(f"step size {info['step_size']:.4g}")
    parts += [f"{k} {v:.4g}" for k, v in info.items() if k not in ("accept", "step_size")]
    return ", ".join(parts)


class LineProgress(Progress):
    """One line per finished stage: ``<stage>: n/total in t s (acceptance …, step size …) <summary>``.

    A stage still running after ``every_s`` seconds also gets a line ``<stage>: n/total so far, t s (…)``
    every ``every_s`` seconds (None: never), so a long latent-HMC warm-up is not silent for minutes.
    """

    def __init__(self, stream: IO[str] | None = None, every_s: float | None = 30.0) -> None:
        self.stream = stream
        self.every_s = every_s
        self.stage: str | None = None

    def start(self, stage: str, total: int) -> None:
        self.stage, self.total, self.done, self.info, self.t0 = stage, int(total), 0, {}, time.perf_counter()
        self.next_line = self.t0 + self.every_s if self.every_s is not None else None

    def update(self, n: int = 1, **info: float) -> None:
        self.done += int(n)
        self.info.update(info)
        now = time.perf_counter()
        if self.next_line is not None and now >= self.next_line and self.done < self.total:
            extra = _info_text(self.info)
            print(f"{self.stage}: {self.done}/{self.total} so far, {now - self.t0:.0f} s"
                  + (f" ({extra})" if extra else ""), file=self.stream or sys.stdout, flush=True)
            self.next_line = now + self.every_s

    def finish(self, summary: str = "") -> None:
        if self.stage is None:
            return
        extra = _info_text(self.info)
        line = (f"{self.stage}: {self.done}/{self.total} in {time.perf_counter() - self.t0:.1f} s"
                + (f" ({extra})" if extra else "") + (f"; {summary}" if summary else ""))
        print(line, file=self.stream or sys.stdout, flush=True)
        self.stage = None


class RichProgress(Progress):
    """A Rich progress bar per stage (kept on screen when the stage ends)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichBar, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self._columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                         TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
        self._make = lambda: RichBar(*self._columns, console=Console(file=stream or sys.stdout), transient=False)
        self._bar: Any = None
        self._task: Any = None

    def start(self, stage: str, total: int) -> None:
        self.finish()
        self._bar = self._make()
        self._bar.start()
        self._task = self._bar.add_task(stage, total=max(int(total), 1), info="")

    def update(self, n: int = 1, **info: float) -> None:
        if self._bar is not None:
            fields = {"info": _info_text(info)} if info else {}
            self._bar.update(self._task, advance=int(n), **fields)

    def finish(self, summary: str = "") -> None:
        if self._bar is None:
            return
        if summary:
            self._bar.update(self._task, info=summary)
        self._bar.stop()
        self._bar = None


def make_progress(quiet: bool = False, stream: IO[str] | None = None) -> Progress:
    """The no-op progress when ``quiet``, a Rich bar on a terminal, plain stage lines otherwise."""
    if quiet:
        return NULL_PROGRESS
    out = stream or sys.stdout
    isatty = getattr(out, "isatty", None)
    return RichProgress(stream) if isatty is not None and isatty() else LineProgress(stream)
