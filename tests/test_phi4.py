"""φ⁴ target: action and gradient vs. loops/autograd, HMC vs. an independent Metropolis reference,
the λ → ∞ (Ising) limit, validation, the two-point function and second-moment correlation length."""
import math

import numpy as np
import pytest
import torch

from neuralrg.physics.correlation import (correlation_length_from_moments, momentum_moments,
                                          second_moment_correlation_length, two_point_function)
from neuralrg.physics.ising import bond_sum
from neuralrg.physics.phi4 import Phi4Target
from neuralrg.physics.statistics import integrated_autocorr_time
from neuralrg.physics.target import target_from_spec
from neuralrg.sampling.hmc import run_hmc

torch.set_num_threads(1)


def loop_action(phi: np.ndarray, kappa: float, lam: float) -> float:
    """S(φ) by an explicit loop over sites and their right/down bonds (one (L, L) field)."""
    L = phi.shape[0]
    S = 0.0
    for i in range(L):
        for j in range(L):
            p = phi[i, j]
            S += -2 * kappa * p * (phi[i, (j + 1) % L] + phi[(i + 1) % L, j]) + (1 - 2 * lam) * p**2 + lam * p**4
    return S


@pytest.mark.parametrize("L", [2, 3, 4])
def test_energy_matches_loop(L):
    kappa, lam = 0.27, 0.13
    t = Phi4Target(L, kappa, lam)
    x = 1.5 * torch.randn(5, L, L, dtype=torch.float64)
    ref = torch.tensor([loop_action(xi.numpy(), kappa, lam) for xi in x], dtype=torch.float64)
    torch.testing.assert_close(t.energy(x), ref, rtol=1e-13, atol=1e-12)
    # equivalent form Σ [φ² + λ(φ² − 1)²] − 2κ Σ_bonds φφ − λN
    alt = (x**2 + lam * (x**2 - 1) ** 2).sum(dim=(1, 2)) - 2 * kappa * bond_sum(x) - lam * L * L
    torch.testing.assert_close(t.energy(x), alt, rtol=1e-13, atol=1e-12)
    # ±1 fields: Ising energy at K = 2κ plus the constant N(1 − λ)
    s = torch.where(x > 0, 1.0, -1.0).to(torch.float64)
    torch.testing.assert_close(t.energy(s), -2 * kappa * bond_sum(s) + L * L * (1 - lam), rtol=1e-13, atol=1e-12)
    obs = t.observables(x)
    torch.testing.assert_close(obs["energy"], ref / (L * L), rtol=1e-13, atol=1e-12)
    m = x.mean(dim=(1, 2))
    for k, v in {"m": m, "abs_m": m.abs(), "m2": m**2, "m4": m**4, "phi2": (x**2).mean(dim=(1, 2)),
                 "g0": L * L * m**2}.items():
        torch.testing.assert_close(obs[k], v, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("L", [2, 3, 5])
def test_grad_matches_autograd_and_dtype(L):
    t = Phi4Target(L, 0.31, 0.7)
    x = 2.0 * torch.randn(4, L, L, dtype=torch.float64)
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(t.energy(xr).sum(), xr)
    torch.testing.assert_close(t.grad_energy(x), g, rtol=1e-12, atol=1e-12)
    x32 = x.float()
    assert t.energy(x32).dtype == torch.float32 and t.grad_energy(x32).dtype == torch.float32
    assert all(v.dtype == torch.float32 and v.shape == (4,) for v in t.observables(x32).values())


def metropolis_reference(L, kappa, lam, chains, sweeps, burn, delta, seed):
    """Checkerboard single-site Metropolis in numpy (local ΔS written independently of Phi4Target).
    Returns per-sweep (C, T) series of M² and S/N."""
    rng = np.random.default_rng(seed)
    phi = rng.normal(size=(chains, L, L))
    ii, jj = np.indices((L, L))
    colours = [(ii + jj) % 2 == p for p in (0, 1)]
    m2, s = np.empty((chains, sweeps)), np.empty((chains, sweeps))
    for t in range(burn + sweeps):
        for colour in colours:
            h = np.roll(phi, 1, 1) + np.roll(phi, -1, 1) + np.roll(phi, 1, 2) + np.roll(phi, -1, 2)
            new = phi + delta * rng.uniform(-1, 1, size=phi.shape)
            a, b = phi**2, new**2
            dS = -2 * kappa * (new - phi) * h + (1 - 2 * lam) * (b - a) + lam * (b**2 - a**2)
            phi = np.where(colour & (rng.random(phi.shape) < np.exp(-dS)), new, phi)
        if t >= burn:
            m2[:, t - burn] = phi.mean(axis=(1, 2)) ** 2
            hop = phi * (np.roll(phi, -1, 1) + np.roll(phi, -1, 2))
            s[:, t - burn] = (-2 * kappa * hop + (1 - 2 * lam) * phi**2 + lam * phi**4).mean(axis=(1, 2))
    return {"m2": m2, "energy": s}


def hmc_series(t, chains, n_warmup, n_samples, seed, n_leapfrog=5):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(chains, t.L, t.L, dtype=torch.float64, generator=g)
    res = run_hmc(None, x0, n_warmup=n_warmup, n_samples=n_samples, step_size=0.2, n_leapfrog=n_leapfrog,
                  generator=g, grad_fn=lambda x: (t.energy(x), t.grad_energy(x)), observe=t.observables)
    assert 0.6 < float(res.mean_accept) < 0.95
    return res.observables


@pytest.mark.parametrize("kappa", [0.15, 0.3])  # symmetric phase; broken phase (<|M|> ≈ 2)
def test_hmc_matches_metropolis_reference(kappa):
    L, lam = 4, 0.022
    t = Phi4Target(L, kappa, lam)
    hmc = hmc_series(t, 64, 200, 1000, seed=11)
    ref = metropolis_reference(L, kappa, lam, chains=512, sweeps=1000, burn=200, delta=1.5, seed=12)
    for k in ("m2", "energy"):
        a, b = integrated_autocorr_time(hmc[k]), integrated_autocorr_time(ref[k])
        assert a["converged"] and b["converged"], (k, a, b)
        sigma = math.hypot(a["err"], b["err"])
        assert sigma < 0.03 * max(abs(b["mean"]), 0.1), (k, a, b)  # the comparison has power
        assert abs(a["mean"] - b["mean"]) < 4 * sigma, (k, kappa, a["mean"], b["mean"], sigma)


def test_large_lambda_concentrates_at_plus_minus_one():
    L, kappa, lam = 4, 0.2, 1e4
    t = Phi4Target(L, kappa, lam)
    g = torch.Generator().manual_seed(5)
    x0 = torch.where(torch.rand(16, L, L, generator=g, dtype=torch.float64) < 0.5, -1.0, 1.0).double()
    res = run_hmc(None, x0, n_warmup=100, n_samples=50, step_size=0.01, n_leapfrog=5, generator=g,
                  grad_fn=lambda x: (t.energy(x), t.grad_energy(x)), observe=t.observables, keep_samples=True)
    # single-site fluctuations δ = |φ| − 1 have width ≈ 1/sqrt(8λ) ≈ 0.0035
    assert float((res.samples.abs() - 1).abs().max()) < 0.03
    assert abs(float(res.observables["phi2"].mean()) - 1) < 5e-4
    # the Gaussian fluctuations around φ = s add ≈ ½ per site to S/N − [−2κ bonds/N + 1 − λ]
    s = torch.sign(res.samples).reshape(-1, L, L)
    excess = t.energy(res.samples.reshape(-1, L, L)) / (L * L) - (-2 * kappa * bond_sum(s) / (L * L) + 1 - lam)
    assert abs(float(excess.mean()) - 0.5) < 0.05


@pytest.mark.parametrize("kwargs, match", [
    (dict(L=4, kappa=0.2, lam=-0.5), r"lam .*> 0.*-0\.5"),
    (dict(L=4, kappa=0.2, lam=0.0), r"lam .*> 0.*got 0\.0"),
    (dict(L=4, kappa=0.2, lam=float("inf")), r"lam .*got inf"),
    (dict(L=4, kappa=float("nan"), lam=0.1), r"kappa .*finite.*got nan"),
    (dict(L=4, kappa=-0.1, lam=0.1), r"kappa .*>= 0.*-0\.1"),
    (dict(L=1, kappa=0.2, lam=0.1), r"L must be an integer >= 2, got 1"),
    (dict(L=2.5, kappa=0.2, lam=0.1), r"L must be an integer >= 2, got 2\.5"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Phi4Target(**kwargs)


def test_bad_field_and_series():
    t = Phi4Target(4, 0.2, 0.1)
    with pytest.raises(ValueError, match=r"\(B, 4, 4\)"):
        t.energy(torch.zeros(2, 4, 5))
    with pytest.raises(ValueError, match="m2"):
        t.summarize({"energy": torch.zeros(2, 10)})


def test_two_point_function_matches_loop():
    L = 3
    x = torch.randn(4, L, L, dtype=torch.float64)
    G = two_point_function(x)
    ref = torch.zeros_like(G)
    for r0 in range(L):
        for r1 in range(L):
            ref[:, r0, r1] = (x * torch.roll(x, shifts=(-r0, -r1), dims=(1, 2))).mean(dim=(1, 2))
    torch.testing.assert_close(G, ref, rtol=1e-12, atol=1e-12)
    Gp = torch.fft.fft2(G).real
    g0, gp = momentum_moments(x)
    torch.testing.assert_close(g0, Gp[:, 0, 0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gp, 0.5 * (Gp[:, 1, 0] + Gp[:, 0, 1]), rtol=1e-12, atol=1e-12)


def lattice_propagator(L, xi):
    """Ĝ(p) = 1 / (ξ⁻² + Σ_μ 4 sin²(p_μ/2)) on the L×L momentum grid (float64, (L, L))."""
    p = 2 * np.pi * np.arange(L) / L
    phat2 = 4 * np.sin(p / 2) ** 2
    return 1.0 / (xi**-2 + phat2[:, None] + phat2[None, :])


@pytest.mark.parametrize("L, xi", [(2, 0.8), (5, 0.7), (8, 3.0), (16, 12.0)])
def test_second_moment_xi_exact_for_lattice_propagator(L, xi):
    G = np.fft.ifft2(lattice_propagator(L, xi)).real
    assert second_moment_correlation_length(G) == pytest.approx(xi, rel=1e-10)
    assert second_moment_correlation_length(torch.from_numpy(G)) == pytest.approx(xi, rel=1e-10)
    assert math.isnan(correlation_length_from_moments(1.0, 2.0, L))  # Ĝ(0) < Ĝ(p_min): no real ξ


def test_correlation_length_of_sampled_free_field():
    """Exact samples of a Gaussian field with propagator Ĝ(p): ξ from summarize within 4σ of the truth."""
    L, xi, C, T = 8, 2.0, 4, 2000
    Gt = torch.from_numpy(lattice_propagator(L, xi))
    g = torch.Generator().manual_seed(3)
    w = torch.randn(C * T, L, L, dtype=torch.float64, generator=g)
    phi = torch.fft.ifft2(torch.fft.fft2(w) * Gt.sqrt()).real  # covariance ⟨φ_y φ_{y+r}⟩ = ifft2(Ĝ)(r)
    torch.testing.assert_close(two_point_function(phi).mean(0), torch.fft.ifft2(Gt).real, atol=0.03, rtol=0)
    t = Phi4Target(L, 0.2, 0.1)  # only its observables/summarize machinery is used
    obs = t.observables(phi)
    out = t.summarize({k: v.reshape(C, T) for k, v in obs.items()})
    r = out["correlation_length"]
    assert r["n_blocks"] >= 2 * C and 0 < r["err"] < 0.05 * xi
    assert abs(r["mean"] - xi) < 4 * r["err"], r
    assert r["mean"] == pytest.approx(second_moment_correlation_length(two_point_function(phi).mean(0)), rel=1e-10)


def test_summarize_short_hmc_run():
    t = Phi4Target(6, 0.25, 0.022)
    obs = hmc_series(t, 16, 100, 200, seed=7, n_leapfrog=4)
    out = t.summarize(obs)
    assert set(out) == {"action_per_site", "m2", "abs_m", "phi2", "susceptibility", "binder",
                        "correlation_length", "two_point_function"}
    G = out.pop("two_point_function")
    assert G["r"] == [0, 1, 2, 3]
    assert G["mean"][0] == pytest.approx(out["phi2"]["mean"], rel=1e-10)  # G(0) = ⟨φ²⟩
    assert G["mean"][0] > G["mean"][1] > G["mean"][3] and all(e > 0 for e in G["err"])
    for name, r in out.items():
        assert math.isfinite(r["mean"]) and math.isfinite(r["err"]) and r["err"] > 0, (name, r)
    assert out["action_per_site"]["mean"] == pytest.approx(float(obs["energy"].mean()), rel=1e-12)
    assert out["susceptibility"]["mean"] == pytest.approx(
        t.n_sites * (out["m2"]["mean"] - out["abs_m"]["mean"] ** 2), rel=1e-10)
    assert out["binder"]["mean"] == pytest.approx(
        1 - float(obs["m4"].double().mean()) / (3 * out["m2"]["mean"] ** 2), rel=1e-10)


def test_spec_round_trip():
    t = Phi4Target(6, 0.25, 0.022)
    t2 = target_from_spec(t.spec())
    assert type(t2) is Phi4Target and t2.spec() == t.spec() == {
        "class": "neuralrg.physics.phi4:Phi4Target", "kwargs": {"L": 6, "kappa": 0.25, "lam": 0.022}}
    x = torch.randn(3, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(t2.energy(x), t.energy(x), rtol=0, atol=0)
    assert t.headline == "action_per_site" and t.z2_symmetric and t.log_z is None
