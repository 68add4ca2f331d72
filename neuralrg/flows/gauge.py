"""A fixed sign gauge that lets the MERA of a ferromagnet serve an unfrustrated antiferromagnet.

On a bipartite torus (even L) the antiferromagnet is the ferromagnet in the sublattice (Mattis)
gauge: with g the target's ``order_gauge`` (±1 per site, the staggered pattern of the negative
directions) and G = diag(g), Kmat_AFM = −G·Kmat_FM·G, so A_AFM = G·A_FM·G (the spectrum is symmetric,
so the shift c is the same), A_AFM^{1/2} = G·A_FM^{1/2}·G and p_AFM(x) = p_FM(G x). A flow that ends
with ``SignGauge`` before the Gaussian preconditioner,

    z → MERA → y_FM → G y_FM → x = A_AFM^{1/2} G y_FM = G·A_FM^{1/2} y_FM,

therefore models the antiferromagnet exactly as well as the MERA models the ferromagnet: the Haar
skeleton's top latents carry the staggered magnetisation (the order parameter), not the uniform
one, and every ferromagnet figure carries over. ``forward`` (generative) and ``inverse`` are the
same map y → g·y, log|det| = 0; g is rebuilt from the target, never saved in checkpoints.
"""
from __future__ import annotations

import normflows as nf
import torch

from ..physics.fold import order_gauge_tensor
from ..physics.target import LatticeTarget, check_field_shape

__all__ = ["SignGauge"]


class SignGauge(nf.flows.Flow):
    """y → g·y for fields (B, L, L), g the target's order gauge; log|det| = 0, shape (B,)."""

    def __init__(self, target: LatticeTarget) -> None:
        super().__init__()
        g = order_gauge_tensor(target)
        if g is None:
            raise ValueError(f"{target!r} has no order gauge (only unfrustrated antiferromagnets on an even "
                             "torus have one): a sign gauge would change nothing")
        self.L = target.L
        self.register_buffer("g", g, persistent=False)  # follows the module's device and dtype

    def _flip(self, v: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        check_field_shape(v, self.L, name)
        return v * self.g.to(v.dtype), v.new_zeros(v.shape[0])

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """y → g·y (generative direction) and log|det| = 0, shape (B,)."""
        return self._flip(y, "y")

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x → g·x (its own inverse) and log|det| = 0, shape (B,)."""
        return self._flip(x, "x")

    def extra_repr(self) -> str:
        return f"L={self.L}"
