"""Parallel tempering (replica exchange) of physical HMC: the baseline a spin-glass user compares to.

Tempering: replica k samples p_k(x) ∝ exp(−E(x)/T_k), the target's energy E (the HS relaxation
for Ising targets) divided by T_k, on a geometric ladder T_k = t_max^{k/(n−1)}, k = 0 … n−1
(T_0 = 1 is the target; ``n_temperatures`` = 1 is plain HMC). This tempers the relaxation's
energy, not the Ising couplings: at T_k > 1 both the Gaussian and the ln cosh part are flattened
(barriers lowered by 1/T_k), and the swap acceptance needs only E of the two states.

One step, for every one of the ``n_chains`` independent PT runs: one HMC trajectory of every
replica (n_leapfrog leapfrog steps, identity mass, a step size per temperature adapted by dual
averaging during warm-up, then frozen), then replica-exchange attempts between neighbouring
temperatures (k, k+1), even k on even steps and odd k on odd steps, accepted with
min(1, exp[(1/T_k − 1/T_{k+1})(E(x_k) − E(x_{k+1}))]). Observables, kept configurations and
acceptances are those of the T = 1 replica; ``settings`` record the ladder, the frozen step sizes,
the per-temperature HMC acceptance and the swap acceptance rate of every neighbouring pair.
Independent PT runs are independent chains, so glass targets pair runs 2i and 2i+1 as replicas
for the overlap q.

Chains start from flow samples when a flow is given, else from x = A s + A^{1/2} ξ with random
spins s (targets with ``apply_coupling_power``) or from N(0, I).
"""
from __future__ import annotations

import math
import time
from typing import Any

import torch

from ...physics.target import LatticeTarget
from ..chains import ChainRun, physical_outputs, sync, thinned_observer
from ..hmc import DualAveraging, kinetic_energy
from ..progress import NULL_PROGRESS, Deadline, Progress
from ..registry import Sampler, check_settings

Tensor = torch.Tensor

DEFAULTS = dict(n_chains=32, n_warmup=200, n_samples=500, n_temperatures=8, t_max=4.0, n_leapfrog=10,
                step_size=0.1, target_accept=0.8, max_keep=2048)


def check_pt_settings(s: dict[str, Any]) -> None:
    """Common value checks plus n_temperatures (int >= 1) and t_max (finite, >= 1; > 1 when
    n_temperatures > 1); ValueError naming the key."""
    check_settings(**s)
    n = s.get("n_temperatures")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n_temperatures must be an integer >= 1, got {n!r}")
    t = s.get("t_max")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 1 or (n > 1 and t == 1):
        raise ValueError(f"t_max (highest temperature of the ladder, T_0 = 1) must be a finite number "
                         f"{'> 1' if n > 1 else '>= 1'}, got {t!r}")


def temperature_ladder(n_temperatures: int, t_max: float) -> list[float]:
    """Geometric ladder T_k = t_max^{k/(n−1)}, k = 0 … n−1 (T_0 = 1; [1.0] for n = 1)."""
    if n_temperatures == 1:
        return [1.0]
    return [float(t_max) ** (k / (n_temperatures - 1)) for k in range(n_temperatures)]


def _initial_state(flow: Any, target: LatticeTarget, n: int, dtype: torch.dtype, device: torch.device,
                   generator: torch.Generator | None) -> Tensor:
    if flow is not None:
        with torch.no_grad():
            return flow.sample(n, generator=generator)[0]
    shape = (n, *target.shape)
    xi = torch.randn(shape, generator=generator, dtype=dtype, device=device)
    power = getattr(target, "apply_coupling_power", None)
    if not callable(power):
        return xi
    s = torch.where(torch.rand(shape, generator=generator, dtype=dtype, device=device) < 0.5, -1.0, 1.0).to(dtype)
    return power(s, 1.0) + power(xi, 0.5)


@torch.no_grad()
def run_parallel_tempering(flow: Any, target: LatticeTarget | None = None, *, n_chains: int = 32,
                           n_warmup: int = 200, n_samples: int = 500, n_temperatures: int = 8, t_max: float = 4.0,
                           n_leapfrog: int = 10, step_size: float = 0.1, target_accept: float = 0.8,
                           max_keep: int = 2048, generator: torch.Generator | None = None,
                           dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                           progress: Progress | None = None, max_time: float | None = None) -> ChainRun:
    """``n_chains`` independent PT runs of ``n_temperatures`` HMC replicas each (module docstring).

    ``target`` defaults to the flow's; without a flow, ``dtype`` (default torch's) and ``device``
    (default the generator's, else CPU) set the state. Returns the T = 1 replica's observables
    (C, T), kept x (z = g⁻¹(x) and ln q(x) with a flow, else None), acceptance = mean HMC
    acceptance probability at T = 1; settings hold ``temperatures``, ``step_size`` (per
    temperature), ``hmc_accept`` (per temperature) and ``swap_accept`` (per neighbouring pair).
    ``progress`` hears of every step (stages "warm-up", "sampling"); ``max_time``: wall seconds
    after warm-up, then a clean stop keeping >= 2 steps (``ChainRun.partial``).
    """
    s = dict(n_chains=n_chains, n_warmup=n_warmup, n_samples=n_samples, n_temperatures=n_temperatures,
             t_max=t_max, n_leapfrog=n_leapfrog, step_size=step_size, target_accept=target_accept,
             max_keep=max_keep)
    check_pt_settings(s)
    if target is None:
        if flow is None:
            raise ValueError("parallel_tempering needs a target (or a flow carrying one)")
        target = flow.target
    if flow is not None:
        dtype = dtype if dtype is not None else getattr(flow, "dtype", None)
        device = device if device is not None else getattr(flow, "device", None)
    dtype = dtype or torch.get_default_dtype()
    device = torch.device(device) if device is not None else (
        generator.device if generator is not None else torch.device("cpu"))
    R, C = n_temperatures, n_chains
    temps = temperature_ladder(R, t_max)
    beta = torch.tensor([1.0 / T for T in temps], dtype=dtype, device=device)          # (R,)
    beta_x = beta.repeat_interleave(C).reshape(R * C, 1, 1)

    x0 = _initial_state(flow, target, R * C, dtype, device, generator).to(dtype)
    x = x0.clone()                                        # replica-major: rows k·C … k·C + C−1 at T_k
    E, gE = target.energy(x), target.grad_energy(x)
    eps = [float(step_size)] * R
    duals = [DualAveraging(step_size, target_accept) for _ in range(R)]
    observe, kept = thinned_observer(target, generator, n_samples, C, max_keep)
    obs: dict[str, Tensor] = {}
    acc_sum = torch.zeros(R, dtype=torch.float64, device=device)
    swap_acc = torch.zeros(max(R - 1, 0), dtype=torch.float64, device=device)
    swap_n = torch.zeros(max(R - 1, 0), dtype=torch.float64, device=device)
    prog = progress if progress is not None else NULL_PROGRESS
    deadline = Deadline(max_time)
    n_kept = n_samples
    sync(x)
    t_start = t_warm = time.perf_counter()
    prog.start("warm-up", n_warmup)
    for step in range(n_warmup + n_samples):
        if step == n_warmup:
            eps = [d.final_step_size for d in duals] if n_warmup > 0 else eps
            prog.finish(f"step sizes {', '.join(f'{e:.3g}' for e in eps)}")
            sync(x)
            t_warm = time.perf_counter()
            prog.start("sampling", n_samples)
            deadline.begin()
        # -- one HMC trajectory of every replica on U_k = E / T_k --------------------------------
        e_x = torch.tensor(eps, dtype=dtype, device=device).repeat_interleave(C).reshape(R * C, 1, 1)
        p = torch.randn(x.shape, generator=generator, dtype=dtype, device=device)
        h0 = beta_x.view(-1) * E + kinetic_energy(p)
        x1, p1, g1 = x, p - 0.5 * e_x * beta_x * gE, gE
        E1 = E
        for i in range(n_leapfrog):
            x1 = x1 + e_x * p1
            E1, g1 = target.energy(x1), target.grad_energy(x1)
            p1 = p1 - (e_x if i < n_leapfrog - 1 else 0.5 * e_x) * beta_x * g1
        dH = beta_x.view(-1) * E1 + kinetic_energy(p1) - h0
        a = torch.where(torch.isfinite(dH), torch.exp(torch.clamp(-dH, max=0.0)), torch.zeros_like(dH))
        u = torch.rand(a.shape, generator=generator, dtype=dtype, device=device)
        acc = u < a
        acc_x = acc.reshape(-1, 1, 1)
        x, E, gE = torch.where(acc_x, x1, x), torch.where(acc, E1, E), torch.where(acc_x, g1, gE)
        a_k = a.reshape(R, C)
        if step < n_warmup:
            for k in range(R):
                eps[k] = duals[k].adapt(a_k[k])
        else:
            acc_sum += a_k.to(torch.float64).mean(dim=1)
        # -- replica exchange between neighbouring temperatures ---------------------------------
        if R > 1:
            xs, Es, gs = x.reshape(R, C, *x.shape[1:]), E.reshape(R, C), gE.reshape(R, C, *x.shape[1:])
            ks = torch.arange(step % 2, R - 1, 2, device=device)
            if ks.numel():
                log_r = (beta[ks] - beta[ks + 1])[:, None] * (Es[ks] - Es[ks + 1])       # (P, C)
                u = torch.rand(log_r.shape, generator=generator, dtype=dtype, device=device)
                sw = torch.log(u) < log_r
                if step >= n_warmup:
                    swap_acc[ks] += torch.exp(torch.clamp(log_r, max=0.0)).to(torch.float64).mean(dim=1)
                    swap_n[ks] += 1
                lo, hi = ks, ks + 1
                swb = sw.reshape(*sw.shape, *([1] * (xs.dim() - 2)))
                xs_lo, xs_hi = torch.where(swb, xs[hi], xs[lo]), torch.where(swb, xs[lo], xs[hi])
                gs_lo, gs_hi = torch.where(swb, gs[hi], gs[lo]), torch.where(swb, gs[lo], gs[hi])
                Es_lo, Es_hi = torch.where(sw, Es[hi], Es[lo]), torch.where(sw, Es[lo], Es[hi])
                xs, gs, Es = xs.clone(), gs.clone(), Es.clone()
                xs[lo], xs[hi], gs[lo], gs[hi], Es[lo], Es[hi] = xs_lo, xs_hi, gs_lo, gs_hi, Es_lo, Es_hi
                x, gE, E = xs.reshape(x.shape), gs.reshape(x.shape), Es.reshape(-1)
        if step >= n_warmup:
            with torch.no_grad():
                values = observe(x[:C])
            for name, v in values.items():
                if name not in obs:
                    obs[name] = torch.empty((C, n_samples), dtype=v.dtype, device=v.device)
                obs[name][:, step - n_warmup] = v
            k = step - n_warmup
            if 1 <= k < n_samples - 1 and deadline.expired():
                n_kept = k + 1
                break
        prog.update(1, accept=float(a_k[0].mean()))
    partial = n_kept < n_samples
    if partial:
        obs = {name: v[:, :n_kept] for name, v in obs.items()}
    prog.finish(f"stopped at the time budget after {n_kept}/{n_samples} steps" if partial else "")
    sync(x)
    t_end = time.perf_counter()
    hmc_accept = (acc_sum / n_kept).tolist()
    swap = (swap_acc / swap_n.clamp(min=1)).tolist()
    xk = torch.cat(kept)[:max_keep]
    z, log_q, energy = physical_outputs(flow, target, xk)
    return ChainRun("parallel_tempering", obs, xk, z, log_q, energy, hmc_accept[0], (t_end - t_warm) / n_kept,
                    t_end - t_start,
                    dict(n_chains=n_chains, n_warmup=n_warmup, n_samples=n_samples, n_temperatures=R, t_max=t_max,
                         n_leapfrog=n_leapfrog, target_accept=target_accept, temperatures=temps,
                         step_size=[float(e) for e in eps], hmc_accept=hmc_accept, swap_accept=swap),
                    start=x0[:C], partial=partial)


def _run(flow: Any, target: LatticeTarget, s: dict[str, Any], generator: torch.Generator | None, *,
         progress: Progress | None = None, max_time: float | None = None) -> ChainRun:
    return run_parallel_tempering(flow, target, generator=generator, progress=progress, max_time=max_time, **s)


SAMPLER = Sampler("parallel_tempering", _run, DEFAULTS,
                  "parallel tempering of physical HMC over a geometric ladder of temperatures (E(x)/T_k; "
                  "no flow needed)", needs_flow=False, validate=check_pt_settings)
