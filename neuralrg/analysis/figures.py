"""Figures of the collective-variable analysis (matplotlib Agg via ``neuralrg.plotting``).

Every function takes the plain data of ``analysis.json`` (plus arrays where noted) and returns
a Figure; ``neuralrg.plotting.save_figure`` writes and closes it.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from ..plotting import plt  # sets the Agg backend first
from matplotlib.colors import SymLogNorm  # noqa: E402


def _num(v: Any) -> float:
    return math.nan if v is None else float(v)


def plot_latent_stats(level_stats: Sequence[dict[str, Any]], z: torch.Tensor, levels: torch.Tensor) -> plt.Figure:
    """Mean, variance and excess kurtosis of z per level, and per-level histograms vs N(0, 1)."""
    ks = [s["level"] for s in level_stats]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
    for ax, key, ref in zip(axes[:3], ("mean", "variance", "excess_kurtosis"), (0.0, 1.0, 0.0)):
        ax.plot(ks, [_num(s[key]) for s in level_stats], "o-")
        ax.axhline(ref, color="k", lw=0.7, ls="--", label="N(0, 1)")
        ax.set_xlabel("RG level k")
        ax.set_title(key.replace("_", " "), fontsize=9)
        ax.set_xticks(ks)
    axes[0].legend(fontsize=7)
    zz = z.detach().cpu().double()
    lv = levels.cpu()
    grid = np.linspace(-4.5, 4.5, 200)
    for k in ks:
        v = zz[:, lv == k].reshape(-1).numpy()
        axes[3].hist(v, bins=60, range=(-4.5, 4.5), density=True, histtype="step", label=f"k = {k}")
    axes[3].plot(grid, np.exp(-0.5 * grid ** 2) / math.sqrt(2 * math.pi), "k--", lw=0.8, label="N(0, 1)")
    axes[3].set_title("latent histograms under p", fontsize=9)
    axes[3].legend(fontsize=6)
    fig.suptitle("latents z = g⁻¹(x), x ~ p, per RG level", fontsize=10)
    fig.tight_layout()
    return fig


def plot_mutual_information(level_pairs: Sequence[dict[str, Any]], physical: Sequence[dict[str, Any]],
                            methods: Sequence[str]) -> plt.Figure:
    """MI and correlation of same-level neighbouring latents vs level, next to physical neighbours."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    ks = [p["level"] for p in level_pairs]
    phys = {p["distance"]: p for p in physical}
    mi_ax = axes[0]
    for i, m in enumerate(methods):
        style = "-" if i == 0 else "--"
        lat = [_num(p["mi"][m]) for p in level_pairs]
        mi_ax.plot(ks, lat, "o" + style, color="C0", label=f"latents, same level ({m})")
        same = [_num(phys[2 ** k]["mi"][m]) if 2 ** k in phys else math.nan for k in ks]
        mi_ax.plot(ks, same, "s" + style, color="C1", label=f"physical x at distance 2^k ({m})")
        if 1 in phys:
            mi_ax.axhline(_num(phys[1]["mi"][m]), color="C3", ls=style, lw=0.9,
                          label=f"physical nearest neighbours ({m})")
    axes[0].axhline(0, color="k", lw=0.5)
    axes[0].set_xlabel("RG level k (neighbour distance 2^k)")
    axes[0].set_ylabel("mutual information [nats]")
    axes[0].legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    axes[1].plot(ks, [_num(p["correlation"]) for p in level_pairs], "o-", color="C0", label="latents, same level")
    axes[1].plot(ks, [_num(phys[2 ** k]["correlation"]) if 2 ** k in phys else math.nan for k in ks], "s-",
                 color="C1", label="physical x at distance 2^k")
    axes[1].axhline(0, color="k", lw=0.5)
    axes[1].set_xlabel("RG level k")
    axes[1].set_ylabel("Pearson correlation")
    axes[1].legend(fontsize=7)
    for ax in axes:
        ax.set_xticks(ks)
    fig.suptitle(f"neighbour dependence under p (primary MI estimator: {methods[0]})", fontsize=10)
    fig.tight_layout()
    return fig


def plot_response_maps(maps: torch.Tensor, cones: Sequence[torch.Tensor | None], response: dict[str, Any]
                       ) -> plt.Figure:
    """One panel per level: ∂x/∂z_j of the central level-k latent j (cross), cone outlined."""
    n = maps.shape[0]
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.9), squeeze=False)
    for k, ax in enumerate(axes[0]):
        m = maps[k].detach().cpu().double().numpy()
        vmax = max(1e-12, float(np.abs(m).max()))
        norm = SymLogNorm(linthresh=1e-3 * vmax, vmin=-vmax, vmax=vmax, base=10)
        im = ax.imshow(m, cmap="RdBu_r", norm=norm, interpolation="nearest")
        if cones[k] is not None and not bool(cones[k].all()):
            ax.contour(cones[k].numpy().astype(float), levels=[0.5], colors="k", linewidths=0.7)
        i, j = response["sites"][k]
        ax.plot([j], [i], "x", color="lime", ms=7, mew=2)
        e = response["levels"][k]
        ax.set_title(f"level {k}: r_rms = {e['radius_rms_mean']:.2f}\nr_90 = {e['radius_90_mean']:.2f}", fontsize=8)
        ax.set_xticks([]), ax.set_yticks([])
    fig.colorbar(im, ax=axes[0][-1], fraction=0.046, pad=0.04).ax.tick_params(labelsize=6)
    g = response.get("growth_factor_rms")
    gtxt = f"{g:.2f}" if g is not None else "n/a"
    fig.suptitle(f"response maps ∂x/∂z_j (symlog colour, own scale per panel, causal cone outlined); "
                 f"fitted radius growth per level: {gtxt}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_landscape(landscape: dict[str, Any], z_top: np.ndarray, m_aligned: np.ndarray) -> plt.Figure:
    """Histogram/KDE and F = −ln ρ of the top latent (with the N(0, 1) parabola), F(m), scatter z_top vs m."""
    top, mag = landscape["top_latent"], landscape["magnetisation"]
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
    e = np.asarray(top["hist"]["edges"])
    axes[0].stairs(top["hist"]["density"], e, fill=True, alpha=0.4, label="histogram")
    axes[0].plot(top["kde"]["grid"], top["kde"]["density"], "C0", label="KDE")
    axes[0].set_xlabel("top latent z_top")
    axes[0].set_title(f"density (BC = {top['bimodality_coefficient']:.2f}, "
                      f"ρ(0)/ρmax = {top['density_ratio_at_zero']:.2f})", fontsize=8)
    axes[0].legend(fontsize=7)
    for ax, d, name in ((axes[1], top, "z_top"), (axes[2], mag, "m = E[m|x]")):
        g = np.asarray(d["kde"]["grid"])
        F = np.array([_num(f) for f in d["kde"]["free_energy"]])
        ax.plot(g, F, "C0", label="−ln ρ (KDE)")
        if name == "z_top":
            ax.plot(g, 0.5 * g ** 2 - np.nanmin(0.5 * g ** 2), "k--", lw=0.8, label="½z² (perfect flow)")
            ax.legend(fontsize=7)
        finite = F[np.isfinite(F)]
        ax.set_ylim(-0.2, min(12.0, float(finite.max()) if finite.size else 12.0) + 0.2)
        ax.set_xlabel(name)
        ax.set_ylabel("free energy [nats]")
        ax.set_title(f"F({name}), BC = {d['bimodality_coefficient']:.2f}", fontsize=8)
    axes[3].plot(z_top, m_aligned, ".", ms=2, alpha=0.4)
    axes[3].set_xlabel("z_top")
    axes[3].set_ylabel("m of g(z)")
    axes[3].set_title("top latent vs magnetisation", fontsize=8)
    fig.suptitle(landscape.get("title", "collective variable landscape under p"), fontsize=10)
    fig.tight_layout()
    return fig


def plot_rg_levels(x: torch.Tensor, z: torch.Tensor, levels: torch.Tensor, maps: torch.Tensor,
                   cones: Sequence[torch.Tensor | None], response: dict[str, Any], *,
                   maps_physical: torch.Tensor | None = None, y_hierarchy: torch.Tensor | None = None
                   ) -> plt.Figure:
    """The RG levels side by side for one configuration (a talk figure).

    Column 0: the configuration x (L, L) (and, for a preconditioned flow, y = A^{−1/2}x below
    it). Column 1 + k: the level-k latents z (L, L) as an image on their 2^k sub-grid (sites of
    other levels blank), then the response map of the central level-k latent (``maps`` (n, L, L),
    cone outlined) and, when given, its response on x (``maps_physical``).
    """
    lv = levels.cpu()
    n = int(lv.max()) + 1
    rows = 2 + (maps_physical is not None)
    fig, axes = plt.subplots(rows, n + 1, figsize=(2.3 * (n + 1), 2.4 * rows), squeeze=False)
    xx = x.detach().cpu().double().numpy()
    vx = max(1e-12, float(np.abs(xx).max()))
    axes[0][0].imshow(xx, cmap="RdBu_r", vmin=-vx, vmax=vx, interpolation="nearest")
    axes[0][0].set_title("configuration x", fontsize=8)
    if y_hierarchy is not None:
        yy = y_hierarchy.detach().cpu().double().numpy()
        vy = max(1e-12, float(np.abs(yy).max()))
        axes[1][0].imshow(yy, cmap="RdBu_r", vmin=-vy, vmax=vy, interpolation="nearest")
        axes[1][0].set_title("y = A^{-1/2} x\n(hierarchy input)", fontsize=8)
    zz = z.detach().cpu().double().numpy()
    space = response.get("space", "x")
    for k in range(n):
        d = 2 ** k  # the top level (k = depth) fills its 2^depth-spaced grid
        sub = np.where(lv.numpy() == k, zz, np.nan)[::d, ::d]
        ax = axes[0][k + 1]
        cmap = plt.get_cmap("RdBu_r").with_extremes(bad="0.8")  # grey: sites of other levels
        ax.imshow(np.ma.masked_invalid(sub), cmap=cmap, vmin=-3, vmax=3, interpolation="nearest")
        ax.set_title(f"latents level {k}" + (" (top)" if k == n - 1 else "") + f"\n{d}-spaced grid, ±3", fontsize=8)
        e = response["levels"][k]
        for row, m_, name in ((1, maps[k], space), (2, None if maps_physical is None else maps_physical[k], "x")):
            if row >= rows or m_ is None:
                continue
            m = m_.detach().cpu().double().numpy()
            vmax = max(1e-12, float(np.abs(m).max()))
            a = axes[row][k + 1]
            a.imshow(m, cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
            if row == 1 and cones[k] is not None and not bool(cones[k].all()):
                a.contour(cones[k].numpy().astype(float), levels=[0.5], colors="k", linewidths=0.7)
            i, j = response["sites"][k]
            a.plot([j], [i], "x", color="lime", ms=6, mew=2)
            a.set_title(f"∂{name}/∂z, level {k}" + (f"\nr_rms = {e['radius_rms_mean']:.2f}" if row == 1 else ""),
                        fontsize=8)
    for row in axes:
        for ax in row:
            ax.set_xticks([]), ax.set_yticks([])
            if not ax.images:
                ax.axis("off")
    g = response.get("growth_factor_rms")
    fig.suptitle("RG levels: configuration, latents per level, response of the central latent "
                 f"(linear colour, own scale per panel); radius growth per level on {space}: "
                 f"{'n/a' if g is None else format(g, '.2f')}", fontsize=9)
    fig.tight_layout()
    return fig
