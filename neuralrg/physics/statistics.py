"""Estimators: importance-sampling ln Z, effective sample size, integrated autocorrelation times,
blocked jackknife errors of functions of means.

Conventions:

* log weights ``log_w`` are natural logs of unnormalised importance weights w = p̃(x)/q(x),
  shaped (M,);
* time series are shaped (C, T): C independent chains of T consecutive steps (a 1-D input is
  one chain). τ_int is in units of steps, with τ_int = ½ for uncorrelated data, so the error
  of the mean is sqrt(2 τ_int Var / (C T)).

Computation is in float64 numpy; results are Python floats.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import torch
from scipy import fft as sp_fft
from scipy.special import logsumexp


MIN_CHAINS_BETWEEN = 8
"""Fewest independent chains for which the between-chain error of the mean enters ``err``."""


def _as_float64(a: Any, name: str) -> np.ndarray:
    """``a`` (tensor, ndarray or sequence) as a float64 ndarray, checked finite and non-empty."""
    if isinstance(a, torch.Tensor):
        a = a.detach().to("cpu", torch.float64).numpy()
    try:
        arr = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a numeric array, got {type(a).__name__}") from exc
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {int((~np.isfinite(arr)).sum())} non-finite value(s)")
    return arr


def _log_weights(log_w: Any) -> np.ndarray:
    lw = _as_float64(log_w, "log_w")
    if lw.ndim != 1:
        raise ValueError(f"log_w must be 1-D, shaped (M,), got shape {lw.shape}")
    if lw.size < 2:
        raise ValueError(f"log_w needs at least 2 samples, got {lw.size}")
    return lw


def importance_log_z(log_w: torch.Tensor | np.ndarray) -> tuple[float, float]:
    """Importance-sampling estimate of ln Z and its standard error from log weights (M,).

    ln Ẑ = logsumexp(log w) − ln M (Ẑ unbiased for Z; ln Ẑ consistent for ln Z). The error is
    the delta-method one, se(ln Ẑ) = std(w / ŵ_mean) / sqrt(M) (std with ddof = 1), with the
    normalised weights formed in log space so any overall offset of log w is harmless.
    """
    lw = _log_weights(log_w)
    M = lw.size
    lse = float(logsumexp(lw))
    r = np.exp(lw - lse + math.log(M))  # w / mean(w), mean exactly 1, each in [0, M]
    return lse - math.log(M), float(np.std(r, ddof=1) / math.sqrt(M))


def ess_fraction(log_w: torch.Tensor | np.ndarray) -> float:
    """Effective sample size per sample, (Σw)² / (M Σw²) = exp(2 LSE(log w) − LSE(2 log w)) / M."""
    lw = _log_weights(log_w)
    return float(math.exp(2.0 * logsumexp(lw) - logsumexp(2.0 * lw)) / lw.size)


def _series(series: Any) -> np.ndarray:
    x = _as_float64(series, "series")
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"series must be 1-D (T,) or 2-D (C, T), got shape {x.shape}")
    if x.size < 2:
        raise ValueError(f"series needs at least 2 values, got shape {x.shape}")
    return x


def _autocorrelation(y: np.ndarray) -> np.ndarray:
    """ρ(t), t = 0..T−1, of centred chains y (C, T): per-chain autocovariance
    Σ_s y_s y_{s+t} / (T − t) by FFT, averaged over chains, divided by its t = 0 value."""
    C, T = y.shape
    n = sp_fft.next_fast_len(2 * T, real=True)
    f = sp_fft.rfft(y, n=n, axis=-1)
    acov = sp_fft.irfft(f.real**2 + f.imag**2, n=n, axis=-1)[:, :T]
    acov = acov.mean(axis=0) / (T - np.arange(T))
    return acov / acov[0]


def autocorrelation(series: torch.Tensor | np.ndarray, max_lag: int | None = None) -> np.ndarray:
    """Normalised autocorrelation ρ(t), t = 0..max_lag, of ``series`` (C, T) (1-D: one chain).

    Same estimator as ``integrated_autocorr_time``: chains centred on the grand mean,
    per-chain autocovariance Σ_s y_s y_{s+t} / (T − t), averaged over chains, divided by its
    t = 0 value (so ρ(0) = 1). ``max_lag`` defaults to (and is capped at) T − 1. A constant
    series has no fluctuations and is reported uncorrelated: ρ = (1, 0, 0, …).
    Returns a float64 ndarray of length min(max_lag, T − 1) + 1.
    """
    x = _series(series)
    T = x.shape[1]
    if max_lag is None:
        max_lag = T - 1
    if isinstance(max_lag, bool) or not isinstance(max_lag, (int, np.integer)) or max_lag < 0:
        raise ValueError(f"max_lag must be an integer >= 0 or None, got {max_lag!r}")
    n = min(int(max_lag), T - 1) + 1
    y = x - x.mean()
    if not np.any(y):
        rho = np.zeros(n)
        rho[0] = 1.0
        return rho
    return _autocorrelation(y)[:n]


def integrated_autocorr_time(series: torch.Tensor | np.ndarray, c: float = 6.0) -> dict:
    """τ_int of the mean of ``series`` (C, T) with Sokal's automatic window.

    ρ(t) is the autocovariance about the grand mean (over all chains), averaged over chains,
    normalised by its value at t = 0. τ_int(W) = ½ + Σ_{t=1}^{W} ρ(t); the window is the
    smallest W ≤ T/4 with W ≥ c·τ_int(W). If none qualifies, ``converged`` is False, the
    window is T/4 and ``tau`` is (in practice) a lower bound. T = 1 (C independent draws)
    gives τ_int = ½ by construction; a constant series gives τ_int = ½ and err = 0.

    Returns {"tau", "window", "converged", "mean", "err", "err_tau", "err_between_chains", "var"}:
    tau in steps; var the sample variance about the grand mean (ddof = 1); err_tau =
    sqrt(2 τ var / (C T)) with τ clipped at 0; err_between_chains = std(chain means, ddof = 1)/√C
    (None for C < 2), which needs no τ at all (the chains are independent). ``err`` is err_tau,
    or max(err_tau, err_between_chains) with C ≥ ``MIN_CHAINS_BETWEEN`` chains: the windowed τ of
    short chains is biased low, and the larger of the two error bars is what measured coverage
    supports (docs/benchmarks.md, coverage).
    """
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c <= 0:
        raise ValueError(f"c must be a finite number > 0, got {c!r}")
    x = _series(series)
    C, T = x.shape
    n = x.size
    mean = float(x.mean())
    y = x - mean
    var = float((y * y).sum() / (n - 1))
    tau, window, converged = 0.5, 0, True
    if T > 1 and var > 0.0:
        w_max = max(1, T // 4)
        rho = _autocorrelation(y)
        taus = 0.5 + np.cumsum(rho[1 : w_max + 1])  # taus[W - 1] = τ_int(W)
        ok = np.nonzero(np.arange(1, w_max + 1) >= c * taus)[0]
        converged = ok.size > 0
        window = int(ok[0]) + 1 if converged else w_max
        tau = float(taus[window - 1])
    err_tau = math.sqrt(2.0 * max(tau, 0.0) * var / n)
    err_chains = float(np.std(x.mean(axis=1), ddof=1) / math.sqrt(C)) if C >= 2 else None
    err = max(err_tau, err_chains) if C >= MIN_CHAINS_BETWEEN and T > 1 else err_tau
    return {"tau": tau, "window": window, "converged": bool(converged), "mean": mean,
            "err": err, "err_tau": err_tau, "err_between_chains": err_chains, "var": var}


def mean_with_error(series: torch.Tensor | np.ndarray, c: float = 6.0) -> tuple[float, float]:
    """(mean, error of the mean) of ``series`` (C, T), the error including τ_int (see above)."""
    r = integrated_autocorr_time(series, c)
    return r["mean"], r["err"]


def _block_sums(a: np.ndarray, n_blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """Sums and counts of ``n_blocks`` near-equal contiguous blocks per chain of a (C, T),
    flattened to (C·n_blocks,)."""
    C, T = a.shape
    edges = np.linspace(0, T, n_blocks + 1).astype(int)
    sums = np.add.reduceat(a, edges[:-1], axis=1).reshape(-1)
    counts = np.tile(np.diff(edges), C).astype(np.float64)
    return sums, counts


def blocked_jackknife(data: dict[str, Any], keys: Sequence[str], f: Callable[[dict[str, Any]], Any],
                      taus: dict[str, dict] | None = None, c: float = 6.0) -> dict:
    """f(means of ``data[k]`` for k in ``keys``) with a blocked delete-one-block jackknife error.

    ``data`` maps names to (C, T) series (C independent chains; 1-D is one chain), all the same
    shape. ``f`` takes {key: mean} and must also work elementwise on {key: ndarray} (it is
    called once on the leave-one-block-out means of all blocks together). Each chain is cut
    into contiguous near-equal blocks of ≥ 10·τ_max steps, τ_max the largest τ_int of the
    inputs (from ``taus``, {key: ``integrated_autocorr_time`` result}, computed with window
    constant ``c`` where missing); one block per chain when T is shorter. Blocks of different
    chains are independent.

    Returns {"mean", "err", "block_length", "n_blocks", "converged"}: err is nan with fewer
    than 2 blocks in all; ``converged`` is False when an input's τ_int window did not converge
    (the blocks may then be too short).
    """
    keys = list(keys)
    if not keys:
        raise ValueError("keys must name at least one series of data")
    missing = [k for k in keys if k not in data]
    if missing:
        raise ValueError(f"data lacks key(s) {missing}; has {sorted(data)}")
    arrs = {k: _series(data[k]) for k in keys}
    shape = arrs[keys[0]].shape
    for k, a in arrs.items():
        if a.shape != shape:
            raise ValueError(f"data[{k!r}] has shape {a.shape}, expected {shape} like data[{keys[0]!r}]")
    C, T = shape
    taus = dict(taus or {})
    for k in keys:
        if k not in taus:
            taus[k] = integrated_autocorr_time(arrs[k], c)
    tau_max = max(max(taus[k]["tau"], 0.5) for k in keys)
    n_blocks = max(1, T // min(T, max(1, math.ceil(10.0 * tau_max))))
    est = float(f({k: float(a.mean()) for k, a in arrs.items()}))
    blocks = {k: _block_sums(a, n_blocks) for k, a in arrs.items()}
    counts = blocks[keys[0]][1]
    G = counts.size
    err = math.nan
    if G >= 2:
        n = counts.sum()
        loo = {k: (s.sum() - s) / (n - counts) for k, (s, _) in blocks.items()}
        theta = np.asarray(f(loo), dtype=np.float64)
        err = float(math.sqrt((G - 1) / G * ((theta - theta.mean()) ** 2).sum()))
    return {"mean": est, "err": err, "block_length": T // n_blocks, "n_blocks": G,
            "converged": all(bool(taus[k]["converged"]) for k in keys)}
