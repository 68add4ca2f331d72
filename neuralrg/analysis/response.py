"""Response maps of the generative map x = g(z): Jacobian columns ∂x/∂z_j and their size.

``jacobian_columns`` uses forward-mode AD (``torch.func.jvp``, one pass per batch of
columns). ``causal_cone`` derives from the layer structure which sites x can depend on z_j:
in generative order (top level first) every plaquette layer couples the 4 sites of each of its
plaquettes, so a plaquette touching the current support adds all its sites. For a level-k
latent this is its decimator plaquette of spacing 2^k, then the disentangler of level k, then
the decimator and disentangler(s) of every finer level; outside the cone ∂x/∂z_j is exactly 0.

Radius of a response r_i = ∂x_i/∂z_j, with weights w_i = r_i² on the torus: the centre c is
the circular mean of each coordinate, c = (L/2π)·arg Σ_i w_i e^{2πi·i/L}; distances are
minimum-image Euclidean distances to c (lattice units). ``radius_rms`` = (Σ w d² / Σ w)^{1/2},
``radius_90`` the smallest d with Σ_{d_i ≤ d} w_i ≥ 0.9 Σ w. ``radius_rms_offsite`` is the RMS
radius with the latent's own site removed from the weights (for near-identity flows the
diagonal ∂x_j/∂z_j dominates w and hides how far the induced changes reach). For a MERA the
radii grow like 2^k until the cone wraps around the torus ("saturated").

For a flow that ends with the fixed ``GaussianPreconditioner`` (x = A^{1/2} y), responses and
cones are by default those of the learned hierarchy's output y: the fixed, non-local A^{1/2} is
left out, so "x" above means y there. ``physical=True`` measures ∂x/∂z_j of the physical
field instead (A^{1/2} included; no causal cone then, as A^{1/2} couples every site). The
fixed Haar skeleton (``skeleton="haar"``) mixes only within decimator plaquettes, so the
cones are unchanged by it.

Growth factor: b from the least-squares fit log2 r_k = a + k log2 b over ``fit_levels`` = the
levels 0 … min(2, top − 1) (the top latent is a zero mode, not a local response); the fit over
the unsaturated levels (cone smaller than the torus) is kept as ``growth_factor_rms_unsaturated``.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from ..flows.gauge import SignGauge
from ..flows.precondition import GaussianPreconditioner


def _support_step(mask: torch.Tensor, spacing: int, offset: int) -> torch.Tensor:
    """One plaquette layer on a support mask (L, L): plaquettes touching it join it."""
    d, o = int(spacing), int(offset)
    sub = mask[::d, ::d]
    M = sub.shape[-1]
    if o:
        sub = torch.roll(sub, shifts=(-o, -o), dims=(0, 1))
    plaq = sub.reshape(M // 2, 2, M // 2, 2).any(dim=3).any(dim=1)
    sub = plaq[:, None, :, None].expand(M // 2, 2, M // 2, 2).reshape(M, M)
    if o:
        sub = torch.roll(sub, shifts=(o, o), dims=(0, 1))
    out = mask.clone()
    out[::d, ::d] = sub
    return out


def hierarchy_layers(flow: Any) -> list:
    """The flow's layers in generative order without the trailing fixed Gaussian preconditioner (and the
    sign gauge before it, ``flows.gauge``): the MERA itself."""
    layers = list(flow.flows)
    if layers and isinstance(layers[-1], GaussianPreconditioner):
        layers = layers[:-1]
    return layers[:-1] if layers and isinstance(layers[-1], SignGauge) else layers


def hierarchy_forward(flow: Any, z: torch.Tensor) -> torch.Tensor:
    """z → output of ``hierarchy_layers`` (x, or y = A^{−1/2}x for a preconditioned flow)."""
    for layer in hierarchy_layers(flow):
        z, _ = layer(z)
    return z


def hierarchy_output(flow: Any, x: torch.Tensor) -> torch.Tensor:
    """x (B, L, L) → the MERA's output for it: x back through the fixed output layers (the
    preconditioner, the sign gauge); x itself for a flow without them."""
    for layer in reversed(list(flow.flows)[len(hierarchy_layers(flow)):]):
        x, _ = layer.inverse(x)
    return x


def has_preconditioner(flow: Any) -> bool:
    """Whether the flow ends with the fixed ``GaussianPreconditioner``."""
    layers = list(flow.flows)
    return bool(layers) and isinstance(layers[-1], GaussianPreconditioner)


def _forward(flow: Any, physical: bool):
    return (lambda v: flow.forward_and_log_det(v)[0]) if physical else (lambda v: hierarchy_forward(flow, v))


def causal_cone(flow: Any, site: Sequence[int]) -> torch.Tensor | None:
    """Bool (L, L): the sites x may depend on z[site]; None unless every layer is a plaquette layer."""
    L = flow.L
    i, j = (int(s) for s in site)
    if not (0 <= i < L and 0 <= j < L):
        raise ValueError(f"site must be a pair of coordinates in [0, {L}), got {tuple(site)}")
    mask = torch.zeros(L, L, dtype=torch.bool)
    mask[i, j] = True
    for layer in hierarchy_layers(flow):  # generative order
        if not (hasattr(layer, "spacing") and hasattr(layer, "offset")):
            return None
        mask = _support_step(mask, layer.spacing, layer.offset)
    return mask


def jacobian_columns(flow: Any, z: torch.Tensor, sites: Sequence[Sequence[int]],
                     batch_size: int = 256, physical: bool = False) -> torch.Tensor:
    """∂x/∂z_j at x = g(z) for each site j in ``sites``: shape (len(sites), L, L) (∂y/∂z_j for a
    preconditioned flow unless ``physical``, see the module docstring).

    z: one latent configuration, (L, L) or (1, L, L). Computed with forward-mode AD; the
    result is detached, in the flow's dtype and on its device. Z2 sign flips are not applied.
    """
    L = flow.L
    if not isinstance(z, torch.Tensor) or tuple(z.shape[-2:]) != (L, L) or z.numel() != L * L:
        raise ValueError(f"z must be one latent configuration shaped ({L}, {L}), got "
                         f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")
    if len(sites) == 0:
        raise ValueError("sites must list at least one (i, j) site, got []")
    z0 = z.detach().reshape(L, L).to(flow.device, flow.dtype)
    cols = []
    for start in range(0, len(sites), batch_size):
        chunk = sites[start:start + batch_size]
        tangent = torch.zeros(len(chunk), L, L, dtype=z0.dtype, device=z0.device)
        for b, (i, j) in enumerate(chunk):
            tangent[b, int(i), int(j)] = 1.0
        primal = z0.expand(len(chunk), L, L).contiguous()
        _, dx = torch.func.jvp(_forward(flow, physical), (primal,), (tangent,))
        cols.append(dx.detach())
    return torch.cat(cols)


def response_radius(resp: torch.Tensor, fraction: float = 0.9) -> dict[str, torch.Tensor]:
    """Centre, RMS radius and ``fraction``-radius of responses (..., L, L) (see module docstring)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    L = resp.shape[-1]
    w = resp.detach().double().square().reshape(-1, L, L)
    total = w.sum(dim=(1, 2))
    theta = 2 * math.pi * torch.arange(L, dtype=torch.float64, device=w.device) / L
    wr, wc = w.sum(dim=2), w.sum(dim=1)  # row and column marginals (B, L)

    def circ_mean(marg: torch.Tensor) -> torch.Tensor:
        ang = torch.atan2((marg * torch.sin(theta)).sum(1), (marg * torch.cos(theta)).sum(1))
        return torch.remainder(ang * L / (2 * math.pi), L)

    ci, cj = circ_mean(wr), circ_mean(wc)
    idx = torch.arange(L, dtype=torch.float64, device=w.device)

    def dist(c: torch.Tensor) -> torch.Tensor:
        d = torch.remainder(idx[None, :] - c[:, None], L)
        return torch.minimum(d, L - d)

    d2 = dist(ci)[:, :, None] ** 2 + dist(cj)[:, None, :] ** 2  # (B, L, L)
    rms = torch.sqrt((w * d2).sum(dim=(1, 2)) / total)
    r = d2.reshape(d2.shape[0], -1).sqrt()
    order = torch.argsort(r, dim=1)
    cum = torch.cumsum(torch.gather(w.reshape(w.shape[0], -1), 1, order), dim=1)
    pos = torch.searchsorted(cum, (fraction * total)[:, None] * (1 - 1e-12)).clamp(max=L * L - 1)
    r_frac = torch.gather(torch.gather(r, 1, order), 1, pos).squeeze(1)
    shape = resp.shape[:-2]
    return {"centre": torch.stack([ci, cj], -1).reshape(*shape, 2), "radius_rms": rms.reshape(shape),
            "radius_fraction": r_frac.reshape(shape)}


def central_site(levels: torch.Tensor, level: int) -> tuple[int, int]:
    """The site of ``level`` nearest to the lattice centre (L/2, L/2) (first in row-major order on ties)."""
    L = levels.shape[-1]
    sites = (levels.cpu() == int(level)).nonzero()
    if sites.numel() == 0:
        raise ValueError(f"level must be one of the flow's levels, got {level}")
    d2 = ((sites.double() - L / 2) ** 2).sum(1)
    i, j = sites[int(torch.argmin(d2))].tolist()
    return int(i), int(j)


def _extent(mask: torch.Tensor) -> tuple[int, int]:
    return int(mask.any(dim=1).sum()), int(mask.any(dim=0).sum())


def _nan_stat(fn: Any, values: list[float]) -> float:
    """``fn`` (nanmean/nanstd) without the warning when every value is NaN (delta responses)."""
    v = np.asarray(values, dtype=float)
    return float(fn(v)) if np.isfinite(v).any() else math.nan


def _growth(per_level: list[dict[str, Any]], levels: list[int], key: str) -> float | None:
    ks = np.array(levels, dtype=float)
    rs = np.array([per_level[k][key] for k in levels], dtype=float)
    ok = np.isfinite(rs) & (rs > 1e-9)  # a delta response has radius 0 up to rounding
    if ok.sum() < 2:
        return None
    return float(2.0 ** np.polyfit(ks[ok], np.log2(rs[ok]), 1)[0])


def response_analysis(flow: Any, z: torch.Tensor, n_latents: int = 8, n_configs: int = 4,
                      seed: int = 0, physical: bool = False, max_fit_level: int = 2
                      ) -> tuple[dict[str, Any], torch.Tensor, list[torch.Tensor | None]]:
    """Response maps for one central latent per level at the configuration g(z[0]), and radii
    averaged over ``n_latents`` random latents per level × the first ``n_configs`` configurations.
    ``physical``: responses of x itself (A^{1/2} included; cones None for a preconditioned flow).

    z: latents (M, L, L) of samples of p. Returns (summary, maps (n_levels, L, L), cones): the
    summary has "sites", per-level entries {"level", "site", "radius_rms_mean", "radius_rms_sd",
    "radius_90_mean", "radius_90_sd", "radius_rms_offsite_mean", "radius_rms_offsite_sd",
    "example_radius_rms", "example_radius_90", "n_responses", "cone_sites", "cone_extent"
    [rows, cols], "saturated", "outside_cone_max_abs", "inside_cone_nonzero"}, and the fitted
    growth factors b of radius ∝ b^k (growth_factor_rms, _90, _rms_offsite) over "fit_levels":
    levels 0 … min(``max_fit_level``, top − 1); and growth_factor_rms_unsaturated over
    "fit_levels_unsaturated" (the unsaturated levels below the top, all below the top when
    fewer than two are unsaturated). "space" says what was differentiated ("y" or "x").
    """
    for name, v in (("n_latents", n_latents), ("n_configs", n_configs)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    L = flow.L
    levels = flow.latent_levels.cpu()
    n_levels = int(levels.max()) + 1
    gen = torch.Generator().manual_seed(int(seed))
    sites = [central_site(levels, k) for k in range(n_levels)]
    maps = jacobian_columns(flow, z[0], sites, physical=physical)
    through_a = physical and has_preconditioner(flow)
    cones = [None if through_a else causal_cone(flow, s) for s in sites]
    ex = response_radius(maps)

    n_cfg = min(int(n_configs), z.shape[0])
    batch_sites, batch_level = [], []
    for k in range(n_levels):
        cand = (levels == k).nonzero()
        pick = cand[torch.randperm(cand.shape[0], generator=gen)[: int(n_latents)]].tolist()
        batch_sites += pick
        batch_level += [k] * len(pick)
    radii: dict[str, list[list[float]]] = {key: [[] for _ in range(n_levels)] for key in ("rms", "90", "offsite")}
    idx = torch.tensor(batch_sites)
    for c in range(n_cfg):
        cols = jacobian_columns(flow, z[c], batch_sites, physical=physical)
        rr = response_radius(cols)
        off = cols.clone()
        ii = idx.to(off.device)
        off[torch.arange(len(batch_sites), device=off.device), ii[:, 0], ii[:, 1]] = 0.0
        ro = response_radius(off)["radius_rms"]
        for b, k in enumerate(batch_level):
            radii["rms"][k].append(float(rr["radius_rms"][b]))
            radii["90"][k].append(float(rr["radius_fraction"][b]))
            radii["offsite"][k].append(float(ro[b]))

    per_level = []
    for k in range(n_levels):
        m = maps[k].detach().cpu()
        cone = cones[k]
        entry: dict[str, Any] = {
            "level": k, "site": list(sites[k]),
            "radius_rms_mean": float(np.mean(radii["rms"][k])), "radius_rms_sd": float(np.std(radii["rms"][k])),
            "radius_90_mean": float(np.mean(radii["90"][k])), "radius_90_sd": float(np.std(radii["90"][k])),
            "radius_rms_offsite_mean": _nan_stat(np.nanmean, radii["offsite"][k]),
            "radius_rms_offsite_sd": _nan_stat(np.nanstd, radii["offsite"][k]),
            "example_radius_rms": float(ex["radius_rms"][k]), "example_radius_90": float(ex["radius_fraction"][k]),
            "n_responses": len(radii["rms"][k]),
        }
        if cone is not None:
            rows, cols = _extent(cone)
            entry.update(cone_sites=int(cone.sum()), cone_extent=[rows, cols], saturated=rows == L or cols == L,
                         outside_cone_max_abs=float(m[~cone].abs().max()) if (~cone).any() else 0.0,
                         inside_cone_nonzero=int((m[cone] != 0).sum()))
        per_level.append(entry)

    below_top = [e["level"] for e in per_level if e["level"] < n_levels - 1]
    fit_levels = [k for k in below_top if k <= int(max_fit_level)]
    unsat = [k for k in below_top if per_level[k].get("saturated") is False]
    unsat = unsat if len(unsat) >= 2 else below_top
    growth = {key: _growth(per_level, fit_levels, key + "_mean")
              for key in ("radius_rms", "radius_90", "radius_rms_offsite")}
    space = "x" if through_a or not has_preconditioner(flow) else "y"
    summary = {
        "sites": [list(s) for s in sites], "levels": per_level,
        "growth_factor_rms": growth["radius_rms"], "growth_factor_90": growth["radius_90"],
        "growth_factor_rms_offsite": growth["radius_rms_offsite"],
        "fit_levels": fit_levels, "expected_growth_factor": 2.0,
        "growth_factor_rms_unsaturated": _growth(per_level, unsat, "radius_rms_mean"),
        "fit_levels_unsaturated": unsat,
        "space": space,
        "n_latents": int(n_latents), "n_configs": n_cfg,
        "definition": f"response ∂{space}/∂z_j at x = g(z) (y = A^{{-1/2}}x, the learned hierarchy's output, "
                      "for a preconditioned flow), z from samples of p; radius_rms = RMS minimum-image distance "
                      "from the circular centre weighted by the squared response; radius_90 = radius holding "
                      "90% of it; growth factor b from log2 r = a + k log2 b over fit_levels",
    }
    return summary, maps, cones
