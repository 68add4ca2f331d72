"""Estimators: importance-sampling ln Z, effective sample size, integrated autocorrelation times.

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
from typing import Any

import numpy as np
import torch
from scipy import fft as sp_fft
from scipy.special import logsumexp


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

    Returns {"tau", "window", "converged", "mean", "err", "var"}: tau in steps; var the sample
    variance about the grand mean (ddof = 1); err = sqrt(2 τ var / (C T)) with τ clipped at 0.
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
    err = math.sqrt(2.0 * max(tau, 0.0) * var / n)
    return {"tau": tau, "window": window, "converged": bool(converged), "mean": mean,
            "err": err, "var": var}


def mean_with_error(series: torch.Tensor | np.ndarray, c: float = 6.0) -> tuple[float, float]:
    """(mean, error of the mean) of ``series`` (C, T), the error including τ_int (see above)."""
    r = integrated_autocorr_time(series, c)
    return r["mean"], r["err"]
