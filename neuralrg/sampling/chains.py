"""What a sampler returns (``ChainRun``) and how chains become physics with error bars.

Every sampler returns a ``ChainRun``: the target's per-sample observables shaped (C, T) (C
chains, T kept steps; ``LatticeTarget.observables``), a thinned set of configurations,
acceptance and timing. ``summarize_run`` adds the target's ensemble estimates with error bars
(τ_int, Sokal window), τ_int of ``m2`` and ``energy`` in trajectories and in seconds, ESS per
second, and deviations from the target's exact values in standard errors where it has them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..physics.statistics import integrated_autocorr_time
from ..physics.target import LatticeTarget


@dataclass
class ChainRun:
    """What one sampler produced.

    observables: name -> (C, T) per-sample observables of the target for the T kept steps of C
    chains. x (M, L, L): kept configurations, every k-th step of all chains (M ≤ ``max_keep``,
    ordered step-major: sample i belongs to chain i mod C); z (M, L, L) their latents (x = g(z),
    or ±g(z) for a Z2 flow; None for samplers without a flow) and log_q (M,) = ln q(x) (ln q_sym
    for Z2); energy (M,) = E(x), the target's total energy. start: the chains' initial state (z
    for latent HMC, x otherwise), (C, L, L). accept: mean acceptance (probability for HMC, rate
    for Metropolis); seconds_per_step: wall time of one trajectory / step of all chains.
    partial: the run was stopped by its time budget (``max_time``) before ``n_samples``; its
    observables then hold the T < n_samples steps sampled.
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
    partial: bool = False


def sync(t: torch.Tensor) -> None:
    """Wait for queued CUDA work on t's device (honest wall times); no-op on the CPU."""
    if t.is_cuda:
        torch.cuda.synchronize(t.device)


def observe_fn(target: LatticeTarget, generator: torch.Generator | None
               ) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """x (C, L, L) -> the target's per-sample observables, each (C,)."""
    def observe(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return target.observables(x, generator=generator)
    return observe


def keep_every(T: int, C: int, max_keep: int) -> int:
    """Thinning that keeps at most ``max_keep`` of C·T states."""
    return max(1, math.ceil(T * C / max(1, max_keep)))


def thinned_observer(target: LatticeTarget, generator: torch.Generator | None, n_samples: int, n_chains: int,
                     max_keep: int, to_physical: Callable[[torch.Tensor], torch.Tensor] = lambda s: s
                     ) -> tuple[Callable[[torch.Tensor], dict[str, torch.Tensor]], list[torch.Tensor]]:
    """An ``observe`` for ``run_hmc`` on states s (x, or z with ``to_physical`` = g), and the list
    into which it keeps every k-th state (at most ``max_keep`` of the C·T in all)."""
    observe_x = observe_fn(target, generator)
    kept: list[torch.Tensor] = []
    keep = keep_every(n_samples, n_chains, max_keep)
    counter = [0]

    def observe(s: torch.Tensor) -> dict[str, torch.Tensor]:
        if counter[0] % keep == 0:
            kept.append(s.detach().clone())
        counter[0] += 1
        return observe_x(to_physical(s))

    return observe, kept


def latent_outputs(flow: Any, z: torch.Tensor, generator: torch.Generator | None, signed: bool | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, log q(x), E(x)) of kept latents z: x = g(z), ±g(z) with a random sign if ``signed``
    (default ``flow.z2``); log q is q_sym's with ``flow.z2``, else the plain q's of g(z)."""
    from ..flows.model import random_sign

    with torch.no_grad():
        x, log_det = flow.forward_and_log_det(z)
        log_q = flow.log_prob_from_forward(z, x, log_det)
        if flow.z2 if signed is None else signed:
            x = random_sign(x, generator)
        return x, log_q, flow.target.energy(x)


def physical_outputs(flow: Any | None, target: LatticeTarget, x: torch.Tensor
                     ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """(z = g⁻¹(x), log q(x), E(x)) of kept configurations; z and log q are None without a flow."""
    with torch.no_grad():
        energy = target.energy(x)
        if flow is None:
            return None, None, energy
        z, log_q = flow.latent_and_log_prob(x)
        return z, log_q, energy


WARMUP_TAUS = 20.0
"""Warm-up (discarded) steps per τ_int below which a run's estimates are flagged: chains started
away from equilibrium (e.g. from flow samples, biased towards q) keep a common bias that no
error bar sees; Sokal's rule of thumb is ≥ 20 τ (measured: docs/benchmarks.md, coverage)."""


def summarize_run(run: ChainRun, target: LatticeTarget, c: float = 6.0) -> dict[str, Any]:
    """Observables ± errors (τ_int-aware, ``target.summarize``), τ_int of m2 and energy (and of ms2,
    the staggered m², where the target has an order gauge) in trajectories and seconds, ESS/s of the
    order parameter (``order_parameter``: m2, or ms2 for an antiferromagnet, whose uniform m² is a
    fast mode), and deviations from ``target.exact()`` in σ. A ``partial`` run (time budget) is
    summarised from the T steps it kept (``trajectories_kept``).

    ``warmup_tau_ratio`` = n_warmup / the largest τ_int; ``equilibrated`` is False when it is below
    ``WARMUP_TAUS``; ``reliable`` needs every window converged and ``equilibrated``: only then do
    the error bars mean what they say."""
    obs = {k: v.detach().to("cpu", torch.float64) for k, v in run.observables.items()}
    summary = target.summarize(obs, c=c)
    exact = target.exact()
    C, T = next(iter(obs.values())).shape
    order = "ms2" if "ms2" in obs else "m2"
    taus = {}
    for name in ("m2", "energy") + ((order,) if order != "m2" else ()):
        r = integrated_autocorr_time(obs[name], c=c)
        taus[name] = {"trajectories": r["tau"], "seconds": r["tau"] * run.seconds_per_step,
                      "window": r["window"], "converged": r["converged"]}
    ess = C * T / (2.0 * taus[order]["trajectories"])
    ess_e = C * T / (2.0 * taus["energy"]["trajectories"])
    seconds = run.seconds_per_step * T
    common = [k for k, v in summary.items() if k in exact and isinstance(v, dict) and "mean" in v]
    out: dict[str, Any] = {
        "sampler": run.sampler,
        "settings": run.settings,
        "acceptance": run.accept,
        "seconds_per_trajectory": run.seconds_per_step,
        "wall_time_s": run.wall_time,
        "tau_int": taus,
        "order_parameter": order,
        "ess_m2": ess,  # of the order parameter
        "ess_per_second": ess / seconds,
        "ess_energy_per_second": ess_e / seconds,
        "observables": summary,
        "headline": target.headline,
        "partial": run.partial,
        "trajectories_kept": T,
        "trajectories_requested": int(run.settings.get("n_samples", T)),
        "exact": {k: exact[k] for k in common},
    }
    n_warmup = run.settings.get("n_warmup")
    tau_max = max(*(t["trajectories"] for t in taus.values()), 0.5)
    out["warmup_tau_ratio"] = None if n_warmup is None else float(n_warmup) / tau_max
    out["equilibrated"] = n_warmup is None or float(n_warmup) >= WARMUP_TAUS * tau_max
    out["reliable"] = bool(out["equilibrated"] and all(t["converged"] for t in taus.values()))
    out["deviation_sigma"] = {k: (summary[k]["mean"] - exact[k]) / summary[k]["err"]
                              for k in common if summary[k].get("err", 0) > 0}
    return out
