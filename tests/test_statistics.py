"""Estimators: τ_int on AR(1) series (value and error-bar coverage), importance sampling."""
import math

import numpy as np
import pytest
import torch
from scipy.signal import lfilter

from neuralrg.physics.statistics import ess_fraction, importance_log_z, integrated_autocorr_time, mean_with_error

torch.set_num_threads(1)


def ar1(phi: float, C: int, T: int, seed: int) -> np.ndarray:
    """Stationary AR(1) chains x_t = φ x_{t−1} + ε_t, ε ~ N(0, 1), shaped (C, T); mean 0."""
    rng = np.random.default_rng(seed)
    eps = rng.standard_normal((C, T))
    eps[:, 0] /= math.sqrt(1 - phi**2)  # start in the stationary distribution
    return lfilter([1.0], [1.0, -phi], eps, axis=1)


def test_tau_int_ar1():
    phi = 0.9
    tau_true = (1 + phi) / (2 * (1 - phi))  # 9.5
    x = ar1(phi, 64, 20000, seed=1)
    r = integrated_autocorr_time(torch.from_numpy(x))
    assert r["converged"] and r["tau"] == pytest.approx(tau_true, rel=0.1)
    assert r["window"] >= 6 * r["tau"] and r["window"] - 1 < 6 * (r["tau"] + 1)
    var_true = 1 / (1 - phi**2)
    assert r["var"] == pytest.approx(var_true, rel=0.05)
    assert r["err"] == pytest.approx(math.sqrt(2 * tau_true * var_true / x.size), rel=0.1)
    assert abs(r["mean"]) < 4 * r["err"]
    assert mean_with_error(x) == (r["mean"], r["err"])


def test_tau_int_uncorrelated_and_single_chain():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(50000) * 3 + 1
    r = integrated_autocorr_time(x)  # 1-D: one chain
    assert r["converged"] and r["tau"] == pytest.approx(0.5, abs=0.05)
    assert r["err"] == pytest.approx(3 / math.sqrt(x.size), rel=0.08)
    # T = 1: C independent draws, τ_int = ½ by construction, err = sqrt(var / C)
    col = integrated_autocorr_time(x[:, None])
    assert col["tau"] == 0.5 and col["window"] == 0
    assert col["err"] == pytest.approx(float(np.std(x, ddof=1) / math.sqrt(x.size)), rel=1e-12)
    const = integrated_autocorr_time(np.full((3, 100), 2.5))
    assert const["mean"] == 2.5 and const["err"] == 0.0


def test_tau_int_not_converged_for_short_chain():
    x = ar1(0.999, 2, 200, seed=3)
    r = integrated_autocorr_time(x)
    assert not r["converged"] and r["window"] == 50
    assert r["tau"] < (1 + 0.999) / (2 * 0.001)  # a lower bound


def test_error_bar_coverage():
    """~200 independent repetitions (4 chains each): the 1σ bar covers the true mean ≈ 68 %."""
    reps, C, T = 200, 4, 2000
    x = ar1(0.9, reps * C, T, seed=4).reshape(reps, C, T)
    hits = 0
    for k in range(reps):
        m, e = mean_with_error(x[k])
        hits += abs(m) < e
    assert 0.58 <= hits / reps <= 0.78, hits / reps


def test_importance_sampling_gaussian():
    """q = N(0, 1), p̃(x) = exp(−(x − μ)²/2): Z = sqrt(2π), ESS/M → exp(−μ²)."""
    mu, M = 1.0, 200000
    g = torch.Generator().manual_seed(6)
    x = torch.randn(M, generator=g, dtype=torch.float64)
    log_w = -0.5 * (x - mu) ** 2 + 0.5 * x**2 + 0.5 * math.log(2 * math.pi)
    lz, err = importance_log_z(log_w)
    assert abs(lz - 0.5 * math.log(2 * math.pi)) < 4 * err
    assert err == pytest.approx(math.sqrt((math.exp(mu**2) - 1) / M), rel=0.1)
    ess = ess_fraction(log_w)
    assert ess == pytest.approx(math.exp(-mu**2), rel=0.05)
    # stable for log weights around ±1e4; the offset moves ln Ẑ and nothing else
    for shift in (1e4, -1e4):
        lz_s, err_s = importance_log_z(log_w + shift)
        assert lz_s - shift == pytest.approx(lz, abs=1e-8)
        assert err_s == pytest.approx(err, rel=1e-9)
        assert ess_fraction((log_w + shift).numpy()) == pytest.approx(ess, rel=1e-9)
    assert ess_fraction(torch.zeros(10)) == pytest.approx(1.0)
    assert importance_log_z(torch.full((10,), 3.0)) == pytest.approx((3.0, 0.0))


@pytest.mark.parametrize("bad", [torch.zeros(0), torch.tensor([1.0, float("nan")]),
                                 torch.tensor([1.0, float("inf")]), torch.zeros(2, 3), torch.zeros(1)])
def test_importance_bad_input(bad):
    with pytest.raises(ValueError, match="log_w"):
        importance_log_z(bad)
    with pytest.raises(ValueError, match="log_w"):
        ess_fraction(bad)


@pytest.mark.parametrize("bad", [np.zeros(0), np.array([1.0, np.nan, 2.0]), np.zeros((2, 3, 4)),
                                 np.zeros((1, 1)), "abc"])
def test_series_bad_input(bad):
    with pytest.raises(ValueError, match="series"):
        integrated_autocorr_time(bad)


def test_bad_window_constant():
    with pytest.raises(ValueError, match="c"):
        integrated_autocorr_time(np.zeros(10), c=0.0)


def test_between_chain_error_rescues_unconverged_windows():
    """16 independent stationary chains far shorter than τ (AR(1), φ = 0.999, τ ≈ 1000, T = 200):
    the windowed τ is a lower bound and its error bar undercovers; ``err`` takes the larger
    between-chain error (std of the chain means / √C) and covers at 2σ as a Gaussian bar should."""
    reps, C, T = 300, 16, 200
    x = ar1(0.999, reps * C, T, seed=8).reshape(reps, C, T)
    tau_only, combined = [], []
    for chains in x:
        r = integrated_autocorr_time(chains)
        assert not r["converged"]
        assert r["err_between_chains"] == pytest.approx(float(np.std(chains.mean(axis=1), ddof=1) / math.sqrt(C)))
        assert r["err"] == max(r["err_tau"], r["err_between_chains"])
        tau_only.append(abs(r["mean"]) <= 2 * r["err_tau"])
        combined.append(abs(r["mean"]) <= 2 * r["err"])
    assert np.mean(tau_only) < 0.85  # 0.80 measured
    assert 0.91 <= np.mean(combined) <= 0.99  # 0.94 measured (Student t with 15 dof: 0.936)
    # fewer than MIN_CHAINS_BETWEEN chains: the between-chain error is reported but not used
    few = integrated_autocorr_time(x[0, :4])
    assert few["err"] == few["err_tau"] and few["err_between_chains"] is not None
