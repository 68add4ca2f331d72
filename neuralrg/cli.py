"""Helpers for the entry points: user errors become one clear line and exit status 1."""
from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator

log = logging.getLogger("neuralrg")


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Turn ValueError (bad input, mismatched checkpoint, occupied run directory), the NaN guard
    (``NonFiniteLossError``) and hydra's instantiation errors into ``error: <message>`` on stderr
    and exit status 1, without a traceback."""
    from hydra.errors import InstantiationException

    from .errors import NonFiniteLossError

    try:
        yield
    except (ValueError, NonFiniteLossError, InstantiationException) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
