"""Plaquette couplings that also see the neighbouring plaquettes (a 3×3 neighbourhood).

In ``PlaquetteCoupling`` the two updated channels of a plaquette are conditioned on the two
conditioning channels *of the same plaquette*, so a block's receptive field is its 4 sites and
the hierarchy mixes plaquettes only through the disentanglers. Here the conditioner's first
layer is a 3×3 convolution (circular, the torus) over the grid of plaquettes of the layer: the
log-scale and shift of plaquette (i, j) depend on the conditioning channels of plaquettes
(i + a, j + b), a, b ∈ {−1, 0, 1}. A coupling updates the same channels in every plaquette and
leaves the conditioning channels of every plaquette unchanged, so it stays a triangular map
with log_det = Σ s, exactly invertible.

Tensors are the grid of plaquettes, shape (B, m, m, 4) (channel order (0,0), (0,1), (1,0),
(1,1) as in ``coupling``); log_det has shape (B, m, m). ``forward`` is the generative
direction, ``inverse`` the inference one (the normflows contract). ``PlaquetteLayer`` passes
the grid to any block with ``grid = True``. The rest of the network (hidden layers, bounded
log-scale, zero last layer = identity start) is ``PlaquetteCoupling``'s.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .coupling import PlaquetteBijector, PlaquetteCoupling

__all__ = ["ContextPlaquetteCoupling", "ContextPlaquetteBijector"]


class ContextPlaquetteCoupling(PlaquetteCoupling):
    """``PlaquetteCoupling`` whose first layer is a circular 3×3 convolution over the plaquette grid.

    Input (B, m, m, 4). The convolution is a linear layer on the unfolded 3×3 neighbourhood (36
    inputs; faster than ``conv2d`` on CPU at these sizes); the conditioning mask zeroes the
    weights of the updated channels at every neighbour.
    """

    def __init__(self, partition: int, hidden: Sequence[int], scale_bound: float = 2.0,
                 activation: str = "leaky_relu") -> None:
        super().__init__(partition, hidden, scale_bound, activation)
        width = self.first.out_features
        self.first = nn.Linear(36, width)  # the 3×3 neighbourhood's 4 channels, (channel, di, dj) order
        self.register_buffer("in_mask", self.in_mask.repeat_interleave(9), persistent=False)  # (36,)

    def _first(self, y: torch.Tensor) -> torch.Tensor:
        B, m = y.shape[0], y.shape[1]
        g = torch.cat((y[:, -1:], y, y[:, :1]), dim=1)  # circular padding by one plaquette
        g = torch.cat((g[:, :, -1:], g, g[:, :, :1]), dim=2)  # (B, m + 2, m + 2, 4)
        nb = g.unfold(1, 3, 1).unfold(2, 3, 1).reshape(B, m, m, 36)  # (B, m, m, 4, 3, 3) flattened
        return F.linear(nb, self.first.weight * self.in_mask, self.first.bias)


class ContextPlaquetteBijector(PlaquetteBijector):
    """``PlaquetteBijector`` of ``ContextPlaquetteCoupling``s: a bijection of the whole plaquette grid.

    Same arguments as ``PlaquetteBijector``; tensors (B, m, m, 4), log_det (B, m, m).
    """

    grid = True

    coupling_class = ContextPlaquetteCoupling
