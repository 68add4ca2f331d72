"""Exact solution of the L×L torus Ising model (Kaufman 1949) and of its continuous relaxation.

Conventions (see ``docs/conventions.md``): N = L² sites, every site bonds to its right and
lower neighbour with periodic wrap (2N bonds; for L = 2 each neighbouring pair carries two
bonds), H = −Σ_⟨ij⟩ s_i s_j, weight exp(−K H). ``ln`` is the natural log; ``log_z`` and
``continuous_log_z`` are totals, the other outputs are per site.

Kaufman's formula, with m = n = L,

    Z = ½ (2 sinh 2K)^{N/2} [Y₁ + Y₂ + Y₃ + Y₄],
    Y₁ = ∏_{r odd} 2cosh(Lγ_r/2),  Y₂ = ∏_{r odd} 2sinh(Lγ_r/2),
    Y₃ = ∏_{r even} 2cosh(Lγ_r/2), Y₄ = ∏_{r even} 2sinh(Lγ_r/2),   r = 0 … 2L−1,
    cosh γ_r = cosh 2K coth 2K − cos(πr/L).

The trap: **γ₀ = 2K + ln tanh K is signed** (negative for K < K_c, zero at K_c), so Y₄ < 0
above T_c. Taking γ₀ = arccosh(…) ≥ 0 instead is wrong by up to ln 2 in ln Z for K < K_c.
All γ_r with r ≠ 0 are > 0 and are taken from arccosh.

Everything is evaluated in log space (log-sum-exp of the four terms, the prefactor
(2 sinh 2K)^{N/2} spread over the factors, ln(1 ± e^{−L|γ|}) corrections), so large L
(checked up to 4096) and any K > 0 (checked 1e-100 … 1e4) stay finite. ⟨H⟩ = −∂_K ln Z and
Var H = ∂²_K ln Z come from analytic K-derivatives of the γ_r (no finite differences), with
cancellation-free forms at small and large K. Accuracy against enumeration / transfer matrix
(L ≤ 8): ln Z and e to ~1e-14 relative (e to ~1e-16 absolute as K → 0); C/N to ~1e-14
relative for K ≲ 1.6, deeper in the ordered phase its relative error grows like ε·e^{6K}
(C itself ~e^{−8K}; 1e-9 at K = 3). K < 0 is accepted for even L through the sublattice gauge
s_i → (−1)^{x+y} s_i: Z(−K) = Z(K), e(−K) = −e(K), C(−K) = C(K); odd L with K < 0 raises.

Anisotropic couplings K_x (horizontal), K_y (vertical), ``anisotropic_solution``: the same four
products with cosh γ_r = cosh 2K_x* cosh 2K_y − sinh 2K_x* sinh 2K_y cos(πr/L), tanh K_x* = e^{−2K_x},
the signed γ₀ = 2(K_y − K_x*) and the prefactor (2 sinh 2K_x)^{N/2}; a negative direction on even L
through the gauge. e and C/N are β-derivatives of ln Z(βK_x, βK_y) by 5-point finite differences
(relative step 1e-3/√L): against the transfer matrix (L ≤ 8) and the analytic isotropic path (L = 16,
64), ln Z to 1e-13, e to 1e-11 and C/N to ~5e-9.

CLI: ``python -m neuralrg.physics.exact L K [--shift S]`` prints one JSON object (K may be ``Kc``).
Other couplings with ``--Ky KY`` (anisotropic: Kaufman, any even L; odd L with positive couplings
too), ``--disorder pm_j|gaussian --seed N`` (glass), ``--bond-file F``
(.npz with Kx, Ky or .npy (2, L, L): the pattern J, couplings K·J) — the row transfer matrix,
L ≤ 12 — or ``--transfer-matrix`` (uniform K, e.g. K < 0 on odd L).
"""
from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np

from .lattice import (K_C, check_coupling, check_lattice_size, check_shift, coupling_spectrum,
                      hs_diagonal_shift)

_LN2 = math.log(2.0)
_SQRT2 = math.sqrt(2.0)

__all__ = ["ising_log_z", "exact_solution", "continuous_log_z", "anisotropic_log_z", "anisotropic_solution",
           "main"]


# --- stable building blocks (numpy, float64) ------------------------------------------------

def _sech2(u: float) -> float:
    """1/cosh² u without overflow."""
    e = math.exp(-2.0 * abs(u))
    return 4.0 * e / (1.0 + e) ** 2


# M(s, t)/16 = Σ_j t^j Σ_i c_ji s^i: numerator of ψ'' at small s (see _factors).
_M_COEFFS = (
    (3, 0, 15, 0, 33, 0, 42, 0, 21, 0, 3),
    (0, -14, 0, -58, 0, -98, 0, -76, 0, -26, 0, -4),
    (-2, 0, 14, 0, 54, 0, 60, 0, 40, 0, 14, 0, 1),
    (0, 8, 0, 14, 0, 8, 0, -8, 0, -12, 0, -2),
    (0, 0, -11, 0, -23, 0, -10, 0, 2, 0, 1),
    (0, 0, 0, 6, 0, 6),
    (0, 0, 0, 0, -1),
)
_S_SMALL = 0.5  # below this sinh 2K, ψ' and ψ'' use the cancellation-free forms


def _factors(L: int, K: float) -> dict[str, np.ndarray | float]:
    """Per-r ingredients of Kaufman's products for K > 0, r = 0 … 2L−1.

    Each factor is written as (2 sinh 2K)^{1/2}·2cosh(Lγ/2) = exp[(L/2)ψ + ln(1 + e^{−L|γ|})]
    (2sinh: minus sign inside the log), ψ = |γ| + ln 2 sinh 2K, so the prefactor of Z is
    absorbed and no large terms cancel in the derivatives at small K. Returns ``abs_g``,
    ``dabs_g``, ``d2abs_g`` (|γ_r| and K-derivatives), ``psi``, ``dpsi``, ``d2psi`` and the signed
    ``g0``, ``dg0``, ``d2g0`` of r = 0. With q = e^{−2K}, D = 2q(1 − q²) and
    P = 1 − 2q − q² (∝ K − K_c): cosh γ_r − 1 = δ_r = P²/D + 2 sin²(πr/2L).
    """
    q = math.exp(-2.0 * K)
    omq2 = -math.expm1(-4.0 * K)                                       # 1 − q²
    # P = (q_c − q)(q + 1 + √2) with q_c = e^{−2K_c} = √2 − 1; exact sign at K_c
    if abs(K - K_C) < 1.0:
        P = q * math.expm1(2.0 * (K - K_C)) * (q + 1.0 + _SQRT2)
    else:
        P = (_SQRT2 - 1.0 - q) * (q + 1.0 + _SQRT2)
    Q = 1.0 + 2.0 * q - q * q
    ln_D = _LN2 - 2.0 * K + math.log(omq2)
    ln_s = math.log(omq2) - _LN2 + 2.0 * K                            # ln sinh 2K

    # r ≥ 1: γ_r > 0 from arccosh(1 + δ_r)
    r = np.arange(1, 2 * L, dtype=np.float64)
    sin2 = np.sin(0.5 * math.pi * r / L) ** 2
    t = np.cos(math.pi * r / L)
    D = math.exp(ln_D)
    if D > 1e-280:
        delta = P * P / D + 2.0 * sin2
        ln_delta = np.log(delta)
    else:  # huge K: only logs are representable
        ln_delta = np.logaddexp(2.0 * math.log(abs(P)) - ln_D, np.log(2.0 * sin2))
        delta = np.exp(np.minimum(ln_delta, 700.0))
    inv_delta = np.exp(-ln_delta)
    big = ln_delta > math.log(1e8)
    d_small = np.where(big, 1.0, delta)
    g = np.where(big, _LN2 + ln_delta + np.log1p(inv_delta),          # ln 2(1+δ), error < 1e-16
                 np.log1p(d_small + np.sqrt(d_small * (d_small + 2.0))))
    ln_sinh = ln_delta + 0.5 * np.log1p(2.0 * inv_delta)

    # A = cosh 2K coth 2K = s + 1/s, A' = (1+q²) P Q / (q (1−q²)²), so γ' = A'/sinh γ.
    if P == 0.0:
        dg = np.zeros_like(g)
    else:
        ln_dA = math.log1p(q * q) + math.log(abs(P)) + math.log(Q) + 2.0 * K - 2.0 * math.log(omq2)
        dg = math.copysign(1.0, P) * np.exp(ln_dA - ln_sinh)
    # γ'' = [A''(x²−1) − x A'²] / sinh³γ with x = cosh γ = A − t. The bracket cancels to leading
    # order in s; expanded, s⁵·bracket = br = 8s⁶ + 24s⁴ + 12s² + 4 + t²(4s⁶ + 4s⁴ + 8s²)
    # − t s (4s⁶ + 20s⁴ + 28s² + 12), evaluated scaled by s^±7.
    if ln_s >= 0.0:
        v = math.exp(-ln_s)  # 1/s
        v2 = v * v
        br = (v * (8.0 + v2 * (24.0 + v2 * (12.0 + 4.0 * v2))) + t * t * v * (4.0 + v2 * (4.0 + 8.0 * v2))
              - t * (4.0 + v2 * (20.0 + v2 * (28.0 + 12.0 * v2))))
        ln_scale = 2.0 * ln_s
    else:
        s = math.exp(ln_s)
        s2 = s * s
        br = (4.0 + s2 * (12.0 + s2 * (24.0 + 8.0 * s2)) + t * t * s2 * (8.0 + s2 * (4.0 + 4.0 * s2))
              - t * s * (12.0 + s2 * (28.0 + s2 * (20.0 + 4.0 * s2))))
        ln_scale = -5.0 * ln_s
    with np.errstate(divide="ignore"):
        d2g = np.sign(br) * np.exp(np.log(np.abs(br)) + ln_scale - 3.0 * ln_sinh)

    # ψ_r = γ_r + ln 2s. For small s, γ' ≈ −2/s cancels 2 coth 2K ≈ 2/s; there, with
    # X = 1 + s² − ts and R = √(X² − s²) = s sinh γ:  ψ = ln 2(X + R),
    # ψ' = 2c (3s + t²s − 2t − 2ts²) / ((R + 1 − s²) R),  ψ'' = (br − 4R³)/(s² R³)
    #    = M / (R³ (br + 4R³)),  M = (br² − 16R⁶)/s² a polynomial in (s, t), c = cosh 2K.
    if ln_s < math.log(_S_SMALL):
        s = math.exp(ln_s)
        c = math.sqrt(1.0 + s * s)
        X = 1.0 + s * s - t * s
        R = np.sqrt((X - s) * (X + s))
        psi = _LN2 + np.log(X + R)
        dpsi = 2.0 * c * (3.0 * s + t * t * s - 2.0 * t - 2.0 * t * s * s) / ((R + 1.0 - s * s) * R)
        M = 16.0 * sum(np.polynomial.polynomial.polyval(s, cj) * t**j for j, cj in enumerate(_M_COEFFS))
        d2psi = M / (R**3 * (br + 4.0 * R**3))
    else:
        psi = g + _LN2 + ln_s
        dpsi = dg + 2.0 * (1.0 + q * q) / omq2                         # + 2 coth 2K
        d2psi = d2g - 16.0 * q * q / omq2**2                           # − 4/sinh² 2K

    # r = 0: γ₀ = 2K + ln tanh K, SIGNED. ψ₀ = |γ₀| + ln 2s = 2 ln(e^{2K} − 1) (γ₀ ≥ 0)
    # or 2 ln(1 + e^{−2K}) (γ₀ < 0).
    g0 = 2.0 * K + math.log(-math.expm1(-2.0 * K)) - math.log1p(q)
    dg0 = 2.0 + 4.0 * q / omq2
    d2g0 = -8.0 * q * (1.0 + q * q) / omq2**2
    sg = 1.0 if g0 >= 0.0 else -1.0
    if sg > 0:
        psi0, dpsi0, d2psi0 = 2.0 * (2.0 * K + math.log1p(-q)), 4.0 / (1.0 - q), -8.0 * q / (1.0 - q) ** 2
    else:
        psi0, dpsi0, d2psi0 = 2.0 * math.log1p(q), -4.0 * q / (1.0 + q), 8.0 * q / (1.0 + q) ** 2

    cat = np.concatenate
    return {
        "abs_g": cat(([abs(g0)], g)), "dabs_g": cat(([sg * dg0], dg)), "d2abs_g": cat(([sg * d2g0], d2g)),
        "psi": cat(([psi0], psi)), "dpsi": cat(([dpsi0], dpsi)), "d2psi": cat(([d2psi0], d2psi)),
        "g0": g0, "dg0": dg0, "d2g0": d2g0,
    }


def _product(f: dict, L: int, idx: slice | np.ndarray, sigma: float) -> tuple[float, float, float]:
    """b = Σ_r ln[(2s)^{1/2} 2cosh(Lγ_r/2)] (σ = +1) or with 2sinh (σ = −1, γ_r > 0), and b', b''."""
    a, da, d2a = f["abs_g"][idx], f["dabs_g"][idx], f["d2abs_g"][idx]
    e = np.exp(-L * a)
    one_pe = 1.0 + e if sigma > 0 else -np.expm1(-L * a)               # 1 + σ e^{−L|γ|}
    gg = -sigma * L * e / one_pe                                         # ∂/∂|γ| ln(1 + σe^{−L|γ|})
    ggg = sigma * L * L * e / one_pe**2                                  # ∂²/∂|γ|²
    half = 0.5 * L
    b = math.fsum(half * f["psi"][idx] + np.log(one_pe))
    db = math.fsum(half * f["dpsi"][idx] + gg * da)
    d2b = math.fsum(half * f["d2psi"][idx] + ggg * da**2 + gg * d2a)
    return b, db, d2b


def _log_z_and_derivatives(L: int, K: float) -> tuple[float, float, float]:
    """(ln Z, ∂_K ln Z, ∂²_K ln Z) for K > 0, totals.

    Z = ½ Σ_i Y_i with the prefactor (2 sinh 2K)^{N/2} spread over the L factors of each Y_i;
    Y_i = e^{b_i} h_i with h = 1 except h₄ = tanh(Lγ₀/2), which carries the sign of γ₀ and
    stays smooth through K_c where Y₄ = 0.
    """
    f = _factors(L, K)
    odd, even, even1 = slice(1, None, 2), slice(0, None, 2), slice(2, None, 2)
    terms = [(*_product(f, L, odd, 1.0), 1.0, 0.0, 0.0),
             (*_product(f, L, odd, -1.0), 1.0, 0.0, 0.0),
             (*_product(f, L, even, 1.0), 1.0, 0.0, 0.0)]
    # Y₄: its r = 0 factor 2sinh(u₀) = 2cosh(u₀)·tanh(u₀), u₀ = Lγ₀/2 (signed).
    b0 = _product(f, L, slice(0, 1), 1.0)
    b1 = _product(f, L, even1, -1.0)
    u0, du0, d2u0 = 0.5 * L * f["g0"], 0.5 * L * f["dg0"], 0.5 * L * f["d2g0"]
    th = math.tanh(u0)
    sech2 = _sech2(u0)
    terms.append((b0[0] + b1[0], b0[1] + b1[1], b0[2] + b1[2],
                  th, sech2 * du0, sech2 * (d2u0 - 2.0 * th * du0**2)))

    m = max(tm[0] for tm in terms)
    w = [math.exp(tm[0] - m) for tm in terms]
    S = math.fsum(wi * tm[3] for wi, tm in zip(w, terms))
    mu = math.fsum(wi * (tm[1] * tm[3] + tm[4]) for wi, tm in zip(w, terms)) / S
    var = math.fsum(wi * ((tm[2] + (tm[1] - mu) ** 2) * tm[3] + 2.0 * (tm[1] - mu) * tm[4] + tm[5])
                    for wi, tm in zip(w, terms)) / S
    return -_LN2 + m + math.log(S), mu, var


def _validate(L: object, K: object) -> tuple[int, float]:
    L = check_lattice_size(L)
    return L, check_coupling(K, L)


# --- public API ------------------------------------------------------------------------------

def ising_log_z(L: int, K: float) -> float:
    """Exact ln Z (total, natural log) of the L×L torus Ising model at coupling K.

    K < 0 is allowed for even L only (sublattice gauge, Z(−K) = Z(K)); else ValueError.
    """
    L, K = _validate(L, K)
    return _log_z_and_derivatives(L, abs(K))[0]


def continuous_log_z(L: int, K: float, shift: float = 0.1) -> float:
    """Exact ln Z_x = ln ∫ e^{−E(x)} dx (total) of the Hubbard–Stratonovich relaxation.

    ln Z_x = ln Z + N c/2 + (N/2) ln 2π + ½ ln det A − N ln 2, A = Kmat + c·I with
    c = ``hs_diagonal_shift(L, K, shift)`` (so λ_min(A) = shift).
    """
    L, K = _validate(L, K)
    shift = check_shift(shift)
    n = L * L
    c = hs_diagonal_shift(L, K, shift)
    eigs = (coupling_spectrum(L, K) + c).cpu().numpy().ravel()
    half_logdet = 0.5 * math.fsum(np.log(eigs))
    return (ising_log_z(L, K) + 0.5 * n * c + 0.5 * n * math.log(2.0 * math.pi)
            + half_logdet - n * _LN2)


def exact_solution(L: int, K: float, shift: float = 0.1) -> dict[str, float | int]:
    """Exact finite-lattice observables at (L, K) as a dict.

    Keys: ``log_z`` (total ln Z), ``free_energy_per_site`` (−ln Z/N), ``energy_per_site``
    (⟨H⟩/N), ``specific_heat_per_site`` (K² Var H / N), ``continuous_log_z`` (total ln Z_x
    for ``shift``), and ``L``, ``K``, ``shift``.
    """
    L, K = _validate(L, K)
    shift = check_shift(shift)
    n = L * L
    log_z, d1, d2 = _log_z_and_derivatives(L, abs(K))
    sign = 1.0 if K > 0 else -1.0  # gauge: ⟨H⟩(−K) = −⟨H⟩(K)
    return {
        "L": L,
        "K": K,
        "shift": shift,
        "log_z": log_z,
        "free_energy_per_site": -log_z / n,
        "energy_per_site": -sign * d1 / n,
        "specific_heat_per_site": K * K * d2 / n,
        "continuous_log_z": continuous_log_z(L, K, shift),
    }


def _check_anisotropic(L: object, Kx: object, Ky: object) -> tuple[int, float, float]:
    L = check_lattice_size(L)
    return L, check_coupling(Kx, L, name="Kx"), check_coupling(Ky, L, name="Ky")


def _log_z_anisotropic(L: int, kx: float, ky: float) -> float:
    """Kaufman's ln Z for K_x, K_y > 0 (module docstring), log space."""
    kx_star = -0.5 * math.log(math.tanh(kx))
    r = np.arange(2 * L)
    ch = (math.cosh(2 * kx_star) * math.cosh(2 * ky)
          - math.sinh(2 * kx_star) * math.sinh(2 * ky) * np.cos(np.pi * r / L))
    g = np.arccosh(np.maximum(ch, 1.0))
    g[0] = 2.0 * (ky - kx_star)  # signed
    u = 0.5 * L * g
    a = np.abs(u)
    log_cosh2 = a + np.log1p(np.exp(-2.0 * a))                      # ln 2cosh u
    with np.errstate(divide="ignore"):
        log_sinh2 = a + np.log1p(-np.exp(-2.0 * a))                 # ln |2sinh u| (−inf at u = 0)
    terms, signs = [], []
    for idx in (r % 2 == 1, r % 2 == 0):
        terms += [log_cosh2[idx].sum(), log_sinh2[idx].sum()]
        signs += [1.0, float(np.prod(np.sign(u[idx])))]
    terms_a, signs_a = np.array(terms), np.array(signs)
    keep = signs_a != 0.0
    top = terms_a[keep].max()
    total = float(np.sum(signs_a[keep] * np.exp(terms_a[keep] - top)))
    if not total > 0.0:
        raise ArithmeticError(f"Kaufman's sum is not positive at L = {L}, Kx = {kx}, Ky = {ky}")
    return -_LN2 + 0.5 * L * L * math.log(2.0 * math.sinh(2.0 * kx)) + top + math.log(total)


def anisotropic_log_z(L: int, Kx: float, Ky: float) -> float:
    """Exact ln Z (total) of the L×L torus Ising model with couplings Kx (horizontal bonds) and Ky
    (vertical), weight exp(Kx Σ_h s s + Ky Σ_v s s). Negative couplings need even L (gauge)."""
    L, kx, ky = _check_anisotropic(L, Kx, Ky)
    return _log_z_anisotropic(L, abs(kx), abs(ky))


def anisotropic_solution(L: int, Kx: float, Ky: float) -> dict[str, float | int]:
    """Exact ln Z, e and C per site with couplings Kx, Ky in the target's convention: Kx plays β,
    H = −Σ_h s s − (Ky/Kx) Σ_v s s, weight exp(−Kx H); e = ⟨H⟩/N, C/N = Kx² Var H/N. Keys: L, K
    (= Kx), K_y, log_z, free_energy_per_site, energy_per_site, specific_heat_per_site."""
    L, kx, ky = _check_anisotropic(L, Kx, Ky)
    n = L * L
    h = 1e-3 / math.sqrt(L)
    f = {j: _log_z_anisotropic(L, (1 + j * h) * abs(kx), (1 + j * h) * abs(ky)) for j in (-2, -1, 0, 1, 2)}
    d1 = (f[-2] - 8 * f[-1] + 8 * f[1] - f[2]) / (12 * h)            # d ln Z / dβ = ⟨−Kx H⟩
    d2 = (-f[-2] + 16 * f[-1] - 30 * f[0] + 16 * f[1] - f[2]) / (12 * h * h)
    return {"L": L, "K": kx, "K_y": ky, "log_z": f[0], "free_energy_per_site": -f[0] / n,
            "energy_per_site": -d1 / (abs(kx) * n) * (1.0 if kx > 0 else -1.0),
            "specific_heat_per_site": d2 / n}


# --- command line ----------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line on stderr, exit 2, no usage dump
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def _parse_coupling(text: str) -> float:
    word = text.strip().lower()
    if word.lstrip("+-") in ("kc", "k_c"):
        return -K_C if word.startswith("-") else K_C
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"K must be a number or 'Kc', got {text!r}") from None


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"L must be an integer >= 2, got {text!r}") from None


def _target_exact(args: argparse.Namespace) -> dict:
    """``IsingTarget(...).exact()`` for the coupling options, with the coupling spec echoed."""
    from .ising import EXACT_TM_MAX_L, IsingTarget

    L = check_lattice_size(args.L)
    if L > EXACT_TM_MAX_L and args.Ky is None:
        raise ValueError(f"L = {L}: the transfer matrix (non-uniform couplings) handles L <= {EXACT_TM_MAX_L}")
    t = IsingTarget(L, args.K, args.shift, K_y=args.Ky, disorder=args.disorder, seed=args.seed,
                    bond_file=args.bond_file)
    out = t.exact()
    if args.transfer_matrix and t.is_uniform and "m2" not in out:  # Kaufman took it: force the TM
        from .couplings import hs_log_z

        tm = t._transfer_matrix(True)
        out = {"L": L, "K": t.K, "shift": t.shift, **{k: tm[k] for k in ("log_z", "free_energy_per_site",
               "energy_per_site", "specific_heat_per_site", "m2", "m4")}}
        out["continuous_log_z"] = hs_log_z(tm["log_z"], t.n_sites, t.c, t.logdet_A)
    out["couplings"] = t.bond_kind
    for key in ("K_y", "disorder", "seed"):
        if getattr(t, key) is not None:
            out[key] = getattr(t, key)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m neuralrg.physics.exact L K [--shift S] [--Ky KY | --disorder D --seed N |
    --bond-file F | --transfer-matrix]``: print the exact solution as one JSON line."""
    p = _Parser(prog="python -m neuralrg.physics.exact",
                description="Exact ln Z, e, C/N and ln Z_x of the L×L torus Ising model: Kaufman for uniform "
                            "couplings, the row transfer matrix (L <= 12) for the others.")
    p.add_argument("L", type=_parse_int, help="linear lattice size (>= 2)")
    p.add_argument("K", type=_parse_coupling, help="coupling K = βJ, or 'Kc' for the critical one")
    p.add_argument("--shift", type=float, default=0.1, help="λ_min of A = Kmat + c·I (default 0.1)")
    p.add_argument("--Ky", type=float, default=None, help="vertical coupling (anisotropic; horizontal = K)")
    p.add_argument("--disorder", default=None, help="bond disorder of a seeded glass: pm_j | gaussian")
    p.add_argument("--seed", type=int, default=None, help="seed of the glass bonds (with --disorder)")
    p.add_argument("--bond-file", default=None, help=".npz (Kx, Ky) or .npy (2, L, L): bond pattern J")
    p.add_argument("--transfer-matrix", action="store_true", help="use the transfer matrix even for uniform K")
    args = p.parse_args(argv)
    try:
        if any(v is not None for v in (args.Ky, args.disorder, args.seed, args.bond_file)) or args.transfer_matrix:
            out = _target_exact(args)
        else:
            out = exact_solution(args.L, args.K, args.shift)
    except ValueError as err:
        p.error(str(err))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
