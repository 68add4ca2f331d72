"""Reverse-KL training has no dataset: an epoch is just ``steps_per_epoch`` step indices."""
from __future__ import annotations

from typing import Any, Iterator


class StepIndices:
    """Iterable of step indices with a length, what Lightning needs as a train 'dataloader'.

    Stateful (``state_dict`` / ``load_state_dict``): a run resumed from a mid-epoch checkpoint
    finishes that epoch instead of starting a new one, so epochs stay aligned with
    ``global_step // steps_per_epoch``.
    """

    def __init__(self, steps_per_epoch: int) -> None:
        if int(steps_per_epoch) < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.n = int(steps_per_epoch)
        self._consumed = 0   # indices handed out in the current epoch
        self._resume_at = 0  # first index of the next iteration (set by load_state_dict)

    def __iter__(self) -> Iterator[int]:
        start, self._resume_at = self._resume_at, 0
        self._consumed = start
        for i in range(start, self.n):
            self._consumed = i + 1
            yield i

    def __len__(self) -> int:
        return self.n

    def state_dict(self) -> dict[str, Any]:
        return {"consumed": self._consumed, "steps_per_epoch": self.n}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        consumed = int(state.get("consumed", 0))
        self._resume_at = consumed if 0 < consumed < self.n else 0
