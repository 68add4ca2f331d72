"""The sign fold of a Z2-symmetric density: p_φ(x) = 2σ(φ(x))·p(x) with φ odd.

For p even, p_φ is normalised and ½[p_φ(x) + p_φ(−x)] = p(x): y ~ p_φ with a fresh random sign,
x = ±y, is a draw of p. Here φ(x) = Σᵢ wᵢ xᵢ / √N with w a scalar (the magnetisation) or an
(L, L) field; training learns w (``neuralrg.training.losses.SignFold``), the flow samplers use it
(``settings.fold``, ``neuralrg.sampling.fold``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["fold_phi", "fold_log_weight"]


def fold_phi(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """φ(x) = Σᵢ wᵢ xᵢ / √N per sample, x (B, L, L) → (B,); ``weight`` a scalar or (L, L); odd in x."""
    if weight.dim() not in (0, 2) or (weight.dim() == 2 and weight.shape != x.shape[-2:]):
        raise ValueError(f"a sign fold's weight must be a scalar or shaped like one field {tuple(x.shape[-2:])}, "
                         f"got shape {tuple(weight.shape)}")
    return (weight * x).flatten(1).sum(1) / math.sqrt(x.shape[-2] * x.shape[-1])


def fold_log_weight(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """ln[2σ(φ(x))] = ln p_φ(x) − ln p(x) per sample, shape (B,)."""
    return math.log(2.0) + F.logsigmoid(fold_phi(x, weight))
