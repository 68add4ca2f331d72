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
