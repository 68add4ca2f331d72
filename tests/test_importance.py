"""PSIS diagnostics: Pareto k̂ on weights of known tail index, smoothing, the summary dict."""
import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from neuralrg.physics.importance import importance_diagnostics, pareto_khat, psis_smooth
from neuralrg.physics.statistics import ess_fraction, importance_log_z


def gpd_log_weights(xi, M, seed):
    """log of M generalized Pareto (location 0, scale 1, shape ξ) draws: a tail of index ξ.
    E w = 1/(1 − ξ) for ξ < 1."""
    u = np.random.default_rng(seed).random(M)
    return np.log(np.expm1(-xi * np.log1p(-u)) / xi)


def tail_size(M):
    return math.ceil(min(M / 5, 3 * math.sqrt(M)))


@pytest.mark.parametrize("xi", [0.3, 0.8])
def test_khat_recovers_known_tail_index(xi):
    # M = 10⁴ fits 300 tail weights: sd(k̂) ≈ (1 + ξ)/√300 ≈ 0.08 (ξ = 0.3), 0.10 (ξ = 0.8), so one
    # seed is within ±0.1 only ~70-85% of the time; the mean of 10 seeds is (sd ≈ 0.03).
    ks = np.array([pareto_khat(gpd_log_weights(xi, 10_000, seed)) for seed in range(10)])
    assert abs(ks.mean() - xi) < 0.1
    assert np.all(np.abs(ks - xi) < 0.35)
    assert ks.std() > 0.01  # a genuine estimate, not a constant


def test_reliability_flag():
    # M = 10⁶ (3000 tail weights, sd(k̂) ≈ 0.03): the 0.7 threshold is > 3 sd from both cases
    light = importance_diagnostics(gpd_log_weights(0.3, 1_000_000, 0))
    heavy = importance_diagnostics(gpd_log_weights(0.8, 1_000_000, 0))
    assert abs(light["khat"] - 0.3) < 0.1 and abs(heavy["khat"] - 0.8) < 0.1
    assert light["reliable"] is True and light["note"] is None and light["psis_log_z"] is not None
    assert heavy["reliable"] is False and heavy["psis_log_z"] is None
    assert heavy["note"].startswith(f"k̂ = {heavy['khat']:.2f} > 0.7") and "not reliable" in heavy["note"]
    # 0.5 < ξ ≤ 0.7: ln Z usable (PSIS estimate given), its error bar flagged
    mid = importance_diagnostics(gpd_log_weights(0.6, 1_000_000, 0))
    assert 0.5 < mid["khat"] <= 0.7 and mid["reliable"] is False and mid["psis_log_z"] is not None
    assert mid["note"].startswith(f"k̂ = {mid['khat']:.2f} > 0.5") and "error bar is too small" in mid["note"]
    # at M = 10⁴ the light tail is never flagged
    for seed in range(10):
        d = importance_diagnostics(gpd_log_weights(0.3, 10_000, seed))
        assert d["reliable"] and d["psis_log_z"] is not None


@pytest.mark.parametrize("sigma", [0.1, 0.3])
def test_khat_small_for_lognormal_weights(sigma):
    for seed in range(5):
        assert pareto_khat(np.random.default_rng(seed).normal(0.0, sigma, 10_000)) < 0.5


def test_khat_grows_with_tail_heaviness():
    ks = [pareto_khat(gpd_log_weights(xi, 100_000, 1)) for xi in (0.1, 0.4, 0.7, 1.0, 1.3)]
    assert all(a < b for a, b in zip(ks, ks[1:]))


def test_shift_invariance_no_overflow():
    lw = gpd_log_weights(0.6, 5_000, 3)
    k = pareto_khat(lw)
    sm, k_sm = psis_smooth(lw)
    assert k_sm == k
    for c in (-1000.0, 7.5, 1000.0, 1e4):  # exp(1000) would overflow in linear space
        assert abs(pareto_khat(lw + c) - k) < 1e-8
        sm_c, _ = psis_smooth(lw + c)
        assert np.all(np.isfinite(sm_c)) and np.max(np.abs(sm_c - c - sm)) < 1e-8
        d = importance_diagnostics(lw + c)
        assert abs(d["psis_log_z"] - c - importance_diagnostics(lw)["psis_log_z"]) < 1e-8


@pytest.mark.parametrize("seed", range(4))
def test_psis_smoothing_heavy_tail(seed):
    M = 10_000
    lw = gpd_log_weights(0.8, M, seed) + 3.0
    order = np.argsort(lw, kind="stable")
    n_tail = tail_size(M)
    for lw in (lw, lw + 5.0 * (np.arange(M) == order[-1])):  # plain heavy tail; plus one dominant weight
        sm, k = psis_smooth(lw)
        assert sm.shape == (M,) and sm.dtype == np.float64 and k > 0.5
        assert np.all(np.diff(sm[order]) >= 0)  # the weights keep their order
        changed = np.nonzero(sm != lw)[0]
        assert n_tail - 1 <= changed.size <= n_tail and set(changed) <= set(order[-n_tail:])  # only the tail
        assert sm.max() <= lw.max()  # truncated at the largest raw weight
    # the dominant weight is pulled in: by more than a factor e, and the ESS grows
    assert sm.max() < lw.max() - 1.0
    assert ess_fraction(sm) > 2 * ess_fraction(lw)


def test_psis_log_z_close_to_truth_for_moderate_tail():
    # ξ = 0.3: Z = E w = 1/(1 − ξ)
    true = -math.log(1 - 0.3)
    for seed in range(3):
        d = importance_diagnostics(gpd_log_weights(0.3, 10_000, seed))
        assert abs(d["psis_log_z"] - true) < 4 * d["log_z_err"]
        assert abs(d["log_z"] - true) < 4 * d["log_z_err"]


# Reference values from arviz-stats 0.8.0 (``_DiagnosticsBase._ps_tail(..., tail="right",
# log_weights=True)``, tail 3√M, which equals ceil(min(M/5, 3√M)) for these M): k̂ and
# ln Z of its smoothed weights before normalisation.
REFERENCE = [
    (lambda: np.random.default_rng(11).normal(0, 1.0, 400), 0.42593855898414584, 0.5200408855307614),
    (lambda: np.random.default_rng(12).normal(0, 1.0, 10_000), 0.22307544236381754, 0.5146364613052441),
    (lambda: gpd_log_weights(0.5, 10_000, 13), 0.42764902869721527, 0.6494330375955073),
]


@pytest.mark.parametrize("case", range(len(REFERENCE)))
def test_matches_arviz_reference(case):
    make, k_ref, log_z_ref = REFERENCE[case]
    lw = make()
    assert abs(pareto_khat(lw) - k_ref) < 1e-10
    sm, _ = psis_smooth(lw)
    assert abs(logsumexp(sm) - math.log(lw.size) - log_z_ref) < 1e-10


def test_diagnostics_dict_and_torch_input():
    lw = np.random.default_rng(2).normal(0.0, 1.0, 2_000)
    d = importance_diagnostics(lw)
    assert set(d) == {"log_z", "log_z_err", "ess_fraction", "khat", "reliable", "psis_log_z", "note"}
    assert (d["log_z"], d["log_z_err"]) == importance_log_z(lw)
    assert d["ess_fraction"] == ess_fraction(lw)
    assert d["khat"] == pareto_khat(lw) and d["reliable"] and d["note"] is None
    assert abs(d["psis_log_z"] - 0.5) < 4 * d["log_z_err"]  # E e^X = e^{1/2} for X ~ N(0, 1)
    dt = importance_diagnostics(torch.tensor(lw, dtype=torch.float32))
    assert abs(dt["khat"] - d["khat"]) < 1e-3 and isinstance(dt["khat"], float)
    assert pareto_khat(torch.tensor(lw)) == d["khat"]
    sm, k = psis_smooth(torch.tensor(lw))
    assert isinstance(sm, np.ndarray) and k == d["khat"]


def test_degenerate_tails():
    const = importance_diagnostics(np.full(50, 3.0))
    assert const["khat"] == -math.inf and const["reliable"] and const["psis_log_z"] == pytest.approx(3.0)
    # only 3 weights above the threshold (ties): no GPD fit
    lw = np.r_[np.zeros(50), np.ones(3)]
    assert pareto_khat(lw) == math.inf
    d = importance_diagnostics(lw)
    assert not d["reliable"] and d["psis_log_z"] is None and "could not be estimated" in d["note"]
    sm, k = psis_smooth(lw)
    assert k == math.inf and np.array_equal(sm, lw)


@pytest.mark.parametrize("bad,match", [
    (np.zeros((20, 2)), "1-D"),
    (np.r_[np.zeros(20), np.nan], "finite"),
    (np.r_[np.zeros(20), np.inf], "finite"),
    (np.zeros(9), "at least 10"),
    (np.zeros(0), "empty"),
    (["a"] * 20, "numeric"),
])
@pytest.mark.parametrize("fn", [pareto_khat, psis_smooth, importance_diagnostics])
def test_bad_input(fn, bad, match):
    with pytest.raises(ValueError, match=match):
        fn(bad)


def test_plain_density_of_a_z2_target_is_flagged():
    """``evaluate_flow`` / ``flow_summary``: the plain density of a flow on a Z2-symmetric target is
    never marked reliable (it may miss the mirror mode); the symmetrised one is judged by k̂ alone."""
    import torch

    from neuralrg.flows import build_mera
    from neuralrg.physics.ising import IsingTarget
    from neuralrg.sampling.importance import MIRROR_NOTE, evaluate_flow, format_is_estimate

    torch.manual_seed(0)
    flow = build_mera(IsingTarget(4, 0.2), n_couplings=2, hidden=4).double().eval()
    plain = evaluate_flow(flow, 512, generator=torch.Generator().manual_seed(1))
    assert plain["is_reliable"] is False and MIRROR_NOTE in plain["is_note"]
    assert "  UNRELIABLE: " in format_is_estimate(plain) and "ERROR BAR" not in format_is_estimate(plain)
    flow.z2 = True
    sym = evaluate_flow(flow, 512, generator=torch.Generator().manual_seed(1))
    assert sym["is_note"] is None or MIRROR_NOTE not in sym["is_note"]
    assert sym["is_reliable"] == (sym["is_khat"] <= 0.5)
