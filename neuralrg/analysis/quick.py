"""RG-organisation figures cheap enough for every row of a benchmark table.

``analyze.py`` measures the organisation of a flow on exact samples of p (minutes of MCMC).
Benchmarks that compare model variants at equal training time print, beside gap and ESS, the
two figures that do not need p: R²(m | top 1, 2 levels) on the flow's own samples (x = g(z),
z ~ N(0, I), so the latents are exact for q; for a flow close to p this approaches the figure
under p) and the response-radius growth per level on levels 0–2 (a property of the map g
alone). Latent MI needs samples of p (under q the latents are independent by construction), so
it is left to ``analyze.py``.
"""
from __future__ import annotations

from typing import Any

import torch

from .response import response_analysis
from .rg_organisation import r2_top_levels


def rg_figures_on_flow_samples(flow: Any, n_samples: int = 2048, seed: int = 0, n_latents: int = 4,
                               n_configs: int = 2) -> dict[str, Any]:
    """{"r2_m_top1", "r2_m_top2", "radius_growth", "radius_space", "samples"} for ``flow``.

    m: the target's per-sample magnetisation estimator (Ising: mean tanh x) of x = g(z); R²
    with intercept (``rg_organisation.r2_top_levels``; None where the flow has fewer levels);
    radius_growth: fitted growth factor of the rms response radius per level (levels 0–2, on
    y = A^{-1/2}x where the flow ends with the Gaussian preconditioner, else on x; None for a
    flow with a single level).
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 16:
        raise ValueError(f"n_samples must be an integer >= 16, got {n_samples!r}")
    gen = torch.Generator(device=flow.device).manual_seed(int(seed))
    with torch.no_grad():
        z = torch.randn(n_samples, flow.L, flow.L, generator=gen, device=flow.device, dtype=flow.dtype)
        x, _ = flow.forward_and_log_det(z)
    levels = flow.latent_levels.cpu()
    n_levels = int(levels.max()) + 1
    m = flow.target.observables(x.detach().cpu().double())["m"]
    z_cpu = z.cpu()
    r2 = {k: (r2_top_levels(z_cpu, m, levels, k) if k <= n_levels else None) for k in (1, 2)}
    growth, space = None, None
    if n_levels > 1:
        resp, _, _ = response_analysis(flow, z[:n_configs], n_latents=n_latents, n_configs=n_configs, seed=seed)
        growth, space = resp["growth_factor_rms"], resp["space"]
    return {"r2_m_top1": r2[1], "r2_m_top2": r2[2], "radius_growth": growth, "radius_space": space,
            "samples": f"{n_samples} samples of the flow q (not of p)"}


def format_rg(rg: dict[str, Any]) -> str:
    """One table cell: "R²(m|top1,2) 0.94/0.94  growth 2.14 (y)"; "n/a" for missing values."""
    def f(v: Any, fmt: str) -> str:
        return "n/a" if v is None else format(v, fmt)
    return (f"R²(m|top1,2) {f(rg.get('r2_m_top1'), '.2f')}/{f(rg.get('r2_m_top2'), '.2f')}  "
            f"growth {f(rg.get('radius_growth'), '.2f')} ({rg.get('radius_space') or '-'})")
