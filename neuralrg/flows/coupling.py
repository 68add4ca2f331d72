"""RealNVP affine couplings on 2×2 plaquettes and the bijector block built from them.

A plaquette holds 4 variables in the channel order (0,0), (0,1), (1,0), (1,1) (row, column
inside the plaquette). Tensors are shaped (P, 4): every plaquette of every sample of a layer
sits in the batch dimension, so one block's parameters are shared by all plaquettes.

Direction: ``forward`` is the generative direction (latent → physical), ``inverse`` the
inference direction; both return ``(out, log_det)`` with log_det = log|det ∂out/∂in| per row,
shape (P,), in the input's dtype (the normflows ``Flow`` contract).
"""
from __future__ import annotations

from typing import Sequence

import normflows as nf
import torch
from torch import nn

# (updated channels, conditioning channels): checkerboard, rows, columns, each both ways,
# so that consecutive couplings are complementary and every variable is updated.
PARTITIONS: tuple[tuple[tuple[int, int], tuple[int, int]], ...] = (
    ((1, 2), (0, 3)),
    ((0, 3), (1, 2)),
    ((2, 3), (0, 1)),
    ((0, 1), (2, 3)),
    ((1, 3), (0, 2)),
    ((0, 2), (1, 3)),
)


class PlaquetteCoupling(nf.flows.Flow):
    """One affine coupling x_u ← x_u·exp(s(x_c)) + t(x_c) on (P, 4) plaquette tensors.

    One fused ``normflows.nets.MLP`` 2 → hidden → 4 gives both the log-scale and the shift.
    The log-scale is bounded, s = a·tanh(raw) with a learnable per-channel amplitude a, so
    exp(s) can never overflow. The MLP's last layer starts at zero: the coupling starts as
    the identity.
    """

    def __init__(self, partition: int, hidden: Sequence[int], scale_bound: float = 2.0) -> None:
        super().__init__()
        upd, cond = PARTITIONS[partition % len(PARTITIONS)]
        self.register_buffer("upd_idx", torch.tensor(upd), persistent=False)
        self.register_buffer("cond_idx", torch.tensor(cond), persistent=False)
        order = list(cond) + list(upd)
        self.register_buffer("unperm", torch.tensor([order.index(i) for i in range(4)]), persistent=False)
        self.net = nf.nets.MLP([2, *hidden, 4], leaky=0.01, init_zeros=True)
        self.scale_amp = nn.Parameter(torch.full((2,), float(scale_bound)))

    def _scale_shift(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(cond)
        s = self.scale_amp * torch.tanh(h[:, :2])
        return s, h[:, 2:]

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cond, upd = y[:, self.cond_idx], y[:, self.upd_idx]
        s, t = self._scale_shift(cond)
        out = torch.cat([cond, upd * torch.exp(s) + t], dim=1)[:, self.unperm]
        return out, s.sum(dim=1)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cond, upd = y[:, self.cond_idx], y[:, self.upd_idx]
        s, t = self._scale_shift(cond)
        out = torch.cat([cond, (upd - t) * torch.exp(-s)], dim=1)[:, self.unperm]
        return out, -s.sum(dim=1)


class PlaquetteBijector(nf.flows.Flow):
    """A bijection of R⁴ (one 2×2 plaquette): ``n_couplings`` complementary RealNVP couplings.

    ``hidden``: widths of the MLP hidden layers. Rows are plaquettes, shape (P, 4).
    """

    def __init__(self, n_couplings: int, hidden: Sequence[int], scale_bound: float = 2.0) -> None:
        super().__init__()
        self.couplings = nn.ModuleList(
            PlaquetteCoupling(i, hidden, scale_bound) for i in range(n_couplings)
        )

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = y.new_zeros(y.shape[0])
        for c in self.couplings:
            y, ld = c(y)
            log_det = log_det + ld
        return y, log_det

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = y.new_zeros(y.shape[0])
        for c in reversed(self.couplings):
            y, ld = c.inverse(y)
            log_det = log_det + ld
        return y, log_det
