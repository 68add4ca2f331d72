"""Tests for neuralrg.physics.exact against references written here: brute-force enumeration (L ≤ 4),
a float64 row transfer matrix with exact K-derivatives (L = 5…8), Gauss–Hermite quadrature of
the continuous relaxation (L = 2), physics.md's table and Onsager's infinite-lattice limit."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from neuralrg.physics.exact import continuous_log_z, exact_solution, ising_log_z, main
from neuralrg.physics.lattice import K_C

torch.set_num_threads(1)

COUPLINGS = [0.1, 0.3, K_C, 0.6, 1.5]
KEYS = {"L", "K", "shift", "log_z", "free_energy_per_site", "energy_per_site",
        "specific_heat_per_site", "continuous_log_z"}


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


# --- independent references ---------------------------------------------------------------------

def _brute_histogram(L: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact counts of the bond sum B = Σ_⟨ij⟩ s_i s_j over all 2^N configurations (roll-based torus)."""
    n = L * L
    idx = np.arange(2**n, dtype=np.int64)
    bits = (idx[:, None] >> np.arange(n)) & 1
    s = (2 * bits - 1).astype(np.int8).reshape(-1, L, L)
    b = (s * (np.roll(s, -1, axis=2) + np.roll(s, -1, axis=1))).sum(axis=(1, 2), dtype=np.int64)
    values, counts = np.unique(b, return_counts=True)
    return values.astype(np.float64), counts.astype(np.float64)


def _moments_from_histogram(values: np.ndarray, counts: np.ndarray, K: float,
                            n: int) -> tuple[float, float, float]:
    """(ln Z, e = ⟨H⟩/N, C/N = K² Var H / N) from an exact histogram of B = −H."""
    logw = K * values + np.log(counts)
    m = logw.max()
    log_z = m + math.log(np.exp(logw - m).sum())
    p = np.exp(logw - log_z)
    mean = float((p * values).sum())
    var = float((p * (values - mean) ** 2).sum())
    return log_z, -mean / n, K * K * var / n


def brute_force(L: int, K: float) -> tuple[float, float, float]:
    return _moments_from_histogram(*_brute_histogram(L), K, L * L)


def transfer_matrix(L: int, K: float) -> tuple[float, float, float]:
    """(ln Z, e, C/N) from the L-wide row transfer matrix: ln Z = ln Σ λ^L of the symmetric T;
    moments from tr of products of (T, ∂T, ∂²T) with the product rule (exact, no differences)."""
    n = L * L
    states = np.arange(2**L)
    rows = 2 * ((states[:, None] >> np.arange(L)) & 1) - 1                  # (2^L, L) spins
    intra = (rows * np.roll(rows, -1, axis=1)).sum(axis=1).astype(np.float64)
    inter = (rows @ rows.T).astype(np.float64)
    bond = 0.5 * intra[:, None] + inter + 0.5 * intra[None, :]             # symmetric split

    lam = np.linalg.eigvalsh(np.exp(K * (bond - 2 * L)))                   # scaled by e^{−2LK}
    lmax = np.abs(lam).max()
    log_z = L * math.log(lmax) + math.log(((lam / lmax) ** L).sum()) + 2 * L * L * K

    def derivative_traces(a: float) -> tuple[float, float, float]:
        """(ln tr T̃^L, tr(T̃^L)'/tr, tr(T̃^L)''/tr) for T̃ = exp(K(bond − a))."""
        b = bond - a
        t0 = np.exp(K * b)
        t = (t0, b * t0, b * b * t0)
        p, log_scale = t, 0.0
        for _ in range(L - 1):
            p = (p[0] @ t[0], p[1] @ t[0] + p[0] @ t[1], p[2] @ t[0] + 2 * p[1] @ t[1] + p[0] @ t[2])
            sc = np.abs(p[0]).max()
            p = tuple(x / sc for x in p)
            log_scale += math.log(sc)
        z = np.trace(p[0])
        return log_scale + math.log(z), np.trace(p[1]) / z, np.trace(p[2]) / z

    _, d1, _ = derivative_traces(2.0 * L)
    mean_b = d1 + L * 2.0 * L
    _, d1c, d2c = derivative_traces(mean_b / L)                            # centred: no cancellation
    var_b = d2c - d1c**2
    mean_b = d1c + mean_b
    return log_z, -mean_b / n, K * K * var_b / n


def _dense_coupling_matrix(L: int, K: float) -> np.ndarray:
    """Kmat with K on every directed neighbour entry (a double bond for L = 2 gets 2K)."""
    n = L * L
    kmat = np.zeros((n, n))
    for x in range(L):
        for y in range(L):
            i = x * L + y
            for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                kmat[i, ((x + dx) % L) * L + (y + dy) % L] += K
    return kmat


def _gauss_hermite_log_zx(L: int, K: float, shift: float, nodes: int) -> float:
    """ln ∫ exp(−½xᵀA⁻¹x + Σ ln cosh x_i) dx over R^N by a tensor Gauss–Hermite rule in the
    whitened variables y, x = U√Λ y (A = UΛUᵀ dense, built here)."""
    n = L * L
    kmat = _dense_coupling_matrix(L, K)
    c = shift - np.linalg.eigvalsh(kmat).min()
    lam, u = np.linalg.eigh(kmat + c * np.eye(n))
    y1, w1 = np.polynomial.hermite_e.hermegauss(nodes)                    # weight e^{−y²/2}
    rest = [g.ravel() for g in np.meshgrid(*([np.arange(nodes)] * (n - 1)), indexing="ij")]
    y_rest = np.stack([y1[i] for i in rest], axis=1)                       # (nodes^{n−1}, n−1)
    logw_rest = sum(np.log(w1)[i] for i in rest)
    chunks = []
    for y0, w0 in zip(y1, w1):                                             # loop keeps memory small
        y = np.concatenate([np.full((y_rest.shape[0], 1), y0), y_rest], axis=1)
        x = (y * np.sqrt(lam)) @ u.T
        a = np.abs(x)
        lncosh = (a + np.log1p(np.exp(-2 * a)) - math.log(2)).sum(axis=1)
        chunks.append(lncosh + logw_rest + math.log(w0))
    logf = np.concatenate(chunks)
    m = logf.max()
    return m + math.log(np.exp(logf - m).sum()) + 0.5 * np.log(lam).sum()


# --- agreement with enumeration and the transfer matrix ----------------------------------------

@pytest.mark.parametrize("L", [2, 3, 4])
def test_brute_force(L):
    values, counts = _brute_histogram(L)
    assert counts.sum() == 2 ** (L * L)
    for K in COUPLINGS:
        ref = _moments_from_histogram(values, counts, K, L * L)
        got = exact_solution(L, K)
        assert _rel(got["log_z"], ref[0]) < 1e-10, (L, K)
        assert _rel(got["energy_per_site"], ref[1]) < 1e-10, (L, K)
        assert _rel(got["specific_heat_per_site"], ref[2]) < 1e-10, (L, K)
        assert got["log_z"] == ising_log_z(L, K)
        assert got["free_energy_per_site"] == pytest.approx(-ref[0] / (L * L), rel=1e-10)


@pytest.mark.parametrize("L", [5, 6, 7, 8])
def test_transfer_matrix(L):
    for K in COUPLINGS:
        ref = transfer_matrix(L, K)
        got = exact_solution(L, K)
        assert _rel(got["log_z"], ref[0]) < 1e-10, (L, K)
        assert _rel(got["energy_per_site"], ref[1]) < 1e-10, (L, K)
        assert _rel(got["specific_heat_per_site"], ref[2]) < 1e-10, (L, K)


def test_transfer_matrix_reference_agrees_with_enumeration():
    """The transfer-matrix reference itself is right (checked where both are exact)."""
    for K in (0.3, 1.5):
        for a, b in zip(transfer_matrix(4, K), brute_force(4, K)):
            assert _rel(a, b) < 1e-11


@pytest.mark.parametrize("K", [0.01, 3.0])
def test_extreme_couplings(K):
    for L in (3, 4):
        ref = brute_force(L, K)
        got = exact_solution(L, K)
        assert _rel(got["log_z"], ref[0]) < 1e-12
        assert _rel(got["energy_per_site"], ref[1]) < 1e-9
        assert _rel(got["specific_heat_per_site"], ref[2]) < 1e-7
    ref, got = transfer_matrix(6, K), exact_solution(6, K)
    assert _rel(got["log_z"], ref[0]) < 1e-12
    assert _rel(got["energy_per_site"], ref[1]) < 1e-9


def test_smooth_through_critical_point():
    """γ₀ changes sign at K_c (Y₄ = 0 there): ln Z, e and C must stay smooth and consistent."""
    n, h = 64, 1e-5
    left, mid, right = (exact_solution(8, K_C + d) for d in (-h, 0.0, h))
    assert (right["log_z"] - left["log_z"]) / (2 * h) == pytest.approx(-n * mid["energy_per_site"], rel=1e-9)
    de_dk = (right["energy_per_site"] - left["energy_per_site"]) / (2 * h)   # = −Var(H)/N = −C/K²
    assert de_dk == pytest.approx(-mid["specific_heat_per_site"] / K_C**2, rel=1e-8)


def test_physics_reference_table():
    table = {4: (0.970119716172205, -1.565623787638319, 0.783266825929),
             8: (0.939715324829206, -1.491589107439706, 1.145559239894),
             16: (0.932196314980988, -1.453064852813477, 1.498704959400)}
    for L, (lnz, e, c) in table.items():
        got = exact_solution(L, K_C)
        assert got["log_z"] / L**2 == pytest.approx(lnz, rel=1e-12, abs=0)
        assert got["energy_per_site"] == pytest.approx(e, rel=1e-12, abs=0)
        assert got["specific_heat_per_site"] == pytest.approx(c, rel=1e-11, abs=0)  # table has 12 digits


# --- continuous relaxation -----------------------------------------------------------------------

def test_continuous_log_z_reference_values():
    assert continuous_log_z(8, K_C) / 64 == pytest.approx(2.322734629390482, rel=1e-12, abs=0)
    assert continuous_log_z(16, K_C) / 256 == pytest.approx(2.315920858818682, rel=1e-12, abs=0)
    assert exact_solution(8, K_C)["continuous_log_z"] == continuous_log_z(8, K_C, 0.1)


@pytest.mark.parametrize("K,shift", [(0.3, 0.1), (0.7, 0.5)])
def test_continuous_log_z_quadrature(K, shift):
    ref = _gauss_hermite_log_zx(2, K, shift, nodes=40)
    assert _gauss_hermite_log_zx(2, K, shift, nodes=32) == pytest.approx(ref, rel=1e-11)  # converged
    assert continuous_log_z(2, K, shift) == pytest.approx(ref, rel=1e-8)


def test_continuous_log_z_formula_vs_dense_at_l4():
    """ln Z_x from brute-force ln Z and a dense ln det A, including K < 0."""
    for K in (0.4, -0.4):
        kmat = _dense_coupling_matrix(4, K)
        lam = np.linalg.eigvalsh(kmat)
        c = 0.2 - lam.min()
        ref = (brute_force(4, K)[0] + 16 * c / 2 + 8 * math.log(2 * math.pi)
               + 0.5 * np.log(lam + c).sum() - 16 * math.log(2))
        assert continuous_log_z(4, K, 0.2) == pytest.approx(ref, rel=1e-12)


# --- negative coupling, validation -------------------------------------------------------------

@pytest.mark.parametrize("K", [0.3, K_C, 1.5])
def test_negative_coupling_even_l(K):
    pos, neg = exact_solution(4, K), exact_solution(4, -K)
    ref = brute_force(4, -K)
    assert neg["log_z"] == pos["log_z"]
    assert neg["energy_per_site"] == -pos["energy_per_site"]
    assert neg["specific_heat_per_site"] == pos["specific_heat_per_site"]
    assert neg["continuous_log_z"] == pytest.approx(pos["continuous_log_z"], rel=1e-14)
    assert _rel(neg["log_z"], ref[0]) < 1e-10
    assert _rel(neg["energy_per_site"], ref[1]) < 1e-10
    assert _rel(neg["specific_heat_per_site"], ref[2]) < 1e-10
    assert neg["K"] == -K


def test_negative_coupling_odd_l_rejected():
    for fn in (ising_log_z, exact_solution, continuous_log_z):
        with pytest.raises(ValueError, match="K"):
            fn(5, -0.3)


@pytest.mark.parametrize("L", [1, 0, -4, 2.5, "8", None])
def test_bad_lattice_size(L):
    with pytest.raises(ValueError, match="L"):
        exact_solution(L, 0.3)


@pytest.mark.parametrize("K", [0.0, float("nan"), float("inf"), "0.3", None, True])
def test_bad_coupling(K):
    with pytest.raises(ValueError, match="K"):
        ising_log_z(4, K)


@pytest.mark.parametrize("shift", [0.0, -0.1, float("nan"), "0.1"])
def test_bad_shift(shift):
    with pytest.raises(ValueError, match="shift"):
        exact_solution(4, 0.3, shift)
    with pytest.raises(ValueError, match="shift"):
        continuous_log_z(4, 0.3, shift)


# --- stability at large L ------------------------------------------------------------------------

def test_large_lattices_approach_onsager():
    onsager_log_z_per_site = 0.9296953983                                 # Onsager, K = K_c, L → ∞
    prev = None
    for L in (256, 512):
        sol = exact_solution(L, K_C)
        vals = [sol[k] for k in KEYS - {"L"}]
        assert all(math.isfinite(v) for v in vals)
        lnz = sol["log_z"] / L**2
        assert abs(lnz - onsager_log_z_per_site) < 1e-4
        assert abs(sol["energy_per_site"] + math.sqrt(2.0)) < 5.0 / L          # e_∞(K_c) = −√2
        assert sol["specific_heat_per_site"] > 0
        if prev is not None:
            assert abs(lnz - onsager_log_z_per_site) < abs(prev - onsager_log_z_per_site)
        prev = lnz
    # Away from K_c finite-size effects are exponentially small, except ln 2 (two ordered
    # sectors) below T_c.
    for K, offset in ((0.2, 0.0), (0.8, math.log(2.0))):
        assert math.isfinite(exact_solution(512, K)["specific_heat_per_site"])
        assert (ising_log_z(256, K) - offset) / 256**2 == pytest.approx(
            (ising_log_z(512, K) - offset) / 512**2, rel=1e-12)


# --- command line --------------------------------------------------------------------------------

def test_cli_prints_json():
    proc = subprocess.run([sys.executable, "-m", "neuralrg.physics.exact", "8", "Kc", "--shift", "0.1"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out) == KEYS
    assert out["K"] == K_C and out["L"] == 8
    assert out["log_z"] / 64 == pytest.approx(0.939715324829206, rel=1e-12)
    assert out["continuous_log_z"] / 64 == pytest.approx(2.322734629390482, rel=1e-12)


@pytest.mark.parametrize("argv,word", [(["3", "-0.5"], "K"), (["4", "abc"], "K"), (["1", "0.3"], "L"),
                                       (["4", "0.3", "--shift", "-1"], "shift"), (["4"], "K")])
def test_cli_errors(argv, word, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error" in err and word in err
    assert "Traceback" not in err


def test_cli_accepts_k_c_spelling(capsys):
    assert main(["4", "K_C"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["K"] == K_C
