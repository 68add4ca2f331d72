"""A fixed linear layer that takes the Gaussian part of the Ising relaxation out of the flow.

The relaxation's density is a mixture over spins of Gaussians x | s ~ N(A s, A) (see
``neuralrg.ising``), so in y = A^{−1/2} x every component has unit covariance: y | s ~
N(A^{1/2} s, I). ``GaussianPreconditioner`` is the last layer of a flow (z → … → y → x):

    forward  y → x = A^{1/2} y,   log|det ∂x/∂y| = ½ ln det A   (per sample, total);
    inverse  x → y = A^{−1/2} x,  log|det| = −½ ln det A.

The learned layers then model y, whose potential E(A^{1/2} y) has Hessian
I − A^{1/2} diag(sech² x) A^{1/2}: bounded and free of the stiff 1/shift direction of A⁻¹.
A is circulant, so both directions are one real FFT pair; the spectrum is a buffer (not saved
in checkpoints: it is rebuilt from the target), kept in float64 and cast to the input's dtype and
device on use.
"""
from __future__ import annotations

import normflows as nf
import torch

from ..ising import IsingTarget, check_field_shape


class GaussianPreconditioner(nf.flows.Flow):
    """x = A^{1/2} y for fields shaped (B, L, L), A the relaxation's coupling matrix of ``target``."""

    def __init__(self, target: IsingTarget) -> None:
        super().__init__()
        self.L = target.L
        self.half_logdet = 0.5 * target.logdet_A
        self._sqrt64 = target.spectrum_rfft.sqrt()
        self._cache: dict[tuple[torch.device, torch.dtype, float], torch.Tensor] = {}

    def _mul(self, v: torch.Tensor, power: float) -> torch.Tensor:
        key = (v.device, v.dtype, power)
        m = self._cache.get(key)
        if m is None:
            m = self._cache[key] = self._sqrt64.pow(power).to(device=v.device, dtype=v.dtype)
        return torch.fft.irfft2(torch.fft.rfft2(v) * m, s=(self.L, self.L))

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """y → x = A^{1/2} y and log|det| = ½ ln det A, shape (B,)."""
        check_field_shape(y, self.L, "y")
        return self._mul(y, 1.0), y.new_full((y.shape[0],), self.half_logdet)

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x → y = A^{−1/2} x and log|det| = −½ ln det A, shape (B,)."""
        check_field_shape(x, self.L, "x")
        return self._mul(x, -1.0), x.new_full((x.shape[0],), -self.half_logdet)

    def extra_repr(self) -> str:
        return f"L={self.L}"
