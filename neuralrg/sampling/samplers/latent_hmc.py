"""Latent-space HMC (NeuTra): HMC on z with the pulled-back potential U(z) (``latent_potential``),
optionally cycling through blocks of RG levels; samples x = g(z) (±g(z) with Z2 or the sign fold)
are exact draws from p."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ...physics.target import LatticeTarget
from ..chains import ChainRun, latent_outputs, thinned_observer
from ..fold import folded, validate_fold
from ..hmc import run_hmc
from ..latent import latent_potential, latent_to_physical
from ..progress import Progress
from ..registry import Sampler, check_settings

DEFAULTS = dict(n_chains=64, n_warmup=100, n_samples=400, n_leapfrog=10, step_size=0.1, target_accept=0.8,
                max_keep=2048, cuda_graph=False, fold=None, trajectory_length=None)


def level_blocks(flow: Any, block_levels: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Bool masks (L, L), one per block, of the latent sites whose RG level is in that block.

    ``block_levels`` is a non-empty list of non-empty lists of levels in [0, flow.n_levels − 1],
    e.g. [[3, 4], [0, 1, 2]]; a level may be left out (its latents then never move).
    """
    if isinstance(block_levels, (str, bytes)) or not isinstance(block_levels, Sequence) or not block_levels:
        raise ValueError(f"block_levels must be a non-empty list of lists of RG levels, got {block_levels!r}")
    masks = []
    for lv in block_levels:
        ok = isinstance(lv, Sequence) and not isinstance(lv, (str, bytes)) and len(lv) > 0 and all(
            isinstance(k, int) and not isinstance(k, bool) and 0 <= k < flow.n_levels for k in lv)
        if not ok:
            raise ValueError(f"block_levels entries must be non-empty lists of integer levels in "
                             f"[0, {flow.n_levels - 1}], got {lv!r}")
        masks.append(torch.isin(flow.latent_levels, torch.tensor(list(lv), device=flow.latent_levels.device)))
    return masks


def run_latent_hmc(flow: Any, *, n_chains: int = 64, n_warmup: int = 100, n_samples: int = 500,
                   step_size: float = 0.2, n_leapfrog: int = 10, target_accept: float = 0.8,
                   block_levels: Sequence[Sequence[int]] | None = None, max_keep: int = 2048,
                   generator: torch.Generator | None = None, progress: Progress | None = None,
                   max_time: float | None = None, cuda_graph: bool = False, fold: Any = None,
                   trajectory_length: float | None = None) -> ChainRun:
    """HMC on z with U(z), chains started from N(0, I); ``progress`` / ``max_time`` as in ``run_hmc``.

    ``block_levels`` e.g. [[3, 4], [0, 1, 2]] cycles through blocks of RG levels (one HMC
    move per block, each with its own adapted step size, the rest held fixed); None or []
    moves all latents at once. The flow's parameters are frozen during the run. ``cuda_graph``:
    on a CUDA device the potential and its gradient replay one captured CUDA graph (one launch
    instead of hundreds; ``hmc.cuda_graphed``); no effect elsewhere. Off by default until its
    speed and values are measured on a GPU (``tests/test_cuda.py``, ``benchmarks/gpu_cuda_graph.sh``).
    ``fold`` (``neuralrg.sampling.fold``): HMC on the pull-back of the sign-folded p_φ through the
    plain q (one flow pass per gradient instead of q_sym's two); kept states get a random sign and
    ``log_q`` is the plain q's. ``trajectory_length``: ⌈T/ε⌉ leapfrog steps a move instead of
    ``n_leapfrog`` (``run_hmc``); the settings record the count each block ended with.
    """
    check_settings(n_chains=n_chains, n_warmup=n_warmup, n_samples=n_samples, step_size=step_size,
                   n_leapfrog=n_leapfrog, target_accept=target_accept, max_keep=max_keep, cuda_graph=cuda_graph,
                   trajectory_length=trajectory_length)
    blocks = level_blocks(flow, block_levels) if block_levels else None
    z0 = torch.randn((n_chains, flow.L, flow.L), dtype=flow.dtype, device=flow.device, generator=generator)
    with folded(flow, fold, generator) as w_fold, flow.frozen():  # gradients w.r.t. z only
        signed = flow.z2 or w_fold is not None
        observe, kept = thinned_observer(flow.target, generator, n_samples, n_chains, max_keep,
                                         lambda z: latent_to_physical(flow, z, generator, signed))
        res = run_hmc(latent_potential(flow, w_fold), z0, n_warmup=n_warmup, n_samples=n_samples,
                      step_size=step_size, n_leapfrog=n_leapfrog, target_accept=target_accept, blocks=blocks,
                      observe=observe, generator=generator, progress=progress, max_time=max_time,
                      cuda_graph=cuda_graph, trajectory_length=trajectory_length)
        z = torch.cat(kept)[:max_keep]
        x, log_q, energy = latent_outputs(flow, z, generator, signed)
    name = "blocked_latent_hmc" if blocks else "latent_hmc"
    return ChainRun(name, dict(res.observables), x, z, log_q, energy,
                    float(res.mean_accept.mean()), res.sampling_time / res.n_kept,
                    res.warmup_time + res.sampling_time,
                    dict(n_chains=n_chains, n_warmup=n_warmup, n_samples=n_samples, n_leapfrog=n_leapfrog,
                         trajectory_length=trajectory_length, leapfrog_per_block=list(res.n_leapfrog),
                         target_accept=target_accept, step_size=[float(s) for s in res.step_size],
                         block_levels=[list(b) for b in block_levels] if blocks else None,
                         accept_per_block=[float(a) for a in res.mean_accept],
                         fold=None if w_fold is None else w_fold.tolist()),
                    start=z0, partial=res.partial)


def _run(flow: Any, target: LatticeTarget, s: dict[str, Any], generator: torch.Generator | None, *,
         progress: Progress | None = None, max_time: float | None = None) -> ChainRun:
    return run_latent_hmc(flow, generator=generator, progress=progress, max_time=max_time, **s)


SAMPLER = Sampler("latent_hmc", _run, DEFAULTS,
                  "HMC on the flow's latent variables z (all RG levels at once); x = g(z) exact draws from p",
                  validate=validate_fold)
