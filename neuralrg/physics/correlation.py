"""Two-point function and second-moment correlation length of a real field on the L×L torus.

Conventions: fields φ are shaped (B, L, L), N = L². G(r) = (1/N) Σ_y φ_y φ_{y+r} (the full,
not connected, correlator; r taken mod L), and its Fourier transform
Ĝ(p) = Σ_r G(r) e^{−ip·r} = |φ̃(p)|² / N with φ̃(p) = Σ_y φ_y e^{−ip·y}; so Ĝ(0) = N M² with
M = Σ_y φ_y / N. The second-moment correlation length is

    ξ² = (Ĝ(0) / Ĝ(p_min) − 1) / (4 sin²(π/L)),   p_min = (2π/L, 0),

Ĝ(p_min) averaged over the two lattice axes. It is exact for a lattice propagator
Ĝ(p) ∝ 1 / (ξ⁻² + Σ_μ 4 sin²(p_μ/2)).
"""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["two_point_function", "momentum_moments", "correlation_length_from_moments",
           "second_moment_correlation_length"]


def _check_field(x: torch.Tensor) -> int:
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != x.shape[-2] or x.shape[-1] < 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a tensor shaped (B, L, L) with L >= 2, got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"x must have a floating dtype, got {x.dtype}")
    return x.shape[-1]


def two_point_function(x: torch.Tensor) -> torch.Tensor:
    """Per-sample G(r) = (1/N) Σ_y φ_y φ_{y+r}, shaped (B, L, L) (index r = (r_0, r_1)), by FFT;
    dtype and device of x."""
    L = _check_field(x)
    f = torch.fft.rfft2(x)
    return torch.fft.irfft2(f.real**2 + f.imag**2, s=(L, L)) / (L * L)


def momentum_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (Ĝ(0), Ĝ(p_min)), each (B,): Ĝ(0) = N M², Ĝ(p_min) = |φ̃(p_min)|²/N averaged over
    p_min = (2π/L, 0) and (0, 2π/L)."""
    L = _check_field(x)
    f = torch.fft.rfft2(x)
    p2 = f.real**2 + f.imag**2
    return p2[:, 0, 0] / (L * L), 0.5 * (p2[:, 1, 0] + p2[:, 0, 1]) / (L * L)


def correlation_length_from_moments(g0: float | np.ndarray, g_pmin: float | np.ndarray, L: int
                                     ) -> float | np.ndarray:
    """ξ from Ĝ(0) and Ĝ(p_min) (floats or ndarrays, elementwise): sqrt of the second-moment ξ²
    (module docstring); nan where ξ² < 0 or Ĝ(p_min) <= 0. Returns a float for scalar input."""
    g0, gp = np.asarray(g0, dtype=np.float64), np.asarray(g_pmin, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        xi2 = (g0 / gp - 1.0) / (4.0 * math.sin(math.pi / L) ** 2)
        xi = np.where((gp > 0) & (xi2 >= 0), np.sqrt(np.abs(xi2)), np.nan)
    return float(xi) if xi.ndim == 0 else xi


def second_moment_correlation_length(G_mean: torch.Tensor | np.ndarray) -> float:
    """Second-moment ξ (module docstring) of an ensemble-mean two-point function G(r), (L, L)."""
    G = G_mean.detach().to("cpu", torch.float64).numpy() if isinstance(G_mean, torch.Tensor) \
        else np.asarray(G_mean, dtype=np.float64)
    if G.ndim != 2 or G.shape[0] != G.shape[1] or G.shape[0] < 2:
        raise ValueError(f"G_mean must be shaped (L, L) with L >= 2, got {G.shape}")
    Gp = np.fft.fft2(G).real
    return correlation_length_from_moments(Gp[0, 0], 0.5 * (Gp[1, 0] + Gp[0, 1]), G.shape[0])
