"""Observables: improved estimators vs. enumeration, spin sampling and exact HS sampling."""
import math

import numpy as np
import pytest
import torch

from neuralrg.physics.ising import ising_energy
from neuralrg.physics.lattice import hs_diagonal_shift
from neuralrg.physics.observables import conditional_moments, sample_spins, spin_moments, summarize_observables

torch.set_num_threads(1)
KEYS = ("energy", "energy2", "m", "m2", "m4")


def all_configs(L: int) -> torch.Tensor:
    """All 2^N spin configurations, (2^N, L, L) float64."""
    N = L * L
    bits = (torch.arange(2**N)[:, None] >> torch.arange(N)[None, :]) & 1
    return (2.0 * bits - 1.0).to(torch.float64).reshape(-1, L, L)


def explicit_bond_energy(s: torch.Tensor) -> torch.Tensor:
    """H = −Σ s_i s_j by explicit loops over the right and down bonds (independent of roll)."""
    L = s.shape[-1]
    H = torch.zeros(s.shape[0], dtype=s.dtype)
    for r in range(L):
        for c in range(L):
            H -= s[:, r, c] * (s[:, r, (c + 1) % L] + s[:, (r + 1) % L, c])
    return H


def enumerate_moments(s: torch.Tensor, logw: torch.Tensor) -> dict[str, torch.Tensor]:
    """Weighted averages over configs s (S, L, L) with log weights logw (..., S)."""
    N = s.shape[-1] ** 2
    p = torch.softmax(logw, dim=-1)
    e = explicit_bond_energy(s) / N
    m = s.sum(dim=(-2, -1)) / N
    per = {"energy": e, "energy2": e**2, "m": m, "m2": m**2, "m4": m**4, "abs_m": m.abs()}
    return {k: p @ v for k, v in per.items()}


def coupling_matrix(L: int, K: float) -> torch.Tensor:
    """Dense Kmat: K per directed neighbour entry (right, left, down, up), 2K for L = 2 pairs."""
    N = L * L
    Km = torch.zeros(N, N, dtype=torch.float64)
    for r in range(L):
        for c in range(L):
            i = r * L + c
            for dr, dc in ((0, 1), (0, -1), (1, 0), (-1, 0)):
                Km[i, ((r + dr) % L) * L + (c + dc) % L] += K
    return Km


@pytest.mark.parametrize("L", [2, 3, 4])
def test_conditional_moments_match_enumeration(L):
    g = torch.Generator().manual_seed(L)
    x = 1.2 * torch.randn(3, L, L, generator=g, dtype=torch.float64)
    x[0, 0, 0] = 4.0  # one strongly polarised site
    s = all_configs(L)
    logw = torch.nn.functional.logsigmoid(2.0 * x[:, None] * s[None]).sum(dim=(-2, -1))
    ref = enumerate_moments(s, logw)
    got = conditional_moments(x)
    for k in KEYS:
        assert got[k].shape == (3,) and got[k].dtype == torch.float64
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=1e-12, msg=k)


def test_spin_moments_direct():
    g = torch.Generator().manual_seed(0)
    for L in (2, 3, 5):
        s = torch.where(torch.rand(4, L, L, generator=g) < 0.5, 1.0, -1.0).to(torch.float64)
        got = spin_moments(s)
        N = L * L
        e = explicit_bond_energy(s) / N
        m = s.sum(dim=(-2, -1)) / N
        for k, ref in {"energy": e, "energy2": e**2, "m": m, "m2": m**2, "m4": m**4, "abs_m": m.abs()}.items():
            torch.testing.assert_close(got[k], ref, rtol=0, atol=1e-14, msg=k)
        # fully polarised fields: t = ±1, the conditional moments are the spin moments
        cond = conditional_moments(40.0 * s)
        for k in KEYS:
            torch.testing.assert_close(cond[k], got[k], rtol=0, atol=1e-14, msg=k)


def test_improved_estimators_agree_with_spin_sampling():
    g = torch.Generator().manual_seed(5)
    L, B, n = 5, 2, 40000
    x = 0.8 * torch.randn(B, L, L, generator=g, dtype=torch.float64) + 0.3
    s = sample_spins(x.repeat(n, 1, 1), generator=g)
    assert s.shape == (n * B, L, L) and s.dtype == torch.float64
    assert set(s.unique().tolist()) == {-1.0, 1.0}
    # per-site frequencies of +1 match sigmoid(2x)
    frac = (s.reshape(n, B, L, L) > 0).to(torch.float64).mean(0)
    p = torch.sigmoid(2 * x)
    assert ((frac - p).abs() / (p * (1 - p) / n).sqrt()).max() < 5
    sm = spin_moments(s)
    cm = conditional_moments(x)
    for k in KEYS:
        v = sm[k].reshape(n, B)
        z = (v.mean(0) - cm[k]) / (v.std(0) / math.sqrt(n))
        assert z.abs().max() < 4.5, (k, z)


def test_sample_spins_generator_and_dtype():
    x = torch.randn(3, 4, 4, dtype=torch.float32)
    a = sample_spins(x, torch.Generator().manual_seed(1))
    b = sample_spins(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.dtype == torch.float32 and a.shape == x.shape
    big = torch.full((2, 3, 3), 30.0)
    assert torch.equal(sample_spins(big), torch.ones_like(big))
    assert torch.equal(sample_spins(-big), -torch.ones_like(big))


@pytest.mark.parametrize("L,K", [(2, 0.45), (3, 0.4)])
def test_exact_in_expectation_from_hs_samples(L, K):
    """x drawn exactly from the continuous model: s ~ Boltzmann, x | s ~ N(A s, A)."""
    N, M = L * L, 40000
    g = torch.Generator().manual_seed(11 + L)
    s_all = all_configs(L)
    logb = -K * ising_energy(s_all)
    exact = enumerate_moments(s_all, logb)
    A = coupling_matrix(L, K) + hs_diagonal_shift(L, K, 0.1) * torch.eye(N, dtype=torch.float64)
    assert torch.linalg.eigvalsh(A).min() > 0.099
    idx = torch.multinomial(torch.softmax(logb, 0), M, replacement=True, generator=g)
    s = s_all[idx].reshape(M, N)
    xi = torch.randn(M, N, generator=g, dtype=torch.float64)
    x = (s @ A + xi @ torch.linalg.cholesky(A).T).reshape(M, L, L)
    cm = conditional_moments(x)
    for k in KEYS:
        v = cm[k]
        se = v.std() / math.sqrt(M)
        assert abs(float(v.mean() - exact[k])) < 4 * float(se) + 1e-12, (k, float(v.mean()), float(exact[k]))
    # the improved estimators are lower-variance than the plain spin estimators
    sm = spin_moments(s.reshape(M, L, L))
    assert cm["energy"].var() < sm["energy"].var()


def test_float32_large_lattice_and_extreme_fields():
    g = torch.Generator().manual_seed(3)
    x = 1.5 * torch.randn(1024, 64, 64, generator=g)
    x[0, :4, :4] = 60.0
    x[1, :4, :4] = -60.0
    got = conditional_moments(x)
    ref = conditional_moments(x.double())
    for k in KEYS:
        assert got[k].dtype == torch.float32 and torch.isfinite(got[k]).all()
        torch.testing.assert_close(got[k].double(), ref[k], rtol=1e-4, atol=1e-6, msg=k)
    huge = torch.full((1, 4, 4), 500.0)
    out = conditional_moments(huge)
    assert all(torch.isfinite(out[k]).all() for k in KEYS)
    assert float(out["energy"]) == -2.0 and float(out["m4"]) == 1.0


@pytest.mark.parametrize("bad", [torch.zeros(4, 4), torch.zeros(2, 3, 4), torch.zeros(2, 1, 1),
                                 torch.zeros(2, 3, 3, dtype=torch.int64), [[0.0]]])
def test_bad_field_raises(bad):
    with pytest.raises(ValueError, match="x"):
        conditional_moments(bad)
    with pytest.raises(ValueError, match="x"):
        sample_spins(bad)


def test_spin_moments_rejects_non_spins():
    with pytest.raises(ValueError, match="s"):
        spin_moments(torch.zeros(2, 3, 3))


# ----------------------------------------------------------------------------- summaries
def _exact_tables(L, K):
    s_all = all_configs(L)
    logb = -K * ising_energy(s_all)
    per = spin_moments(s_all)
    exact = enumerate_moments(s_all, logb)
    N = L * L
    var_e = float(exact["energy2"] - exact["energy"] ** 2)
    ref = {
        "energy_per_site": float(exact["energy"]),
        "m2": float(exact["m2"]),
        "abs_m": float(exact["abs_m"]),
        "specific_heat_per_site": K * K * N * var_e,
        "susceptibility_per_site": K * N * float(exact["m2"]),
        "susceptibility_connected": K * N * float(exact["m2"] - exact["abs_m"] ** 2),
        "binder": 1 - float(exact["m4"]) / (3 * float(exact["m2"]) ** 2),
    }
    return torch.softmax(logb, 0), per, ref


def _delta_errors(per_idx: dict, K: float, N: int) -> dict[str, float]:
    """Delta-method errors of the derived quantities for i.i.d. samples (independent reference)."""
    n = per_idx["energy"].numel()

    def err(keys, grad):
        X = np.stack([per_idx[k].reshape(-1).numpy() for k in keys])
        cov = np.cov(X) / n
        gv = np.asarray(grad([X[i].mean() for i in range(len(keys))]))
        return math.sqrt(gv @ cov @ gv)

    return {
        "specific_heat_per_site": err(["energy", "energy2"], lambda m: [-2 * K * K * N * m[0], K * K * N]),
        "susceptibility_connected": err(["m2", "abs_m"], lambda m: [K * N, -2 * K * N * m[1]]),
        "binder": err(["m2", "m4"], lambda m: [2 * m[1] / (3 * m[0] ** 3), -1 / (3 * m[0] ** 2)]),
    }


@pytest.mark.parametrize("shape", [(20000, 1), (1, 20000), (16, 1250)])
def test_summary_iid_matches_exact_and_delta_method(shape):
    L, K = 3, 0.4
    N = L * L
    probs, per, ref = _exact_tables(L, K)
    g = torch.Generator().manual_seed(21)
    idx = torch.multinomial(probs, shape[0] * shape[1], replacement=True, generator=g).reshape(shape)
    mom = {k: per[k][idx] for k in ("energy", "energy2", "m", "m2", "m4")}
    out = summarize_observables(mom, K, N, abs_m=per["abs_m"][idx])
    delta = _delta_errors({k: per[k][idx] for k in per}, K, N)
    for name, val in ref.items():
        r = out[name]
        assert abs(r["mean"] - val) < 4 * r["err"], (name, r, val)
        if name in delta:
            assert r["err"] == pytest.approx(delta[name], rel=0.12), (name, r, delta[name])
    for name in ("energy_per_site", "m2", "abs_m"):
        assert 0.4 < out[name]["tau_int"] < 0.6
        e = per[{"energy_per_site": "energy"}.get(name, name)][idx].reshape(-1)
        assert out[name]["err"] == pytest.approx(float(e.std() / math.sqrt(e.numel())), rel=0.12)


def test_summary_correlated_chains_inflate_errors():
    """Lazy chain: keep the state with prob. rho, else redraw exactly. Every observable then has
    ρ(t) = rho^t, τ_int = (1 + rho) / (2 (1 − rho)), and all error bars grow by sqrt(2 τ_int)."""
    L, K, rho = 3, 0.4, 0.8
    N, C, T = L * L, 2, 25000
    tau_true = (1 + rho) / (2 * (1 - rho))
    probs, per, ref = _exact_tables(L, K)
    g = torch.Generator().manual_seed(8)
    fresh = torch.multinomial(probs, C * T, replacement=True, generator=g).reshape(C, T).numpy()
    keep = np.random.default_rng(8).random((C, T)) < rho
    keep[:, 0] = False
    last = np.maximum.accumulate(np.where(keep, 0, np.arange(T)), axis=1)
    idx = torch.from_numpy(np.take_along_axis(fresh, last, axis=1))
    mom = {k: per[k][idx] for k in ("energy", "energy2", "m", "m2", "m4")}
    out = summarize_observables(mom, K, N, abs_m=per["abs_m"][idx])
    delta = _delta_errors({k: per[k][idx] for k in per}, K, N)
    for name in ("energy_per_site", "m2", "abs_m"):
        assert out[name]["converged"]
        assert out[name]["tau_int"] == pytest.approx(tau_true, rel=0.12)
    for name, val in ref.items():
        assert abs(out[name]["mean"] - val) < 4 * out[name]["err"], (name, out[name], val)
        if name in delta:
            assert out[name]["block_length"] >= 10 * 0.85 * tau_true
            assert out[name]["err"] == pytest.approx(math.sqrt(2 * tau_true) * delta[name], rel=0.15)


def test_summary_bad_input():
    m = {k: torch.zeros(2, 5) for k in ("energy", "energy2", "m2", "m4")}
    with pytest.raises(ValueError, match="m4"):
        summarize_observables({k: v for k, v in m.items() if k != "m4"}, 0.4, 9)
    with pytest.raises(ValueError, match="N"):
        summarize_observables(m, 0.4, 0)
    with pytest.raises(ValueError, match="K"):
        summarize_observables(m, float("nan"), 9)
    with pytest.raises(ValueError, match="abs_m"):
        summarize_observables(m, 0.4, 9, abs_m=torch.zeros(3, 5))
    bad = dict(m, energy=torch.full((2, 5), float("inf")))
    with pytest.raises(ValueError, match="energy"):
        summarize_observables(bad, 0.4, 9)
