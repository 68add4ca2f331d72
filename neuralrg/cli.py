"""Helpers for the entry points: user errors become one clear line and exit status 1."""
from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator

log = logging.getLogger("neuralrg")


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Turn ValueError (bad input, mismatched checkpoint, NaN guard) into a message + exit 1."""
    from .training.module import NonFiniteLossError

    try:
        yield
    except (ValueError, NonFiniteLossError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
