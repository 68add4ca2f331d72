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


def set_threads(threads: object) -> None:
    """torch intra-op threads: None leaves torch's default, else an integer >= 1."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be null or an integer >= 1, got {threads!r}")
    import torch

    torch.set_num_threads(threads)
