"""Independence Metropolis with the flow as proposal (exact for any q with full support)."""
from __future__ import annotations

import time
from typing import Any

import torch

from ...physics.importance import pareto_khat
from ...physics.statistics import ess_fraction
from ...physics.target import LatticeTarget
from ..chains import ChainRun, keep_every, observe_fn, sync
from ..metropolis import independence_metropolis
from ..registry import Sampler, check_settings

DEFAULTS = dict(n_chains=64, n_warmup=100, n_samples=400, batch_size=4096, max_keep=2048)


@torch.no_grad()
def run_flow_metropolis(flow: Any, *, n_chains: int = 64, n_warmup: int = 100, n_samples: int = 500,
                        batch_size: int = 4096, max_keep: int = 2048,
                        generator: torch.Generator | None = None) -> ChainRun:
    """C chains, n_warmup + n_samples steps each (the first proposal is the start), log-weights
    ln p̃(x) − ln q(x)."""
    check_settings(n_chains=n_chains, n_warmup=n_warmup, n_samples=n_samples, batch_size=batch_size,
                   max_keep=max_keep)
    T = n_warmup + n_samples
    L = flow.L
    sync(flow.latent_levels)
    t0 = time.perf_counter()
    obs_fn = observe_fn(flow.target, generator)
    xs, zs, lqs, lws = [], [], [], []
    left = n_chains * T
    while left > 0:
        b = min(left, batch_size)
        z, x, lq = flow.sample_with_latent(b, generator=generator)
        xs.append(x), zs.append(z), lqs.append(lq), lws.append(flow.target.log_prob(x) - lq)
        left -= b
    # proposal t of chain c is draw t·C + c
    x_all = torch.cat(xs).reshape(T, n_chains, L, L).transpose(0, 1)  # (C, T, L, L)
    z_all = torch.cat(zs).reshape(T, n_chains, L, L).transpose(0, 1)
    lq_all = torch.cat(lqs).reshape(T, n_chains).T
    lw = torch.cat(lws).reshape(T, n_chains).T
    idx, acc = independence_metropolis(lw, generator)
    idx = idx[:, n_warmup:]
    chain_x = torch.gather(x_all, 1, idx[:, :, None, None].expand(-1, -1, L, L))
    flat = chain_x.reshape(-1, L, L)
    obs: dict[str, list[torch.Tensor]] = {}
    for i in range(0, flat.shape[0], batch_size):
        for k, v in obs_fn(flat[i:i + batch_size]).items():
            obs.setdefault(k, []).append(v)
    observables = {k: torch.cat(v).reshape(n_chains, n_samples) for k, v in obs.items()}
    sync(lw)
    wall = time.perf_counter() - t0
    keep = keep_every(n_samples, n_chains, max_keep)
    sel = idx[:, torch.arange(0, n_samples, keep, device=idx.device)].T  # (T_kept, C): step-major
    rows = torch.arange(n_chains, device=sel.device)[None, :]
    kx = x_all[rows, sel].reshape(-1, L, L)[:max_keep]
    kz = z_all[rows, sel].reshape(-1, L, L)[:max_keep]
    klq = lq_all[rows, sel].reshape(-1)[:max_keep]
    return ChainRun("flow_metropolis", observables, kx, kz, klq, flow.target.energy(kx),
                    float(acc[:, n_warmup:].to(torch.float64).mean()), wall / T, wall,
                    dict(n_chains=n_chains, n_warmup=n_warmup, n_samples=n_samples,
                         ess_fraction=ess_fraction(lw.flatten()), khat=pareto_khat(lw.flatten())),
                    start=x_all[:, 0])


def _run(flow: Any, target: LatticeTarget, s: dict[str, Any], generator: torch.Generator | None) -> ChainRun:
    return run_flow_metropolis(flow, generator=generator, **s)


SAMPLER = Sampler("flow_metropolis", _run, DEFAULTS,
                  "independence Metropolis with flow proposals, weights p̃(x)/q(x)")
