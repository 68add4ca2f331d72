"""``sample.py``: load a trained flow, run samplers, write samples.npz, summary.json and figures.

Outputs go to ``out_dir`` (default ``<run dir>/sampling/<timestamp>``) and are written under
temporary names and renamed at the end, ``summary.json`` last: a directory with a
``summary.json`` is complete.
"""
from __future__ import annotations

import json
import math
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import load_flow, resolve_checkpoint
from ..evaluation import draw_log_weights, variational_summary
from ..plotting import plot_configurations, plot_latent_levels, plot_traces, save_figure
from ..statistics import autocorrelation
from .runner import SAMPLERS, ChainRun, run_flow_metropolis, run_latent_hmc, run_physical_hmc, summarize_run

COMPARE = ("latent_hmc", "physical_hmc", "flow_metropolis")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def default_out_dir(run: str | Path) -> Path:
    ckpt = resolve_checkpoint(run)
    base = Path(run) if Path(run).is_dir() else ckpt.parent.parent
    return base / "sampling" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def run_sampler(name: str, flow: Any, s: dict[str, Any], generator: torch.Generator) -> ChainRun:
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


def validate_settings(s: dict[str, Any]) -> None:
    for key in ("n_chains", "n_samples", "n_leapfrog"):
        v = s.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < (2 if key == "n_samples" else 1):
            raise ValueError(f"{key} must be a positive integer{' >= 2' if key == 'n_samples' else ''}, got {v!r}")
    if not isinstance(s.get("n_warmup"), int) or s["n_warmup"] < 0:
        raise ValueError(f"n_warmup must be an integer >= 0, got {s.get('n_warmup')!r}")
    step = s.get("step_size")
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step) or step <= 0:
        raise ValueError(f"step_size must be a finite number > 0, got {step!r}")
    ta = s.get("target_accept")
    if not isinstance(ta, (int, float)) or not 0 < ta < 1:
        raise ValueError(f"target_accept must be in (0, 1), got {ta!r}")


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def run_sampling(*, run: str, samplers: list[str], settings: dict[str, Any], out_dir: str | None = None,
                 L: int | None = None, K: float | None = None, seed: int = 0, device: str = "auto",
                 importance_samples: int = 0, figures: bool = True) -> dict[str, Any]:
    """Run ``samplers`` on the flow of ``run`` and write the outputs; returns the summary."""
    bad = [s for s in samplers if s not in SAMPLERS]
    if bad or not samplers:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {samplers!r}")
    validate_settings(settings)
    flow = load_flow(run, L=L, K=K, map_location=_device(device))
    out = Path(out_dir) if out_dir else default_out_dir(run)
    if (out / "summary.json").exists():
        raise ValueError(f"out_dir {out} already holds a completed sampling run; choose another out_dir")
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator(device=flow.device).manual_seed(int(seed))

    results: dict[str, Any] = {}
    runs: dict[str, ChainRun] = {}
    for name in samplers:
        r = run_sampler(name, flow, settings, gen)
        runs[name] = r
        results[name] = summarize_run(r, flow)
    summary: dict[str, Any] = {
        "run": str(run), "checkpoint": str(resolve_checkpoint(run)),
        "target": {"L": flow.L, "K": flow.target.K, "shift": flow.target.shift},
        "model": flow.config, "device": str(flow.device), "dtype": str(flow.dtype).replace("torch.", ""),
        "seed": seed, "settings": settings, "samplers": results,
    }
    if importance_samples:
        lq, lp = draw_log_weights(flow, int(importance_samples), generator=gen)
        summary["importance_sampling"] = variational_summary(lq, lp, flow.n_sites, flow.target.log_z)

    main = runs[samplers[0]]
    arrays = {"x": main.x, "energy_per_sample": main.energy, "latent_levels": flow.latent_levels}
    if main.z is not None:
        arrays["z"], arrays["log_q"] = main.z, main.log_q
    for name, r in runs.items():
        for k in ("m2", "energy"):
            arrays[f"{name}__{k}"] = r.observables[k]
    np_arrays = {k: v.detach().cpu().numpy() for k, v in arrays.items()}
    _atomic_write(out / "samples.npz", lambda p: np.savez_compressed(open(p, "wb"), **np_arrays))
    if figures:
        write_figures(out, flow, runs)
    _atomic_write(out / "summary.json", lambda p: p.write_text(json.dumps(summary, indent=2, default=float)))
    summary["out_dir"] = str(out)
    return summary


def write_figures(out: Path, flow: Any, runs: dict[str, ChainRun]) -> None:
    for name, r in runs.items():
        series = {k: r.observables[k].cpu().numpy() for k in ("m2", "energy")}
        acf = {k: autocorrelation(r.observables[k].cpu().to(torch.float64))[:200].numpy() for k in series}
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
    for name, r in summary["samplers"].items():
        e = r["observables"]["energy_per_site"]
        exact_e = r["exact"]["energy_per_site"]
        tm, te = r["tau_int"]["m2"], r["tau_int"]["energy"]
        flag = lambda t: "" if t["converged"] else ">"
        rows.append(f"{name:<20} {r['acceptance']:6.3f} {r['seconds_per_trajectory']:8.4f} "
                    f"{flag(tm) + format(tm['trajectories'], '.1f'):>9} {flag(te) + format(te['trajectories'], '.1f'):>8} "
                    f"{r['ess_per_second']:9.2f} {e['mean']:>11.5f} ± {e['err']:.5f} "
                    f"{r['deviation_sigma'].get('energy_per_site', float('nan')):6.2f}")
    if exact_e is not None:
        rows.append(f"exact energy per site: {exact_e:.6f}   ('>': τ_int window not converged, lower bound)")
    return "\n".join(rows)
