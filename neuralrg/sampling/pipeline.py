"""``sample.py``: load a trained flow, run samplers, write samples.npz, summary.json and figures.

Everything is validated (samplers, settings, device, checkpoint, L/K, block levels, out_dir)
before sampling starts, and ``out_dir`` (default ``<run dir>/sampling/<timestamp>``) is only
created once the samples exist, so a bad input writes nothing. Outputs are written under
temporary names and renamed, ``summary.json`` last: a directory with a ``summary.json`` is
complete.

samples.npz (first sampler of the list): x (M, L, L) kept configurations, z (M, L, L) their
latents, log_q (M,) = ln q(x) (ln q_sym for a Z2 flow), energy_per_sample (M,) = E(x) (the
relaxation's total energy), latent_levels (L, L); and ``<sampler>__m2`` / ``<sampler>__energy``
(C, T) series of every sampler. summary.json: target, model, settings and, per sampler,
``summarize_run`` (settings, acceptance, τ_int, ESS/s, observables ± err, deviation_sigma);
with ``importance_samples``, ``importance_sampling`` (F_q, IS ln Z, ESS of the flow) and, for a
flow without Z2, ``importance_sampling_z2`` (the same for its symmetrised density q_sym).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..runs import resolve_device, run_output_dir
from ..checkpoint import load_flow, resolve_checkpoint
from ..evaluation import draw_log_weights, variational_summary
from ..plotting import plot_configurations, plot_latent_levels, plot_traces, save_figure
from ..physics.statistics import autocorrelation
from .runner import (SAMPLERS, ChainRun, level_blocks, run_flow_metropolis, run_latent_hmc, run_physical_hmc,
                     summarize_run)

COMPARE = ("latent_hmc", "physical_hmc", "flow_metropolis")
HEAVY_TAIL_ESS = 0.1  # flow-Metropolis runs below this importance-sampling ESS/M get a warning
SETTINGS = ("n_chains", "n_warmup", "n_samples", "n_leapfrog", "step_size", "target_accept", "block_levels")


def run_sampler(name: str, flow: Any, s: dict[str, Any], generator: torch.Generator) -> ChainRun:
    """Run sampler ``name`` (one of ``SAMPLERS``) with the settings dict ``s``."""
    common = dict(n_chains=s["n_chains"], n_warmup=s["n_warmup"], n_samples=s["n_samples"], generator=generator)
    hmc = dict(step_size=s["step_size"], n_leapfrog=s["n_leapfrog"], target_accept=s["target_accept"])
    if name == "latent_hmc":
        return run_latent_hmc(flow, **common, **hmc)
    if name == "blocked_latent_hmc":
        levels = s.get("block_levels") or default_blocks(flow.n_levels)
        return run_latent_hmc(flow, **common, **hmc, block_levels=levels)
    if name == "physical_hmc":
        return run_physical_hmc(flow, **common, **hmc)
    if name == "flow_metropolis":
        return run_flow_metropolis(flow, **common)
    raise ValueError(f"sampler must be one of {SAMPLERS}, got {name!r}")


def default_blocks(n_levels: int) -> list[list[int]]:
    """Coarse collective variables (top two levels) and the fine levels, as two blocks."""
    if n_levels < 2:
        return [[0]]
    top = list(range(max(0, n_levels - 2), n_levels))
    fine = list(range(0, max(0, n_levels - 2)))
    return [top, fine] if fine else [top]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate_settings(s: dict[str, Any]) -> None:
    """ValueError unless ``s`` holds exactly the keys of ``SETTINGS`` with allowed values."""
    if not isinstance(s, dict):
        raise ValueError(f"settings must be a dict with keys {SETTINGS}, got {type(s).__name__}")
    unknown = sorted(set(s) - set(SETTINGS))
    if unknown:
        raise ValueError(f"settings has unknown key(s) {unknown}; allowed: {list(SETTINGS)}")
    for key, lo in (("n_chains", 1), ("n_samples", 2), ("n_leapfrog", 1), ("n_warmup", 0)):
        v = s.get(key)
        if not _is_int(v) or v < lo:
            raise ValueError(f"{key} must be an integer >= {lo}, got {v!r}")
    step = s.get("step_size")
    if not isinstance(step, (int, float)) or isinstance(step, bool) or not math.isfinite(step) or step <= 0:
        raise ValueError(f"step_size must be a finite number > 0, got {step!r}")
    ta = s.get("target_accept")
    if not isinstance(ta, (int, float)) or isinstance(ta, bool) or not 0 < ta < 1:
        raise ValueError(f"target_accept must be a number in (0, 1), got {ta!r}")


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {out} exists and is not a directory")
    if (out / "summary.json").exists():
        raise ValueError(f"out_dir {out} already holds a completed sampling run; choose another out_dir")


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a name
        np.savez_compressed(f, **arrays)


def run_sampling(*, run: str, samplers: list[str], settings: dict[str, Any], out_dir: str | None = None,
                 L: int | None = None, K: float | None = None, seed: int = 0, device: str = "auto",
                 importance_samples: int = 0, figures: bool = True, symmetrize: bool = True,
                 per_sampler: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Run ``samplers`` on the flow of ``run`` (run dir or .ckpt) and write the outputs.

    ``symmetrize``: sample with the Z2-symmetrised flow q_sym (random global sign; latent HMC
    uses U with q_sym, flow Metropolis the q_sym weights). Reverse KL tends to cover only one
    sign of m, so this is the default; it costs one extra inverse pass per density evaluation.
    ``per_sampler``: settings that differ for one sampler, e.g. {"physical_hmc": {"n_samples": 8000}}.

    ``settings``: the keys of ``SETTINGS`` (see conf/sample.yaml); ``L`` / ``K``: expected
    lattice size / coupling of the checkpoint; ``importance_samples``: 0, or M ≥ 2 flow
    samples for ln Z and ESS. Returns the summary (plus ``out_dir``). Bad input raises
    ``ValueError`` (``CheckpointError`` for checkpoints) before anything is written.
    """
    if isinstance(samplers, str) or not samplers or any(s not in SAMPLERS for s in samplers):
        raise ValueError(f"samplers must be a non-empty list of {SAMPLERS}, got {samplers!r}")
    validate_settings(settings)
    per_sampler = {k: dict(v) for k, v in (per_sampler or {}).items()}
    for name, extra in per_sampler.items():
        if name not in SAMPLERS:
            raise ValueError(f"per_sampler keys must be among {SAMPLERS}, got {name!r}")
        validate_settings({**settings, **extra})
    if not _is_int(importance_samples) or importance_samples < 0 or importance_samples == 1:
        raise ValueError(f"importance_samples must be 0 (skip) or an integer >= 2, got {importance_samples!r}")
    if not _is_int(seed):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    flow = load_flow(run, L=L, K=K, map_location=resolve_device(device))
    trained_z2 = flow.z2
    flow.z2 = bool(symmetrize) or trained_z2
    if settings.get("block_levels") is not None or "blocked_latent_hmc" in samplers:
        level_blocks(flow, settings.get("block_levels") or default_blocks(flow.n_levels))
    out = Path(out_dir) if out_dir else run_output_dir(run, "sampling")
    _check_out_dir(out)
    gen = torch.Generator(device=flow.device).manual_seed(seed)

    results: dict[str, Any] = {}
    runs: dict[str, ChainRun] = {}
    for name in samplers:
        r = run_sampler(name, flow, {**settings, **per_sampler.get(name, {})}, gen)
        runs[name] = r
        results[name] = summarize_run(r, flow)
    summary: dict[str, Any] = {
        "run": str(run), "checkpoint": str(resolve_checkpoint(run)),
        "target": {"L": flow.L, "K": flow.target.K, "shift": flow.target.shift},
        "model": flow.config, "device": str(flow.device), "dtype": str(flow.dtype).replace("torch.", ""),
        "seed": seed, "settings": settings, "per_sampler": per_sampler, "symmetrized": flow.z2,
        "trained_with_z2": trained_z2, "samplers": results,
    }
    if importance_samples:
        # the density as trained, and (if trained without Z2) the symmetrised one: reverse KL
        # tends to cover one sign of m, and then the plain ln Ẑ misses ln 2
        symmetrized, flow.z2 = flow.z2, trained_z2
        try:
            summary["importance_sampling"] = importance_summary(flow, importance_samples, gen)
            if not trained_z2:
                flow.z2 = True
                summary["importance_sampling_z2"] = importance_summary(flow, importance_samples, gen)
        finally:
            flow.z2 = symmetrized

    main = runs[samplers[0]]
    arrays = {"x": main.x, "z": main.z, "log_q": main.log_q, "energy_per_sample": main.energy,
              "latent_levels": flow.latent_levels}
    for name, r in runs.items():
        for k in ("m2", "energy"):
            arrays[f"{name}__{k}"] = r.observables[k]
    np_arrays = {k: v.detach().cpu().numpy() for k, v in arrays.items()}
    _check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / "samples.npz", lambda p: _save_npz(p, np_arrays))
    if figures:
        write_figures(out, flow, runs)
    _atomic_write(out / "summary.json", lambda p: p.write_text(json.dumps(summary, indent=2, default=float)))
    summary["out_dir"] = str(out)
    return summary


def importance_summary(flow: Any, n_samples: int, generator: torch.Generator) -> dict[str, float]:
    """``variational_summary`` (F_q, IS ln Z, ESS) of ``n_samples`` fresh flow samples."""
    lq, lp = draw_log_weights(flow, n_samples, generator=generator)
    return variational_summary(lq, lp, flow.n_sites, flow.target.log_z)


def write_figures(out: Path, flow: Any, runs: dict[str, ChainRun]) -> None:
    """trace_<sampler>.png (m², E traces and ACFs), samples.png, and latents.png (by RG level)."""
    for name, r in runs.items():
        series = {k: r.observables[k].cpu().numpy() for k in ("m2", "energy")}
        acf = {k: autocorrelation(v, max_lag=200) for k, v in series.items()}
        save_figure(plot_traces(series, acf=acf), out / f"trace_{name}.png")
    main = next(iter(runs.values()))
    save_figure(plot_configurations(main.x[-8:], title=f"{main.sampler} samples x"), out / "samples.png")
    if main.z is not None:
        save_figure(plot_latent_levels(main.z[-1], flow.latent_levels), out / "latents.png")


def format_table(summary: dict[str, Any]) -> str:
    """One line per sampler: acceptance, τ_int, ESS/s, energy vs exact."""
    rows = [f"{'sampler':<20} {'accept':>6} {'s/traj':>8} {'tau(m2)':>9} {'tau(E)':>8} {'ESS/s':>9} "
            f"{'e ± err':>22} {'dev':>6}"]
    exact_e = None
    heavy_tails = None
    for name, r in summary["samplers"].items():
        ess = r["settings"].get("ess_fraction")
        if name == "flow_metropolis" and ess is not None and ess < HEAVY_TAIL_ESS:
            heavy_tails = ess
        e = r["observables"]["energy_per_site"]
        exact_e = r["exact"]["energy_per_site"]
        tm, te = r["tau_int"]["m2"], r["tau_int"]["energy"]
        flag = lambda t: "" if t["converged"] else ">"
        rows.append(f"{name:<20} {r['acceptance']:6.3f} {r['seconds_per_trajectory']:8.4f} "
                    f"{flag(tm) + format(tm['trajectories'], '.1f'):>9} {flag(te) + format(te['trajectories'], '.1f'):>8} "
                    f"{r['ess_per_second']:9.2f} {e['mean']:>11.5f} ± {e['err']:.5f} "
                    f"{r['deviation_sigma'].get('energy_per_site', float('nan')):6.2f}{'' if te['converged'] else '*'}"
                    f"{'†' if name == 'flow_metropolis' and heavy_tails is not None else ''}")
    if exact_e is not None:
        rows.append(f"exact energy per site: {exact_e:.6f}   ('>': τ_int window not converged, lower bound;\n"
                    "'*': so the error bar is too small and the deviation in σ overstated — run longer chains)")
    if heavy_tails is not None:
        rows.append(f"† flow Metropolis: importance weights are heavy tailed (ESS/M = {heavy_tails:.3g} < "
                    f"{HEAVY_TAIL_ESS}); chains hold rare high-weight states for long stretches, so a run this "
                    "short has not equilibrated and its τ_int and error bar are not reliable even where the window converged")
    return "\n".join(rows)
