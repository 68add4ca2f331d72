"""Learning-rate schedules with linear warm-up (multiplicative factors for LambdaLR)."""
from __future__ import annotations

import math
from typing import Callable

import torch

SCHEDULES = ("constant", "cosine", "step")


def lr_factor(step: int, *, name: str, total_steps: int, warmup_steps: int = 0,
              min_factor: float = 0.0, step_every: int = 1000, gamma: float = 0.5) -> float:
    """Factor multiplying the base learning rate at optimizer step ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if name == "constant":
        return 1.0
    if name == "cosine":
        span = max(1, total_steps - warmup_steps)
        frac = min(1.0, (step - warmup_steps) / span)
        return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * frac))
    if name == "step":
        return gamma ** ((step - warmup_steps) // max(1, step_every))
    raise ValueError(f"scheduler name must be one of {SCHEDULES}, got {name!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, *, name: str = "cosine", total_steps: int | Callable[[], int],
                    warmup_steps: int = 0, min_factor: float = 0.0, step_every: int = 1000,
                    gamma: float = 0.5) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepping once per optimizer step. ``total_steps``: the run's length, or a function returning
    it at each step (a run re-sized while it trains, ``pipelines.budget.BudgetReplan``)."""
    if name not in SCHEDULES:
        raise ValueError(f"scheduler name must be one of {SCHEDULES}, got {name!r}")
    length = total_steps if callable(total_steps) else (lambda: total_steps)
    if int(length()) < 1:
        raise ValueError(f"total_steps must be >= 1, got {length()}")
    if int(warmup_steps) < 0:
        raise ValueError(f"scheduler warmup_steps must be >= 0, got {warmup_steps}")
    if not 0.0 <= float(min_factor) <= 1.0:
        raise ValueError(f"scheduler min_factor must be in [0, 1], got {min_factor}")
    if int(step_every) < 1:
        raise ValueError(f"scheduler step_every must be >= 1, got {step_every}")
    if not 0.0 < float(gamma) <= 1.0:
        raise ValueError(f"scheduler gamma must be in (0, 1], got {gamma}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, name=name, total_steps=int(length()), warmup_steps=warmup_steps,
                                       min_factor=min_factor, step_every=step_every, gamma=gamma))
