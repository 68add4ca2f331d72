"""Flow-proposal independence Metropolis interleaved with k physical-HMC trajectories.

One step (per chain): one independence-Metropolis move with a fresh flow proposal x' ~ q
(q_sym and a random global sign when the flow is Z2), accepted with min(1, w(x')/w(x)),
w = p̃/q; then ``k`` HMC trajectories on x with E(x) and the target's gradient. Each move leaves
p invariant, so the chain is exact; the global move decorrelates across modes, the local
trajectories repair what the flow gets wrong. k = 0 is pure flow Metropolis. The HMC step size
is adapted by dual averaging during warm-up, then frozen. After HMC moves x the current weight
needs ln q(x): one inverse pass (two with Z2) per step.

``fold`` (``neuralrg.sampling.fold``): the chains run on y targeting the sign-folded p_φ(y) =
2σ(φ(y))·p(y) with the plain q: proposals y' ~ q (one forward pass), HMC on E(y) − ln 2σ(φ(y)),
one inverse pass per step for ln q(y); each observed and kept state gets a fresh random global
sign, x = ±y, a draw of p. Half the flow passes of q_sym's step.

``run_mh_hmc`` is the shared driver (also used by ``latent_hmc_flow_mh``): any state space, any
potential, any independence proposal with its log-weights.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ...flows.model import random_sign
from ...physics.target import LatticeTarget
from ..chains import ChainRun, physical_outputs, sync, thinned_observer
from ..fold import folded, validate_fold
from ..hmc import DualAveraging, hmc_step, n_leapfrog_for
from ..latent import physical_potential_and_grad
from ..progress import NULL_PROGRESS, Deadline, Progress
from ..registry import Sampler, check_settings

Tensor = torch.Tensor

DEFAULTS = dict(n_chains=64, n_warmup=100, n_samples=400, k=2, n_leapfrog=10, step_size=0.1, target_accept=0.8,
                max_keep=2048, fold=None, trajectory_length=None)


def check_hybrid_settings(s: dict[str, Any]) -> None:
    """Common value checks, k (an integer >= 0) and ``fold``; ValueError naming the key."""
    check_settings(**s)
    k = s.get("k")
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k (HMC trajectories per flow-Metropolis move) must be an integer >= 0, got {k!r}")
    validate_fold(s)


@dataclass
class MHHMCResult:
    """Output of ``run_mh_hmc``: observables name -> (C, T); mh_accept (C,) acceptance rate of
    the global moves after warm-up; hmc_accept: mean HMC acceptance probability after warm-up
    (nan for k = 0); step_size: the frozen HMC step size; times in wall seconds; x_final (C, ...);
    n_kept: recorded steps T (< n_samples when ``partial``: stopped by ``max_time``); n_leapfrog:
    leapfrog steps a trajectory after warm-up (``n_leapfrog_for`` at the frozen step size)."""

    observables: dict[str, Tensor]
    mh_accept: Tensor
    hmc_accept: float
    step_size: float
    warmup_time: float
    sampling_time: float
    x_final: Tensor
    n_kept: int = 0
    partial: bool = False
    n_leapfrog: int = 0

    def chain_run(self, name: str, x: Tensor, z: Tensor | None, log_q: Tensor | None, energy: Tensor,
                  start: Tensor, settings: dict[str, Any]) -> ChainRun:
        """The ``ChainRun`` of this run: acceptance = the global moves' rate; ``settings`` gain
        step_size, flow_mh_accept, hmc_accept and leapfrog_per_block ([n_leapfrog]: one block, the
        key the HMC samplers use)."""
        mh = float(self.mh_accept.mean())
        return ChainRun(name, self.observables, x, z, log_q, energy, mh, self.sampling_time / self.n_kept,
                        self.warmup_time + self.sampling_time,
                        {**settings, "step_size": self.step_size, "flow_mh_accept": mh,
                         "hmc_accept": self.hmc_accept, "leapfrog_per_block": [self.n_leapfrog]},
                        start=start, partial=self.partial)


def run_mh_hmc(x0: Tensor, potential_and_grad: Callable[[Tensor], tuple[Tensor, Tensor]],
               log_weight: Callable[[Tensor, Tensor], Tensor],
               propose: Callable[[int], tuple[Tensor, Tensor, Tensor, Tensor]], *, k: int, n_warmup: int,
               n_samples: int, n_leapfrog: int, step_size: float, target_accept: float,
               observe: Callable[[Tensor], dict[str, Tensor]], generator: torch.Generator | None = None,
               progress: Progress | None = None, max_time: float | None = None,
               trajectory_length: float | None = None) -> MHHMCResult:
    """C chains on states x (C, *event) targeting π ∝ exp(−U), U = ``potential_and_grad(x)[0]``.

    A step is one independence-Metropolis move, then ``k`` HMC trajectories (``hmc_step``).
    ``propose(C) -> (x', U(x'), ∇U(x'), ln w(x'))`` draws independent proposals from a density
    Q with ln w = −U − ln Q + const; ``log_weight(x, U) -> ln w(x)`` (same constant) for states
    that HMC moved. The move accepts iff u < w(x')/w(x) (a non-finite ln w(x') is a rejection;
    a chain at a non-finite ln w(x) leaves at the first finite proposal). n_warmup steps adapt
    the step size (dual averaging on every trajectory's mean acceptance probability) and are
    discarded; then ``observe(x)`` is recorded after each of the n_samples steps. ``progress``
    hears of every step; ``max_time`` (wall seconds after warm-up) stops early, keeping >= 2 steps.
    ``trajectory_length`` T: ⌈T/ε⌉ leapfrog steps a trajectory instead of ``n_leapfrog`` (``run_hmc``).
    """
    x = x0.detach().clone()
    C, dev = x.shape[0], x.device
    eps = float(step_size)
    dual = DualAveraging(eps, target_accept) if k > 0 else None
    sync(x)
    t_start = time.perf_counter()
    U, grad = potential_and_grad(x)
    lw = log_weight(x, U)
    neg_inf = torch.full_like(lw, -torch.inf)
    lw = torch.where(torch.isfinite(lw), lw, neg_inf)
    obs: dict[str, Tensor] = {}
    n_mh = torch.zeros(C, dtype=torch.long, device=dev)
    hmc_acc_sum, t_warm = torch.zeros((), dtype=x.dtype, device=dev), t_start
    prog, report = progress if progress is not None else NULL_PROGRESS, progress is not None
    deadline = Deadline(max_time)
    n_kept = n_samples
    if n_warmup:
        prog.start("warm-up", n_warmup)

    for step in range(n_warmup + n_samples):
        if step == n_warmup:
            if dual is not None:
                eps = dual.final_step_size
            if n_warmup:
                prog.finish(f"step size {eps:.4g}")
            prog.start("sampling", n_samples)
            sync(x)
            t_warm = time.perf_counter()
            deadline.begin()
        xp, Up, gp, lwp = propose(C)
        log_u = torch.log(torch.rand(C, dtype=lw.dtype, device=dev, generator=generator))
        acc = torch.isfinite(lwp) & (log_u < lwp - lw)
        acc_x = acc.reshape((C,) + (1,) * (x.dim() - 1))
        x, grad = torch.where(acc_x, xp, x), torch.where(acc_x, gp, grad)
        U, lw = torch.where(acc, Up, U), torch.where(acc, lwp, lw)
        if step >= n_warmup:
            n_mh += acc
        for _ in range(k):
            n = n_leapfrog_for(trajectory_length, eps, n_leapfrog)
            x, U, grad, a, _ = hmc_step(x, U, grad, potential_and_grad, eps, n, generator=generator)
            if step < n_warmup:
                eps = dual.adapt(a)
            else:
                hmc_acc_sum = hmc_acc_sum + a.mean()
        if k > 0:
            lw = log_weight(x, U)
            lw = torch.where(torch.isfinite(lw), lw, neg_inf)
        if step >= n_warmup:
            with torch.no_grad():
                values = observe(x)
            for name, v in values.items():
                if name not in obs:
                    obs[name] = torch.empty((C, n_samples), dtype=v.dtype, device=v.device)
                obs[name][:, step - n_warmup] = v
        if report:
            t = max(step - n_warmup + 1, 0)
            prog.update(1, accept=float(n_mh.to(torch.float64).mean()) / t if t else float(acc.double().mean()),
                        step_size=eps)
        t = step - n_warmup
        if 1 <= t < n_samples - 1 and deadline.expired():
            n_kept = t + 1
            obs = {name: v[:, :n_kept] for name, v in obs.items()}
            break
    sync(x)
    t_end = time.perf_counter()
    partial = n_kept < n_samples
    prog.finish(f"stopped at the time budget after {n_kept}/{n_samples} steps" if partial
                else f"flow-MH acceptance {float(n_mh.to(torch.float64).mean()) / n_samples:.3f}")
    return MHHMCResult(obs, n_mh.to(torch.float64) / n_kept,
                       float(hmc_acc_sum) / (k * n_kept) if k > 0 else float("nan"), eps,
                       t_warm - t_start, t_end - t_warm, x, n_kept=n_kept, partial=partial,
                       n_leapfrog=n_leapfrog_for(trajectory_length, eps, n_leapfrog))


def run_hybrid(flow: Any, target: LatticeTarget | None = None, *, n_chains: int = 64, n_warmup: int = 100,
               n_samples: int = 400, k: int = 2, n_leapfrog: int = 10, step_size: float = 0.1,
               target_accept: float = 0.8, max_keep: int = 2048, fold: Any = None,
               generator: torch.Generator | None = None, progress: Progress | None = None,
               max_time: float | None = None, trajectory_length: float | None = None) -> ChainRun:
    """Flow-Metropolis moves + k physical-HMC trajectories per step (module docstring); chains
    start from flow samples. ``target`` defaults to the flow's. ``ChainRun.accept`` is the
    flow-Metropolis acceptance rate; settings hold it (``flow_mh_accept``) and the HMC acceptance
    probability (``hmc_accept``) separately. Kept z = g⁻¹(x), log_q = ln q(x) (q_sym for Z2; with
    ``fold`` the plain q of the unsigned state, and x = ±g(z)). ``trajectory_length`` as in ``run_mh_hmc``."""
    s = dict(n_chains=n_chains, n_warmup=n_warmup, n_samples=n_samples, k=k, n_leapfrog=n_leapfrog,
             step_size=step_size, target_accept=target_accept, max_keep=max_keep, trajectory_length=trajectory_length)
    check_hybrid_settings(s)
    target = target if target is not None else flow.target
    with folded(flow, fold, generator) as w_fold:
        pg = physical_potential_and_grad(target, w_fold)

        def propose(C: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
            with torch.no_grad():
                _, x, log_q = flow.sample_with_latent(C, generator=generator)
            U, g = pg(x)
            return x, U, g, -U - log_q

        def log_weight(x: Tensor, U: Tensor) -> Tensor:
            with torch.no_grad():
                return -U - flow.log_prob(x)  # q_sym when flow.z2 (never with the fold)

        with torch.no_grad():
            x0 = flow.sample(n_chains, generator=generator)[0]
        to_physical = (lambda y: random_sign(y, generator)) if w_fold is not None else (lambda x: x)
        observe, kept = thinned_observer(target, generator, n_samples, n_chains, max_keep, to_physical)
        res = run_mh_hmc(x0, pg, log_weight, propose, k=k, n_warmup=n_warmup, n_samples=n_samples,
                         n_leapfrog=n_leapfrog, step_size=step_size, target_accept=target_accept,
                         observe=observe, generator=generator, progress=progress, max_time=max_time,
                         trajectory_length=trajectory_length)
        y = torch.cat(kept)[:max_keep]
        z, log_q, energy = physical_outputs(flow, target, y)  # E is even: E(±y) = E(y)
    return res.chain_run("hybrid", to_physical(y), z, log_q, energy, x0,
                         dict(n_chains=n_chains, n_warmup=n_warmup, n_samples=n_samples, k=k,
                              n_leapfrog=n_leapfrog, trajectory_length=trajectory_length,
                              target_accept=target_accept, fold=None if w_fold is None else w_fold.tolist()))


def _run(flow: Any, target: LatticeTarget, s: dict[str, Any], generator: torch.Generator | None, *,
         progress: Progress | None = None, max_time: float | None = None) -> ChainRun:
    return run_hybrid(flow, target, generator=generator, progress=progress, max_time=max_time, **s)


SAMPLER = Sampler("hybrid", _run, DEFAULTS,
                  "flow-proposal independence Metropolis interleaved with k physical-HMC trajectories per step",
                  validate=check_hybrid_settings)
