"""Potentials for HMC: latent space of a flow (NeuTra) and physical space of the target.

Latent HMC samples z from π(z) ∝ exp(−U(z)) and returns x = g(z), exact draws from p:

* plain flow: U(z) = E(g(z)) − ln|det ∂g/∂z|  (= −[ln N(z) + ln p̃(x) − ln q(x)] + const);
* Z2-symmetrised flow: U(z) = E(x) + ln q_sym(x) − ln N(z), x = g(z), and the returned sample
  is s·x with a fresh random sign s = ±1. Exact because p̃ and q_sym are even: the density of
  g(z) is q·p̃/q_sym, and symmetrising it over the sign gives p̃.

Totals over the lattice, natural log; z and x shaped (C, L, L).
"""
from __future__ import annotations

from typing import Callable

import torch

from ..flows.model import NeuralRGFlow, random_sign
from ..physics.target import LatticeTarget


def latent_potential(flow: NeuralRGFlow) -> Callable[[torch.Tensor], torch.Tensor]:
    """U(z) for latent-space HMC with ``flow`` (Z2 handled as described above), shape (C,)."""
    target = flow.target

    def potential(z: torch.Tensor) -> torch.Tensor:
        x, log_det = flow.forward_and_log_det(z)
        u = target.energy(x) - log_det
        if flow.z2:  # + ln q_sym(x) − ln q(x)
            log_q, log_q_sym = flow.forward_densities(z, x, log_det)
            u = u + log_q_sym - log_q
        return u

    return potential


def physical_potential_and_grad(target: LatticeTarget) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """(E(x), ∇E(x)) with the target's gradient (analytic where it has one)."""

    def fn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return target.energy(x), target.grad_energy(x)

    return fn


@torch.no_grad()
def latent_to_physical(flow: NeuralRGFlow, z: torch.Tensor, generator: torch.Generator | None = None
                       ) -> torch.Tensor:
    """x = g(z) for a batch of latent states; with Z2 a random global sign per sample."""
    x = flow.forward(z)
    return random_sign(x, generator) if flow.z2 else x


MASSES = ("identity", "level")


def level_step_scales(flow: NeuralRGFlow, z: torch.Tensor, bounds: tuple[float, float] = (0.1, 10.0),
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-site step scales (L, L) for latent HMC with a diagonal mass matrix per RG level.

    For each level k: s_k = c_k^(−1/2), clamped to ``bounds``, where c_k is the mean diagonal of
    the Hessian of U over the chains' states z (C, L, L) and the level's sites, estimated by
    Hutchinson's v ⊙ (H v) with one Rademacher v per chain (one Hessian-vector product). A perfect
    flow has c_k = 1 on every level; a stiffer level gets a smaller step, a softer one a larger. HMC
    on w = z/s with identity mass is HMC on z with mass diag(1/s²): exact for any fixed s.
    """
    zz = z.detach().clone().requires_grad_(True)
    v = torch.randint(0, 2, z.shape, generator=generator, device=z.device).to(z.dtype) * 2 - 1
    with torch.enable_grad():
        (g,) = torch.autograd.grad(latent_potential(flow)(zz).sum(), zz, create_graph=True)
        (hv,) = torch.autograd.grad((g * v).sum(), zz)
    diag = (v * hv).detach()
    levels = flow.latent_levels.to(z.device)
    scales = torch.ones(levels.shape, dtype=z.dtype, device=z.device)
    for k in range(int(levels.max()) + 1):
        mask = levels == k
        c = diag[:, mask].mean()
        s = c.clamp_min(1e-12).rsqrt() if torch.isfinite(c) else torch.ones((), dtype=z.dtype, device=z.device)
        scales[mask] = s.clamp(*bounds)
    return scales
