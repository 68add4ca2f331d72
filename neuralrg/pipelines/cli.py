"""Helpers for the entry points: user errors become one clear line and exit status 1; threads; durations."""
from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from typing import Iterator

log = logging.getLogger("neuralrg")


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Turn ValueError (bad input, mismatched checkpoint, occupied run directory), the NaN guard
    (``NonFiniteLossError``) and hydra's instantiation errors into ``error: <message>`` on stderr
    and exit status 1, without a traceback."""
    from hydra.errors import InstantiationException

    from ..errors import NonFiniteLossError

    try:
        yield
    except InstantiationException as exc:  # a config object's constructor refused its arguments
        from .validate import instantiation_message

        print(f"error: {instantiation_message(exc)}", file=sys.stderr)
        sys.exit(1)
    except (ValueError, NonFiniteLossError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


def default_threads() -> int:
    """The cores this process may use: SLURM_CPUS_PER_TASK when set, else the CPU affinity mask."""
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) >= 1:
        return int(slurm)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def set_threads(threads: object = None) -> int:
    """Set torch's intra-op threads before any work: an integer >= 1, or None for
    ``default_threads()``. Returns the number set."""
    if threads is None:
        threads = default_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be null (the cores this process may use) or an integer >= 1, got {threads!r}")
    import torch

    torch.set_num_threads(threads)
    return threads


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: object, name: str = "max_time") -> float | None:
    """Seconds from "90s", "10m", "1h", "1.5h" or a number of seconds (None stays None);
    ValueError naming ``name`` otherwise."""
    if value is None:
        return None
    seconds: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        try:
            seconds = float(text[:-1]) * _UNITS[text[-1]] if text and text[-1] in _UNITS else float(text)
        except ValueError:
            seconds = None
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{name} must be a duration > 0 like 90s, 10m, 1h or a number of seconds, got {value!r}")
    return seconds
