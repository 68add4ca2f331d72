"""Figures shared by training, sampling and analysis (matplotlib, Agg backend, no GUI)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def _np(a: torch.Tensor | np.ndarray) -> np.ndarray:
    return a.detach().to("cpu", torch.float64).numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def plot_configurations(x: torch.Tensor, *, title: str = "samples", n: int = 8,
                        spins: bool = False) -> plt.Figure:
    """Up to ``n`` configurations (B, L, L) side by side; continuous fields in a diverging map."""
    a = _np(x)[:n]
    fig, axes = plt.subplots(1, len(a), figsize=(1.6 * len(a), 1.9), squeeze=False)
    vmax = 1.0 if spins else max(1e-9, float(np.abs(a).max()))
    for ax, c in zip(axes[0], a):
        ax.imshow(c, cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_latent_levels(z: torch.Tensor, levels: torch.Tensor, *, title: str = "latents per RG level"
                       ) -> plt.Figure:
    """One latent configuration z (L, L) split by RG level: panel k shows only level-k sites."""
    zz, lv = _np(z), _np(levels).astype(int)
    n_levels = int(lv.max()) + 1
    fig, axes = plt.subplots(1, n_levels, figsize=(1.8 * n_levels, 2.0), squeeze=False)
    vmax = max(1e-9, float(np.abs(zz).max()))
    for k, ax in enumerate(axes[0]):
        img = np.where(lv == k, zz, np.nan)
        ax.imshow(img, cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
        ax.set_title(f"level {k} ({int((lv == k).sum())})", fontsize=8)
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_traces(series: dict[str, np.ndarray], *, max_chains: int = 4, acf: dict[str, np.ndarray] | None = None
                ) -> plt.Figure:
    """Trace plots (C, T) of a few chains per observable, and their autocorrelation if given."""
    names = list(series)
    cols = 2 if acf else 1
    fig, axes = plt.subplots(len(names), cols, figsize=(5 * cols, 1.8 * len(names)), squeeze=False)
    for r, name in enumerate(names):
        s = np.atleast_2d(series[name])
        for c in range(min(max_chains, s.shape[0])):
            axes[r][0].plot(s[c], lw=0.6)
        axes[r][0].set_ylabel(name, fontsize=8)
        if acf:
            axes[r][1].plot(acf[name], lw=0.8)
            axes[r][1].axhline(0, color="k", lw=0.5)
            axes[r][1].set_ylabel(f"ACF {name}", fontsize=8)
    axes[-1][0].set_xlabel("trajectory")
    fig.tight_layout()
    return fig


def save_figure(fig: plt.Figure, path: str | Path, dpi: int = 110) -> Path:
    """Save and close a figure; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


