"""Lattice conventions and input validation shared by the whole package.

The model lives on an L×L torus with N = L² sites. Every site has one bond to the
right and one down (2N bonds). The coupling K = βJ (J = 1); the Boltzmann weight of a
spin configuration is exp(K Σ_⟨ij⟩ s_i s_j).

This module is dependency-light (math + torch) and free of flow/training code.
"""
from __future__ import annotations

import math
from numbers import Integral, Real

import torch

#: Critical coupling of the square-lattice Ising model, K_c = ½ ln(1 + √2).
K_C: float = 0.5 * math.log1p(math.sqrt(2.0))


def check_lattice_size(L: object, *, power_of_two: bool = False, name: str = "L") -> int:
    """Return ``L`` as an int or raise ``ValueError`` naming the parameter."""
    if isinstance(L, bool) or not isinstance(L, Integral):
        if isinstance(L, Real) and float(L).is_integer():
            L = int(L)
        else:
            raise ValueError(f"{name} must be an integer >= 2, got {L!r}")
    L = int(L)
    if L < 2:
        raise ValueError(f"{name} must be an integer >= 2, got {L}")
    if power_of_two and (L & (L - 1)) != 0:
        raise ValueError(f"{name} must be a power of two (2, 4, 8, ...), got {L}")
    return L


def check_coupling(K: object, L: int | None = None, *, name: str = "K") -> float:
    """Return ``K`` as a float or raise ``ValueError``.

    Any finite K != 0 is allowed (K < 0: the antiferromagnet, on any L). With ``L`` given the
    caller needs the sublattice gauge s_i -> (-1)^(x+y) s_i that maps K < 0 exactly onto +|K|
    (Kaufman's solution): then K < 0 on odd L, which is frustrated, is refused.
    """
    if isinstance(K, bool) or not isinstance(K, Real):
        raise ValueError(f"{name} must be a finite real number != 0, got {K!r}")
    K = float(K)
    if not math.isfinite(K) or K == 0.0:
        raise ValueError(f"{name} must be a finite real number != 0, got {K}")
    if K < 0 and L is not None and L % 2 == 1:
        raise ValueError(
            f"{name} = {K} < 0 (antiferromagnet) on odd L = {L} is frustrated: Kaufman's solution (via the "
            f"sublattice gauge) needs even L; use the transfer matrix (IsingTarget(...).exact(), "
            f"`python -m neuralrg.physics.exact ... --transfer-matrix`, L <= 12)"
        )
    return K


def check_shift(shift: object, *, name: str = "shift") -> float:
    """The smallest eigenvalue of A = Kmat + c·I; must be a finite number > 0."""
    if isinstance(shift, bool) or not isinstance(shift, Real) or not math.isfinite(float(shift)) or float(shift) <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {shift!r}")
    return float(shift)


def coupling_spectrum(L: int, K: float, *, K_y: float | None = None, dtype: torch.dtype = torch.float64,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """Eigenvalues of the coupling matrix Kmat on the L×L torus, shape (L, L).

    Kmat has K on every directed horizontal neighbour entry and ``K_y`` (default K) on every
    vertical one (each row sums to 2K + 2K_y; for L = 2 the double bond doubles the entry), so
    ½ sᵀ Kmat s = K Σ_horiz s s + K_y Σ_vert s s. It is diagonalised by the 2D Fourier
    transform: λ_kl = 2 (K_y cos 2πk/L + K cos 2πl/L), k the frequency along rows (dim −2,
    the vertical bonds), l along columns (dim −1, the horizontal bonds).
    """
    k = torch.arange(L, dtype=dtype, device=device)
    c = torch.cos(2.0 * math.pi * k / L)
    if K_y is None:
        return 2.0 * K * (c[:, None] + c[None, :])
    return 2.0 * (K_y * c[:, None] + K * c[None, :])


def hs_diagonal_shift(L: int, K: float, shift: float, *, K_y: float | None = None) -> float:
    """The constant c with λ_min(Kmat + c·I) = shift, i.e. c = shift − λ_min(Kmat).

    For K > 0 and even L this is c = shift + 4K; for K < 0 (any L) c = shift + 4|K|.
    """
    lam = coupling_spectrum(L, K, K_y=K_y)
    return float(shift - lam.min().item())
