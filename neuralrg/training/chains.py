"""Where the forward-KL samples of training come from: persistent chains on p, or exact data.

``FlowMCMCChains`` (adaptive flow-MCMC, Gabrié, Rotskoff & Vanden-Eijnden, PNAS 2022): a buffer
of C configurations x that every training step advances by

1. one independence-Metropolis move with proposals drawn from the current flow q (q_sym for a
   Z2 flow, as sampled), accepted with min(1, w(x')/w(x)), w = e^{−E}/q; exact for any q with
   full support;
2. ``local_steps`` physical-space HMC trajectories (``n_leapfrog`` leapfrog steps, identity
   mass) on E with the target's analytic gradient ``grad_energy``.

Both moves leave p invariant, so after burn-in the buffer holds (correlated) samples of p using
only E and ∇E: it works for any ``LatticeTarget``. Step size: dual averaging (Hoffman & Gelman)
toward ``target_accept`` over the first ``adapt_steps`` trajectories, then frozen at the
averaged value. p does not change during training, so a frozen step size stays tuned (and the
frozen kernel is exactly p-invariant, which an ever-adapting one is not).

The buffer is a plain tensor, not a module buffer: it follows the flow's device and dtype (moved
on use), is not broadcast by DDP (each rank keeps its own chains, seeded from its own random
stream) and is not written to checkpoints (a resumed run re-initialises its chains from the flow
with ``burn_in`` updates).

``TrainingData``: samples of p generated once before the data phase, from one of two sources
(``resolve_data_source``):

* ``wolff``: exact samples of the Ising relaxation, from Wolff cluster chains
  (``wolff_target_chains``, recorded every ``sweep_spacing`` sweeps, ≈ 2τ_int at K_c) turned into x
  by x | s ~ N(A s, A) (``exact_x_from_spins``). Only unfrustrated, translation-invariant
  ``IsingTarget``s have it.
* ``parallel_tempering``: chain states of the T = 1 replica of the package's parallel tempering
  (``run_parallel_tempering`` without a flow; any ``LatticeTarget``: glasses, frustrated couplings,
  φ⁴), one kept every ``sweep_spacing`` PT steps after ``warmup_sweeps`` warm-up steps. These are
  correlated samples, not exact ones: ``info`` records τ_int of E and m² (in PT steps), the
  effective sample count n·min(1, spacing/2τ_max) and whether the warm-up covered ``WARMUP_TAUS``
  τ_max (``equilibrated``); ``warning`` says so when a τ_int window did not converge or the warm-up
  was short.
"""
from __future__ import annotations

import json
import math
import time
from typing import Any

import numpy as np
import torch

from ..physics.target import LatticeTarget
from ..sampling.chains import WARMUP_TAUS, summarize_run
from ..sampling.hmc import DualAveraging, hmc_step
from ..sampling.metropolis import independence_metropolis
from ..sampling.samplers.parallel_tempering import DEFAULTS as PT_DEFAULTS
from ..sampling.samplers.parallel_tempering import check_pt_settings, run_parallel_tempering

__all__ = ["FlowMCMCChains", "TrainingData", "DATA_SOURCES", "check_data_source_name", "resolve_data_source"]


class FlowMCMCChains:
    """Persistent chains on p driven by flow proposals and local HMC (see module docstring)."""

    def __init__(self, n_chains: int, *, local_steps: int = 2, n_leapfrog: int = 5, step_size: float = 0.05,
                 target_accept: float = 0.8, adapt_steps: int = 200, burn_in: int = 10) -> None:
        if int(n_chains) < 1:
            raise ValueError(f"n_chains must be >= 1, got {n_chains}")
        self.n_chains = int(n_chains)
        self.local_steps = int(local_steps)
        self.n_leapfrog = int(n_leapfrog)
        self.target_accept = float(target_accept)
        self.adapt_steps = int(adapt_steps)
        self.burn_in = int(burn_in)
        self.dual = DualAveraging(step_size, self.target_accept)
        self.step_size = float(step_size)
        self.n_trajectories = 0
        self.x: torch.Tensor | None = None       # (C, L, L) chain states
        self.energy: torch.Tensor | None = None  # (C,) E(x) of the states
        self.last_mh_acceptance = float("nan")
        self.last_hmc_acceptance = float("nan")
        self.mh_accepted_total = 0
        self.mh_proposed_total = 0

    @property
    def initialized(self) -> bool:
        return self.x is not None

    def follow(self, device: torch.device, dtype: torch.dtype) -> None:
        """Move the buffer to ``device``/``dtype`` (the flow's) if it lives elsewhere."""
        if self.x is not None and (self.x.device != device or self.x.dtype != dtype):
            self.x = self.x.to(device=device, dtype=dtype)
            self.energy = self.energy.to(device=device, dtype=dtype)

    @torch.no_grad()
    def init_from_flow(self, flow: Any) -> None:
        """Start every chain at a flow sample, then run ``burn_in`` chain updates."""
        x, _ = flow.sample(self.n_chains)
        self.x = x.detach()
        self.energy = flow.target.energy(self.x).detach()
        for _ in range(self.burn_in):
            self.step(flow)

    @torch.no_grad()
    def step(self, flow: Any, log_q_current: torch.Tensor | None = None,
             proposals: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None
             ) -> dict[str, float]:
        """One flow-MH move then ``local_steps`` HMC trajectories for every chain.

        log_q_current: ln q(x) of the current states under the current flow (computed if None);
        proposals: (x', ln q(x'), E(x') or None), at least C independent flow samples (drawn if
        None; only the first C are used). Returns {"mh_acceptance", "hmc_acceptance", "step_size"}.
        """
        if self.x is None:
            raise RuntimeError("chains are not initialised: call init_from_flow first")
        target: LatticeTarget = flow.target
        self.follow(flow.device, flow.dtype)
        C = self.n_chains
        if log_q_current is None:
            log_q_current = flow.log_prob(self.x)
        if proposals is None:
            xp, lqp = flow.sample(C)
            ep = None
        else:
            xp, lqp, ep = proposals
            if xp.shape[0] < C:
                raise ValueError(f"need >= {C} proposals, got {xp.shape[0]}")
            xp, lqp, ep = xp[:C], lqp[:C], (None if ep is None else ep[:C])
        xp, lqp = xp.detach().to(self.x), lqp.detach().to(self.x)
        ep = target.energy(xp) if ep is None else ep.detach().to(self.x)
        log_w = torch.stack([-self.energy - log_q_current.detach().to(self.x), -ep - lqp], dim=1)
        _, acc = independence_metropolis(log_w)
        take = acc[:, 1]
        self.x = torch.where(take[:, None, None], xp, self.x)
        self.energy = torch.where(take, ep, self.energy)
        self.last_mh_acceptance = float(take.to(torch.float64).mean())
        self.mh_accepted_total += int(take.sum())
        self.mh_proposed_total += C
        self.last_hmc_acceptance = self._local_moves(target)
        return {"mh_acceptance": self.last_mh_acceptance, "hmc_acceptance": self.last_hmc_acceptance,
                "step_size": self.step_size}

    def _local_moves(self, target: LatticeTarget) -> float:
        if self.local_steps == 0:
            return float("nan")

        def pg(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return target.energy(x), target.grad_energy(x)

        x, U = self.x, self.energy
        grad = target.grad_energy(x)
        acc = []
        for _ in range(self.local_steps):
            x, U, grad, a, _ = hmc_step(x, U, grad, pg, self.step_size, self.n_leapfrog)
            acc.append(float(a.mean()))
            self.n_trajectories += 1
            if self.n_trajectories <= self.adapt_steps:
                self.step_size = self.dual.adapt(a)
                if self.n_trajectories == self.adapt_steps:
                    self.step_size = self.dual.final_step_size
        self.x, self.energy = x, U
        return sum(acc) / len(acc)

    @property
    def mh_acceptance(self) -> float:
        """Flow-MH acceptance rate over all moves so far."""
        return self.mh_accepted_total / self.mh_proposed_total if self.mh_proposed_total else float("nan")


DATA_SOURCES = ("auto", "wolff", "parallel_tempering")
PT_DATA_KEYS = ("n_temperatures", "t_max", "n_leapfrog", "step_size", "target_accept")
# the last data set made, by everything that determines it: a budget probe's (``plan_budget``)
# is then the run's, instead of a second generation (minutes for parallel tempering)
_LAST_DATA: dict[str, tuple[torch.Tensor, dict[str, Any], str | None]] = {}


def check_data_source_name(source: str) -> None:
    """ValueError unless ``source`` is one of ``DATA_SOURCES`` (``loss.data_source``)."""
    if source not in DATA_SOURCES:
        raise ValueError(f"loss.data_source must be one of {DATA_SOURCES}, got {source!r}")


def resolve_data_source(target: LatticeTarget, source: str = "auto",
                        settings: dict[str, Any] | None = None) -> str:
    """The data source ``loss.data_source`` names for ``target``: ``auto`` is ``wolff`` where Wolff
    applies (``wolff_unsupported_reason``), else ``parallel_tempering``. ``settings``
    (``loss.data_settings``) are parallel tempering's sampler keys (``PT_DATA_KEYS``), checked here.
    ValueError naming the key for an unknown source, Wolff where it does not apply, or bad settings."""
    from ..physics.wolff import wolff_unsupported_reason

    check_data_source_name(source)
    why = wolff_unsupported_reason(target)
    if source == "auto":
        source = "wolff" if why is None else "parallel_tempering"
    if source == "wolff" and why is not None:
        raise ValueError(f"loss.name=data with loss.data_source=wolff draws exact samples with Wolff cluster "
                         f"updates, which do not apply here: {why}; use loss.data_source=parallel_tempering "
                         f"(or auto), or loss.name=reverse_kl / flow_mcmc")
    settings = dict(settings or {})
    if settings and source != "parallel_tempering":
        raise ValueError(f"loss.data_settings {sorted(settings)} set parallel tempering's sampler; the data source "
                         f"here is {source!r}")
    unknown = sorted(set(settings) - set(PT_DATA_KEYS))
    if unknown:
        raise ValueError(f"unknown loss.data_settings key(s) {unknown}; known: {list(PT_DATA_KEYS)}")
    check_pt_settings({**PT_DEFAULTS, **settings})
    return source


class TrainingData:
    """Samples x of ``target`` for the data phase, generated once, served as minibatches.

    ``n_samples`` configurations from ``min(n_chains, n_samples)`` chains of ``source`` (module
    docstring; ``auto`` as in ``resolve_data_source``) after ``warmup_sweeps`` warm-up sweeps (PT
    steps), recorded every ``sweep_spacing`` sweeps (steps). ``settings``: parallel tempering's
    sampler keys. Stored float64 on the CPU; ``batch`` returns them on the requested device/dtype
    (cached), shuffled once per epoch (a remainder smaller than a batch is skipped). ``info``
    describes the generation; ``warning`` is a sentence when the chains' own diagnostics say the
    samples may not represent p (else None). The last data set made is kept: the same target
    (``spec``), settings and seed get the same samples without generating them again
    (``generation_s`` is then this call's time, ~0; ``info["generation_s"]`` the original's).
    """

    def __init__(self, target: LatticeTarget, n_samples: int, *, source: str = "auto", n_chains: int = 64,
                 sweep_spacing: int = 2, warmup_sweeps: int = 20, seed: int | list[int] = 0,
                 settings: dict[str, Any] | None = None) -> None:
        self.source = resolve_data_source(target, source, settings)
        self.n_samples = int(n_samples)
        C = min(int(n_chains), self.n_samples)
        self.warning: str | None = None
        t0 = time.perf_counter()
        self.info: dict[str, Any] = {"source": self.source, "n_samples": self.n_samples, "n_chains": C,
                                     "sweep_spacing": int(sweep_spacing), "warmup_sweeps": int(warmup_sweeps)}
        key = json.dumps([target.spec(), self.info, seed, settings or {}], sort_keys=True, default=str)
        self.reused = key in _LAST_DATA
        if self.reused:
            self.x, info, self.warning = _LAST_DATA[key]
            self.info = dict(info)
        elif self.source == "wolff":
            from ..physics.wolff import exact_x_samples

            self.x, res = exact_x_samples(target, self.n_samples, n_chains=C, sweep_spacing=sweep_spacing,
                                          warmup_sweeps=warmup_sweeps, seed=seed)
            self.info["clusters_per_sweep"] = res.clusters_per_sweep
        else:
            self.x = self._parallel_tempering(target, C, int(sweep_spacing), int(warmup_sweeps), seed,
                                              dict(settings or {}))
        self.generation_s = time.perf_counter() - t0
        if not self.reused:
            self.info["generation_s"] = self.generation_s
            _LAST_DATA.clear()
            _LAST_DATA[key] = (self.x, dict(self.info), self.warning)
        self._order: torch.Tensor | None = None
        self._pos = 0
        self.epoch = 0
        self._cache: tuple[torch.device, torch.dtype, torch.Tensor] | None = None

    def _parallel_tempering(self, target: LatticeTarget, C: int, spacing: int, warmup: int,
                            seed: int | list[int], settings: dict[str, Any]) -> torch.Tensor:
        T = math.ceil(self.n_samples / C)
        state = np.random.SeedSequence(seed).generate_state(2)
        gen = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        run = run_parallel_tempering(None, target, n_chains=C, n_warmup=warmup, n_samples=T * spacing,
                                     max_keep=T * C, generator=gen, dtype=torch.float64,
                                     device=torch.device("cpu"), **settings)
        summ = summarize_run(run, target)
        taus = {k: float(v["trajectories"]) for k, v in summ["tau_int"].items()}
        slow = max(taus, key=taus.get)
        self.info.update(tau_int=taus, tau_converged=all(v["converged"] for v in summ["tau_int"].values()),
                         equilibrated=bool(summ["equilibrated"]), swap_accept=run.settings["swap_accept"],
                         temperatures=run.settings["temperatures"],
                         effective_samples=self.n_samples * min(1.0, spacing / (2 * taus[slow])))
        problems = [f"the τ_int({k}) window did not converge (τ_int > {v['trajectories']:.3g} steps)"
                    for k, v in summ["tau_int"].items() if not v["converged"]]
        if not problems and not summ["equilibrated"]:
            problems.append(f"the warm-up ({warmup} steps) is shorter than {WARMUP_TAUS:g} τ_int({slow}) = "
                            f"{WARMUP_TAUS * taus[slow]:.0f} steps")
        if problems:
            self.warning = ("parallel-tempering training data may not represent p: " + "; ".join(problems)
                            + " (raise loss.data_warmup_sweeps, or loss.data_settings.n_temperatures)")
        return run.x[: self.n_samples].detach().to("cpu", torch.float64).clone()

    def on(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """All samples (M, L, L) on ``device`` in ``dtype`` (one copy cached)."""
        if self._cache is None or self._cache[0] != device or self._cache[1] != dtype:
            self._cache = (device, dtype, self.x.to(device=device, dtype=dtype))
        return self._cache[2]

    def batch(self, n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The next ``n`` samples of the current epoch's random order (torch's global RNG)."""
        n = min(int(n), self.n_samples)
        if self._order is None or self._pos + n > self.n_samples:
            if self._order is not None:
                self.epoch += 1
            self._order = torch.randperm(self.n_samples)
            self._pos = 0
        idx = self._order[self._pos: self._pos + n]
        self._pos += n
        data = self.on(device, dtype)
        return data[idx.to(data.device)]
