"""Statistics of the latent variables z = g⁻¹(x) of exact samples x ~ p, organised by RG level.

Conventions: fields are (M, L, L) on the L×L torus; ``levels`` (L, L) long is the flow's
``latent_levels`` (0 = finest; level k sits on sites whose coordinates are multiples of
d = 2^k, not both multiples of 2d, except the top level). Moments are pooled over the sites of
a level and over samples, and use population (ddof = 0) moments: variance m₂, skewness
m₃/m₂^{3/2}, excess kurtosis m₄/m₂² − 3. MI in nats.

Same-level neighbours: two level-k latents are neighbours when they lie at lattice distance
d = 2^k along one axis (periodic), both being level-k sites, i.e. nearest neighbours on the
spacing-d sub-grid where the intermediate site (if any) belongs to a coarser level. This
includes the pairs inside one decimator plaquette ((d, 0)–(d, d), (0, d)–(d, d) relative to
its corner) and across plaquette boundaries. A level whose sub-grid is a single site (the top
level at full depth) has no neighbours.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from .mutual_information import mutual_information, neighbour_pairs

MI_METHODS = ("ksg", "gaussian_copula", "gaussian")


def _check_fields(z: torch.Tensor, name: str) -> None:
    if not isinstance(z, torch.Tensor) or z.dim() != 3 or z.shape[-1] != z.shape[-2]:
        shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise ValueError(f"{name} must be a torch.Tensor shaped (M, L, L), got {shape}")
    if not z.is_floating_point():
        raise ValueError(f"{name} must have a floating dtype, got {z.dtype}")


def _check_levels(levels: torch.Tensor, L: int) -> torch.Tensor:
    if not isinstance(levels, torch.Tensor) or tuple(levels.shape) != (L, L) or levels.is_floating_point():
        desc = f"{levels.dtype} {tuple(levels.shape)}" if isinstance(levels, torch.Tensor) else type(levels).__name__
        raise ValueError(f"levels must be an integer tensor shaped ({L}, {L}), got {desc}")
    return levels.to("cpu", torch.long)


@torch.no_grad()
def latents_under_p(flow: Any, x: torch.Tensor, generator: torch.Generator | None = None,
                    batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents of exact samples x ~ p (M, L, L): returns (z, y) with z = g⁻¹(y), y = g(z).

    Plain flow: y = x. Z2-symmetrised flow (x = σ·g(z), σ = ±1): σ is drawn from its
    posterior P(σ | x) = q(σx) / (q(x) + q(−x)) and y = σx, so z has the same law as the
    latent-HMC chain state, N(z)·p(g(z))/q_sym(g(z)); y is x in the flow's sign convention
    (use x itself for Z2-even physics). Float tensors in x's dtype/device.
    """
    _check_fields(x, "x")
    zs, ys = [], []
    for xb in x.split(batch_size):
        xb = xb.to(flow.device, flow.dtype)
        z, ld = flow.inverse_and_log_det(xb)
        if flow.z2:
            zm, ldm = flow.inverse_and_log_det(-xb)
            lq_p = flow.q0.log_prob(z) + ld
            lq_m = flow.q0.log_prob(zm) + ldm
            u = torch.rand(xb.shape[0], dtype=xb.dtype, device=xb.device, generator=generator)
            plus = u < torch.sigmoid(lq_p - lq_m)
            z = torch.where(plus[:, None, None], z, zm)
            xb = torch.where(plus[:, None, None], xb, -xb)
        zs.append(z)
        ys.append(xb)
    return torch.cat(zs), torch.cat(ys)


def moments(values: torch.Tensor | np.ndarray) -> dict[str, float]:
    """Mean, population variance, skewness and excess kurtosis of a 1-D sample (float64)."""
    v = np.asarray(values.detach().cpu().double().numpy() if isinstance(values, torch.Tensor) else values,
                   dtype=np.float64).reshape(-1)
    if v.size < 2:
        raise ValueError(f"values must hold at least 2 numbers, got {v.size}")
    mean = float(v.mean())
    c = v - mean
    m2 = float(np.mean(c ** 2))
    if m2 <= 0:
        return {"n": int(v.size), "mean": mean, "variance": 0.0, "skewness": math.nan, "excess_kurtosis": math.nan}
    return {"n": int(v.size), "mean": mean, "variance": m2, "skewness": float(np.mean(c ** 3)) / m2 ** 1.5,
            "excess_kurtosis": float(np.mean(c ** 4)) / m2 ** 2 - 3.0}


def level_moments(z: torch.Tensor, levels: torch.Tensor) -> list[dict[str, Any]]:
    """Per level k = 0 … max: moments of all level-k latents pooled over sites and samples.

    z (M, L, L); returns [{"level", "spacing" (2^k), "n_sites", "n_values", "mean",
    "variance", "skewness", "excess_kurtosis"}, …].
    """
    _check_fields(z, "z")
    lv = _check_levels(levels, z.shape[-1])
    out = []
    for k in range(int(lv.max()) + 1):
        mask = (lv == k).to(z.device)
        m = moments(z[:, mask])
        out.append({"level": k, "spacing": 2 ** k, "n_sites": int(mask.sum()), "n_values": m.pop("n"), **m})
    return out


def same_level_pairs(z: torch.Tensor, levels: torch.Tensor, level: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled (a, b) values of same-level neighbour pairs (see the module docstring) of ``level``.

    Both directions (right, down) on the spacing-2^level sub-grid, every sample; empty tensors
    when the level has no neighbour pairs.
    """
    _check_fields(z, "z")
    L = z.shape[-1]
    lv = _check_levels(levels, L)
    d = 2 ** int(level)
    if L % d or L // d < 2:
        return z.new_zeros(0), z.new_zeros(0)
    mask = (lv[::d, ::d] == int(level)).to(z.device)
    return neighbour_pairs(z[:, ::d, ::d], mask, spacing=1)


def normal_scores_per_site(z: torch.Tensor) -> torch.Tensor:
    """z (M, H, W) with every site's M values replaced by their normal scores Φ⁻¹(rank / (M + 1)):
    each site's marginal becomes N(0, 1); the dependence between sites (their copula) is kept."""
    M = z.shape[0]
    flat = z.reshape(M, -1).double()
    ranks = flat.argsort(dim=0).argsort(dim=0).to(torch.float64) + 1.0
    return torch.special.ndtri(ranks / (M + 1)).reshape(z.shape).to(z.dtype)


def pair_statistics(a: torch.Tensor, b: torch.Tensor, methods: Sequence[str] = ("ksg", "gaussian_copula"),
                    ksg_k: int = 3, max_samples: int | None = 4000, seed: int = 0,
                    scored: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, Any]:
    """Pearson correlation and MI (nats, one entry per method) of pooled pairs (a, b).

    ``scored``: the same pairs in per-site normal scores (``normal_scores_per_site``), used by
    the copula-invariant estimators (ksg, gaussian_copula); the correlation and the Gaussian MI
    use (a, b). Returns {"n_pairs", "correlation", "mi": {method: value}}; correlation and MI
    are None when there are fewer than 10 pairs.
    """
    bad = [m for m in methods if m not in MI_METHODS]
    if bad or not methods:
        raise ValueError(f"methods must be a non-empty list from {MI_METHODS}, got {list(methods)}")
    n = int(a.numel())
    if n < 10:
        return {"n_pairs": n, "correlation": None, "mi": {m: None for m in methods}}
    a64, b64 = a.detach().double().reshape(-1), b.detach().double().reshape(-1)
    ac, bc = a64 - a64.mean(), b64 - b64.mean()
    denom = float(ac.square().mean().sqrt() * bc.square().mean().sqrt())
    corr = float((ac * bc).mean()) / denom if denom > 0 else math.nan
    mi = {}
    for m in methods:
        kw = dict(k=ksg_k, max_samples=max_samples, generator_seed=seed) if m == "ksg" else {}
        u, v = (a64, b64) if scored is None or m == "gaussian" else (scored[0].double().reshape(-1),
                                                                     scored[1].double().reshape(-1))
        mi[m] = mutual_information(u, v, method=m, **kw)
    return {"n_pairs": n, "correlation": corr, "mi": mi}


def level_pair_statistics(z: torch.Tensor, levels: torch.Tensor, **kw: Any) -> list[dict[str, Any]]:
    """``pair_statistics`` of the same-level neighbours of every level; keywords as there.

    The KSG and copula MI use each site's normal scores (``normal_scores_per_site``): the sites of
    one level are not identically distributed (the three Haar details of a plaquette; a 2-site
    sub-grid is seen both ways round), and pooling pairs of differently distributed variables
    creates dependence in the pooled cloud (a "+" shape: zero correlation, positive KSG MI) that
    no single pair has. Per-site scores remove that artefact and keep every pair's own copula.
    """
    lv = _check_levels(levels, z.shape[-1])
    zs = normal_scores_per_site(z)
    out = []
    for k in range(int(lv.max()) + 1):
        a, b = same_level_pairs(z, lv, k)
        out.append({"level": k, "distance": 2 ** k,
                    **pair_statistics(a, b, scored=same_level_pairs(zs, lv, k), **kw)})
    return out


def physical_pair_statistics(x: torch.Tensor, distances: Sequence[int], **kw: Any) -> list[dict[str, Any]]:
    """``pair_statistics`` of physical variables x_i, x_{i+r·ê} (both axes) for each distance r < L."""
    _check_fields(x, "x")
    out = []
    for r in distances:
        if not 1 <= int(r) < x.shape[-1]:
            raise ValueError(f"distances must lie in [1, L - 1] = [1, {x.shape[-1] - 1}], got {r}")
        a, b = neighbour_pairs(x, spacing=int(r))
        out.append({"distance": int(r), **pair_statistics(a, b, **kw)})
    return out


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    d = math.sqrt(float((a * a).mean() * (b * b).mean()))
    return float((a * b).mean()) / d if d > 0 else math.nan


def _r2(features: np.ndarray, y: np.ndarray) -> float:
    """R² of the least-squares fit y ≈ c + features·w (features (M, F))."""
    X = np.column_stack([np.ones(len(y)), features])
    w, *_ = np.linalg.lstsq(X, y, rcond=None)
    res = y - X @ w
    var = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float((res ** 2).sum()) / var if var > 0 else math.nan


def coarse_latent_correlations(z: torch.Tensor, m: torch.Tensor | np.ndarray, e: torch.Tensor | np.ndarray,
                               levels: torch.Tensor, n_top_levels: int = 2, max_sites: int = 16) -> dict[str, Any]:
    """What the coarsest latents encode: correlations with m and the energy per site.

    z (M, L, L) latents of configurations y = g(z) (``latents_under_p``: y is the physical x,
    sign-aligned for Z2 flows); m (M,) and e (M,) the order parameter and energy per site of
    each y (the target's ``observables(y)["m"]`` and ``["energy"]``; improved estimators for Ising). For each of the ``n_top_levels``
    coarsest levels and each of its first ``max_sites`` sites (row-major): corr(z, m),
    corr(|z|, |m|), corr(z, e), corr(|z|, e). m is Z2-odd and e even: under the Z2-symmetric p
    the sign of corr(z, m) is a convention of the flow (|corr| is what matters) and the energy
    shows up in |z| rather than z. Also R² of m linearly on the coarse latents, and of e on
    (z, z²) of the coarse latents.
    """
    _check_fields(z, "z")
    lv = _check_levels(levels, z.shape[-1])
    m = np.asarray(m.detach().cpu().double() if isinstance(m, torch.Tensor) else m, dtype=np.float64)
    e = np.asarray(e.detach().cpu().double() if isinstance(e, torch.Tensor) else e, dtype=np.float64)
    if m.shape != (z.shape[0],) or e.shape != (z.shape[0],):
        raise ValueError(f"m and e must be shaped ({z.shape[0]},) like z's samples, got {m.shape} and {e.shape}")
    zz = z.detach().cpu().double().numpy()
    top = int(lv.max())
    per_level, feats = [], []
    for k in range(top, max(-1, top - int(n_top_levels)), -1):
        sites = (lv == k).nonzero().tolist()[: int(max_sites)]
        rows = []
        for i, j in sites:
            v = zz[:, i, j]
            feats.append(v)
            rows.append({"site": [i, j], "corr_m": _corr(v, m), "corr_abs_m": _corr(np.abs(v), np.abs(m)),
                         "corr_energy": _corr(v, e), "corr_abs_energy": _corr(np.abs(v), e)})
        per_level.append({
            "level": k, "sites": rows,
            "max_abs_corr_m": max(abs(r["corr_m"]) for r in rows),
            "max_abs_corr_abs_m": max(abs(r["corr_abs_m"]) for r in rows),
            "max_abs_corr_energy": max(max(abs(r["corr_energy"]), abs(r["corr_abs_energy"])) for r in rows),
        })
    F = np.column_stack(feats)
    return {"levels": per_level, "r2_m_linear": _r2(F, m), "r2_energy_quadratic": _r2(np.hstack([F, F ** 2]), e),
            "n_samples": int(len(m)), "m_mean_abs": float(np.abs(m).mean()), "energy_mean": float(e.mean()),
            "note": "m and e: the target's per-site observables of the physical field x in the flow's sign "
                    "convention (x for a plain flow, sigma*x for a Z2 flow; = g(z) of the whole flow, preconditioner "
                    "included, not A^{-1/2}x); Ising: E[m|x] = mean tanh x, E[H|x]/N; sign of corr(z, m) is a "
                    "Z2 convention"}
