"""Potentials for HMC: latent space of a flow (NeuTra) and physical space of the target.

Latent HMC samples z from π(z) ∝ exp(−U(z)) and returns x = g(z), exact draws from p:

* plain flow: U(z) = E(g(z)) − ln|det ∂g/∂z|  (= −[ln N(z) + ln p̃(x) − ln q(x)] + const);
* Z2-symmetrised flow: U(z) = E(x) + ln q_sym(x) − ln N(z), x = g(z), and the returned sample
  is s·x with a fresh random sign s = ±1. Exact because p̃ and q_sym are even: the density of
  g(z) is q·p̃/q_sym, and symmetrising it over the sign gives p̃. Each U costs an inverse pass
  (ln q(−x)) besides the forward one.
* sign fold (``fold`` a weight w, ``neuralrg.sampling.fold``): U(z) = E(y) − ln|det ∂g/∂z| −
  ln 2σ(φ(y)), y = g(z) with the plain q, and the returned sample is ±y with a fresh random sign.
  The density of y is p_φ = 2σ(φ)·p, whose sign-symmetrisation is p; one forward pass per U.

Totals over the lattice, natural log; z and x shaped (C, L, L).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ..flows.model import NeuralRGFlow, random_sign
from ..physics.fold import fold_log_weight, fold_phi
from ..physics.target import LatticeTarget


def latent_potential(flow: NeuralRGFlow, fold: torch.Tensor | None = None, with_state: bool = False
                     ) -> Callable[[torch.Tensor], torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
    """U(z) for latent-space HMC with ``flow``, shape (C,): Z2 and the sign fold ``fold`` (a weight,
    scalar or (L, L); the plain q is then used whatever ``flow.z2`` says) as described above.
    ``with_state``: the callable returns (U, x = g(z)) instead (one flow pass for both)."""
    target = flow.target

    def potential(z: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x, log_det = flow.forward_and_log_det(z)
        u = target.energy(x) - log_det
        if fold is not None:
            u = u - fold_log_weight(x, fold)
        elif flow.z2:  # + ln q_sym(x) − ln q(x)
            log_q, log_q_sym = flow.forward_densities(z, x, log_det)
            u = u + log_q_sym - log_q
        return (u, x) if with_state else u

    return potential


def physical_potential_and_grad(target: LatticeTarget, fold: torch.Tensor | None = None
                                ) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """(E(x), ∇E(x)) with the target's gradient (analytic where it has one). With a sign-fold
    weight ``fold`` (scalar or (L, L)): the potential of p_φ, E(y) − ln 2σ(φ(y)), and its gradient
    ∇E(y) − σ(−φ(y))·w/√N."""
    if fold is None:
        def fn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return target.energy(x), target.grad_energy(x)
        return fn

    def folded_fn(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        phi = fold_phi(y, fold)
        dphi = (fold / math.sqrt(y.shape[-2] * y.shape[-1])).expand_as(y[0])
        grad = target.grad_energy(y) - torch.sigmoid(-phi)[:, None, None] * dphi
        return target.energy(y) - fold_log_weight(y, fold), grad

    return folded_fn


@torch.no_grad()
def latent_to_physical(flow: NeuralRGFlow, z: torch.Tensor, generator: torch.Generator | None = None,
                       signed: bool | None = None) -> torch.Tensor:
    """x = g(z) for a batch of latent states, with a random global sign per sample if ``signed``
    (default: ``flow.z2``; the sign fold needs it too)."""
    x = flow.forward(z)
    return random_sign(x, generator) if (flow.z2 if signed is None else signed) else x
