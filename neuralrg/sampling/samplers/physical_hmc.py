"""HMC on x with the target's energy and analytic gradient: the baseline a physicist compares to."""
from __future__ import annotations

from typing import Any

import torch

from ...physics.target import LatticeTarget
from ..chains import ChainRun, physical_outputs, thinned_observer
from ..hmc import run_hmc
from ..latent import physical_potential_and_grad
from ..progress import Progress
from ..registry import Sampler, check_settings
from .latent_hmc import DEFAULTS


def run_physical_hmc(flow: Any, target: LatticeTarget | None = None, *, n_chains: int = 64, n_warmup: int = 100,
                     n_samples: int = 500, step_size: float = 0.2, n_leapfrog: int = 10,
                     target_accept: float = 0.8, max_keep: int = 2048,
                     generator: torch.Generator | None = None, progress: Progress | None = None,
                     max_time: float | None = None, cuda_graph: bool = False,
                     trajectory_length: float | None = None) -> ChainRun:
    """HMC on x with E(x) (``target``, default the flow's); starts from flow samples
    (``progress`` / ``max_time`` / ``cuda_graph`` / ``trajectory_length`` as in ``run_hmc``).

    The kept configurations' latents are z = g⁻¹(x) and log_q = ln q(x) (ln q_sym for Z2).
    """
    check_settings(n_chains=n_chains, n_warmup=n_warmup, n_samples=n_samples, step_size=step_size,
                   n_leapfrog=n_leapfrog, target_accept=target_accept, max_keep=max_keep, cuda_graph=cuda_graph,
                   trajectory_length=trajectory_length)
    target = target if target is not None else flow.target
    with torch.no_grad():
        x0 = flow.sample(n_chains, generator=generator)[0]
    observe, kept = thinned_observer(target, generator, n_samples, n_chains, max_keep)

    res = run_hmc(None, x0, n_warmup=n_warmup, n_samples=n_samples, step_size=step_size, n_leapfrog=n_leapfrog,
                  target_accept=target_accept, observe=observe, generator=generator,
                  grad_fn=physical_potential_and_grad(target), progress=progress, max_time=max_time,
                  cuda_graph=cuda_graph, trajectory_length=trajectory_length)
    x = torch.cat(kept)[:max_keep]
    z, log_q, energy = physical_outputs(flow, target, x)
    return ChainRun("physical_hmc", dict(res.observables), x, z, log_q, energy,
                    float(res.mean_accept.mean()), res.sampling_time / res.n_kept,
                    res.warmup_time + res.sampling_time,
                    dict(n_chains=n_chains, n_warmup=n_warmup, n_samples=n_samples, n_leapfrog=n_leapfrog,
                         trajectory_length=trajectory_length, leapfrog_per_block=list(res.n_leapfrog),
                         target_accept=target_accept, step_size=[float(s) for s in res.step_size]),
                    start=x0, partial=res.partial)


def _run(flow: Any, target: LatticeTarget, s: dict[str, Any], generator: torch.Generator | None, *,
         progress: Progress | None = None, max_time: float | None = None) -> ChainRun:
    return run_physical_hmc(flow, target, generator=generator, progress=progress, max_time=max_time, **s)


SAMPLER = Sampler("physical_hmc", _run, {k: v for k, v in DEFAULTS.items() if k != "fold"},  # no flow to fold
                  "HMC on the physical field x with the target's gradient (started from flow samples)")
