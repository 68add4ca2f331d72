"""A fixed linear layer that takes the Gaussian part of the Ising relaxation out of the flow.

The relaxation's density is a mixture over spins of Gaussians x | s ~ N(A s, A) (see
``neuralrg.ising``), so in y = A^{−1/2} x every component has unit covariance: y | s ~
N(A^{1/2} s, I). ``GaussianPreconditioner`` is the last layer of a flow (z → … → y → x):

    forward  y → x = A^{1/2} y,   log|det ∂x/∂y| = ½ ln det A   (per sample, total);
    inverse  x → y = A^{−1/2} x,  log|det| = −½ ln det A.

The learned layers then model y, whose potential E(A^{1/2} y) has Hessian
I − A^{1/2} diag(sech² x) A^{1/2}: bounded and free of the stiff 1/shift direction of A⁻¹.
A is circulant, so both directions are one real FFT pair (``IsingTarget.apply_coupling_power``);
nothing is saved in checkpoints: the spectrum is rebuilt from the target.
"""
from __future__ import annotations

import normflows as nf
import torch

from ..physics.target import LatticeTarget, check_field_shape


class GaussianPreconditioner(nf.flows.Flow):
    """x = A^{1/2} y for fields shaped (B, L, L), A the relaxation's coupling matrix of ``target``."""

    def __init__(self, target: LatticeTarget) -> None:
        """``target`` must have a Gaussian part: ``apply_coupling_power(x, power)`` (A^power x)
        and ``logdet_A`` (ln det A), as the Ising relaxation has."""
        super().__init__()
        # A bound method, not a submodule: the target's buffers stay out of this layer's state_dict.
        self._coupling_power = target.apply_coupling_power
        self.L = target.L
        self.half_logdet = 0.5 * target.logdet_A

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """y → x = A^{1/2} y and log|det| = ½ ln det A, shape (B,)."""
        check_field_shape(y, self.L, "y")
        return self._coupling_power(y, 0.5), y.new_full((y.shape[0],), self.half_logdet)

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x → y = A^{−1/2} x and log|det| = −½ ln det A, shape (B,)."""
        check_field_shape(x, self.L, "x")
        return self._coupling_power(x, -0.5), x.new_full((x.shape[0],), -self.half_logdet)

    def extra_repr(self) -> str:
        return f"L={self.L}"
