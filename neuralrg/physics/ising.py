"""The 2D Ising model on the L×L torus and its continuous (Hubbard–Stratonovich) relaxation.

Conventions (see ``docs/conventions.md``):

* spins and fields are shaped (B, L, L); every site bonds to its right and lower neighbour;
* H(s) = −Σ_⟨ij⟩ s_i s_j (total, not per site), Boltzmann weight exp(−K H) = exp(K Σ s_i s_j);
* continuous energy E(x) = ½ xᵀ A⁻¹ x − Σ_i ln cosh x_i with A = Kmat + c·I, c chosen so that
  λ_min(A) = ``shift``; ``IsingTarget.log_prob(x) = −E(x)`` (unnormalised, natural log).
"""
from __future__ import annotations

import math

from typing import Any

import torch

from .lattice import check_coupling, check_lattice_size, check_shift, coupling_spectrum, hs_diagonal_shift
from .target import LatticeTarget, check_field_shape

_LN2 = math.log(2.0)


def bond_sum(s: torch.Tensor) -> torch.Tensor:
    """Σ_⟨ij⟩ s_i s_j over the 2N torus bonds, for s shaped (B, L, L); returns (B,)."""
    return (s * (torch.roll(s, -1, dims=-1) + torch.roll(s, -1, dims=-2))).sum(dim=(-2, -1))


def ising_energy(s: torch.Tensor) -> torch.Tensor:
    """Total Ising energy H(s) = −Σ_⟨ij⟩ s_i s_j (J = 1) for spins shaped (B, L, L); returns (B,)."""
    if s.dim() != 3 or s.shape[-1] != s.shape[-2]:
        raise ValueError(f"spins must be shaped (B, L, L), got {tuple(s.shape)}")
    return -bond_sum(s)


def log_cosh(x: torch.Tensor) -> torch.Tensor:
    """ln cosh x, stable for any |x| and accurate to rounding: |x| + log1p(e^{−2|x|}) − ln 2."""
    a = x.abs()
    return a + torch.log1p(torch.exp(-2.0 * a)) - _LN2


class IsingTarget(LatticeTarget):
    """Continuous relaxation of the L×L torus Ising model at coupling K, as a normflows Target.

    ``log_prob(x) = −E(x)`` with E(x) = ½ xᵀA⁻¹x − Σ ln cosh x_i, for x shaped (B, L, L);
    totals over the lattice (not per site). A⁻¹x is applied with a real 2D FFT (A is
    circulant on the torus). dtype and device follow the input. ``log_z`` is the exact
    ln Z_x = ln ∫ e^{−E(x)} dx (from the Kaufman solution).
    """

    def __init__(self, L: int, K: float, shift: float = 0.1) -> None:
        super().__init__()
        self.L = check_lattice_size(L)
        self.K = check_coupling(K, self.L)
        self.shift = check_shift(shift)
        self.n_sites = self.L * self.L
        self.c = hs_diagonal_shift(self.L, self.K, self.shift)
        eigs = coupling_spectrum(self.L, self.K) + self.c  # eigenvalues of A, float64
        # Eigenvalues of A in rfft2 layout (L, L//2 + 1), kept in float64 on the CPU and cast
        # per (device, dtype) on use, so converting the module between dtypes never rounds them.
        self.spectrum_rfft = eigs[:, : self.L // 2 + 1].contiguous()
        self._eigs_cache: dict[tuple[torch.device, torch.dtype, float], torch.Tensor] = {}
        self.logdet_A = float(torch.log(eigs).sum())
        self._log_z: float | None = None

    def spec_kwargs(self) -> dict[str, Any]:
        return {"L": self.L, "K": self.K, "shift": self.shift}

    def apply_coupling_power(self, x: torch.Tensor, power: float) -> torch.Tensor:
        """A^power x for x shaped (..., L, L) (e.g. power −1, ±½), in x's dtype and device.

        A is circulant on the torus, so this is a real 2D FFT, a product with the
        eigenvalues to that power, and the inverse FFT: O(N log N).
        """
        key = (x.device, x.dtype, float(power))
        mult = self._eigs_cache.get(key)
        if mult is None:
            rdtype = x.dtype if x.dtype.is_floating_point else torch.float64
            mult = self._eigs_cache[key] = self.spectrum_rfft.pow(float(power)).to(device=x.device, dtype=rdtype)
        return torch.fft.irfft2(torch.fft.rfft2(x) * mult, s=(self.L, self.L))

    def apply_inverse_coupling(self, x: torch.Tensor) -> torch.Tensor:
        """A⁻¹x for x shaped (..., L, L), in x's dtype and on x's device."""
        return self.apply_coupling_power(x, -1.0)

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """E(x) = ½ xᵀA⁻¹x − Σ ln cosh x_i, total over the lattice, shape (B,)."""
        check_field_shape(x, self.L)
        quad = 0.5 * (x * self.apply_inverse_coupling(x)).sum(dim=(-2, -1))
        return quad - log_cosh(x).sum(dim=(-2, -1))

    def grad_energy(self, x: torch.Tensor) -> torch.Tensor:
        """∇E(x) = A⁻¹x − tanh x, shaped like x (analytic, no autograd graph needed)."""
        check_field_shape(x, self.L)
        return self.apply_inverse_coupling(x) - torch.tanh(x)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised log density −E(x), shape (B,)."""
        return -self.energy(x)

    # -- physics (the protocol of ``neuralrg.physics.target``) ---------------------------
    def observables(self, x: torch.Tensor, generator: torch.Generator | None = None
                    ) -> dict[str, torch.Tensor]:
        """Improved (Rao–Blackwellised) per-site moments E[· | x] of the spins (energy = H/N,
        energy2, m, m2, m4; ``observables.conditional_moments``) and |m| of spins drawn from
        P(s | x) with ``generator``; each (B,)."""
        from .observables import conditional_moments, sample_spins, spin_moments

        mom = conditional_moments(x)
        mom["abs_m"] = spin_moments(sample_spins(x, generator=generator))["abs_m"]
        return mom

    def summarize(self, series: dict[str, torch.Tensor], c: float = 6.0) -> dict[str, dict[str, Any]]:
        """``observables.summarize_observables``: e, ⟨m²⟩, ⟨|m|⟩, χ, C, Binder with error bars."""
        from .observables import summarize_observables

        series = dict(series)
        abs_m = series.pop("abs_m", None)
        moments = {k: series[k] for k in ("energy", "energy2", "m2", "m4")}
        return summarize_observables(moments, self.K, self.n_sites, abs_m=abs_m, c=c)

    def exact(self) -> dict[str, float]:
        """Kaufman's solution (``exact.exact_solution``): ln Z, f, e, C per site, ln Z_x."""
        from .exact import exact_solution

        return dict(exact_solution(self.L, self.K, self.shift))

    @property
    def log_z(self) -> float:
        """Exact ln Z_x of the continuous model (total, natural log)."""
        if self._log_z is None:
            from .exact import continuous_log_z

            self._log_z = continuous_log_z(self.L, self.K, self.shift)
        return self._log_z

    @property
    def log_z_ising(self) -> float:
        """Exact ln Z of the discrete Ising model (total)."""
        from .exact import ising_log_z

        return ising_log_z(self.L, self.K)
