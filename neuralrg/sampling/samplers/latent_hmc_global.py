"""Latent HMC interleaved with flow-Metropolis global moves (sampler ``latent_hmc_flow_mh``).

Chains on z target π(z) ∝ exp(−U(z)) with the latent potential U of ``latent_potential``:
π(z) ∝ N(z; 0, I) · p̃(x)/q(x) at x = g(z) (q → q_sym for a Z2 flow, whose samples are ±g(z)
with a random sign; ``neuralrg.sampling.latent``). Chains start from z ~ N(0, I), i.e. from flow
samples. One step = one global move, then ``k`` latent HMC trajectories. The global move is
an independence proposal z' ~ N(0, I) (x' = g(z'), a fresh flow sample); its Metropolis–Hastings
ratio is

    π(z') N(z) / (π(z) N(z')) = w(x') / w(x),   w = p̃/q (q_sym for Z2) at x = g(z),

the flow-Metropolis ratio. We evaluate ln w(z) = −U(z) + ½|z|² (equal to ln p̃ − ln q up to a
constant, so no extra flow pass is needed). k = 0 is pure flow Metropolis in latent space. With
``fold`` U is the sign-folded potential (``latent_potential``) and w = p̃·2σ(φ)/q.
"""
from __future__ import annotations

from typing import Any

import torch

from ...physics.target import LatticeTarget
from ..chains import ChainRun, latent_outputs, thinned_observer
from ..fold import folded
from ..hmc import cuda_graphed, make_potential_and_grad
from ..latent import latent_potential, latent_to_physical
from ..progress import Progress
from ..registry import Sampler, check_settings
from .hybrid import DEFAULTS as HYBRID_DEFAULTS
from .hybrid import check_hybrid_settings, run_mh_hmc
from .latent_hmc import DEFAULTS as LATENT_DEFAULTS

Tensor = torch.Tensor

DEFAULTS = {**LATENT_DEFAULTS, "k": HYBRID_DEFAULTS["k"]}


def latent_log_weight(z: Tensor, U: Tensor) -> Tensor:
    """ln w at x = g(z) from U(z): −U(z) + ½|z|² (= ln p̃(x) − ln q(x) + const; q_sym for Z2)."""
    return -U + 0.5 * z.reshape(z.shape[0], -1).square().sum(dim=1)


def run_latent_hmc_flow_mh(flow: Any, *, n_chains: int = 64, n_warmup: int = 100, n_samples: int = 400,
                           k: int = 2, n_leapfrog: int = 10, step_size: float = 0.1, target_accept: float = 0.8,
                           max_keep: int = 2048, generator: torch.Generator | None = None,
                           progress: Progress | None = None, max_time: float | None = None,
                           cuda_graph: bool = False, fold: Any = None,
                           trajectory_length: float | None = None) -> ChainRun:
    """Latent HMC with a flow-Metropolis global move before every k trajectories (module
    docstring); ``cuda_graph`` and ``fold`` as in ``run_latent_hmc``. ``ChainRun.accept`` is the global-move
    acceptance rate; settings hold it (``flow_mh_accept``) and the HMC acceptance probability
    (``hmc_accept``). The flow's parameters are frozen during the run. ``trajectory_length`` as in
    ``run_mh_hmc``."""
    s = dict(n_chains=n_chains, n_warmup=n_warmup, n_samples=n_samples, k=k, n_leapfrog=n_leapfrog,
             step_size=step_size, target_accept=target_accept, max_keep=max_keep, trajectory_length=trajectory_length)
    check_hybrid_settings(s)
    check_settings(cuda_graph=cuda_graph)
    shape = (flow.L, flow.L)
    z0 = torch.randn((n_chains, *shape), dtype=flow.dtype, device=flow.device, generator=generator)
    with folded(flow, fold, generator) as w_fold, flow.frozen():
        signed = flow.z2 or w_fold is not None
        observe, kept = thinned_observer(flow.target, generator, n_samples, n_chains, max_keep,
                                         lambda z: latent_to_physical(flow, z, generator, signed))
        pg = make_potential_and_grad(latent_potential(flow, w_fold))

        def propose(C: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
            z = torch.randn((C, *shape), dtype=flow.dtype, device=flow.device, generator=generator)
            U, g = pg(z)
            return z, U, g, latent_log_weight(z, U)

        if cuda_graph:
            pg = cuda_graphed(pg, z0)
        res = run_mh_hmc(z0, pg, latent_log_weight, propose, k=k, n_warmup=n_warmup, n_samples=n_samples,
                         n_leapfrog=n_leapfrog, step_size=step_size, target_accept=target_accept,
                         observe=observe, generator=generator, progress=progress, max_time=max_time,
                         trajectory_length=trajectory_length)
        z = torch.cat(kept)[:max_keep]
        x, log_q, energy = latent_outputs(flow, z, generator, signed)
    return res.chain_run("latent_hmc_flow_mh", x, z, log_q, energy, z0,
                         dict(n_chains=n_chains, n_warmup=n_warmup, n_samples=n_samples, k=k,
                              n_leapfrog=n_leapfrog, trajectory_length=trajectory_length, target_accept=target_accept,
                              fold=None if w_fold is None else w_fold.tolist()))


def _run(flow: Any, target: LatticeTarget, s: dict[str, Any], generator: torch.Generator | None, *,
         progress: Progress | None = None, max_time: float | None = None) -> ChainRun:
    return run_latent_hmc_flow_mh(flow, generator=generator, progress=progress, max_time=max_time, **s)


SAMPLER = Sampler("latent_hmc_flow_mh", _run, DEFAULTS,
                  "latent HMC (k trajectories a step) interleaved with flow-Metropolis global moves z' ~ N(0, I)",
                  validate=check_hybrid_settings)
