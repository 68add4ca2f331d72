"""The sign fold of a Z2-symmetric density: p_φ(x) = 2σ(φ(x))·p(x) with φ odd.

For p even, p_φ is normalised and ½[p_φ(x) + p_φ(−x)] = p(x): y ~ p_φ with a fresh random sign,
x = ±y, is a draw of p. Here φ(x) = Σᵢ wᵢ xᵢ / √N with w a scalar (the magnetisation) or an
(L, L) field; training learns w (``neuralrg.training.losses.SignFold``), the flow samplers use it
(``settings.fold``, ``neuralrg.sampling.fold``).

A scalar weight means "along the order parameter": for a target with an order gauge g (an
unfrustrated antiferromagnet, ``IsingTarget.order_gauge``) the order parameter is the staggered
magnetisation Σᵢ gᵢ xᵢ, so the scalar w acts as the field w·g (``fold_field``).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["fold_phi", "fold_log_weight", "fold_field", "order_gauge_tensor"]


def order_gauge_tensor(target: Any) -> torch.Tensor | None:
    """The target's order gauge g (L, L) as float64 ±1 (``IsingTarget.order_gauge``: unfrustrated
    antiferromagnets on an even torus), or None where m itself is the order parameter."""
    g = getattr(target, "order_gauge", None)
    return None if g is None else torch.as_tensor(g, dtype=torch.float64)


def fold_field(weight: torch.Tensor, gauge: torch.Tensor | None) -> torch.Tensor:
    """A fold weight in the order frame of ``gauge`` (``order_gauge_tensor`` of the target): a scalar w
    becomes the field w·g (w's device and dtype); a field, or any weight with gauge None, is unchanged."""
    if gauge is None or weight.dim() != 0:
        return weight
    return weight * gauge.to(device=weight.device, dtype=weight.dtype)


def fold_phi(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """φ(x) = Σᵢ wᵢ xᵢ / √N per sample, x (B, L, L) → (B,); ``weight`` a scalar or (L, L); odd in x."""
    if weight.dim() not in (0, 2) or (weight.dim() == 2 and weight.shape != x.shape[-2:]):
        raise ValueError(f"a sign fold's weight must be a scalar or shaped like one field {tuple(x.shape[-2:])}, "
                         f"got shape {tuple(weight.shape)}")
    return (weight * x).flatten(1).sum(1) / math.sqrt(x.shape[-2] * x.shape[-1])


def fold_log_weight(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """ln[2σ(φ(x))] = ln p_φ(x) − ln p(x) per sample, shape (B,)."""
    return math.log(2.0) + F.logsigmoid(fold_phi(x, weight))
