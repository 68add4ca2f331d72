"""Mutual information I(a; b) between two scalar variables from paired samples (a_i, b_i).

All estimators return nats (natural log) as a Python float and accept 1-D float tensors
(any device) or numpy arrays of equal length n >= 10. Internally they work in float64 on the
input's device.

* ``gaussian_mi``        −½ ln(1 − ρ²) from the Pearson ρ; exact only for jointly Gaussian
                         data, blind to non-linear dependence.
* ``gaussian_copula_mi`` Gaussian MI of the rank-based normal scores; invariant under
                         monotone maps of each marginal, a lower bound for other copulas.
* ``ksg_mi``             Kraskov–Stögbauer–Grassberger estimator 1 (k nearest neighbours,
                         max-norm); consistent for any continuous joint density.

``neighbour_pairs`` pools (site, neighbour) pairs from a batch of fields on the torus.
"""
from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch

_MIN_SAMPLES = 10
_CHUNK_ELEMENTS = 1 << 21  # pairwise-distance entries held per chunk in ksg_mi


def _as_1d(x: Any, name: str) -> torch.Tensor:
    """``x`` as a 1-D float64 tensor (same device for tensors); ValueError names ``name``."""
    if isinstance(x, torch.Tensor):
        if x.dtype == torch.bool or x.is_complex():
            raise ValueError(f"{name} must hold real numbers (float or int), got dtype {x.dtype}")
        t = x.detach().to(torch.float64)
    else:
        try:
            arr = np.asarray(x)
        except Exception as exc:  # ragged lists and the like
            raise ValueError(f"{name} must be a 1-D tensor or numpy array, got {type(x).__name__}") from exc
        if arr.dtype.kind not in "fiu":
            raise ValueError(f"{name} must hold real numbers (float or int), got dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float64))
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D of length n >= {_MIN_SAMPLES}, got shape {tuple(t.shape)}")
    if t.numel() < _MIN_SAMPLES:
        raise ValueError(f"{name} must have n >= {_MIN_SAMPLES} samples, got n = {t.numel()}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must contain only finite values (found NaN or inf)")
    return t


def _check_pair(a: Any, b: Any) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _as_1d(a, "a"), _as_1d(b, "b")
    if x.numel() != y.numel():
        raise ValueError(f"a and b must have equal length, got len(a) = {x.numel()}, len(b) = {y.numel()}")
    if x.device != y.device:
        raise ValueError(f"a and b must be on the same device, got {x.device} and {y.device}")
    return x, y


def _standardize(x: torch.Tensor, name: str) -> torch.Tensor:
    """(x − mean) / std (population std); ValueError if ``x`` is constant."""
    xc = x - x.mean()
    std = xc.square().mean().sqrt()
    if not float(std) > 0.0:
        raise ValueError(f"{name} is constant (zero variance): its mutual information is undefined")
    return xc / std


def _gaussian_mi_from_scores(x: torch.Tensor, y: torch.Tensor) -> float:
    """−½ ln(1 − ρ²) with ρ the Pearson correlation of x and y (inf for |ρ| = 1)."""
    rho = (_standardize(x, "a") * _standardize(y, "b")).mean().clamp(-1.0, 1.0)
    return float(-0.5 * torch.log1p(-rho * rho))


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of ``x``; tied values share the mean of their ranks (float64)."""
    vals, order = torch.sort(x, stable=True)
    _, counts = torch.unique_consecutive(vals, return_counts=True)
    ends = torch.cumsum(counts, 0).to(x.dtype)  # last rank in each run of equal values
    mean_rank = ends - 0.5 * (counts.to(x.dtype) - 1.0)
    ranks = torch.empty_like(x)
    ranks[order] = torch.repeat_interleave(mean_rank, counts)
    return ranks


def gaussian_mi(a: Any, b: Any) -> float:
    """Gaussian MI −½ ln(1 − ρ²) in nats, ρ the Pearson correlation of the samples.

    Exact for jointly Gaussian (a, b) up to the O(1/n) bias of the plug-in ρ (≈ +1/(2n) nats
    on average); for other distributions it only measures linear dependence, e.g. it is ≈ 0
    for b = a² with symmetric a. Returns inf if |ρ| = 1. O(n).
    """
    x, y = _check_pair(a, b)
    return _gaussian_mi_from_scores(x, y)


def gaussian_copula_mi(a: Any, b: Any) -> float:
    """Gaussian-copula MI in nats: Gaussian MI of the normal scores Φ⁻¹(rank / (n + 1)).

    Each marginal is replaced by its normal scores (ties get the average rank), so the result
    is invariant under strictly increasing maps of either variable. Exact (up to O(1/n)) when
    the copula of (a, b) is Gaussian; otherwise it is a lower bound on the true MI (the
    Gaussian copula has the least MI for the given score correlation) and, like
    ``gaussian_mi``, it misses non-monotone dependence. O(n log n), no subsampling.
    """
    x, y = _check_pair(a, b)
    n = x.numel()
    sx = torch.special.ndtri(_average_ranks(x) / (n + 1))
    sy = torch.special.ndtri(_average_ranks(y) / (n + 1))
    return _gaussian_mi_from_scores(sx, sy)


def ksg_mi(
    a: Any,
    b: Any,
    k: int = 3,
    max_samples: int | None = 4000,
    generator_seed: int = 0,
    *,
    jitter: float = 1e-10,
) -> float:
    """Kraskov–Stögbauer–Grassberger MI estimator 1 (Phys. Rev. E 69, 066138), in nats.

    I = ψ(k) + ψ(n) − ⟨ψ(n_a + 1) + ψ(n_b + 1)⟩, where ε_i is the max-norm distance from
    (a_i, b_i) to its k-th nearest neighbour and n_a(i), n_b(i) count the other points with
    |a_j − a_i| < ε_i, |b_j − b_i| < ε_i (strictly). Steps, all seeded by ``generator_seed``:

    1. if n > ``max_samples`` (None: never), a random subset of ``max_samples`` pairs is used;
    2. each marginal is standardised to zero mean and unit (population) variance;
    3. independent N(0, ``jitter``²) noise is added to each standardised value, which breaks
       exact ties (discrete or duplicated values; pooled neighbour pairs contain each value
       twice). For discrete variables whose values are spaced ≫ jitter the jittered pair has
       exactly the discrete MI, so the estimator stays meaningful there. ``jitter = 0``
       disables it (then ties give wrong counts).

    Consistent for any joint density. At n = 4000, k = 3 on bivariate Gaussians the bias is
    small (+0.002 to +0.01 nats for ρ = 0 to 0.9) next to the statistical sd (≈ 0.015–0.02
    nats); estimates can be negative for independent data (not clipped). Strongly skewed or
    heavy-tailed marginals add a negative bias (≈ −0.01 to −0.03 nats for exp/cube-transformed
    Gaussians), since only the copula is invariant, not the kNN geometry. Larger k lowers the
    variance and raises the bias. Cost O(n²) time, O(n) memory (pairwise distances in row
    chunks): ≈ 0.4 s for n = 4000 on one CPU core.
    """
    x, y = _check_pair(a, b)
    if isinstance(k, bool) or not isinstance(k, Integral) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if max_samples is not None and (
        isinstance(max_samples, bool) or not isinstance(max_samples, Integral) or max_samples < _MIN_SAMPLES
    ):
        raise ValueError(f"max_samples must be None or an integer >= {_MIN_SAMPLES}, got {max_samples!r}")
    if isinstance(generator_seed, bool) or not isinstance(generator_seed, Integral):
        raise ValueError(f"generator_seed must be an integer, got {generator_seed!r}")
    if isinstance(jitter, bool) or not isinstance(jitter, Real) or not (0.0 <= float(jitter) < math.inf):
        raise ValueError(f"jitter must be a finite number >= 0, got {jitter!r}")
    k, jitter = int(k), float(jitter)

    gen = torch.Generator().manual_seed(int(generator_seed))  # CPU stream: same draws on any device
    n = x.numel()
    if max_samples is not None and n > max_samples:
        idx = torch.randperm(n, generator=gen)[: int(max_samples)].to(x.device)
        x, y = x[idx], y[idx]
        n = int(max_samples)
    if k >= n:
        raise ValueError(f"k must be < the number of samples used ({n}), got k = {k}")

    x, y = _standardize(x, "a"), _standardize(y, "b")
    if jitter > 0.0:
        noise = torch.randn(2, n, generator=gen, dtype=torch.float64).to(x.device)
        x, y = x + jitter * noise[0], y + jitter * noise[1]

    rows = max(1, _CHUNK_ELEMENTS // n)
    psi_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        r = torch.arange(stop - start, device=x.device)
        dx = (x[start:stop, None] - x[None, :]).abs()
        dy = (y[start:stop, None] - y[None, :]).abs()
        dx[r, r + start] = math.inf  # exclude the point itself from every count
        dy[r, r + start] = math.inf
        eps = torch.maximum(dx, dy).kthvalue(k, dim=1).values.unsqueeze(1)
        n_x = (dx < eps).sum(dim=1).to(torch.float64)
        n_y = (dy < eps).sum(dim=1).to(torch.float64)
        psi_sum = psi_sum + (torch.special.digamma(n_x + 1.0) + torch.special.digamma(n_y + 1.0)).sum()

    psi = torch.special.digamma(torch.tensor([float(k), float(n)], dtype=torch.float64))
    return float(psi.sum()) - float(psi_sum) / n


_METHODS = {"ksg": ksg_mi, "gaussian_copula": gaussian_copula_mi, "gaussian": gaussian_mi}


def mutual_information(a: Any, b: Any, method: str = "ksg", **kw: Any) -> float:
    """MI in nats by ``method`` ∈ {"ksg", "gaussian_copula", "gaussian"}.

    Keyword arguments go to ``ksg_mi`` (k, max_samples, generator_seed, jitter); the other
    methods take none.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {sorted(_METHODS)}, got {method!r}")
    if kw and method != "ksg":
        raise ValueError(f"method {method!r} takes no keyword arguments, got {sorted(kw)}")
    return _METHODS[method](a, b, **kw)


def neighbour_pairs(
    field: torch.Tensor, mask: torch.Tensor | None = None, spacing: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool (site, neighbour) value pairs of ``field`` (B, H, W) on the periodic H×W torus.

    Pairs are (f[:, i, j], f[:, i, (j + spacing) % W]) ("right") followed by
    (f[:, i, j], f[:, (i + spacing) % H, j]) ("down"), for every sample and every site where
    ``mask`` (bool, (H, W); None = all sites) is True at both the site and the neighbour.
    Returns flat tensors a, b of equal length (right pairs first, each block ordered by
    sample, then row-major site), dtype and device of ``field``; empty if no pair qualifies.

    Pairs from one sample are correlated and every site value appears in several pairs, so
    the pool is not iid: fine for the MI point estimate (``ksg_mi`` subsamples and jitters),
    not for naive error bars.
    """
    if not isinstance(field, torch.Tensor) or field.dim() != 3:
        shape = tuple(field.shape) if isinstance(field, torch.Tensor) else type(field).__name__
        raise ValueError(f"field must be a torch.Tensor shaped (B, H, W), got {shape}")
    _, H, W = field.shape
    if isinstance(spacing, bool) or not isinstance(spacing, Integral) or not 1 <= spacing < min(H, W):
        raise ValueError(f"spacing must be an integer with 1 <= spacing < min(H, W) = {min(H, W)}, got {spacing!r}")
    spacing = int(spacing)
    if mask is None:
        mask = torch.ones(H, W, dtype=torch.bool, device=field.device)
    else:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (H, W):
            desc = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"mask must be None or a bool tensor shaped ({H}, {W}), got {desc}")
        mask = mask.to(field.device)
    a_parts, b_parts = [], []
    for dim in (-1, -2):  # right (along W), then down (along H)
        neighbour = torch.roll(field, -spacing, dims=dim)  # neighbour[:, i, j] = field at +spacing
        both = mask & torch.roll(mask, -spacing, dims=dim)
        a_parts.append(field[:, both].reshape(-1))
        b_parts.append(neighbour[:, both].reshape(-1))
    return torch.cat(a_parts), torch.cat(b_parts)
