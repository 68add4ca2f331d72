"""A tiny progress and time-budget protocol for long sampling loops (no display code here).

Samplers report through a ``Progress``: ``start(stage, total)``, ``update(n, **info)`` after
every n trajectories (info: running ``accept``, ``step_size``, ...), ``finish(summary)``. The
base class does nothing; the displays (Rich bar, plain lines) live in ``neuralrg.pipelines``.

``Deadline`` bounds a sampling phase in wall seconds: loops check ``expired()`` after each
trajectory (after warm-up) and stop cleanly, keeping what was sampled (``ChainRun.partial``).
"""
from __future__ import annotations

import time

__all__ = ["Progress", "NULL_PROGRESS", "Prefixed", "Deadline"]


class Progress:
    """The protocol, and the no-op default."""

    def start(self, stage: str, total: int) -> None:
        """A stage of ``total`` units (trajectories, batches) begins."""

    def update(self, n: int = 1, **info: float) -> None:
        """``n`` more units done; ``info``: running numbers to show (acceptance, step size...)."""

    def finish(self, summary: str = "") -> None:
        """The current stage ended; ``summary`` says how (e.g. "stopped at the time budget")."""


NULL_PROGRESS = Progress()


class Prefixed(Progress):
    """Forwards to ``inner`` with stage names prefixed ("latent_hmc: warm-up")."""

    def __init__(self, inner: Progress, prefix: str) -> None:
        self.inner, self.prefix = inner, prefix

    def start(self, stage: str, total: int) -> None:
        self.inner.start(f"{self.prefix}: {stage}", total)

    def update(self, n: int = 1, **info: float) -> None:
        self.inner.update(n, **info)

    def finish(self, summary: str = "") -> None:
        self.inner.finish(summary)


class Deadline:
    """``seconds`` of wall time from ``begin()`` (None: unbounded). ``expired()`` is cheap."""

    def __init__(self, seconds: float | None) -> None:
        if seconds is not None and not seconds >= 0:
            raise ValueError(f"a time budget must be >= 0 seconds, got {seconds!r}")
        self.seconds = seconds
        self._end: float | None = None

    def begin(self) -> None:
        """Start the clock (call after warm-up)."""
        if self.seconds is not None:
            self._end = time.perf_counter() + self.seconds

    def expired(self) -> bool:
        """True once the budget is spent (never without a budget or before ``begin``)."""
        return self._end is not None and time.perf_counter() >= self._end

    def remaining(self) -> float | None:
        """Seconds left (None without a budget or before ``begin``; never negative)."""
        return None if self._end is None else max(0.0, self._end - time.perf_counter())
