"""Importance-sampling diagnostics: the Pareto k̂ of PSIS, Pareto smoothing, a summary dict.

Reference: Vehtari, Simpson, Gelman, Yao, Gabry, "Pareto Smoothed Importance Sampling",
JMLR 25 (2024), arXiv:1507.02646; the generalized Pareto fit is the empirical-Bayes estimator
of Zhang & Stephens, Technometrics 51 (2009), with the weakly informative prior of PSIS/ArviZ
(k̂ shrunk towards 0.5 with weight 10 samples).

Conventions (as in ``statistics``): ``log_w`` are natural logs of unnormalised importance
weights w = p̃(x)/q(x), shaped (M,), any overall offset allowed; everything is computed in
float64 numpy in log space, relative to max log w, so no weight ever overflows.

k̂ estimates the shape ξ of the weights' right tail (Var w is infinite for ξ ≥ ½, E w for
ξ ≥ 1). Two thresholds:

* k̂ > 0.7 (``KHAT_THRESHOLD``, PSIS's practical one for large M; the paper's sample-size
  dependent one is min(1 − 1/log10 M, 0.7)): the estimates, ln Z included, are not usable.
* ½ < k̂ ≤ 0.7 (``KHAT_ERROR_BAR``): the estimate converges, but Var w is infinite, so the
  delta-method error bar has no meaning and in practice is too small; ln Ẑ is typically low
  (measured: docs/benchmarks.md, coverage). Only k̂ ≤ ½ marks an error bar as reliable.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy.special import logsumexp

from .statistics import _as_float64, _log_weights, ess_fraction, importance_log_z

__all__ = ["pareto_khat", "psis_smooth", "importance_diagnostics", "weighted_means", "KHAT_THRESHOLD",
           "KHAT_ERROR_BAR", "MIN_SAMPLES"]

KHAT_THRESHOLD = 0.7
"""k̂ above which importance-sampling estimates are deemed unusable."""

KHAT_ERROR_BAR = 0.5
"""k̂ above which the (delta-method) error bar of an importance-sampling estimate is unreliable."""

MIN_SAMPLES = 10
"""Fewest log weights ``pareto_khat`` accepts."""

_MIN_TAIL = 5  # fewer tail weights than this: no fit, k̂ = +inf (as R's loo / ArviZ)
_PRIOR_K, _PRIOR_K_CENTRE = 10.0, 0.5  # weakly informative prior of PSIS: k̂ ← (n k̂ + 10·½)/(n + 10)
_PRIOR_BS = 3.0  # Zhang & Stephens' prior scale for θ


def _checked(log_w: Any) -> np.ndarray:
    lw = _log_weights(log_w)
    if lw.size < MIN_SAMPLES:
        raise ValueError(f"Pareto k̂ needs at least {MIN_SAMPLES} log weights, got {lw.size}")
    return lw


def _tail_size(M: int) -> int:
    """M_tail = ceil(min(M/5, 3√M)) (relative efficiency 1, i.e. independent draws)."""
    return int(math.ceil(min(0.2 * M, 3.0 * math.sqrt(M))))


def _gpd_fit(x: np.ndarray) -> tuple[float, float]:
    """Shape ξ and scale σ of a generalized Pareto distribution (location 0) fitted to the
    positive, ascending-sorted exceedances ``x`` (n,) by Zhang & Stephens' empirical Bayes,
    ξ then shrunk by the PSIS prior. GPD: F(x) = 1 − (1 + ξx/σ)^{−1/ξ}."""
    n = x.size
    m = 30 + int(math.sqrt(n))
    # grid for θ = −ξ/σ (Zhang & Stephens' sign: 1 − θx > 0 for all x up to the maximum)
    theta = 1.0 - np.sqrt(m / (np.arange(1, m + 1, dtype=np.float64) - 0.5))
    theta = theta / (_PRIOR_BS * x[int(n / 4 + 0.5) - 1]) + 1.0 / x[-1]
    xi = np.log1p(-theta[:, None] * x[None, :]).mean(axis=1)  # profile MLE of ξ given θ
    with np.errstate(divide="ignore", invalid="ignore"):
        log_lik = n * (np.log(-theta / xi) - xi - 1.0)        # profile log likelihood of θ
    log_lik = np.where(np.isfinite(log_lik), log_lik, -np.inf)  # a grid point at θ = 0 exactly
    post = np.exp(log_lik - logsumexp(log_lik))                # posterior weights on the grid
    keep = post >= 10.0 * np.finfo(np.float64).eps
    theta_hat = float(np.sum(theta[keep] * post[keep]) / np.sum(post[keep]))
    xi_hat = float(np.log1p(-theta_hat * x).mean())
    sigma = -xi_hat / theta_hat
    xi_hat = (n * xi_hat + _PRIOR_K * _PRIOR_K_CENTRE) / (n + _PRIOR_K)
    return xi_hat, sigma


def _gpd_quantile(p: np.ndarray, xi: float, sigma: float) -> np.ndarray:
    """Inverse CDF of the GPD (location 0) at probabilities p ∈ (0, 1)."""
    if abs(xi) < np.finfo(np.float64).eps:
        return -sigma * np.log1p(-p)
    return sigma * np.expm1(-xi * np.log1p(-p)) / xi


def _psis(lw: np.ndarray, smooth: bool) -> tuple[np.ndarray | None, float]:
    """Core of ``pareto_khat`` / ``psis_smooth`` on checked log weights ``lw`` (M,)."""
    x = lw - lw.max()  # max 0: weights in (0, 1]
    M = x.size
    order = np.argsort(x, kind="stable")
    n_tail = _tail_size(M)
    # threshold: the (M_tail + 1)-th largest weight, floored where exp would underflow
    cutoff = max(float(x[order[M - n_tail - 1]]), math.log(np.finfo(np.float64).tiny))
    tail = order[M - n_tail:]
    tail = tail[x[tail] > cutoff]  # ties at the threshold are not in the tail (ascending order)
    if tail.size == 0 and np.all(x == 0.0):
        return (lw.copy() if smooth else None), -math.inf  # constant weights: no tail at all
    if tail.size < _MIN_TAIL:
        return (lw.copy() if smooth else None), math.inf
    exceed = math.exp(cutoff) * np.expm1(x[tail] - cutoff)  # w − w_cut, accurate near the threshold
    khat, sigma = _gpd_fit(exceed)
    if not smooth:
        return None, khat
    out = lw.copy()  # weights outside the tail stay bit-exact
    if math.isfinite(khat) and sigma > 0:
        n = tail.size
        expected = _gpd_quantile((np.arange(1, n + 1) - 0.5) / n, khat, sigma)  # ascending
        # back to log w, truncated at the largest raw weight
        out[tail] = np.minimum(np.log(expected + math.exp(cutoff)), 0.0) + lw.max()
    return out, khat


def pareto_khat(log_w: torch.Tensor | np.ndarray) -> float:
    """Pareto k̂ (PSIS tail-shape estimate) of the importance weights exp(log_w), log_w (M,).

    Fits a generalized Pareto distribution to the M_tail = ceil(min(M/5, 3√M)) largest
    weights above the next-largest one (Zhang & Stephens + PSIS prior). Invariant under a
    constant shift of log_w. Returns +inf when fewer than 5 weights exceed the threshold
    (ties), −inf for exactly constant log weights. Needs M ≥ 10 finite values.
    """
    return _psis(_checked(log_w), smooth=False)[1]


def psis_smooth(log_w: torch.Tensor | np.ndarray) -> tuple[np.ndarray, float]:
    """Pareto-smoothed log weights (M,) and k̂.

    The tail weights are replaced, in their original order, by the expected order statistics
    of the fitted GPD, F⁻¹((j − ½)/M_tail) + threshold, j = 1 … M_tail, then truncated at
    the largest raw weight; all other weights are unchanged. The result is on the scale of
    ``log_w`` (not normalised): logsumexp(result) − ln M is the PSIS ln Z. Where k̂ is not
    finite, the log weights are returned unchanged (as a float64 copy).
    """
    lw = _checked(log_w)
    out, khat = _psis(lw, smooth=True)
    return out, khat


def importance_diagnostics(log_w: torch.Tensor | np.ndarray) -> dict[str, Any]:
    """Summary of an importance-sampling run from its log weights (M,), natural log.

    Keys: ``log_z`` and ``log_z_err`` (ln Ẑ and its delta-method error, as
    ``statistics.importance_log_z``), ``ess_fraction``, ``khat``, ``reliable`` (k̂ ≤ ½: the
    estimate and its error bar can be trusted), ``psis_log_z`` (ln Z from the Pareto-smoothed
    weights where k̂ < 0.7, else None) and ``note`` (None when reliable, else a short
    explanation that tells k̂ ≤ 0.7, a usable estimate with too small an error bar, from k̂ > 0.7).
    """
    lw = _checked(log_w)
    log_z, log_z_err = importance_log_z(lw)
    smoothed, khat = _psis(lw, smooth=True)
    reliable = bool(khat <= KHAT_ERROR_BAR)
    psis_log_z = None
    if khat < KHAT_THRESHOLD:
        psis_log_z = float(logsumexp(smoothed) - math.log(lw.size))
    note = None
    if math.isinf(khat) and khat > 0:
        note = (f"k̂ could not be estimated: fewer than {_MIN_TAIL} distinct weights in the tail; "
                f"ln Z and its error bar are not reliable")
    elif khat > KHAT_THRESHOLD:
        note = (f"k̂ = {khat:.2f} > {KHAT_THRESHOLD}: weights are heavy-tailed; "
                f"ln Z and its error bar are not reliable")
    elif not reliable:
        note = (f"k̂ = {khat:.2f} > {KHAT_ERROR_BAR}: the weights' variance is infinite; ln Z converges "
                f"but its error bar is too small (ln Z typically low)")
    return {"log_z": log_z, "log_z_err": log_z_err, "ess_fraction": ess_fraction(lw),
            "khat": float(khat), "reliable": reliable, "psis_log_z": psis_log_z, "note": note}


def weighted_means(values: dict[str, Any], log_w: torch.Tensor | np.ndarray,
                   pairs: tuple[str, ...] = ()) -> dict[str, dict[str, float]]:
    """Self-normalised importance-weighted means of per-draw values, {name: {"mean", "err"}}.

    ``values``: name -> (M,) per-draw values of M independent draws with log weights ``log_w``
    (M,). mean = Σ w v / Σ w; err is the delta-method standard error √(Σ w² (v − mean)²) / Σ w.
    Names in ``pairs`` hold one value per pair of draws (2i, 2i+1), written on both entries (the
    replica overlap q², ``observables.pair_overlap_moments``): they are weighted by the pair's
    product weight w_{2i}·w_{2i+1} (M even).
    """
    lw = _log_weights(log_w)
    out: dict[str, dict[str, float]] = {}
    for name, v in values.items():
        arr = _as_float64(v, f"values[{name!r}]")
        if arr.shape != lw.shape:
            raise ValueError(f"values[{name!r}] must be shaped like log_w {lw.shape}, got {arr.shape}")
        lwk = lw
        if name in pairs:
            if lw.size % 2:
                raise ValueError(f"values[{name!r}] is a pair value and needs an even number of draws, got {lw.size}")
            arr, lwk = arr[0::2], lw[0::2] + lw[1::2]
        w = np.exp(lwk - lwk.max())
        mean = float(np.sum(w * arr) / w.sum())
        err = float(math.sqrt(np.sum(w * w * (arr - mean) ** 2)) / w.sum())
        out[name] = {"mean": mean, "err": err}
    return out
