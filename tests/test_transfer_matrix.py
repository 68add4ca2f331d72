"""Row transfer matrix with arbitrary bond couplings vs enumeration, Kaufman, and its conventions."""
import math

import numpy as np
import pytest
import torch

from neuralrg.physics.exact import exact_solution
from neuralrg.physics.ising import bond_sum
from neuralrg.physics.lattice import K_C
from neuralrg.physics.transfer_matrix import (brute_force_solution, random_bonds, transfer_matrix_solution,
                                              uniform_couplings, uniform_solution)

KEYS = ("log_z", "energy_per_site", "specific_heat_per_site", "m2", "m4")


def _enumerate(Kx, Ky, beta=1.0):
    """Independent reference: explicit bond loop over sites (no roll), all 2^N configurations."""
    L = Kx.shape[0]
    N = L * L
    idx = np.arange(1 << N)
    s = (1 - 2 * ((idx[:, None] >> np.arange(N)) & 1)).astype(np.float64).reshape(-1, L, L)
    E = np.zeros(idx.size)
    for i in range(L):
        for j in range(L):
            E += Kx[i, j] * s[:, i, j] * s[:, i, (j + 1) % L] + Ky[i, j] * s[:, i, j] * s[:, (i + 1) % L, j]
    a = beta * E
    w = np.exp(a - a.max())
    Z = w.sum()
    p = w / Z
    mE = p @ E
    m = s.sum(axis=(1, 2)) / N
    return {"log_z": a.max() + math.log(Z), "energy_per_site": -mE / N,
            "specific_heat_per_site": beta**2 * (p @ (E - mE) ** 2) / N,
            "m2": p @ m**2, "m4": p @ m**4}


def _assert_close(got, want, rtol=1e-10, atol=1e-13, keys=KEYS):
    for k in keys:
        assert got[k] == pytest.approx(want[k], rel=rtol, abs=atol), (k, got[k], want[k])


@pytest.mark.parametrize("L", [2, 3, 4])
@pytest.mark.parametrize("disorder", ["pm_j", "gaussian"])
@pytest.mark.parametrize("seed", [0, 1])
def test_random_bonds_match_enumeration(L, disorder, seed):
    Kx, Ky = random_bonds(L, seed, disorder, K=0.8)
    ref = _enumerate(Kx, Ky)
    _assert_close(transfer_matrix_solution(Kx, Ky), ref)
    _assert_close(brute_force_solution(Kx, Ky), ref)
    # β scales all couplings: same ln Z and C, energy in units of J
    b = 1.7
    got = transfer_matrix_solution(Kx / b, Ky / b, beta=b)
    _assert_close(got, ref, keys=("log_z", "specific_heat_per_site", "m2", "m4"))
    assert got["energy_per_site"] == pytest.approx(ref["energy_per_site"] / b, rel=1e-10, abs=1e-13)


def test_asymmetric_couplings_match_enumeration():
    """Kx and Ky distinct and site dependent (catches a transposed or shifted bond layout)."""
    rng = np.random.default_rng(7)
    Kx, Ky = rng.normal(0.3, 0.6, (4, 4)), rng.normal(-0.1, 0.9, (4, 4))
    want = _enumerate(Kx, Ky)
    _assert_close(transfer_matrix_solution(Kx, Ky), want)
    swapped = _enumerate(Ky, Kx)
    assert abs(transfer_matrix_solution(Kx, Ky)["log_z"] - swapped["log_z"]) > 1e-3


@pytest.mark.parametrize("L", [5, 6, 7, 8])
@pytest.mark.parametrize("K", [0.2, K_C, 0.7])
def test_uniform_matches_kaufman(L, K):
    got, want = uniform_solution(L, K), exact_solution(L, K)
    _assert_close(got, want, keys=("log_z", "free_energy_per_site", "energy_per_site", "specific_heat_per_site"))
    # the same through explicit coupling arrays with β = 1: energy is then per K
    Kx, Ky = uniform_couplings(L, K)
    direct = transfer_matrix_solution(Kx, Ky)
    assert direct["log_z"] == pytest.approx(want["log_z"], rel=1e-10)
    assert direct["energy_per_site"] / K == pytest.approx(want["energy_per_site"], rel=1e-10)
    assert direct["specific_heat_per_site"] == pytest.approx(want["specific_heat_per_site"], rel=1e-10)
    assert direct["m2"] == pytest.approx(got["m2"], rel=1e-12)


def test_antiferromagnet_even_l_matches_kaufman():
    got, want = uniform_solution(6, -0.35), exact_solution(6, -0.35)
    _assert_close(got, want, keys=("log_z", "energy_per_site", "specific_heat_per_site"))
    assert got["m2"] < 0.05  # staggered order: the uniform magnetisation stays small


def test_magnetisation_limits():
    N = 36
    free = uniform_solution(6, 1e-9)
    assert free["m2"] == pytest.approx(1.0 / N, rel=1e-6)
    assert free["m4"] == pytest.approx((3 * N * N - 2 * N) / N**4, rel=1e-6)
    cold = uniform_solution(6, 3.0)
    assert cold["m2"] == pytest.approx(1.0, abs=1e-8) and cold["m4"] == pytest.approx(1.0, abs=1e-8)
    assert "m2" not in uniform_solution(4, K_C, magnetisation=False)


def test_l2_double_bonds_match_roll_energy():
    """For L = 2 the right and left bonds of a site join the same pair: two bonds, both counted,
    exactly like the torch.roll bond sum; only their sum per pair matters."""
    K = 0.37
    s = torch.tensor([[int(b) for b in f"{c:04b}"] for c in range(16)], dtype=torch.float64)
    s = (1 - 2 * s).reshape(16, 2, 2)
    S = bond_sum(s).numpy()
    w = np.exp(K * S)
    p = w / w.sum()
    e_roll = -(p @ S) / 4
    got = uniform_solution(2, K)
    assert got["log_z"] == pytest.approx(math.log(w.sum()), rel=1e-13)
    assert got["energy_per_site"] == pytest.approx(e_roll, rel=1e-13)
    assert got["energy_per_site"] == pytest.approx(exact_solution(2, K)["energy_per_site"], rel=1e-12)
    assert S.max() == 8  # 2N = 8 bonds, all satisfied
    # moving the coupling between the two bonds of a pair changes nothing
    Kx = np.array([[0.3, 0.5], [-0.2, 0.9]])
    Ky = np.array([[0.1, -0.4], [0.6, 0.2]])
    moved = transfer_matrix_solution(np.stack([Kx.sum(1), np.zeros(2)], 1), np.stack([Ky.sum(0), np.zeros(2)]))
    _assert_close(transfer_matrix_solution(Kx, Ky), moved, rtol=1e-12)


def test_random_bonds_seed_determinism():
    a, b = random_bonds(6, 3), random_bonds(6, 3)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    c = random_bonds(6, 4)
    assert not np.array_equal(a[0], c[0])
    assert set(np.unique(np.concatenate(a))) == {-1.0, 1.0}
    assert set(np.unique(random_bonds(5, 0, K=0.3)[0])) <= {-0.3, 0.3}
    # fixed stream: the same bonds on every machine
    Kx, Ky = random_bonds(4, 0)
    assert Kx[0].tolist() == [1.0, -1.0, -1.0, -1.0] and Ky[1].tolist() == [-1.0, -1.0, 1.0, 1.0]
    g = random_bonds(3, 0, "gaussian")[0]
    assert g[0] == pytest.approx([0.12573, -0.132105, 0.640423], abs=1e-6)
    assert np.array_equal(g, random_bonds(3, 0, "gaussian")[0])


@pytest.mark.parametrize("Kx, Ky, match", [
    (np.ones((3, 4)), np.ones((3, 4)), "square"),
    (np.ones(4), np.ones(4), "square"),
    (np.ones((3, 3)), np.ones((4, 4)), "same shape"),
    (np.full((3, 3), np.nan), np.ones((3, 3)), "finite"),
    (np.ones((3, 3)), np.full((3, 3), np.inf), "finite"),
    (np.ones((1, 1)), np.ones((1, 1)), ">= 2"),
    (np.ones((15, 15)), np.ones((15, 15)), "too large"),
    ([["a", "b"], ["c", "d"]], np.ones((2, 2)), "real"),
])
def test_bad_couplings_raise(Kx, Ky, match):
    with pytest.raises(ValueError, match=match):
        transfer_matrix_solution(Kx, Ky)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="beta"):
        transfer_matrix_solution(np.ones((3, 3)), np.ones((3, 3)), beta=float("nan"))
    with pytest.raises(ValueError, match="disorder"):
        random_bonds(4, 0, disorder="uniform")
    with pytest.raises(ValueError, match="seed"):
        random_bonds(4, -1)
    with pytest.raises(ValueError, match=">= 2"):
        uniform_solution(1, 0.4)
    with pytest.raises(ValueError, match="too large"):
        uniform_solution(15, 0.4)
    with pytest.raises(ValueError, match="K"):
        uniform_couplings(4, float("inf"))
