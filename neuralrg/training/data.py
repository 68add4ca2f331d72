"""Reverse-KL training has no dataset: an epoch is just ``steps_per_epoch`` step indices."""
from __future__ import annotations


class StepIndices:
    """Iterable of step indices with a length, what Lightning needs as a train 'dataloader'."""

    def __init__(self, steps_per_epoch: int) -> None:
        if int(steps_per_epoch) < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.n = int(steps_per_epoch)

    def __iter__(self):
        return iter(range(self.n))

    def __len__(self) -> int:
        return self.n
