"""Wolff single-cluster updates of the spins: the reference row a flow sampler is compared with.

Applies to the Ising model with translation-invariant couplings (uniform or anisotropic; antiferromagnetic
ones on even L through the sublattice gauge, ``physics.wolff``) and never touches the flow. One step is one sweep: ``clusters_per_sweep`` cluster flips per chain (fixed
after warm-up so that a sweep flips ≈ N spins; ``neuralrg.physics.wolff``). Observables are the
exact spin moments (``IsingTarget.spin_observables``: energy = H/N with the target's bonds, energy2,
m, m2, m4, abs_m) of the state after
every sweep, the keys the Ising target's ``summarize`` takes. Kept configurations are exact HS
fields x | s ~ N(A s, A) of the kept spins (``exact_x_from_spins``); z and log_q are None.
Timing: ``seconds_per_step`` is the wall time of one production sweep of all chains including
the per-sweep observables (as for the other samplers), warm-up excluded.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from ...physics.target import LatticeTarget
from ...physics.wolff import exact_x_from_spins, wolff_target_chains, wolff_unsupported_reason
from ..chains import ChainRun, keep_every
from ..progress import NULL_PROGRESS, Deadline, Progress
from ..registry import Sampler, check_settings

DEFAULTS = dict(n_chains=64, n_warmup=100, n_samples=400, max_keep=2048)


class _Stop(Exception):
    """Raised from the per-sweep callback when the time budget is spent."""


def wolff_support(target: LatticeTarget) -> str | None:
    """None where Wolff applies (``physics.wolff.wolff_unsupported_reason``), else why not
    (disordered bonds, frustrated antiferromagnets on odd L, other targets)."""
    return wolff_unsupported_reason(target)


def _validate(s: dict[str, Any]) -> None:
    if s["n_warmup"] < 1:
        raise ValueError(f"wolff needs n_warmup >= 1 (warm-up measures the mean cluster size that fixes "
                         f"clusters_per_sweep), got n_warmup = {s['n_warmup']}")


def _numpy_seed(generator: torch.Generator | None) -> int:
    """A numpy seed drawn from ``generator`` (or torch's global RNG), so runs follow the torch seed."""
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=device))


def run_wolff(target: LatticeTarget, *, n_chains: int = 64, n_warmup: int = 100, n_samples: int = 400,
              max_keep: int = 2048, generator: torch.Generator | None = None,
              dtype: torch.dtype | None = None, device: torch.device | str | None = None,
              progress: Progress | None = None, max_time: float | None = None) -> ChainRun:
    """C Wolff chains from random spins: ``n_warmup`` warm-up sweeps, then ``n_samples`` sweeps.

    Outputs are in ``dtype`` (default torch's) on ``device`` (default the generator's, else the
    CPU); the cluster updates themselves run in numpy, seeded from ``generator``. ValueError
    for a target Wolff does not apply to (``wolff_support``) or bad settings. ``progress`` hears
    of warm-up (at its end) and of every production sweep; ``max_time`` (wall seconds after
    warm-up) stops after the current sweep, keeping >= 2 (``ChainRun.partial``).
    """
    check_settings(n_chains=n_chains, n_warmup=n_warmup, n_samples=n_samples, max_keep=max_keep)
    _validate(dict(n_warmup=n_warmup))
    reason = wolff_support(target)
    if reason is not None:
        raise ValueError(f"sampler wolff does not apply to {target.describe()}: {reason}")
    dtype = dtype or torch.get_default_dtype()
    device = torch.device(device) if device is not None else (
        generator.device if generator is not None else torch.device("cpu"))
    L = target.L
    rng = np.random.default_rng(_numpy_seed(generator))
    init = np.where(rng.random((n_chains, L, L)) < 0.5, -1, 1).astype(np.int8)

    prog = progress if progress is not None else NULL_PROGRESS
    t0 = time.perf_counter()
    prog.start("warm-up", n_warmup)
    warm = wolff_target_chains(target, n_chains, 0, n_warmup, rng, init=init)
    prog.update(n_warmup)
    prog.finish(f"{warm.clusters_per_sweep} clusters per sweep")
    t1 = time.perf_counter()
    deadline = Deadline(max_time)
    prog.start("sampling", n_samples)
    deadline.begin()
    done = [n_samples]

    keep = keep_every(n_samples, n_chains, max_keep)
    series: dict[str, torch.Tensor] = {}
    kept: list[torch.Tensor] = []

    def record(t: int, spins: np.ndarray) -> None:
        s = torch.from_numpy(spins).to(device=device, dtype=dtype)
        for k, v in target.spin_observables(s).items():
            if k not in series:
                series[k] = torch.empty((n_chains, n_samples), dtype=dtype, device=device)
            series[k][:, t] = v
        if t % keep == 0:
            kept.append(s)
        prog.update(1, accept=1.0)
        if 1 <= t < n_samples - 1 and deadline.expired():
            done[0] = t + 1
            raise _Stop

    try:
        res = wolff_target_chains(target, n_chains, n_samples, 0, rng, record=record,
                           clusters_per_sweep=warm.clusters_per_sweep, init=warm.final_spins)
    except _Stop:  # the time budget: keep the sweeps done
        res = warm
        series = {k: v[:, :done[0]] for k, v in series.items()}
    n_done = done[0]
    prog.finish(f"stopped at the time budget after {n_done}/{n_samples} sweeps" if n_done < n_samples else "")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t2 = time.perf_counter()

    spins = torch.cat(kept)[:max_keep]  # step-major: sample i belongs to chain i mod C
    x = exact_x_from_spins(target, spins, generator=generator, dtype=dtype)
    return ChainRun("wolff", series, x, None, None, target.energy(x), 1.0, (t2 - t1) / n_done, t2 - t0,
                    dict(n_chains=n_chains, n_warmup=n_warmup, n_samples=n_samples,
                         clusters_per_sweep=res.clusters_per_sweep, mean_cluster_size=res.mean_cluster_size,
                         spins_per_sweep=res.spins_per_sweep),
                    start=torch.from_numpy(init).to(device=device, dtype=dtype), partial=n_done < n_samples)


def _run(flow: Any, target: LatticeTarget, s: dict[str, Any], generator: torch.Generator | None, *,
         progress: Progress | None = None, max_time: float | None = None) -> ChainRun:
    # the flow is never evaluated; only its dtype/device are followed so the rows line up
    dtype = getattr(flow, "dtype", None) if flow is not None else None
    device = getattr(flow, "device", None) if flow is not None else None
    return run_wolff(target, generator=generator, dtype=dtype, device=device, progress=progress,
                     max_time=max_time, **s)


SAMPLER = Sampler("wolff", _run, DEFAULTS,
                  "Wolff single-cluster updates of the Ising spins (one step = one sweep ≈ N flipped spins); "
                  "x exact HS samples of the kept spins; no flow",
                  needs_flow=False, validate=_validate, supports=wolff_support)
