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
import torch.nn.functional as F
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


ACTIVATIONS = {
    "leaky_relu": lambda h: F.leaky_relu(h, 0.01),
    "silu": F.silu,
    "softplus": F.softplus,
    "tanh": torch.tanh,
}
"""Hidden-layer nonlinearities of the coupling networks. Smooth ones (silu, softplus, tanh)
give a smooth flow, which HMC in latent space needs: with leaky_relu the latent potential has
kinks, the leapfrog energy error stops scaling as ε², and the adapted step size collapses."""


def check_activation(name: object) -> str:
    """``name`` if it is a key of ``ACTIVATIONS``, else a ValueError listing them."""
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return name


class Activation(nn.Module):
    """A parameter-free module applying ``ACTIVATIONS[name]``."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = check_activation(name)
        self.fn = ACTIVATIONS[self.name]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fn(h)

    def extra_repr(self) -> str:
        return self.name


class PlaquetteCoupling(nf.flows.Flow):
    """One affine coupling x_u ← x_u·exp(s(x_c)) + t(x_c) on (P, 4) plaquette tensors.

    One fused MLP gives log-scale and shift of the two updated channels from the two
    conditioning ones. Its first and last layers act on all 4 channels with fixed 0/1 weight
    masks, so no gather/scatter of channels is ever needed: the conditioning channels pass
    through bit-exactly (s = 0, t = 0) and only the tiny input/output layers carry the mask.
    The log-scale is bounded, s = a·tanh(raw/2) with a learnable amplitude a, so exp(s) never
    overflows. The last layer starts at zero: the coupling starts as the identity.
    """

    def __init__(self, partition: int, hidden: Sequence[int], scale_bound: float = 2.0,
                 activation: str = "leaky_relu") -> None:
        super().__init__()
        upd, cond = PARTITIONS[partition % len(PARTITIONS)]
        widths = [int(h) for h in hidden]
        in_mask = torch.zeros(4)
        in_mask[list(cond)] = 1.0
        out_mask = torch.zeros(4)
        out_mask[list(upd)] = 1.0
        self.register_buffer("in_mask", in_mask, persistent=False)           # (4,)
        self.register_buffer("out_mask", out_mask.repeat(2), persistent=False)  # (8,): s | t
        self.first = nn.Linear(4, widths[0])
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.last = nn.Linear(widths[-1], 8)
        nn.init.zeros_(self.last.weight)
        nn.init.zeros_(self.last.bias)
        self.scale_amp = nn.Parameter(torch.full((4,), float(scale_bound)))
        self.act = ACTIVATIONS[check_activation(activation)]

    def _first(self, y: torch.Tensor) -> torch.Tensor:
        """The masked first layer (before the activation): (..., 4) -> (..., width)."""
        return F.linear(y, self.first.weight * self.in_mask, self.first.bias)

    def _scale_shift(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.act(self._first(y))
        for lin in self.hidden:
            h = self.act(lin(h))
        out = F.linear(h, self.last.weight * self.out_mask[:, None], self.last.bias * self.out_mask)
        s_raw, t = out.chunk(2, dim=-1)
        # a·tanh(raw/2) written as a·(2σ(raw) − 1): same function, a faster kernel on CPU
        return self.scale_amp * (2.0 * torch.sigmoid(s_raw) - 1.0), t

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self._scale_shift(y)
        return y * torch.exp(s) + t, s.sum(dim=-1)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self._scale_shift(y)  # conditioning channels are unchanged by forward
        return (y - t) * torch.exp(-s), -s.sum(dim=-1)


class PlaquetteBijector(nf.flows.Flow):
    """A bijection of R⁴ (one 2×2 plaquette): ``n_couplings`` complementary RealNVP couplings.

    ``hidden``: widths of the MLP hidden layers; ``activation``: a key of ``ACTIVATIONS``.
    Rows are plaquettes, shape (P, 4).
    """

    coupling_class: type = PlaquetteCoupling  # subclasses swap in their coupling (odd, context)

    def __init__(self, n_couplings: int, hidden: Sequence[int], scale_bound: float = 2.0,
                 activation: str = "leaky_relu") -> None:
        super().__init__()
        self.couplings = nn.ModuleList(
            self.coupling_class(i, hidden, scale_bound, activation) for i in range(n_couplings)
        )

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = y.new_zeros(y.shape[:-1])
        for c in self.couplings:
            y, ld = c(y)
            log_det = log_det + ld
        return y, log_det

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = y.new_zeros(y.shape[:-1])
        for c in reversed(self.couplings):
            y, ld = c.inverse(y)
            log_det = log_det + ld
        return y, log_det
