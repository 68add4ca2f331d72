"""RG-organisation figures cheap enough for every row of a benchmark table.

``analyze.py`` measures the organisation of a flow on exact samples of p from MCMC (minutes).
Benchmarks that compare model variants at equal training time print, beside gap and ESS:

* R²(m | top 1, 2 levels), as in ``analyze.py``: latents z = g⁻¹(x) of exact samples x ~ p,
  drawn in about a second by Wolff + x | s ~ N(A s, A) where Wolff applies (the Ising
  relaxation, unfrustrated couplings), in the flow's own sign convention (``latents_under_p``:
  a plain flow maps x as it is, so both signs of m enter and the sign of m counts as explained
  when the top latent carries it; a Z2 flow aligns the sign through its posterior).
  Elsewhere the flow's own samples are used and the figure says so: a reverse-KL flow covers
  one sign of m with too little spread, so R² on q is much lower than under p (0.59 against
  0.92 for the same L = 16 flow) and is not comparable with ``analyze.py``.
* the same R² within one sign (``one_sign_r2``): every x mapped with the sign the flow prefers,
  as a Z2 flow would, so only the size of m is left to explain. It is the stricter figure; for a
  plain flow the two differ (L = 16, K_c, 30-minute flows: affine 0.99 vs 0.86, context 0.91 vs
  0.64). Benchmark tables written before 2026-12-04 hold this one-sign figure as ``r2_m_top1``.
* the response-radius growth per level on levels 0–2, a property of the map g alone.

Latent MI needs many more samples of p, so it stays in ``analyze.py``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..physics.observables import order_parameter
from ..physics.wolff import exact_x_samples, wolff_unsupported_reason
from .latents import latents_under_p
from .response import response_analysis
from .rg_organisation import linear_r2, r2_top_levels, top_level_features


def one_sign_r2(flow: Any, x: torch.Tensor, seed: int = 0) -> dict[str, float | None]:
    """{"top1", "top2"}: R²(m | top k levels) within one sign of m, for exact samples x ~ p (M, L, L).

    Each x is mapped with the sign σ drawn from P(σ | x) ∝ q(σx) (``latents_under_p`` of the
    Z2-symmetrised flow), so the sign of m, which a plain flow's top latent may carry, is taken
    out and only the size of m is left to explain. Equal to the plain figure for a Z2 flow; None
    for a target without the Z2 symmetry or a level the flow does not have.
    """
    levels = flow.latent_levels.cpu()
    n_levels = int(levels.max()) + 1
    if not bool(getattr(flow.target, "z2_symmetric", False)):
        return {"top1": None, "top2": None}
    z2 = flow.z2
    flow.z2 = True
    try:
        gen = torch.Generator(device=flow.device).manual_seed(int(seed) + 2)
        with torch.no_grad():
            z, y = latents_under_p(flow, x.to(flow.device, flow.dtype), generator=gen)
    finally:
        flow.z2 = z2
    m = order_parameter(flow.target.observables(y.detach().cpu().double()))
    return {f"top{k}": (r2_top_levels(z.detach().cpu(), m, levels, k) if k <= n_levels else None) for k in (1, 2)}


def _latents_of_p(flow: Any, n_samples: int, seed: int
                  ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float | None]] | None:
    """(z, y, one-sign R²) of exact samples of p in the flow's sign convention, or None without a
    Wolff sampler."""
    target = flow.target
    if wolff_unsupported_reason(target) is not None:
        return None
    x, _ = exact_x_samples(target, n_samples, seed=seed, dtype=flow.dtype)
    x = x.to(flow.device)
    gen = torch.Generator(device=flow.device).manual_seed(int(seed) + 1)
    with torch.no_grad():
        z, y = latents_under_p(flow, x, generator=gen)
    return z, y, one_sign_r2(flow, x, seed)


def default_sample_count(n_sites: int) -> int:
    """Samples for the figures: 2048 at L = 16, fewer on larger lattices (never below 512: an R² on
    the ≤ 4 latents of the top two levels is then still good to about ±0.02)."""
    return int(min(2048, max(512, 2048 * 256 // max(1, int(n_sites)))))


def quick_rg_figures(flow: Any, n_samples: int = 2048, seed: int = 0, n_latents: int = 4,
                     n_configs: int = 2) -> dict[str, Any]:
    """{"r2_m_top1", "r2_m_top2", "r2_m_one_sign_top1", "r2_m_one_sign_top2", "r2_m_cubic_top1",
    "r2_m_cubic_top2", "radius_growth", "radius_space", "samples"} for ``flow``.

    m: the target's per-sample magnetisation estimator (Ising: mean tanh x); R² with intercept
    (``rg_organisation.r2_top_levels``; None where the flow has fewer levels); one_sign: the same
    within one sign of m (``one_sign_r2``; None without exact samples); the cubic R² fits
    on z, z², z³ of the same latents (is m a smooth but nonlinear function of them?); "samples" says
    whether z came from exact samples of p or from the flow; radius_growth: fitted growth factor
    of the rms response radius per level (levels 0–2, on y = A^{-1/2}x where the flow ends with the
    Gaussian preconditioner, else on x; None for a flow with a single level).
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 16:
        raise ValueError(f"n_samples must be an integer >= 16, got {n_samples!r}")
    exact = _latents_of_p(flow, n_samples, seed)
    one_sign: dict[str, float | None] = {"top1": None, "top2": None}
    if exact is not None:
        z, y, one_sign = exact
        samples = f"{n_samples} exact samples of p (Wolff)"
    else:
        gen = torch.Generator(device=flow.device).manual_seed(int(seed))
        with torch.no_grad():
            z = torch.randn(n_samples, flow.L, flow.L, generator=gen, device=flow.device, dtype=flow.dtype)
            y, _ = flow.forward_and_log_det(z)
        samples = f"{n_samples} samples of the flow q (no exact sampler: not comparable with analyze.py)"
    levels = flow.latent_levels.cpu()
    n_levels = int(levels.max()) + 1
    m = order_parameter(flow.target.observables(y.detach().cpu().double()))
    z_cpu = z.detach().cpu()
    r2 = {k: (r2_top_levels(z_cpu, m, levels, k) if k <= n_levels else None) for k in (1, 2)}
    cubic: dict[int, float | None] = {}
    for k in (1, 2):
        F = top_level_features(z_cpu, levels, k)[0] if k <= n_levels else None
        cubic[k] = None if F is None else linear_r2(np.concatenate([F, F ** 2, F ** 3], axis=1), m)
    growth, space = None, None
    if n_levels > 1:
        resp, _, _ = response_analysis(flow, z[:n_configs], n_latents=n_latents, n_configs=n_configs, seed=seed)
        growth, space = resp["growth_factor_rms"], resp["space"]
    return {"r2_m_top1": r2[1], "r2_m_top2": r2[2], "r2_m_one_sign_top1": one_sign["top1"],
            "r2_m_one_sign_top2": one_sign["top2"], "r2_m_cubic_top1": cubic[1], "r2_m_cubic_top2": cubic[2],
            "radius_growth": growth, "radius_space": space, "samples": samples}


def format_rg(rg: dict[str, Any]) -> str:
    """One table cell: "R²(m|top1,2) 0.92/0.92 (one sign 0.86)  growth 2.14 (y)", "(q)" after R² from
    flow samples."""
    def f(v: Any, fmt: str) -> str:
        return "n/a" if v is None else format(v, fmt)
    on_q = " (q)" if "flow q" in str(rg.get("samples", "")) else ""
    one = rg.get("r2_m_one_sign_top1")
    one_s = "" if one is None else f" (one sign {one:.2f})"
    return (f"R²(m|top1,2) {f(rg.get('r2_m_top1'), '.2f')}/{f(rg.get('r2_m_top2'), '.2f')}{on_q}{one_s}  "
            f"growth {f(rg.get('radius_growth'), '.2f')} ({rg.get('radius_space') or '-'})")
