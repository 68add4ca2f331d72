"""Independence Metropolis with the flow as proposal (exact for any q with full support).

``fold`` (Z2-symmetric targets, ``neuralrg.sampling.fold``): instead of proposals from q_sym (a
forward and an inverse pass each), proposals y ~ q (one forward pass; ln q comes with the sample)
target the folded density p_φ(y) = 2σ(φ(y))·p(y) with weights p̃(y)·2σ(φ(y))/q(y); each kept state
then gets a fresh random global sign, x = ±y, which makes the chain's states draws of p exactly.
"""
from __future__ import annotations

import time
from typing import Any

import torch

from ...flows.model import random_sign
from ...physics.fold import fold_log_weight
from ...physics.importance import pareto_khat
from ...physics.statistics import ess_fraction
from ...physics.target import LatticeTarget
from ..chains import ChainRun, keep_every, observe_fn, sync
from ..fold import folded, validate_fold
from ..metropolis import independence_metropolis
from ..progress import NULL_PROGRESS, Deadline, Progress
from ..registry import Sampler, check_settings

DEFAULTS = dict(n_chains=64, n_warmup=100, n_samples=400, batch_size=4096, max_keep=2048, fold=None)


@torch.no_grad()
def run_flow_metropolis(flow: Any, *, n_chains: int = 64, n_warmup: int = 100, n_samples: int = 500,
                        batch_size: int = 4096, max_keep: int = 2048, fold: Any = None,
                        generator: torch.Generator | None = None, progress: Progress | None = None,
                        max_time: float | None = None) -> ChainRun:
    """C chains, n_warmup + n_samples steps each (the first proposal is the start), log-weights
    ln p̃(x) − ln q(x). ``progress`` hears of every batch of proposals (in steps of all chains);
    ``max_time``: wall seconds of proposals after warm-up, then the chains stop at the last
    complete step (>= 2 kept; ``ChainRun.partial``); under a budget, batches shrink to what the
    remaining time allows (at least one step of all chains), so the overrun is about one step.
    ``fold``: see the module docstring (the plain q is used whatever ``flow.z2`` says; the kept
    latents z then map to ±x, as for a Z2 flow, and log_q is ln q of the unsigned draw)."""
    check_settings(n_chains=n_chains, n_warmup=n_warmup, n_samples=n_samples, batch_size=batch_size,
                   max_keep=max_keep)
    with folded(flow, fold, generator) as w_fold:  # without a fold: any flow with sample_with_latent, L, ...
        return _flow_metropolis(flow, n_chains, n_warmup, n_samples, batch_size, max_keep, w_fold, generator,
                                progress, max_time)


def _flow_metropolis(flow: Any, n_chains: int, n_warmup: int, n_samples: int, batch_size: int, max_keep: int,
                     w_fold: torch.Tensor | None, generator: torch.Generator | None, progress: Progress | None,
                     max_time: float | None) -> ChainRun:
    T = n_warmup + n_samples
    L = flow.L
    sync(flow.latent_levels)
    t0 = time.perf_counter()
    obs_fn = observe_fn(flow.target, generator)
    xs, zs, lqs, lws = [], [], [], []
    prog = progress if progress is not None else NULL_PROGRESS
    deadline = Deadline(max_time)
    warm_draws, drawn, reported = n_chains * n_warmup, 0, 0
    if n_warmup:
        prog.start("warm-up", n_warmup)
    else:
        prog.start("sampling", n_samples)
        deadline.begin()
    per_draw = None  # seconds per proposal, from the last batch
    while drawn < n_chains * T:
        # batches never split at the warm-up boundary: without a time budget the random stream
        # (and so every number) is the same with or without progress reporting
        b = min(n_chains * T - drawn, batch_size)
        left = deadline.remaining()
        if left is not None and per_draw is not None:  # under a budget: what fits, >= one step of all chains
            b = min(b, max(n_chains, int(left / per_draw) // n_chains * n_chains))
        tb = time.perf_counter()
        z, x, lq = flow.sample_with_latent(b, generator=generator)
        lw_b = flow.target.log_prob(x) - lq
        if w_fold is not None:
            lw_b = lw_b + fold_log_weight(x, w_fold)
        xs.append(x), zs.append(z), lqs.append(lq), lws.append(lw_b)
        if max_time is not None:
            sync(lq)
            per_draw = (time.perf_counter() - tb) / b
        drawn += b
        steps_done = drawn // n_chains
        if n_warmup and drawn - b < warm_draws <= drawn:  # this batch ends warm-up (and may sample on)
            prog.update(n_warmup - reported)
            prog.finish()
            prog.start("sampling", n_samples)
            deadline.begin()
            reported = n_warmup
        prog.update(steps_done - reported)
        reported = steps_done
        if steps_done >= n_warmup + 2 and deadline.expired():
            break
    requested, partial = n_samples, drawn < n_chains * T
    if partial:  # stopped by the time budget: keep the complete steps
        T = drawn // n_chains
        n_samples = T - n_warmup
        xs, zs, lqs, lws = ([torch.cat(v)[: n_chains * T]] for v in (xs, zs, lqs, lws))
    prog.finish(f"stopped at the time budget after {n_samples}/{requested} steps" if partial else "")
    # proposal t of chain c is draw t·C + c
    x_all = torch.cat(xs).reshape(T, n_chains, L, L).transpose(0, 1)  # (C, T, L, L)
    z_all = torch.cat(zs).reshape(T, n_chains, L, L).transpose(0, 1)
    lq_all = torch.cat(lqs).reshape(T, n_chains).T
    lw = torch.cat(lws).reshape(T, n_chains).T
    idx, acc = independence_metropolis(lw, generator)
    idx = idx[:, n_warmup:]
    chain_x = torch.gather(x_all, 1, idx[:, :, None, None].expand(-1, -1, L, L))
    if w_fold is not None:  # y ~ p_φ, then x = ±y ~ p
        chain_x = random_sign(chain_x.reshape(-1, L, L), generator).reshape(chain_x.shape)
    # observed step-major, whole steps per call: the target's observables see the C chains of one
    # step side by side (the replica overlap pairs chain 2i with chain 2i+1 at the same step)
    step_major = chain_x.transpose(0, 1)  # (T, C, L, L)
    steps_per_call = max(1, batch_size // n_chains)
    obs: dict[str, list[torch.Tensor]] = {}
    for i in range(0, n_samples, steps_per_call):
        for k, v in obs_fn(step_major[i:i + steps_per_call].reshape(-1, L, L)).items():
            obs.setdefault(k, []).append(v)
    observables = {k: torch.cat(v).reshape(n_samples, n_chains).T for k, v in obs.items()}
    sync(lw)
    wall = time.perf_counter() - t0
    keep = keep_every(n_samples, n_chains, max_keep)
    kept_steps = torch.arange(0, n_samples, keep, device=idx.device)
    sel = idx[:, kept_steps].T  # (T_kept, C): step-major
    rows = torch.arange(n_chains, device=sel.device)[None, :]
    kx = step_major[kept_steps].reshape(-1, L, L)[:max_keep]  # signed, as observed
    kz = z_all[rows, sel].reshape(-1, L, L)[:max_keep]
    klq = lq_all[rows, sel].reshape(-1)[:max_keep]
    return ChainRun("flow_metropolis", observables, kx, kz, klq, flow.target.energy(kx),
                    float(acc[:, n_warmup:].to(torch.float64).mean()), wall / T, wall,
                    dict(n_chains=n_chains, n_warmup=n_warmup, n_samples=requested,
                         ess_fraction=ess_fraction(lw.flatten()), khat=pareto_khat(lw.flatten()),
                         fold=None if w_fold is None else w_fold.tolist()),
                    start=x_all[:, 0], partial=partial)


def _run(flow: Any, target: LatticeTarget, s: dict[str, Any], generator: torch.Generator | None, *,
         progress: Progress | None = None, max_time: float | None = None) -> ChainRun:
    return run_flow_metropolis(flow, generator=generator, progress=progress, max_time=max_time, **s)


SAMPLER = Sampler("flow_metropolis", _run, DEFAULTS,
                  "independence Metropolis with flow proposals, weights p̃(x)/q(x)", validate=validate_fold)
