"""A fixed Haar skeleton for the MERA decimators: an exact Gaussian block-spin RG in a wavelet basis.

``HaarPlaquette`` is the orthonormal 2×2 Haar transform of one plaquette (channels (0,0), (0,1),
(1,0), (1,1) = a, b, c, d; inference direction):

    (a, b, c, d) → ((a+b+c+d)/2, (a−b+c−d)/2, (a+b−c−d)/2, (a−b−c+d)/2)

i.e. the block average (on the (0,0) site, which continues to the next level), the column
difference, the row difference and the checkerboard. The matrix H is symmetric and orthogonal
(H² = I), so both directions apply H and log|det| = 0. It has no parameters.

``HaarDecimator(block)`` is the decimator block of ``build_mera(..., skeleton="haar")``: in the
inference direction x → z the plaquette goes through H and then the learned ``block.inverse``;
in the generative direction z → x ``block`` first, then H. With identity blocks the MERA is
the full 2D Haar wavelet transform W (orthogonal): after y = A^{−1/2} x (the preconditioner)
z = W y, so the top latent is the zero mode Σ_i y_i / L, level-k latents are Haar details of
scale 2^{k+1}, and for an exactly Gaussian target N(0, A) the latents are independent N(0, I).
H is plaquette-local: the causal cones of the hierarchy are those without the skeleton.
"""
from __future__ import annotations

import normflows as nf
import torch
from torch import nn

_H = 0.5 * torch.tensor([[1.0, 1.0, 1.0, 1.0],
                         [1.0, -1.0, 1.0, -1.0],
                         [1.0, 1.0, -1.0, -1.0],
                         [1.0, -1.0, -1.0, 1.0]], dtype=torch.float64)
"""Rows: Haar basis of a plaquette in channel order (0,0), (0,1), (1,0), (1,1); H = Hᵀ = H⁻¹."""

SKELETONS = ("none", "haar")


def check_skeleton(value: object) -> str:
    """``value`` if it is one of ``SKELETONS`` (None = "none"), else a ValueError."""
    value = "none" if value is None else value
    if not isinstance(value, str) or value not in SKELETONS:
        raise ValueError(f"skeleton must be one of {list(SKELETONS)}, got {value!r}")
    return value


def haar_matrix(dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> torch.Tensor:
    """The 4×4 orthonormal plaquette Haar matrix H (symmetric, H² = I)."""
    return _H.to(device=device, dtype=dtype)


class HaarPlaquette(nf.flows.Flow):
    """The fixed orthonormal Haar transform of (..., 4) plaquettes (rows or a grid); log|det| = 0 both ways."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("H", _H.clone(), persistent=False)  # entries ±½: exact in any float dtype

    def _mix(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        H = self.H if self.H.dtype == v.dtype and self.H.device == v.device else self.H.to(v)
        return v @ H, v.new_zeros(v.shape[:-1])  # H symmetric: row-vector product = H v

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Haar coefficients → plaquette values (generative direction)."""
        return self._mix(z)

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Plaquette values → Haar coefficients, average in channel 0 (inference direction)."""
        return self._mix(x)


class HaarDecimator(nf.flows.Flow):
    """A learned plaquette ``block`` acting on Haar coefficients: inverse = block⁻¹ ∘ H, forward = H ∘ block."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block
        self.haar = HaarPlaquette()

    @property
    def grid(self) -> bool:
        """Whether the learned block takes the grid of plaquettes (the Haar mixing works on either)."""
        return bool(getattr(self.block, "grid", False))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, log_det = self.block(z)
        return self.haar(h)[0], log_det

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.block.inverse(self.haar.inverse(x)[0])
