"""Wolff single-cluster Monte Carlo for translation-invariant Ising models, and exact HS samples.

Conventions (``docs/conventions.md``): L×L torus, N = L², every site bonds to its right and
lower neighbour (2N bonds; for L = 2 each neighbouring pair carries two bonds, each activated
independently, so the pair is effectively coupled by 2K as in the ``torch.roll`` energies),
weight exp(K Σ_horizontal s_i s_j + K_y Σ_vertical s_i s_j), K, K_y > 0 in ``wolff_chains``.
Spins are ±1 int8 arrays shaped (n_chains, L, L).

Antiferromagnetic directions (K < 0 and/or K_y < 0) on even L are the ferromagnet in disguise:
with the gauge g_ij = (−1)^{[K<0]·j + [K_y<0]·i}, s = g·σ maps the ferromagnet σ at |K|, |K_y|
onto them exactly (``wolff_target_chains``). Odd L with an antiferromagnetic direction is
frustrated, and so are disordered bonds: cluster moves do not apply (``wolff_unsupported_reason``).

Wolff update: pick a uniformly random seed site, grow its cluster by activating every bond to
a not-yet-added neighbour of the seed's spin with probability p = 1 − e^{−2K} (each bond is
tested at most once), flip the cluster. ``wolff_chains`` runs many independent chains at once:
the breadth-first growth is vectorised over all chains (numpy, one array operation per BFS
shell), each chain starting its next cluster as soon as the previous one is complete.

Sweep: one production sweep is a FIXED number ``clusters_per_sweep`` = max(1, round(N / ⟨|C|⟩))
of cluster flips per chain, with the mean cluster size ⟨|C|⟩ measured over the second half of
the warm-up (pooled over chains), so a sweep flips ≈ N spins on average while the production
chain stays a time-homogeneous Markov chain with exactly the Boltzmann distribution as its
stationary law. A warm-up sweep flips clusters until at least N spins were flipped in that chain.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

if TYPE_CHECKING:
    from .ising import IsingTarget

__all__ = ["WolffResult", "wolff_chains", "wolff_target_chains", "wolff_couplings", "spin_series",
           "exact_x_from_spins", "exact_x_samples", "wolff_unsupported_reason"]


def wolff_couplings(target: object) -> tuple[float, float, np.ndarray]:
    """(|K_x|, |K_y|, gauge g (L, L) int8) such that the target's spins are s = g·σ with σ the
    ferromagnet at |K_x|, |K_y| (module docstring). ValueError (the reason) where no such map
    exists: not an ``IsingTarget``, site-dependent bonds, an antiferromagnetic direction on odd L,
    or a zero coupling."""
    from .ising import IsingTarget

    if type(target) is not IsingTarget:  # a subclass may change the couplings: refuse it too
        raise ValueError(f"Wolff cluster updates need the Ising model with translation-invariant couplings "
                         f"(IsingTarget), not a {type(target).__name__}")
    if not target.translation_invariant:
        raise ValueError(f"Wolff cluster updates need translation-invariant couplings; this target has "
                         f"{target.bond_kind} bonds (site-dependent or frustrated couplings: use physical_hmc "
                         f"or parallel_tempering)")
    L, kx = target.L, float(target.K)
    ky = kx if target.K_y is None else float(target.K_y)
    if kx == 0.0 or ky == 0.0:
        raise ValueError(f"Wolff cluster updates need non-zero couplings, got K = {kx}, K_y = {ky}")
    if (kx < 0 or ky < 0) and L % 2:
        raise ValueError(f"an antiferromagnetic coupling (K = {kx}, K_y = {ky}) on the odd L = {L} torus is "
                         f"frustrated: Wolff cluster updates do not apply (use physical_hmc or parallel_tempering)")
    from .couplings import sublattice_gauge

    return abs(kx), abs(ky), sublattice_gauge(L, kx < 0, ky < 0)


def wolff_unsupported_reason(target: object) -> str | None:
    """None where ``wolff_target_chains`` samples ``target``'s spins exactly (an ``IsingTarget``
    with uniform or anisotropic couplings, antiferromagnetic ones on even L), else why not."""
    try:
        wolff_couplings(target)
    except ValueError as exc:
        return str(exc)
    return None


@dataclass
class WolffResult:
    """Output of ``wolff_chains``.

    spins: (n_chains, n_sweeps, L, L) int8, the state after each production sweep (None when a
    ``record`` callback was given); final_spins: (n_chains, L, L) int8; clusters_per_sweep:
    cluster flips per chain per production sweep; mean_cluster_size: mean |C| over the
    production clusters (an estimator of χ' = N⟨m²⟩ for Wolff); spins_per_sweep: mean number
    of spins flipped per chain per production sweep.
    """

    spins: np.ndarray | None
    final_spins: np.ndarray
    clusters_per_sweep: int
    mean_cluster_size: float
    spins_per_sweep: float


def _check_int(x: object, name: str, minimum: int) -> int:
    if isinstance(x, bool) or not isinstance(x, Integral) or int(x) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {x!r}")
    return int(x)


def _neighbours(L: int, n_chains: int) -> np.ndarray:
    """(n_chains·N, 4) flat indices of the right, left, down and up neighbours of every site."""
    i, j = np.divmod(np.arange(L * L), L)
    site = np.stack([i * L + (j + 1) % L, i * L + (j - 1) % L,
                     ((i + 1) % L) * L + j, ((i - 1) % L) * L + j], axis=1)
    off = (np.arange(n_chains) * L * L)[:, None, None]
    return (site[None] + off).reshape(-1, 4)


class _WolffEngine:
    """Vectorised asynchronous Wolff cluster flips on n_chains flat spin arrays."""

    def __init__(self, L: int, K: float, spins: np.ndarray, rng: np.random.Generator, K_y: float) -> None:
        self.N = L * L
        self.C = spins.shape[0]
        self.s = np.ascontiguousarray(spins.reshape(-1), dtype=np.int8).copy()
        self.nbr = _neighbours(L, self.C)
        px, py = -math.expm1(-2.0 * K), -math.expm1(-2.0 * K_y)
        self.p = np.array([px, px, py, py])  # bond probability per neighbour column (right, left, down, up)
        self.isotropic = px == py
        self.rng = rng
        self._mark = np.zeros(self.s.size, dtype=np.int64)

    def run(self, quota: np.ndarray | None = None, min_flipped: int | None = None) -> np.ndarray:
        """Flip ``quota[c]`` clusters in chain c (or, with ``min_flipped``, clusters until at
        least that many spins were flipped in each chain). Returns all cluster sizes."""
        C, N, s, nbr, rng = self.C, self.N, self.s, self.nbr, self.rng
        remaining = None if quota is None else quota.astype(np.int64).copy()
        flipped = np.zeros(C, dtype=np.int64)
        active = np.zeros(C, dtype=bool)
        cur = np.zeros(C, dtype=np.int64)
        sizes: list[np.ndarray] = []
        frontier = np.empty(0, dtype=np.int64)
        chains = np.arange(C)
        while True:
            growing = np.bincount(frontier // N, minlength=C) > 0
            done = active & ~growing
            if done.any():
                sizes.append(cur[done].copy())
                flipped[done] += cur[done]
                active[done] = False
            want = ~active & ((remaining > 0) if remaining is not None else (flipped < min_flipped))
            if want.any():
                idx = chains[want]
                seeds = idx * N + rng.integers(0, N, size=idx.size)
                s[seeds] = -s[seeds]
                frontier = np.concatenate([frontier, seeds])
                active[want] = True
                cur[want] = 1
                if remaining is not None:
                    remaining[want] -= 1
            if frontier.size == 0:
                break
            # Frontier sites are already flipped: a neighbour still carrying the cluster's
            # original spin differs from them; each such bond is tested exactly once.
            cand = nbr[frontier].reshape(-1)
            differ = s[cand] != np.repeat(s[frontier], 4)
            cand = cand[differ]
            p = self.p[0] if self.isotropic else np.tile(self.p, frontier.size)[differ]
            cand = cand[rng.random(cand.size) < p]
            # a site reached through several bonds joins once
            order = np.arange(cand.size)
            self._mark[cand] = order
            cand = cand[self._mark[cand] == order]
            s[cand] = -s[cand]
            cur += np.bincount(cand // N, minlength=C)
            frontier = cand
        return np.concatenate(sizes) if sizes else np.empty(0, dtype=np.int64)


def wolff_chains(L: int, K: float, n_chains: int, n_sweeps: int, n_warmup: int = 20,
                 seed: int | np.random.Generator | None = None, *,
                 record: Callable[[int, np.ndarray], None] | None = None,
                 clusters_per_sweep: int | None = None,
                 init: np.ndarray | None = None, K_y: float | None = None) -> WolffResult:
    """Run ``n_chains`` independent Wolff chains of the L×L torus Ising model at coupling K > 0
    (horizontal bonds; vertical ones K_y > 0, default K).

    Chains start from independent random spins (or ``init``, (n_chains, L, L) of ±1), do
    ``n_warmup`` warm-up sweeps (each ≥ N flipped spins per chain), then ``n_sweeps``
    production sweeps of ``clusters_per_sweep`` cluster flips each (default: round(N / mean
    warm-up cluster size), which needs ``n_warmup >= 1``). After production sweep t the
    state (n_chains, L, L) int8 is passed to ``record(t, spins)`` (a fresh copy) if given, else
    stored in ``result.spins`` (n_chains, n_sweeps, L, L) int8. ``seed``: an int, a numpy
    ``Generator`` (used and advanced) or None; runs are deterministic for a given seed.
    """
    L = _check_int(L, "L", 2)
    if isinstance(K, bool) or not isinstance(K, Real) or not math.isfinite(float(K)):
        raise ValueError(f"K must be a finite real number, got {K!r}")
    K = float(K)
    if K_y is not None and (isinstance(K_y, bool) or not isinstance(K_y, Real) or not math.isfinite(float(K_y))):
        raise ValueError(f"K_y must be a finite real number or None, got {K_y!r}")
    K_y = K if K_y is None else float(K_y)
    if K <= 0.0 or K_y <= 0.0:
        raise ValueError(f"Wolff cluster updates need ferromagnetic couplings (K, K_y > 0); got K = {K}, "
                         f"K_y = {K_y}. For antiferromagnetic couplings on even L use wolff_target_chains "
                         "(the sublattice gauge); frustrated couplings are not supported.")
    n_chains = _check_int(n_chains, "n_chains", 1)
    n_sweeps = _check_int(n_sweeps, "n_sweeps", 0)
    n_warmup = _check_int(n_warmup, "n_warmup", 0)
    if clusters_per_sweep is not None:
        clusters_per_sweep = _check_int(clusters_per_sweep, "clusters_per_sweep", 1)
    elif n_warmup == 0:
        raise ValueError("clusters_per_sweep=None is estimated during warm-up: "
                         "give n_warmup >= 1 or an explicit clusters_per_sweep")
    if record is not None and not callable(record):
        raise ValueError(f"record must be callable or None, got {type(record).__name__}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    N = L * L
    if init is None:
        spins = np.where(rng.random((n_chains, L, L)) < 0.5, -1, 1).astype(np.int8)
    else:
        spins = np.asarray(init)
        if spins.shape != (n_chains, L, L) or not np.all(np.abs(spins) == 1):
            raise ValueError(f"init must be ±1 spins shaped {(n_chains, L, L)}, got shape {spins.shape}")
    eng = _WolffEngine(L, K, spins, rng, K_y)

    warm_sizes = []
    for w in range(n_warmup):
        sz = eng.run(min_flipped=N)
        if w >= n_warmup // 2:
            warm_sizes.append(sz)
    if clusters_per_sweep is None:
        mean_c = float(np.concatenate(warm_sizes).mean())
        clusters_per_sweep = max(1, int(round(N / mean_c)))

    out = None if record is not None else np.empty((n_chains, n_sweeps, L, L), dtype=np.int8)
    quota = np.full(n_chains, clusters_per_sweep)
    total, count = 0, 0
    for t in range(n_sweeps):
        sz = eng.run(quota=quota)
        total += int(sz.sum())
        count += sz.size
        state = eng.s.reshape(n_chains, L, L)
        if record is not None:
            record(t, state.copy())
        else:
            out[:, t] = state
    mean_size = total / count if count else float("nan")
    return WolffResult(spins=out, final_spins=eng.s.reshape(n_chains, L, L).copy(),
                       clusters_per_sweep=clusters_per_sweep, mean_cluster_size=mean_size,
                       spins_per_sweep=total / (n_chains * n_sweeps) if n_sweeps else float("nan"))


def wolff_target_chains(target: "IsingTarget", n_chains: int, n_sweeps: int, n_warmup: int = 20,
                        seed: int | np.random.Generator | None = None, *,
                        record: Callable[[int, np.ndarray], None] | None = None,
                        clusters_per_sweep: int | None = None, init: np.ndarray | None = None) -> WolffResult:
    """``wolff_chains`` for ``target``'s own couplings (``wolff_couplings``: anisotropic, and
    antiferromagnetic on even L through the gauge). ``init``, ``record``'s states and the
    result's spins are the target's spins s = g·σ. ValueError where Wolff does not apply."""
    kx, ky, g = wolff_couplings(target)  # g = 1 for the ferromagnet: the maps below are identities
    gauged = None if record is None else (lambda t, sigma: record(t, sigma * g))
    res = wolff_chains(target.L, kx, n_chains, n_sweeps, n_warmup, seed, record=gauged,
                       clusters_per_sweep=clusters_per_sweep, init=None if init is None else np.asarray(init) * g,
                       K_y=ky)
    res.final_spins = res.final_spins * g
    if res.spins is not None:
        res.spins = res.spins * g
    return res


def spin_series(spins: np.ndarray) -> dict[str, np.ndarray]:
    """Per-configuration moments of ±1 spins shaped (..., L, L), float64 arrays shaped (...):
    ``energy`` = H/N (roll-based, 2N bonds), ``m`` = Σ s/N, ``m2``, ``m4``, ``abs_m``."""
    s = np.asarray(spins, dtype=np.float64)
    if s.ndim < 2 or s.shape[-1] != s.shape[-2] or s.shape[-1] < 2:
        raise ValueError(f"spins must be shaped (..., L, L) with L >= 2, got {s.shape}")
    N = s.shape[-1] * s.shape[-2]
    bonds = (s * (np.roll(s, -1, axis=-1) + np.roll(s, -1, axis=-2))).sum(axis=(-2, -1))
    m = s.sum(axis=(-2, -1)) / N
    return {"energy": -bonds / N, "m": m, "m2": m * m, "m4": m**4, "abs_m": np.abs(m)}


def exact_x_from_spins(target: "IsingTarget", s: torch.Tensor | np.ndarray, generator: torch.Generator | None = None,
                       dtype: torch.dtype | None = None) -> torch.Tensor:
    """Exact samples of the HS field from exact spin samples: x = A s + A^{1/2} ξ, ξ ~ N(0, I).

    x | s ~ N(A s, A) (``docs/conventions.md``), so Boltzmann-distributed s (B, L, L) give
    exact draws from the continuous target p(x) ∝ e^{−E(x)} of ``target`` (an ``IsingTarget``,
    A applied by FFT via ``target.apply_coupling_power``). Returns (B, L, L) on s's device, in
    ``dtype`` (default: s's dtype if floating, else torch's default dtype); ``generator``
    (on that device) draws ξ.
    """
    if isinstance(s, np.ndarray):
        s = torch.from_numpy(np.ascontiguousarray(s))
    if not isinstance(s, torch.Tensor):
        raise ValueError(f"s must be a torch.Tensor or numpy array, got {type(s).__name__}")
    L = target.L
    if s.dim() != 3 or tuple(s.shape[1:]) != (L, L):
        raise ValueError(f"s must be shaped (B, {L}, {L}) for this target, got {tuple(s.shape)}")
    if dtype is None:
        dtype = s.dtype if s.is_floating_point() else torch.get_default_dtype()
    sf = s.to(dtype)
    if not bool(torch.all(sf.abs() == 1)):
        raise ValueError("s must contain only ±1 spins")
    xi = torch.randn(sf.shape, generator=generator, dtype=dtype, device=sf.device)
    return target.apply_coupling_power(sf, 1.0) + target.apply_coupling_power(xi, 0.5)


def exact_x_samples(target: "IsingTarget", n_samples: int, *, n_chains: int = 64, sweep_spacing: int = 2,
                    warmup_sweeps: int = 20, seed: int | list[int] = 0,
                    dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, WolffResult]:
    """``n_samples`` exact draws x ~ p (n_samples, L, L) of an Ising relaxation, on the CPU.

    Spins from ``min(n_chains, n_samples)`` Wolff chains after ``warmup_sweeps`` sweeps, one
    configuration kept every ``sweep_spacing`` sweeps (about 2 τ_int at K_c: nearly independent),
    then x | s ~ N(A s, A) (``exact_x_from_spins``). ``seed`` feeds a numpy SeedSequence (spins and
    Gaussian noise from independent streams). Returns (x, the Wolff run's result). ValueError
    where Wolff does not apply (``wolff_unsupported_reason``).
    """
    n = int(n_samples)
    C = min(int(n_chains), n)
    T = math.ceil(n / C)
    rng_spins, rng_x = np.random.SeedSequence(seed).spawn(2)
    kept: list[np.ndarray] = []

    def record(t: int, spins: np.ndarray) -> None:
        if (t + 1) % sweep_spacing == 0:
            kept.append(spins)

    res = wolff_target_chains(target, C, T * int(sweep_spacing), n_warmup=int(warmup_sweeps),
                              seed=np.random.default_rng(rng_spins), record=record)
    spins = np.stack(kept, axis=1).reshape(-1, target.L, target.L)[:n]
    gen = torch.Generator().manual_seed(int(rng_x.generate_state(1)[0]))
    return exact_x_from_spins(target, spins, generator=gen, dtype=dtype), res

