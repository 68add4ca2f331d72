"""Bond couplings of the Ising model on the L×L torus: patterns, validation, dense matrices.

Conventions (``docs/conventions.md``, "Couplings"):

* every coupling is K_b = K·J_b: ``K`` (the target's K, playing β) times a dimensionless bond
  pattern J. ``Jx[i, j]`` is the bond (i, j)–(i, j+1 mod L) (horizontal, ``torch.roll`` along
  dim −1), ``Jy[i, j]`` the bond (i, j)–(i+1 mod L, j) (vertical, dim −2), as in
  ``transfer_matrix``;
* H(s) = −Σ_b J_b s_i s_j, weight exp(−K H) = exp(Σ_b K_b s_i s_j); e = ⟨H⟩/N and
  C/N = K² Var(H)/N. Uniform: J = 1 (today's model, any sign of K); anisotropic:
  Jx = 1, Jy = K_y/K; disordered (glass): J from ``transfer_matrix.random_bonds`` with unit
  scale (±1 for ``pm_j``, N(0, 1) for ``gaussian``) or read from a bond file;
* a bond file (``.npz`` with arrays ``Kx``, ``Ky``, or ``.npy`` shaped (2, L, L) = [Kx, Ky])
  holds the couplings at K = 1, i.e. J; the target's K multiplies them.

Numpy/float64 only; no torch state.
"""
from __future__ import annotations

import math
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np

from .transfer_matrix import random_bonds

__all__ = ["DISORDERS", "MAX_DENSE_L", "check_bond_arrays", "load_bond_file", "disorder_pattern",
           "dense_coupling_matrix", "hs_log_z", "brute_force_overlap"]

#: the bond-disorder distributions of ``transfer_matrix.random_bonds``
DISORDERS = ("pm_j", "gaussian")
#: largest L whose non-translation-invariant A (N×N, dense eigendecomposition) is accepted
MAX_DENSE_L = 64


def check_bond_arrays(Jx: Any, Jy: Any, L: int, name: str = "bonds") -> tuple[np.ndarray, np.ndarray]:
    """(Jx, Jy) as float64 (L, L) arrays, or a ValueError naming ``name``: wrong shape, non-finite."""
    out = []
    for key, a in (("Kx", Jx), ("Ky", Jy)):
        if hasattr(a, "detach"):  # torch tensor
            a = a.detach().cpu().numpy()
        try:
            arr = np.array(a, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: {key} must be a real ({L}, {L}) array, got {type(a).__name__}") from None
        if arr.shape != (L, L):
            raise ValueError(f"{name}: {key} must be shaped ({L}, {L}) for L = {L}, got shape {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name}: {key} must be finite, got {int((~np.isfinite(arr)).sum())} "
                             f"non-finite coupling(s)")
        out.append(arr)
    return out[0], out[1]


def bonds_from_spec(bonds: Any, L: int) -> tuple[np.ndarray, np.ndarray]:
    """A ``bonds`` argument ({"Kx": …, "Ky": …} or a pair / (2, L, L) array) as checked (Jx, Jy)."""
    if isinstance(bonds, dict):
        missing = sorted({"Kx", "Ky"} - set(bonds))
        if missing:
            raise ValueError(f"bonds must have keys 'Kx' and 'Ky', missing {missing}")
        return check_bond_arrays(bonds["Kx"], bonds["Ky"], L)
    try:
        Jx, Jy = bonds
    except (TypeError, ValueError):
        raise ValueError(f"bonds must be {{'Kx': (L, L), 'Ky': (L, L)}} or a pair of (L, L) arrays, "
                         f"got {type(bonds).__name__}") from None
    return check_bond_arrays(Jx, Jy, L)


def load_bond_file(path: str | Path, L: int) -> tuple[np.ndarray, np.ndarray]:
    """(Jx, Jy) from ``path``: ``.npz`` with arrays ``Kx`` and ``Ky`` (each (L, L)) or ``.npy``
    shaped (2, L, L) = [Kx, Ky]. ValueError naming ``bond_file`` for anything else."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"bond_file {str(path)!r} does not exist")
    try:
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as data:
                missing = sorted({"Kx", "Ky"} - set(data.files))
                if missing:
                    raise ValueError(f"bond_file {str(path)!r} lacks array(s) {missing} (has {sorted(data.files)})")
                Jx, Jy = data["Kx"], data["Ky"]
        elif p.suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
            if arr.ndim != 3 or arr.shape[0] != 2:
                raise ValueError(f"bond_file {str(path)!r} must hold an array shaped (2, {L}, {L}) = [Kx, Ky], "
                                 f"got shape {arr.shape}")
            Jx, Jy = arr[0], arr[1]
        else:
            raise ValueError(f"bond_file must be a .npz (arrays Kx, Ky) or .npy ((2, L, L)) file, got {str(path)!r}")
    except (OSError, EOFError) as exc:
        raise ValueError(f"bond_file {str(path)!r} could not be read: {exc}") from None
    return check_bond_arrays(Jx, Jy, L, name=f"bond_file {str(path)!r}")


def disorder_pattern(L: int, disorder: object, seed: object) -> tuple[np.ndarray, np.ndarray]:
    """The unit-scale glass pattern (Jx, Jy) = ``random_bonds(L, seed, disorder, K=1)``.

    ValueError naming ``disorder`` (not one of ``DISORDERS``) or ``seed`` (not an integer >= 0).
    """
    if disorder not in DISORDERS:
        raise ValueError(f"disorder must be one of {list(DISORDERS)}, got {disorder!r}")
    if isinstance(seed, bool) or not isinstance(seed, Integral) or int(seed) < 0:
        raise ValueError(f"seed must be an integer >= 0 (it generates the {disorder} bonds), got {seed!r}")
    return random_bonds(L, int(seed), str(disorder), 1.0)


def sublattice_gauge(L: int, x_negative: bool, y_negative: bool) -> np.ndarray:
    """g (L, L) int8, g_ij = (−1)^{[x_negative]·j + [y_negative]·i}: s = g·σ maps the ferromagnet σ
    onto couplings whose horizontal (x) / vertical (y) directions are antiferromagnetic; exact on
    the torus for even L only (the caller checks)."""
    i, j = np.indices((L, L))
    return np.where((int(x_negative) * j + int(y_negative) * i) % 2 == 0, 1, -1).astype(np.int8)


def dense_coupling_matrix(Kx: np.ndarray, Ky: np.ndarray) -> np.ndarray:
    """The N×N coupling matrix (float64, row-major sites n = i·L + j) with K_b on both directed
    entries of every bond b (entries add up for L = 2's double bonds): ½ sᵀKmat s = Σ_b K_b s s."""
    L = Kx.shape[0]
    i, j = np.divmod(np.arange(L * L), L)
    right = i * L + (j + 1) % L
    down = ((i + 1) % L) * L + j
    n = np.arange(L * L)
    kmat = np.zeros((L * L, L * L))
    for nb, w in ((right, Kx.reshape(-1)), (down, Ky.reshape(-1))):
        np.add.at(kmat, (n, nb), w)
        np.add.at(kmat, (nb, n), w)
    return kmat


def hs_log_z(log_z_ising: float, n_sites: int, c: float, logdet_A: float) -> float:
    """ln Z_x = ln Z_Ising + N c/2 + (N/2) ln 2π + ½ ln det A − N ln 2 (any symmetric Kmat with
    zero diagonal: Π cosh x = 2^{−N} Σ_s e^{sᵀx} and ∫ e^{−½xᵀA⁻¹x + sᵀx} dx =
    (2π)^{N/2} (det A)^{1/2} e^{½ sᵀAs}, ½ sᵀAs = Σ_b K_b s s + Nc/2)."""
    n = n_sites
    return log_z_ising + 0.5 * n * c + 0.5 * n * math.log(2.0 * math.pi) + 0.5 * logdet_A - n * math.log(2.0)


def brute_force_overlap(Kx: np.ndarray, Ky: np.ndarray) -> dict[str, float]:
    """Exact ⟨q²⟩ = Σ_ij ⟨s_i s_j⟩² / N² of two independent replicas, by enumerating the 2^N
    states (L ≤ 4); weight exp(Σ_b K_b s s) with the couplings Kx, Ky themselves."""
    L = Kx.shape[0]
    if L > 4:
        raise ValueError(f"brute_force_overlap enumerates 2^(L²) states: L <= 4, got L = {L}")
    N = L * L
    idx = np.arange(1 << N, dtype=np.int64)
    s = (1.0 - 2.0 * ((idx[:, None] >> np.arange(N)[None, :]) & 1)).reshape(-1, L, L)
    a = (Kx * s * np.roll(s, -1, axis=2) + Ky * s * np.roll(s, -1, axis=1)).sum(axis=(1, 2))
    w = np.exp(a - a.max())
    p = w / w.sum()
    flat = s.reshape(-1, N)
    corr = flat.T @ (p[:, None] * flat)                  # ⟨s_i s_j⟩
    q2 = float((corr**2).sum() / N**2)
    return {"q2": q2, "chi_sg": N * q2}
