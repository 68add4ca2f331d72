"""Is the flow organised by RG scale? Estimators that say how much of the long-wavelength
physics the coarsest latents carry, and how local / level-resolved the rest is.

Conventions: z (M, L, L) latents of exact samples (``latents.latents_under_p``), ``levels``
(L, L) the flow's ``latent_levels`` (0 finest, max = top); "top k levels" = the k coarsest
levels, features = their latents at every site (row-major; at most ``max_features``).
x (M, L, L) is the physical field in the flow's sign convention (x itself for a plain flow,
σx for a Z2 flow): S(k) is Z2-even, so the structure factor is that of x.

* ``linear_r2``: R² = 1 − SS_res / SS_tot of a least-squares fit with intercept (pooled over
  several targets: Σ SS_res / Σ SS_tot).
* ``r2_top_levels``: R²(m | top k levels), m (M,) the physical magnetisation per sample.
* ``structure_factor_explained``: with x̂(k) = Σ_r x_r e^{−ik·r} and S(k) = ⟨|x̂(k)|²⟩/N, the
  fraction 1 − ⟨|x̂(k) − fit|²⟩ / ⟨|x̂(k)|²⟩ of S(k) explained by the least-squares affine fit on
  the top levels' latents (the denominator is the second moment S itself, not a variance), at
  k = 0 and at the smallest |k| ≠ 0 (the two momenta 2π/L·(1, 0) and (0, 1); their ±k partners
  are complex conjugates), Re and Im pooled.
* ``mi_ratio_per_level``: physical nearest-neighbour MI over the same-level neighbouring-latent
  MI of each level (large = the latents removed the local dependence).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch


def _np(a: torch.Tensor | np.ndarray) -> np.ndarray:
    return np.asarray(a.detach().cpu().double().numpy() if isinstance(a, torch.Tensor) else a, dtype=np.float64)


def _check(z: np.ndarray, levels: np.ndarray) -> None:
    if z.ndim != 3 or z.shape[1] != z.shape[2] or levels.shape != z.shape[1:]:
        raise ValueError(f"z must be (M, L, L) and levels (L, L), got {z.shape} and {levels.shape}")


def _lstsq_fraction(F: np.ndarray, Y: np.ndarray, centred: bool) -> float:
    """1 − Σ SS_res / Σ SS_tot for targets Y (M, T) fitted affinely on F (M, P); SS_tot about the
    mean (R²) if ``centred``, else the raw second moment Σ Y²."""
    X = np.column_stack([np.ones(len(F)), F])
    w, *_ = np.linalg.lstsq(X, Y, rcond=None)
    ss_res = float(((Y - X @ w) ** 2).sum())
    ss_tot = float((((Y - Y.mean(0)) if centred else Y) ** 2).sum())
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else math.nan


def linear_r2(features: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> float:
    """R² of the least-squares fit target ≈ c + features·w; target (M,) or (M, T) (pooled)."""
    F, y = _np(features), _np(target)
    F = F.reshape(len(F), -1)
    y = y.reshape(len(y), -1)
    if len(F) != len(y) or len(y) < F.shape[1] + 2:
        raise ValueError(f"need more samples than features: {len(y)} samples, {F.shape[1]} features")
    return _lstsq_fraction(F, y, centred=True)


def top_level_features(z: torch.Tensor | np.ndarray, levels: torch.Tensor | np.ndarray, n_top_levels: int,
                       max_features: int = 64) -> tuple[np.ndarray, list[int]]:
    """(features (M, F), levels used): the latents of the ``n_top_levels`` coarsest levels, row-major per level."""
    zz, lv = _np(z), np.asarray(_np(levels), dtype=np.int64)
    _check(zz, lv)
    if isinstance(n_top_levels, bool) or int(n_top_levels) < 1:
        raise ValueError(f"n_top_levels must be an integer >= 1, got {n_top_levels!r}")
    top = int(lv.max())
    used = list(range(top, max(-1, top - int(n_top_levels)), -1))
    cols = [zz[:, lv == k] for k in used]  # boolean mask indexing is row-major
    return np.concatenate(cols, axis=1)[:, : int(max_features)], used


def r2_top_levels(z: torch.Tensor | np.ndarray, m: torch.Tensor | np.ndarray,
                  levels: torch.Tensor | np.ndarray, n_top_levels: int, max_features: int = 64) -> float:
    """R²(m | top ``n_top_levels`` levels): linear fit with intercept of m (M,) on their latents."""
    F, _ = top_level_features(z, levels, n_top_levels, max_features)
    return linear_r2(F, m)


def fourier_modes(x: torch.Tensor | np.ndarray, momenta: Sequence[tuple[int, int]]) -> np.ndarray:
    """Re and Im of x̂(k) = Σ_r x_r e^{−ik·r} for k = 2π/L·(p, q) in ``momenta``: (M, 2·len(momenta))."""
    xx = _np(x)
    xf = np.fft.fft2(xx, axes=(1, 2))  # numpy's fft2 is Σ_r x_r e^{−2πi(p r1 + q r2)/L}
    L = xx.shape[-1]
    out = []
    for p, q in momenta:
        v = xf[:, int(p) % L, int(q) % L]
        out += [v.real, v.imag]
    return np.column_stack(out)


def structure_factor_explained(x: torch.Tensor | np.ndarray, z: torch.Tensor | np.ndarray,
                               levels: torch.Tensor | np.ndarray, n_top_levels: int = 2,
                               max_features: int = 64) -> dict[str, Any]:
    """Fraction of S(0) and S(k_min) explained linearly by the top levels' latents (module docstring).

    Returns {"k0": {"S", "fraction"}, "kmin": {"S", "fraction", "momenta"}, "n_top_levels",
    "levels_used", "n_features"}; S(k) = ⟨|x̂(k)|²⟩/N (kmin: averaged over its two momenta).
    """
    xx = _np(x)
    F, used = top_level_features(z, levels, n_top_levels, max_features)
    if xx.shape[0] != F.shape[0]:
        raise ValueError(f"x and z must hold the same samples, got {xx.shape[0]} and {F.shape[0]}")
    if F.shape[0] < F.shape[1] + 2:
        raise ValueError(f"need more samples than features: {F.shape[0]} samples, {F.shape[1]} features")
    N = xx.shape[-1] * xx.shape[-2]
    out: dict[str, Any] = {}
    for name, momenta in (("k0", [(0, 0)]), ("kmin", [(1, 0), (0, 1)])):
        Y = fourier_modes(xx, momenta)
        if name == "k0":
            Y = Y[:, :1]  # x̂(0) is real
        S = float((Y ** 2).sum(1).mean()) / (N * len(momenta))
        out[name] = {"S": S, "fraction": _lstsq_fraction(F, Y, centred=False)}
    out["kmin"]["momenta"] = [[1, 0], [0, 1]]
    out.update(n_top_levels=int(n_top_levels), levels_used=used, n_features=int(F.shape[1]))
    return out


def mi_ratio_per_level(level_pairs: Sequence[dict[str, Any]], physical_nn_mi: float | None, method: str
                       ) -> list[float | None]:
    """Physical nn MI / same-level neighbouring-latent MI per level (None where undefined or MI ≤ 0)."""
    out: list[float | None] = []
    for p in level_pairs:
        v = p["mi"].get(method)
        ok = physical_nn_mi is not None and v is not None and math.isfinite(v) and v > 0
        out.append(float(physical_nn_mi) / float(v) if ok else None)
    return out


def rg_organisation(z: torch.Tensor, x: torch.Tensor, m: torch.Tensor | np.ndarray, levels: torch.Tensor, *,
                    level_pairs: Sequence[dict[str, Any]], physical_pairs: Sequence[dict[str, Any]],
                    method: str, response: dict[str, Any] | None = None,
                    response_physical: dict[str, Any] | None = None, max_features: int = 64) -> dict[str, Any]:
    """The headline RG-organisation numbers in one dict (the ``rg_organisation`` section of analysis.json).

    z, x (M, L, L) latents and physical field (flow sign convention), m (M,) the physical
    magnetisation; level_pairs / physical_pairs: ``latents.level_pair_statistics`` /
    ``physical_pair_statistics`` results; method: the MI estimator to use; response(_physical):
    ``response.response_analysis`` summaries on y (hierarchy output) and x.
    """
    lv = levels.cpu()
    n_levels = int(lv.max()) + 1
    r2 = {f"top{k}": (r2_top_levels(z, m, lv, k, max_features) if k <= n_levels else None) for k in (1, 2)}
    sk = {f"top{k}": (structure_factor_explained(x, z, lv, k, max_features) if k <= n_levels else None)
          for k in (1, 2)}
    nn = next((p for p in physical_pairs if p["distance"] == 1), None)
    phys_mi = nn["mi"].get(method) if nn else None

    def radii(r: dict[str, Any] | None) -> dict[str, Any] | None:
        if r is None:
            return None
        return {"space": r.get("space"), "radius_rms": [e["radius_rms_mean"] for e in r["levels"]],
                "radius_90": [e["radius_90_mean"] for e in r["levels"]], "fit_levels": r["fit_levels"],
                "growth_factor_rms": r["growth_factor_rms"], "growth_factor_90": r["growth_factor_90"]}

    return {
        "r2_m_top_levels": r2,
        "structure_factor_explained": sk,
        "mi": {"method": method, "physical_nn": phys_mi,
               "latent_per_level": [p["mi"].get(method) for p in level_pairs],
               "ratio_physical_nn_over_latent_per_level": mi_ratio_per_level(level_pairs, phys_mi, method)},
        "response_y": radii(response), "response_x": radii(response_physical),
        "note": "m: physical magnetisation per site of x in the flow's sign convention (Ising: E[m|x] = mean "
                "tanh x); R² with intercept; S(k) of x, fraction of the second moment S(k) explained by an "
                "affine fit on the top levels' latents; MI ratio = physical nn MI / same-level latent MI (level k: "
                "latents at distance 2^k); response radii on y = A^{-1/2}x (hierarchy output) and on x",
    }
