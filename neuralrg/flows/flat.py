"""Flat (non-hierarchical) RealNVP baseline on the whole L×L lattice.

Checkerboard couplings: the sites of one parity are updated by an affine map whose
log-scale and shift come from a small periodic CNN of the other parity; parities alternate.
Same bounded scale and identity start as the plaquette couplings. The yardstick that shows
what the hierarchy buys.
"""
from __future__ import annotations

import normflows as nf
import torch
from torch import nn

from .coupling import Activation


class CheckerboardCoupling(nf.flows.Flow):
    """Affine coupling on (B, L, L); ``parity`` p updates sites with (i + j) % 2 == p.

    ``forward`` is generative, ``inverse`` inference; log_det shape (B,).
    """

    def __init__(self, L: int, parity: int, hidden: int, n_hidden_layers: int = 2,
                 kernel_size: int = 3, scale_bound: float = 2.0, activation: str = "leaky_relu") -> None:
        super().__init__()
        ij = torch.arange(L)
        mask = ((ij[:, None] + ij[None, :]) % 2 == parity)
        self.register_buffer("upd_mask", mask, persistent=False)
        pad = kernel_size // 2
        layers: list[nn.Module] = []
        ch = 1
        for _ in range(n_hidden_layers):
            layers += [nn.Conv2d(ch, hidden, kernel_size, padding=pad, padding_mode="circular"),
                       Activation(activation)]
            ch = hidden
        last = nn.Conv2d(ch, 2, kernel_size, padding=pad, padding_mode="circular")
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)
        self.scale_amp = nn.Parameter(torch.tensor(float(scale_bound)))

    def _scale_shift(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.upd_mask.to(x.dtype)
        h = self.net((x * (1 - m)).unsqueeze(1))
        s = self.scale_amp * torch.tanh(h[:, 0]) * m
        return s, h[:, 1] * m

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self._scale_shift(z)
        return z * torch.exp(s) + t, s.sum(dim=(1, 2))

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self._scale_shift(x)
        return (x - t) * torch.exp(-s), -s.sum(dim=(1, 2))


def flat_layers(L: int, n_couplings: int, hidden: int, n_hidden_layers: int = 2,
                kernel_size: int = 3, scale_bound: float = 2.0,
                activation: str = "leaky_relu") -> list[CheckerboardCoupling]:
    """``n_couplings`` checkerboard couplings of alternating parity, generative order."""
    return [CheckerboardCoupling(L, i % 2, hidden, n_hidden_layers, kernel_size, scale_bound, activation)
            for i in range(n_couplings)]
