"""Running the samplers on a trained flow and turning chains into physics with error bars.

Every sampler returns a ``ChainRun``: observables shaped (C, T) (C chains, T kept steps) of the
improved estimators (``neuralrg.observables.conditional_moments``) plus |m| from sampled
spins, a thinned set of configurations, acceptance and timing. ``summarize_run`` adds error
bars from τ_int (Sokal window), τ_int in trajectories and in seconds, ESS per second, and
deviations from the exact solution in standard errors.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..physics.exact import exact_solution
from ..flows.model import NeuralRGFlow
from ..physics.observables import conditional_moments, sample_spins, spin_moments, summarize_observables
from ..physics.statistics import ess_fraction, integrated_autocorr_time
from .hmc import run_hmc
from .latent import latent_potential, latent_to_physical, physical_potential_and_grad, random_sign
from .metropolis import independence_metropolis

SAMPLERS = ("latent_hmc", "blocked_latent_hmc", "physical_hmc", "flow_metropolis")


@dataclass
class ChainRun:
    """What one sampler produced.

    observables: name -> (C, T) per-site moments (energy, energy2, m, m2, m4, abs_m) of the
    T kept steps of C chains. x (M, L, L): kept configurations, every k-th step of all chains
    (M ≤ ``max_keep``, ordered step-major: sample i belongs to chain i mod C); z (M, L, L) their
    latents (x = g(z), or ±g(z) for a Z2 flow) and log_q (M,) = ln q(x) (ln q_sym for Z2);
    energy (M,) = E(x), the relaxation's total energy. start: the chains' initial state (z for
    latent HMC, x otherwise), (C, L, L). accept: mean acceptance (probability for HMC, rate
    for Metropolis); seconds_per_step: wall time of one trajectory / step of all chains.
    """

    sampler: str
    observables: dict[str, torch.Tensor]
    x: torch.Tensor
    z: torch.Tensor | None
    log_q: torch.Tensor | None
    energy: torch.Tensor
    accept: float
    seconds_per_step: float
    wall_time: float
    settings: dict[str, Any] = field(default_factory=dict)
    start: torch.Tensor | None = None


def _sync(t: torch.Tensor) -> None:
    if t.is_cuda:
        torch.cuda.synchronize(t.device)


def _observe_fn(generator: torch.Generator | None):
    def observe(x: torch.Tensor) -> dict[str, torch.Tensor]:
        mom = conditional_moments(x)
        mom["abs_m"] = spin_moments(sample_spins(x, generator=generator))["abs_m"]
        return mom
    return observe


def _check_common(n_chains: int, n_samples: int, n_warmup: int, max_keep: int) -> None:
    for name, v, lo in (("n_chains", n_chains, 1), ("n_samples", n_samples, 2), ("n_warmup", n_warmup, 0),
                        ("max_keep", max_keep, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")


def level_blocks(flow: NeuralRGFlow, block_levels: Sequence[Sequence[int]]) -> list[torch.Tensor]:
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


def _keep_every(T: int, C: int, max_keep: int) -> int:
    return max(1, math.ceil(T * C / max(1, max_keep)))


def run_latent_hmc(flow: NeuralRGFlow, *, n_chains: int = 64, n_warmup: int = 100, n_samples: int = 500,
                   step_size: float = 0.2, n_leapfrog: int = 10, target_accept: float = 0.8,
                   block_levels: Sequence[Sequence[int]] | None = None, max_keep: int = 2048,
                   generator: torch.Generator | None = None) -> ChainRun:
    """HMC on z with the pulled-back potential (``latent_potential``), chains started from N(0, I).

    ``block_levels`` e.g. [[3, 4], [0, 1, 2]] cycles through blocks of RG levels (one HMC
    move per block, each with its own adapted step size, the rest held fixed); None or []
    moves all latents at once. The flow's parameters are frozen during the run.
    """
    _check_common(n_chains, n_samples, n_warmup, max_keep)
    blocks = level_blocks(flow, block_levels) if block_levels else None
    z0 = torch.randn((n_chains, flow.L, flow.L), dtype=flow.dtype, device=flow.device, generator=generator)
    observe_x = _observe_fn(generator)
    kept: list[torch.Tensor] = []
    keep = _keep_every(n_samples, n_chains, max_keep)
    counter = [0]

    def observe(z: torch.Tensor) -> dict[str, torch.Tensor]:
        if counter[0] % keep == 0:
            kept.append(z.detach().clone())
        counter[0] += 1
        return observe_x(latent_to_physical(flow, z, generator))

    # gradients w.r.t. z only: the flow's parameters are frozen for the run
    trainable = [p for p in flow.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        res = run_hmc(latent_potential(flow), z0, n_warmup=n_warmup, n_samples=n_samples, step_size=step_size,
                      n_leapfrog=n_leapfrog, target_accept=target_accept, blocks=blocks, observe=observe,
                      generator=generator)
    finally:
        for p in trainable:
            p.requires_grad_(True)
    z = torch.cat(kept)[:max_keep]
    with torch.no_grad():
        x, log_det = flow.forward_and_log_det(z)
        log_q = flow.q0.log_prob(z) - log_det
        if flow.z2:
            log_q = flow.symmetrised_log_prob(x, log_q)
            x = random_sign(x, generator)
        energy = flow.target.energy(x)
    name = "blocked_latent_hmc" if blocks else "latent_hmc"
    return ChainRun(name, dict(res.observables), x, z, log_q, energy,
                    float(res.mean_accept.mean()), res.sampling_time / n_samples,
                    res.warmup_time + res.sampling_time,
                    dict(n_chains=n_chains, n_warmup=n_warmup, n_samples=n_samples, n_leapfrog=n_leapfrog,
                         target_accept=target_accept, step_size=[float(s) for s in res.step_size],
                         block_levels=[list(b) for b in block_levels] if blocks else None,
                         accept_per_block=[float(a) for a in res.mean_accept]),
                    start=z0)


def run_physical_hmc(flow: NeuralRGFlow, *, n_chains: int = 64, n_warmup: int = 100, n_samples: int = 500,
                     step_size: float = 0.2, n_leapfrog: int = 10, target_accept: float = 0.8,
                     max_keep: int = 2048, generator: torch.Generator | None = None) -> ChainRun:
    """HMC on x with E(x) (the NeuralRG baseline), same code and tuning; starts from flow samples.

    The kept configurations' latents are z = g⁻¹(x) and log_q = ln q(x) (ln q_sym for Z2).
    """
    _check_common(n_chains, n_samples, n_warmup, max_keep)
    with torch.no_grad():
        x0 = flow.sample(n_chains, generator=generator)[0]
    observe_x = _observe_fn(generator)
    kept: list[torch.Tensor] = []
    keep = _keep_every(n_samples, n_chains, max_keep)
    counter = [0]
    target = flow.target

    def observe(x: torch.Tensor) -> dict[str, torch.Tensor]:
        if counter[0] % keep == 0:
            kept.append(x.detach().clone())
        counter[0] += 1
        return observe_x(x)

    res = run_hmc(None, x0, n_warmup=n_warmup, n_samples=n_samples, step_size=step_size, n_leapfrog=n_leapfrog,
                  target_accept=target_accept, observe=observe, generator=generator,
                  grad_fn=physical_potential_and_grad(target))
    x = torch.cat(kept)[:max_keep]
    with torch.no_grad():
        z, log_det = flow.inverse_and_log_det(x)
        log_q = flow.q0.log_prob(z) + log_det
        if flow.z2:
            log_q = flow.symmetrised_log_prob(x, log_q)
        energy = target.energy(x)
    return ChainRun("physical_hmc", dict(res.observables), x, z, log_q, energy,
                    float(res.mean_accept.mean()), res.sampling_time / n_samples,
                    res.warmup_time + res.sampling_time,
                    dict(n_chains=n_chains, n_warmup=n_warmup, n_samples=n_samples, n_leapfrog=n_leapfrog,
                         target_accept=target_accept, step_size=[float(s) for s in res.step_size]),
                    start=x0)


@torch.no_grad()
def run_flow_metropolis(flow: NeuralRGFlow, *, n_chains: int = 64, n_warmup: int = 100, n_samples: int = 500,
                        batch_size: int = 4096, max_keep: int = 2048,
                        generator: torch.Generator | None = None) -> ChainRun:
    """Independence Metropolis with the flow as proposal: C chains, n_warmup + n_samples steps
    each (the first proposal is the start), log-weights ln p̃(x) − ln q(x)."""
    _check_common(n_chains, n_samples, n_warmup, max_keep)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    T = n_warmup + n_samples
    L = flow.L
    _sync(flow.latent_levels)
    t0 = time.perf_counter()
    obs_fn = _observe_fn(generator)
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
    _sync(lw)
    wall = time.perf_counter() - t0
    keep = _keep_every(n_samples, n_chains, max_keep)
    sel = idx[:, torch.arange(0, n_samples, keep, device=idx.device)].T  # (T_kept, C): step-major
    kx = x_all[torch.arange(n_chains, device=sel.device)[None, :], sel].reshape(-1, L, L)[:max_keep]
    kz = z_all[torch.arange(n_chains, device=sel.device)[None, :], sel].reshape(-1, L, L)[:max_keep]
    klq = lq_all[torch.arange(n_chains, device=sel.device)[None, :], sel].reshape(-1)[:max_keep]
    return ChainRun("flow_metropolis", observables, kx, kz, klq, flow.target.energy(kx),
                    float(acc[:, n_warmup:].to(torch.float64).mean()), wall / T, wall,
                    dict(n_chains=n_chains, n_warmup=n_warmup, n_samples=n_samples,
                         ess_fraction=ess_fraction(lw.flatten())),
                    start=x_all[:, 0])


def summarize_run(run: ChainRun, flow: NeuralRGFlow, c: float = 6.0) -> dict[str, Any]:
    """Observables ± errors (τ_int-aware), τ_int in trajectories and seconds, ESS/s, and the
    deviation from the exact energy and specific heat in standard errors."""
    target = flow.target
    N = target.n_sites
    obs = {k: v.detach().to("cpu", torch.float64) for k, v in run.observables.items()}
    abs_m = obs.pop("abs_m", None)
    summary = summarize_observables(obs, target.K, N, abs_m=abs_m, c=c)
    exact = exact_solution(target.L, target.K, target.shift)
    C, T = next(iter(obs.values())).shape
    taus = {}
    for name in ("m2", "energy"):
        r = integrated_autocorr_time(obs[name], c=c)
        taus[name] = {"trajectories": r["tau"], "seconds": r["tau"] * run.seconds_per_step,
                      "window": r["window"], "converged": r["converged"]}
    tau_m2 = taus["m2"]["trajectories"]
    ess = C * T / (2.0 * tau_m2)
    out: dict[str, Any] = {
        "sampler": run.sampler,
        "settings": run.settings,
        "acceptance": run.accept,
        "seconds_per_trajectory": run.seconds_per_step,
        "wall_time_s": run.wall_time,
        "tau_int": taus,
        "ess_m2": ess,
        "ess_per_second": ess / (run.seconds_per_step * T),
        "observables": summary,
        "exact": {"energy_per_site": exact["energy_per_site"],
                  "specific_heat_per_site": exact["specific_heat_per_site"]},
    }
    dev = {}
    for key in ("energy_per_site", "specific_heat_per_site"):
        s = summary.get(key)
        if s and s.get("err", 0) > 0:
            dev[key] = (s["mean"] - exact[key]) / s["err"]
    out["deviation_sigma"] = dev
    return out
