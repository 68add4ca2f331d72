"""The sign fold in the samplers (``settings.fold``): sample y from p_φ(y) = 2σ(φ(y))·p(y) with the
plain flow q, then give each kept state a fresh random global sign, x = ±y, a draw of p
(``neuralrg.physics.fold``). Shared by flow Metropolis, the hybrid and the latent HMC samplers.

``fold``: None (no fold: the samplers use q_sym or q as ``flow.z2`` says), "auto" (the weight of a
checkpoint trained with ``loss.sign_fold``, ``flow.sign_fold_weight``; no fold for a flow trained
without one) or a number (the size of a uniform weight, oriented towards the sign of m that the
plain q covers: a fold against q is still exact but leaves the chains in the half it suppresses); a
uniform weight acts along the order parameter (the staggered magnetisation of an antiferromagnet,
``physics.fold.fold_field``).
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator

import torch

from ..physics.fold import fold_field, order_gauge_tensor

__all__ = ["ORIENT_SAMPLES", "check_fold", "fold_weight", "folded", "validate_fold"]

ORIENT_SAMPLES = 256
"""Extra draws of the plain q that orient a numeric fold (independent of the chains)."""


def check_fold(fold: Any) -> None:
    """ValueError unless ``fold`` is None, "auto" or a finite number."""
    number = not isinstance(fold, bool) and isinstance(fold, (int, float)) and math.isfinite(float(fold))
    if not (fold is None or fold == "auto" or number):
        raise ValueError(f"fold must be null, 'auto' or a finite number, got {fold!r}")


def validate_fold(s: dict[str, Any]) -> None:
    """A registry ``validate`` hook: a bad ``fold`` is refused when settings are resolved."""
    check_fold(s.get("fold"))


def fold_weight(flow: Any, fold: Any, generator: torch.Generator | None = None) -> torch.Tensor | None:
    """The fold's weight w (scalar or (L, L), the flow's device and dtype) for ``fold`` (module
    docstring); None for no fold (also for "auto" on a flow trained without one). A number is
    oriented by ``ORIENT_SAMPLES`` draws of the plain q (call with ``flow.z2`` off)."""
    check_fold(fold)
    if fold is None:
        return None
    if fold == "auto":
        w = getattr(flow, "sign_fold_weight", None)
        return None if w is None else w.to(device=flow.device, dtype=flow.dtype)
    if not flow.target.z2_symmetric:
        raise ValueError(f"fold needs a Z2-symmetric target; {type(flow.target).__name__} is not")
    unit = fold_field(torch.ones((), device=flow.device, dtype=flow.dtype), order_gauge_tensor(flow.target))  # 1 or g
    with torch.no_grad():
        y = flow.sample(ORIENT_SAMPLES, generator=generator)[0]
    side = 1.0 if float((unit * y).sum()) >= 0 else -1.0
    return side * abs(float(fold)) * unit


@contextlib.contextmanager
def folded(flow: Any, fold: Any, generator: torch.Generator | None = None) -> Iterator[torch.Tensor | None]:
    """Yields ``fold_weight(flow, fold)``; while it is not None, ``flow.z2`` is off (the fold uses the
    plain q) and is restored on exit. With no fold nothing changes."""
    check_fold(fold)
    if fold is None or (fold == "auto" and getattr(flow, "sign_fold_weight", None) is None):
        yield None
        return
    z2_before = flow.z2
    flow.z2 = False
    try:
        yield fold_weight(flow, fold, generator)
    finally:
        flow.z2 = z2_before
