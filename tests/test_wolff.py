"""Wolff cluster sampler: exact stationary law on tiny lattices, critical L = 8 moments, and exact
HS samples x | s ~ N(A s, A)."""
import math

import numpy as np
import pytest
import torch

from neuralrg.physics.exact import exact_solution
from neuralrg.physics.ising import IsingTarget
from neuralrg.physics.lattice import K_C
from neuralrg.physics.observables import conditional_moments
from neuralrg.physics.statistics import integrated_autocorr_time
from neuralrg.physics.transfer_matrix import uniform_solution
from neuralrg.physics.wolff import exact_x_from_spins, spin_series, wolff_chains


def _all_configs(L):
    N = L * L
    idx = np.arange(1 << N)
    return (1 - 2 * ((idx[:, None] >> np.arange(N)) & 1)).reshape(-1, L, L).astype(np.int8)


def _class_keys(s):
    """(bond sum, |M|) of ±1 spins (..., L, L) as one integer class key."""
    f = s.astype(np.int64)
    S = (f * (np.roll(f, -1, -1) + np.roll(f, -1, -2))).sum(axis=(-2, -1))
    M = np.abs(f.sum(axis=(-2, -1)))
    return (S + 4 * s.shape[-1] ** 2) * 1000 + M


def _class_probs(L, K):
    conf = _all_configs(L)
    keys = _class_keys(conf)
    f = conf.astype(np.float64)
    S = (f * (np.roll(f, -1, -1) + np.roll(f, -1, -2))).sum(axis=(-2, -1))
    w = np.exp(K * (S - S.max()))
    classes = np.unique(keys)
    return classes, np.array([w[keys == c].sum() for c in classes]) / w.sum()


@pytest.mark.parametrize("L", [2, 3])
def test_stationary_distribution_matches_enumeration(L):
    """Empirical frequencies of the (energy, |M|) classes vs Boltzmann weights, each within 4.5σ
    (τ_int-aware); the same data must reject the weights of a 20 % different coupling."""
    K = 0.35
    r = wolff_chains(L, K, n_chains=1024, n_sweeps=150, n_warmup=10, seed=11)
    keys = _class_keys(r.spins)                                        # (C, T)
    classes, p = _class_probs(L, K)
    _, p_wrong = _class_probs(L, 1.2 * K)
    assert set(np.unique(keys)) <= set(classes)
    z, z_wrong = [], []
    for c, pc, pw in zip(classes, p, p_wrong):
        st = integrated_autocorr_time((keys == c).astype(np.float64))
        err = max(st["err"], math.sqrt(pc * (1 - pc) / keys.size))   # floor for rare classes
        z.append((st["mean"] - pc) / err)
        z_wrong.append((st["mean"] - pw) / err)
    assert max(map(abs, z)) < 4.5, z
    assert max(map(abs, z_wrong)) > 6.0, z_wrong


def test_critical_l8_energy_and_m2():
    """L = 8 at K_c: ⟨e⟩ vs Kaufman and ⟨m²⟩ vs the transfer matrix within 4σ (τ_int errors)."""
    L = 8
    r = wolff_chains(L, K_C, n_chains=16, n_sweeps=1200, n_warmup=50, seed=2024)
    assert r.spins.shape == (16, 1200, L, L) and r.spins.dtype == np.int8
    assert r.clusters_per_sweep == 2
    assert 0.5 * L * L < r.spins_per_sweep < 2.0 * L * L
    ser = spin_series(r.spins)
    exact = {"energy": exact_solution(L, K_C)["energy_per_site"], "m2": uniform_solution(L, K_C)["m2"]}
    for key, want in exact.items():
        st = integrated_autocorr_time(ser[key])
        assert st["converged"] and 0.5 < st["tau"] < 3.0, (key, st)
        assert abs(st["mean"] - want) < 4.0 * st["err"], (key, st["mean"], want, st["err"])
        assert st["err"] < 0.01  # resolving power: a 1 % error in K moves e by ~0.03


def test_determinism_record_and_generator():
    a = wolff_chains(5, 0.5, 4, 6, 3, seed=5)
    b = wolff_chains(5, 0.5, 4, 6, 3, seed=np.random.default_rng(5))
    assert np.array_equal(a.spins, b.spins) and a.clusters_per_sweep == b.clusters_per_sweep
    seen = []
    c = wolff_chains(5, 0.5, 4, 6, 3, seed=5, record=lambda t, s: seen.append((t, s)))
    assert c.spins is None and [t for t, _ in seen] == list(range(6))
    assert np.array_equal(np.stack([s for _, s in seen], axis=1), a.spins)
    assert np.array_equal(c.final_spins, a.spins[:, -1])
    d = wolff_chains(5, 0.5, 4, 6, 3, seed=6)
    assert not np.array_equal(a.spins, d.spins)
    # continuing from a state with a fixed cluster count needs no warm-up
    e = wolff_chains(5, 0.5, 4, 2, 0, seed=1, init=a.final_spins, clusters_per_sweep=3)
    assert e.spins.shape == (4, 2, 5, 5) and e.clusters_per_sweep == 3


@pytest.mark.parametrize("kwargs, match", [
    (dict(K=-0.4), "ferromagnetic couplings"),
    (dict(K=0.0), "ferromagnetic couplings"),
    (dict(K_y=-0.2), "ferromagnetic couplings"),
    (dict(K_y=float("inf")), "K_y must be a finite"),
    (dict(K=float("nan")), "finite"),
    (dict(L=1), "L must be"),
    (dict(n_chains=0), "n_chains"),
    (dict(n_warmup=0), "n_warmup >= 1"),
    (dict(init=np.zeros((2, 4, 4))), "init"),
    (dict(record=3), "record"),
])
def test_bad_input_raises(kwargs, match):
    args = dict(L=4, K=0.4, n_chains=2, n_sweeps=2, n_warmup=2, seed=0) | kwargs
    with pytest.raises(ValueError, match=match):
        wolff_chains(**args)


def _dense_A(target):
    N = target.n_sites
    basis = torch.eye(N, dtype=torch.float64).reshape(N, target.L, target.L)
    return target.apply_coupling_power(basis, 1.0).reshape(N, N)


def test_exact_x_conditional_mean_and_covariance():
    """For a fixed s, x = A s + A^{1/2} ξ has mean A s and covariance A (each entry within 5σ)."""
    target = IsingTarget(4, K_C)
    A = _dense_A(target)
    s = torch.from_numpy(np.where(np.random.default_rng(3).random((4, 4)) < 0.5, -1, 1).astype(np.int8))
    B = 20000
    gen = torch.Generator().manual_seed(0)
    x = exact_x_from_spins(target, s.expand(B, 4, 4), gen, dtype=torch.float64)
    assert x.shape == (B, 4, 4) and x.dtype == torch.float64
    xf = x.reshape(B, -1)
    mean_want = A @ s.reshape(-1).double()
    se = torch.sqrt(torch.diagonal(A) / B)
    assert torch.max(torch.abs(xf.mean(0) - mean_want) / se) < 5.0
    assert torch.max(torch.abs(xf.mean(0) - s.reshape(-1).double()) / se) > 20.0  # A s ≠ s: test has power
    cov = torch.cov(xf.T)
    d = torch.diagonal(A)
    se_cov = torch.sqrt((d[:, None] * d[None, :] + A**2) / B)
    assert torch.max(torch.abs(cov - A) / se_cov) < 5.0
    # dtype and device follow the input; the generator makes it reproducible
    x32 = exact_x_from_spins(target, s[None].float(), torch.Generator().manual_seed(1))
    assert x32.dtype == torch.float32 and x32.device == s.device
    again = exact_x_from_spins(target, s[None].float(), torch.Generator().manual_seed(1))
    assert torch.equal(x32, again)
    with pytest.raises(ValueError, match="shaped"):
        exact_x_from_spins(target, torch.ones(2, 3, 3))
    with pytest.raises(ValueError, match="±1"):
        exact_x_from_spins(target, torch.zeros(2, 4, 4))


def test_exact_x_from_boltzmann_spins_reproduces_energy():
    """Exact spins (enumeration, L = 4) → exact x; the improved estimators E[H/N | x] and
    E[m² | x] average to the exact values within 4σ."""
    L, K = 4, K_C
    conf = _all_configs(L)
    f = conf.astype(np.float64)
    S = (f * (np.roll(f, -1, -1) + np.roll(f, -1, -2))).sum(axis=(-2, -1))
    w = np.exp(K * (S - S.max()))
    rng = np.random.default_rng(9)
    s = conf[rng.choice(conf.shape[0], size=4000, p=w / w.sum())]
    x = exact_x_from_spins(IsingTarget(L, K), s, torch.Generator().manual_seed(2), dtype=torch.float64)
    mom = conditional_moments(x)
    exact = {"energy": exact_solution(L, K)["energy_per_site"], "m2": uniform_solution(L, K)["m2"]}
    for key, want in exact.items():
        v = mom[key].numpy()
        se = v.std(ddof=1) / math.sqrt(v.size)
        assert abs(v.mean() - want) < 4.0 * se, (key, v.mean(), want, se)
    # the x-based estimator is not the spin one: it genuinely goes through x
    assert not np.allclose(mom["energy"].numpy(), spin_series(s)["energy"])
