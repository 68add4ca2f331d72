"""Collective-variable analysis of a trained flow: what each RG scale learned.

``run_analysis`` loads the flow of a run, draws EXACT samples x ~ p (latent HMC by default,
flow-Metropolis, ``auto`` = flow-Metropolis when a short probe reaches a decent acceptance, or
an existing ``samples.npz`` from ``sample.py``; never raw flow samples), computes the latents
z = g⁻¹(x) (``latents.latents_under_p``) and writes to ``out_dir`` (default
``<run>/analysis/<timestamp>/``) the figures latent_stats.png, mutual_information.png,
response_maps.png, top_latent_landscape.png, rg_levels.png and ``analysis.json`` (written last: a directory
with it is complete). With ``logger="wandb"`` (analyze.py: ``log_to=wandb``) the headline numbers
(``scalar_metrics``) and the figures also go to a W&B run in ``out_dir/wandb`` — offline unless
``wandb.mode``/WANDB_MODE say otherwise; any W&B failure is only a warning. Non-finite numbers
are written as null. Keys of analysis.json:

* run, checkpoint, created, target {L, K, shift}, model (flow config), device, dtype, seed;
* sampling: {sampler, settings, acceptance, n_configurations, wall_time_s, exact: true,
  probe_acceptance (sampler auto only), z2_alignment (note for Z2 flows)};
* latent_levels: {n_levels, sites_per_level, spacing_per_level (2^k)};
* mi_estimator: {methods (first = primary; KSG default, Gaussian copula cross-check), ksg_k,
  max_samples, units: "nats", pairs: how pairs are pooled};
* level_stats: per level k {level, spacing, n_sites, n_values, mean, variance, skewness,
  excess_kurtosis, neighbours: {distance 2^k, n_pairs, correlation, mi: {method: nats}}} —
  same-level neighbours are level-k latents at distance 2^k along an axis (see ``latents``);
* physical_pairs: per distance r = 2^k < L {distance, n_pairs, correlation, mi: {method: nats}}
  of x_i, x_{i+r} under p (r = 1: nearest neighbours);
* mi_summary: per method {physical_nn, latent_mean (over levels with pairs),
  ratio_physical_nn_over_latent_mean, per_level_ratio}; ratios are null where the latent MI
  is ≤ 0;
* response: ``response.response_analysis`` summary (sites, per-level radii ± sd, cone size and
  saturation, outside_cone_max_abs (exactly 0 by construction), growth_factor_rms,
  growth_factor_90, growth_factor_rms_offsite over fit_levels 0 … min(2, top − 1),
  growth_factor_rms_unsaturated, expected_growth_factor 2, space): responses of the learned
  hierarchy's output (y = A^{−1/2}x for a preconditioned flow, else x);
* response_physical: the same for ∂x/∂z of the physical field (A^{1/2} included, no cones);
  null for a flow without preconditioner (there ``response`` is already on x);
* coarse_latents: ``latents.coarse_latent_correlations`` (corr of the top two levels' latents
  with m and the energy per site, |corr| and the Z2 note, R² of m and e on them);
* rg_organisation: ``rg_organisation.rg_organisation`` (R²(m | top 1, 2 levels), and as
  r2_m_top_levels_one_sign the same within one sign of m, ``quick.one_sign_r2``; fraction of
  S(0) and S(k_min) explained linearly by the top 1, 2 levels, per-level MI ratio physical nn /
  same-level latents, radii and growth on y and x).

m and e everywhere are the target's observables of the physical field x (Ising: improved
E[m|x], E[H|x]/N) in the flow's sign convention: x itself for a plain flow, σx for a Z2 flow
(σ from ``latents_under_p``); never of the pre-preconditioner field A^{−1/2}x.
* landscape: {variable, top_latent: free_energy_landscape of z at site (0, 0) (the coarsest
  latent), magnetisation: the same for m = E[m|x] (the physical order parameter, reference),
  note};
* figures: file names; timing: seconds per stage; wandb_logged (only with logger="wandb").

Reading the landscape: under p the top latent has density N(z)·p(g(z))/q(g(z)) marginalised,
so a perfect flow gives a single Gaussian well ½z² at any temperature. Below T_c a trained flow
sends the two ordered phases to the two signs of the coarse latents and cannot put mass q
exactly where p has none: the barrier between the phases appears as a dip of ρ(z_top) around
the interface (double well: BC > 5/9, density_ratio_at_zero ≪ 1), above T_c a single well.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..analysis.figures import (plot_landscape, plot_latent_stats, plot_mutual_information, plot_response_maps,
                                plot_rg_levels)
from ..analysis.landscape import free_energy_landscape
from ..analysis.quick import one_sign_r2
from ..analysis.latents import (MI_METHODS, coarse_latent_correlations, latents_under_p, level_moments,
                                level_pair_statistics, physical_pair_statistics)
from ..analysis.response import has_preconditioner, hierarchy_layers, hierarchy_output, response_analysis
from ..analysis.rg_organisation import rg_organisation
from ..checkpoint import load_flow, load_flow_at, resolve_checkpoint, target_summary
from ..physics.observables import order_parameter
from ..plotting import save_figure
from ..sampling.fold import check_fold
from ..sampling.progress import NULL_PROGRESS, Progress
from ..sampling.registry import available, resolve_settings, run_sampler
from ..spec import dtype_name, parse_dtype
from .runs import resolve_device, run_output_dir
from .tracking import close_run, open_run, training_run_info

log = logging.getLogger(__name__)

AUTO = "auto"  # flow-Metropolis where a short probe accepts well enough, else latent HMC
DEFAULT_SETTINGS: dict[str, Any] = dict(n_chains=64, n_warmup=100, n_samples=200, n_leapfrog=10, step_size=0.1,
                                        target_accept=0.8, max_keep=4096, min_metropolis_acceptance=0.3, fold="auto")
DEFAULT_MI: dict[str, Any] = dict(methods=["ksg", "gaussian_copula"], k=3, max_samples=4000)
DEFAULT_RESPONSE: dict[str, Any] = dict(n_latents=8, n_configs=4)
DEFAULT_LANDSCAPE: dict[str, Any] = dict(bins=60, grid_points=201)
FIGURES = ("latent_stats.png", "mutual_information.png", "response_maps.png", "top_latent_landscape.png",
           "rg_levels.png")


# ----------------------------------------------------------------------------- configuration
def _merged(defaults: dict[str, Any], given: dict[str, Any] | None, name: str) -> dict[str, Any]:
    given = dict(given or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"{name} has unknown key(s) {unknown}; allowed: {sorted(defaults)}")
    return {**defaults, **given}


def _int_at_least(d: dict[str, Any], key: str, lo: int, name: str) -> None:
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{name}.{key} must be an integer >= {lo}, got {v!r}")


def _check_config(settings: dict[str, Any], mi: dict[str, Any], response: dict[str, Any],
                  landscape: dict[str, Any]) -> None:
    for key, lo in (("n_chains", 1), ("n_warmup", 0), ("n_samples", 2), ("n_leapfrog", 1), ("max_keep", 16)):
        _int_at_least(settings, key, lo, "settings")
    step = settings["step_size"]
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step) or step <= 0:
        raise ValueError(f"settings.step_size must be a finite number > 0, got {step!r}")
    check_fold(settings["fold"])
    for key in ("target_accept", "min_metropolis_acceptance"):
        v = settings[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
            raise ValueError(f"settings.{key} must be a number in (0, 1), got {v!r}")
    methods = list(mi["methods"]) if isinstance(mi["methods"], (list, tuple)) else mi["methods"]
    if not isinstance(methods, list) or not methods or any(m not in MI_METHODS for m in methods):
        raise ValueError(f"mi.methods must be a non-empty list from {list(MI_METHODS)}, got {mi['methods']!r}")
    _int_at_least(mi, "k", 1, "mi")
    if mi["max_samples"] is not None:
        _int_at_least(mi, "max_samples", 10, "mi")
    _int_at_least(response, "n_latents", 1, "response")
    _int_at_least(response, "n_configs", 1, "response")
    _int_at_least(landscape, "bins", 2, "landscape")
    _int_at_least(landscape, "grid_points", 3, "landscape")


# ----------------------------------------------------------------------------- sampling
def exact_samplers() -> list[str]:
    """Registry samplers whose chains sample p exactly and use the flow (usable for analysis), plus auto."""
    return sorted(n for n, spec in available().items() if spec.exact and spec.needs_flow) + [AUTO]


def draw_exact_samples(flow: Any, sampler: str, settings: dict[str, Any], generator: torch.Generator,
                       progress: Progress | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Exact samples x ~ p (M, L, L) by a registry ``sampler`` (or auto); returns (x, info for the JSON)."""
    if sampler not in exact_samplers():
        raise ValueError(f"sampler must be one of {exact_samplers()}, got {sampler!r}")
    info: dict[str, Any] = {}
    if sampler == AUTO:
        probe = run_sampler("flow_metropolis", flow, flow.target,
                            resolve_settings("flow_metropolis", dict(n_chains=8, n_warmup=8, n_samples=64,
                                                                     max_keep=16)), generator)
        info["probe_acceptance"] = probe.accept
        sampler = "flow_metropolis" if probe.accept >= settings["min_metropolis_acceptance"] else "latent_hmc"
    run = run_sampler(sampler, flow, flow.target, resolve_settings(sampler, settings), generator, progress=progress)
    info.update(sampler=run.sampler, acceptance=run.accept, wall_time_s=run.wall_time,
                sampler_settings=run.settings)
    return run.x.detach(), info


def load_samples(path: str | Path, L: int) -> torch.Tensor:
    """Configurations ``x`` (M, L, L) from a ``samples.npz`` written by ``sample.py``."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"samples must be an existing .npz file with key 'x', got {str(p)!r}")
    with np.load(p) as data:
        if "x" not in data:
            raise ValueError(f"samples file {p} has no array 'x' (keys: {sorted(data.files)})")
        x = torch.from_numpy(np.asarray(data["x"]))
    if x.dim() != 3 or tuple(x.shape[1:]) != (L, L) or x.shape[0] < 16:
        raise ValueError(f"samples file {p}: x must be shaped (M >= 16, {L}, {L}), got {tuple(x.shape)}")
    return x


# ----------------------------------------------------------------------------- analysis
def _mi_summary(level_pairs: list[dict[str, Any]], physical: list[dict[str, Any]], methods: Sequence[str]
                ) -> dict[str, Any]:
    out = {}
    nn = next((p for p in physical if p["distance"] == 1), None)
    for m in methods:
        phys = nn["mi"][m] if nn else None
        lat = [p["mi"][m] for p in level_pairs if p["mi"][m] is not None]
        mean = float(np.mean(lat)) if lat else None

        def ratio(v: float | None) -> float | None:
            return phys / v if phys is not None and v is not None and v > 0 else None

        out[m] = {"physical_nn": phys, "latent_mean": mean, "ratio_physical_nn_over_latent_mean": ratio(mean),
                  "per_level_ratio": [ratio(p["mi"][m]) for p in level_pairs]}
    return out


def analyze_samples(flow: Any, x: torch.Tensor, *, mi: dict[str, Any] | None = None,
                    response: dict[str, Any] | None = None, landscape: dict[str, Any] | None = None,
                    seed: int = 0, progress: Progress | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """All statistics for exact samples x ~ p (M, L, L) of ``flow``'s target (``progress``: one
    stage each for latents, MI estimation, response, landscape).

    Returns (results, arrays): results are the analysis.json sections level_stats,
    physical_pairs, mi_estimator, mi_summary, latent_levels, response, response_physical,
    coarse_latents, rg_organisation, landscape, timing; arrays hold what the figures need (z, y,
    maps, maps_physical, cones, z_top, m_aligned, y_hierarchy).
    """
    mi = _merged(DEFAULT_MI, mi, "mi")
    response = _merged(DEFAULT_RESPONSE, response, "response")
    landscape = _merged(DEFAULT_LANDSCAPE, landscape, "landscape")
    _check_config(DEFAULT_SETTINGS, mi, response, landscape)
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or tuple(x.shape[1:]) != (flow.L, flow.L) or x.shape[0] < 16:
        raise ValueError(f"x must be a tensor shaped (M >= 16, {flow.L}, {flow.L}), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    methods = list(mi["methods"])
    pair_kw = dict(methods=methods, ksg_k=int(mi["k"]), max_samples=mi["max_samples"], seed=int(seed))
    timing: dict[str, float] = {}
    prog = progress if progress is not None else NULL_PROGRESS
    running = [False]

    def stage(name: str | None) -> None:  # one unit per stage: these estimators report no inner steps
        if running[0]:
            prog.update(1)
            prog.finish()
        running[0] = name is not None
        if name is not None:
            prog.start(name, 1)

    stage("latents z = g⁻¹(x)")
    t0 = time.perf_counter()
    gen = torch.Generator(device=flow.device).manual_seed(int(seed) + 1)
    x = x.to(flow.device, flow.dtype)
    z, y = latents_under_p(flow, x, generator=gen)
    levels = flow.latent_levels.cpu()
    n_levels = int(levels.max()) + 1
    z_cpu, x_cpu, y_cpu = z.detach().cpu(), x.detach().cpu(), y.detach().cpu()
    timing["latents_s"] = time.perf_counter() - t0

    stage(f"MI estimation ({', '.join(methods)})")
    t0 = time.perf_counter()
    moments = level_moments(z_cpu, levels)
    pairs = level_pair_statistics(z_cpu, levels, **pair_kw)
    for s, p in zip(moments, pairs):
        s["neighbours"] = {k: v for k, v in p.items() if k != "level"}
    distances = [2 ** k for k in range(n_levels) if 2 ** k < flow.L]
    physical = physical_pair_statistics(x_cpu, distances, **pair_kw)
    timing["statistics_s"] = time.perf_counter() - t0

    stage("response maps")
    t0 = time.perf_counter()
    rkw = dict(n_latents=int(response["n_latents"]), n_configs=int(response["n_configs"]), seed=int(seed))
    resp, maps, cones = response_analysis(flow, z, **rkw)
    resp_x, maps_x = None, None
    if has_preconditioner(flow):
        resp_x, maps_x, _ = response_analysis(flow, z, physical=True, **rkw)
    timing["response_s"] = time.perf_counter() - t0

    stage("coarse latents and landscape")
    t0 = time.perf_counter()
    obs_y = flow.target.observables(y_cpu.double())  # y: x in the flow's sign convention (= x without Z2)
    m_y = order_parameter(obs_y)  # m, or the staggered m of an antiferromagnet
    coarse = coarse_latent_correlations(z_cpu, m_y, obs_y["energy"], levels)
    rg = rg_organisation(z_cpu, y_cpu, m_y, levels, level_pairs=pairs, physical_pairs=physical,
                         method=methods[0], response=resp, response_physical=resp_x)
    rg["r2_m_top_levels_one_sign"] = one_sign_r2(flow, x, seed)
    z_top = z_cpu[:, 0, 0].double().numpy()
    m_x = order_parameter(flow.target.observables(x_cpu.double())).numpy()
    m_y = m_y.numpy()
    lkw = dict(bins=int(landscape["bins"]), grid_points=int(landscape["grid_points"]))
    land = {
        "variable": f"z at site (0, 0), level {int(levels[0, 0])} (the coarsest latent)",
        "top_latent": free_energy_landscape(z_top, **lkw),
        "magnetisation": free_energy_landscape(m_x, **lkw),
        "note": "density of z_top under p; a perfect flow gives ½z² (single well) at any T; a double well "
                "(BC > 5/9, small density_ratio_at_zero) marks the phase barrier the flow cannot fully remove",
    }
    timing["coarse_and_landscape_s"] = time.perf_counter() - t0
    stage(None)

    results = {
        "latent_levels": {"n_levels": n_levels,
                          "sites_per_level": [int((levels == k).sum()) for k in range(n_levels)],
                          "spacing_per_level": [2 ** k for k in range(n_levels)]},
        "mi_estimator": {"methods": methods, "primary": methods[0], "ksg_k": int(mi["k"]),
                         "max_samples": mi["max_samples"], "units": "nats",
                         "pairs": "pooled over sites, both axes and all samples; KSG subsamples max_samples pairs"},
        "level_stats": moments,
        "physical_pairs": physical,
        "mi_summary": _mi_summary(pairs, physical, methods),
        "response": resp,
        "response_physical": resp_x,
        "coarse_latents": coarse,
        "rg_organisation": rg,
        "landscape": land,
        "timing": timing,
    }
    fixed = len(hierarchy_layers(flow)) < len(list(flow.flows))  # a preconditioner or a sign gauge
    y_hier = (hierarchy_output(flow, y_cpu[:1].to(flow.device, flow.dtype))[0].detach().double().cpu()
              if fixed else None)
    arrays = {"z": z_cpu, "y": y_cpu, "levels": levels, "maps": maps.detach().cpu(), "cones": cones,
              "maps_physical": None if maps_x is None else maps_x.detach().cpu(), "y_hierarchy": y_hier,
              "z_top": z_top, "m_aligned": m_y}
    return results, arrays


def write_figures(out: Path, results: dict[str, Any], arrays: dict[str, Any]) -> list[str]:
    """The PNG figures (``FIGURES``) into ``out``; returns their file names."""
    methods = results["mi_estimator"]["methods"]
    figs = {
        "latent_stats.png": plot_latent_stats(results["level_stats"], arrays["z"], arrays["levels"]),
        "mutual_information.png": plot_mutual_information(
            [{"level": s["level"], **s["neighbours"]} for s in results["level_stats"]],
            results["physical_pairs"], methods),
        "response_maps.png": plot_response_maps(arrays["maps"], arrays["cones"], results["response"]),
        "top_latent_landscape.png": plot_landscape(results["landscape"], arrays["z_top"], arrays["m_aligned"]),
        "rg_levels.png": plot_rg_levels(arrays["y"][0], arrays["z"][0], arrays["levels"], arrays["maps"],
                                        arrays["cones"], results["response"], maps_physical=arrays["maps_physical"],
                                        y_hierarchy=arrays["y_hierarchy"]),
    }
    for name, fig in figs.items():
        save_figure(fig, out / name)
    return list(figs)


# ----------------------------------------------------------------------------- output
def _jsonable(obj: Any) -> Any:
    """Plain JSON data: tuples → lists, numpy/torch scalars → Python, non-finite floats → None."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    return obj


def scalar_metrics(result: dict[str, Any]) -> dict[str, float]:
    """Flat {name: number} view of the headline numbers (for W&B and the sweep)."""
    out: dict[str, float] = {}
    primary = result["mi_estimator"]["primary"]
    for s in result["level_stats"]:
        k = s["level"]
        for key in ("mean", "variance", "excess_kurtosis"):
            out[f"level{k}/{key}"] = s[key]
        nb = s["neighbours"]
        out[f"level{k}/neighbour_corr"] = nb["correlation"]
        for m, v in nb["mi"].items():
            out[f"level{k}/mi_{m}"] = v
    for p in result["physical_pairs"]:
        for m, v in p["mi"].items():
            out[f"physical/d{p['distance']}/mi_{m}"] = v
    out["mi/ratio_physical_nn_over_latent_mean"] = result["mi_summary"][primary]["ratio_physical_nn_over_latent_mean"]
    for e in result["response"]["levels"]:
        out[f"response/level{e['level']}/radius_rms"] = e["radius_rms_mean"]
        out[f"response/level{e['level']}/radius_90"] = e["radius_90_mean"]
    out["response/growth_factor_rms"] = result["response"]["growth_factor_rms"]
    out["response/growth_factor_90"] = result["response"]["growth_factor_90"]
    out["response/growth_factor_rms_offsite"] = result["response"]["growth_factor_rms_offsite"]
    out["coarse/r2_m_linear"] = result["coarse_latents"]["r2_m_linear"]
    out["response/fit_levels_max"] = max(result["response"]["fit_levels"], default=None)
    if result.get("response_physical"):
        out["response_x/growth_factor_rms"] = result["response_physical"]["growth_factor_rms"]
        for e in result["response_physical"]["levels"]:
            out[f"response_x/level{e['level']}/radius_rms"] = e["radius_rms_mean"]
    rg = result.get("rg_organisation")
    if rg:
        for k, v in rg["r2_m_top_levels"].items():
            out[f"rg/r2_m_{k}"] = v
        for k, v in (rg.get("r2_m_top_levels_one_sign") or {}).items():
            out[f"rg/r2_m_one_sign_{k}"] = v
        for k, v in rg["structure_factor_explained"].items():
            if v:
                out[f"rg/sk0_fraction_{k}"] = v["k0"]["fraction"]
                out[f"rg/skmin_fraction_{k}"] = v["kmin"]["fraction"]
        for k, v in enumerate(rg["mi"]["ratio_physical_nn_over_latent_per_level"]):
            out[f"rg/level{k}/mi_ratio_physical_nn_over_latent"] = v
    out["coarse/top_max_abs_corr_m"] = result["coarse_latents"]["levels"][0]["max_abs_corr_m"]
    for key in ("top_latent", "magnetisation"):
        out[f"landscape/{key}/bimodality_coefficient"] = result["landscape"][key]["bimodality_coefficient"]
        out[f"landscape/{key}/density_ratio_at_zero"] = result["landscape"][key]["density_ratio_at_zero"]
    return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(float(v))}


def log_to_wandb(out: Path, result: dict[str, Any], figures: Sequence[str], wandb_cfg: dict[str, Any]) -> bool:
    """Log the headline numbers and figures to W&B (``tracking``); never raises. Returns True on success."""
    t = result["target"]
    info = training_run_info(result["run"])  # grouped with the training run, in its project
    run = open_run(project=wandb_cfg.get("project") or info["project"], name=wandb_cfg.get("name") or f"analysis_L{t['L']}",
                   dir=str(out), mode=wandb_cfg.get("mode"), job_type="analyze", group=info["group"],
                   config={"run": result["run"], "target": t, "model": result["model"], "sampling": result["sampling"]})
    if run is None:
        return False
    try:
        import wandb

        payload: dict[str, Any] = dict(scalar_metrics(result))
        for f in figures:
            payload[f"figures/{Path(f).stem}"] = wandb.Image(str(out / f))
        run.log(payload)
    except Exception as exc:  # noqa: BLE001 - W&B must never cost the analysis
        log.warning("W&B logging failed (%s: %s); the outputs on disk are complete", type(exc).__name__, exc)
        close_run(run, failed=True)
        return False
    close_run(run)
    return True


def run_analysis(*, run: str | Path, out_dir: str | Path | None = None, sampler: str = "latent_hmc",
                 settings: dict[str, Any] | None = None, samples: str | Path | None = None,
                 L: int | None = None, K: float | None = None, at_L: int | None = None, seed: int = 0,
                 device: str = "auto",
                 dtype: str | None = None, mi: dict[str, Any] | None = None,
                 response: dict[str, Any] | None = None, landscape: dict[str, Any] | None = None,
                 figures: bool = True, logger: str = "none", wandb: dict[str, Any] | None = None,
                 progress: Progress | None = None) -> dict[str, Any]:
    """Analyse the flow of ``run`` (run directory or .ckpt) and write the outputs.

    sampler: latent_hmc | flow_metropolis | auto (ignored when ``samples`` names a samples.npz
    of exact draws); settings: chain sizes (``DEFAULT_SETTINGS``); L / K: expected lattice size
    and coupling (checked against the checkpoint); at_L: analyse the trained flow on the at_L × at_L
    lattice with the same parameters (as ``sample.run_sampling``); dtype: float32 | float64 | None (the
    checkpoint's); mi / response / landscape: estimator options (``DEFAULT_MI`` …);
    logger: none | wandb; progress: a ``sampling.progress.Progress`` for the long stages. Returns
    the analysis.json content plus "out_dir".
    """
    settings = _merged(DEFAULT_SETTINGS, settings, "settings")
    mi_cfg = _merged(DEFAULT_MI, mi, "mi")
    resp_cfg = _merged(DEFAULT_RESPONSE, response, "response")
    land_cfg = _merged(DEFAULT_LANDSCAPE, landscape, "landscape")
    _check_config(settings, mi_cfg, resp_cfg, land_cfg)
    if sampler not in exact_samplers():
        raise ValueError(f"sampler must be one of {exact_samplers()}, got {sampler!r}")
    if logger not in ("none", "wandb"):
        raise ValueError(f"logger must be 'none' or 'wandb', got {logger!r}")
    torch_dtype = None if dtype is None else parse_dtype(dtype, "dtype (null for the checkpoint's)")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")

    if at_L is None:
        flow = load_flow(run, L=L, K=K, map_location=resolve_device(device), dtype=torch_dtype)
    else:
        flow = load_flow_at(run, at_L, trained_L=L, K=K, map_location=resolve_device(device), dtype=torch_dtype)
    out = Path(out_dir) if out_dir else run_output_dir(run, "analysis")
    if (out / "analysis.json").exists():
        raise ValueError(f"out_dir {out} already holds a completed analysis; choose another out_dir")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    gen = torch.Generator(device=flow.device).manual_seed(seed)

    t0 = time.perf_counter()
    if samples:
        x = load_samples(samples, flow.L)
        info: dict[str, Any] = {"sampler": "samples_file", "path": str(samples), "acceptance": None}
    else:
        x, info = draw_exact_samples(flow, sampler, settings, gen, progress)
    sampling_s = time.perf_counter() - t0
    results, arrays = analyze_samples(flow, x, mi=mi_cfg, response=resp_cfg, landscape=land_cfg, seed=seed,
                                      progress=progress)
    results["timing"]["sampling_s"] = sampling_s
    info.update(settings=settings, n_configurations=int(x.shape[0]), exact=True,
                requested_sampler=sampler if not samples else None)
    if flow.z2:
        info["z2_alignment"] = ("Z2 flow: each x is mapped with the sign σ drawn from P(σ|x) ∝ q(σx); "
                                "latent stats use z = g⁻¹(σx), physical MI and F(m) use x")

    t = flow.target
    result: dict[str, Any] = {
        "run": str(run), "checkpoint": str(resolve_checkpoint(run)), "created": datetime.now().isoformat(),
        "target": target_summary(t), "model": dict(flow.config),
        "device": str(flow.device), "dtype": dtype_name(flow.dtype), "seed": seed,
        "threads": torch.get_num_threads(), "sampling": info, **results,
    }
    result["figures"] = write_figures(out, results, arrays) if figures else []
    result = _jsonable(result)
    if logger == "wandb":
        result["wandb_logged"] = log_to_wandb(out, result, result["figures"], dict(wandb or {}))
    tmp = out / "analysis.json.tmp"
    tmp.write_text(json.dumps(result, indent=2, allow_nan=False))
    os.replace(tmp, out / "analysis.json")
    result["out_dir"] = str(out)
    return result


def format_report(result: dict[str, Any]) -> str:
    """A few terminal lines: per-level moments and MI, physical MI, radii, coarse latents, landscape."""
    primary = result["mi_estimator"]["primary"]
    methods = result["mi_estimator"]["methods"]
    fmt = lambda v, f=".4f": "  n/a" if v is None else format(v, f)  # noqa: E731
    t = dict(result["target"])
    name = str(t.pop("class", "target")).rpartition(":")[2]
    args = ", ".join(f"{k} = {v:.6g}" if isinstance(v, float) else f"{k} = {v}" for k, v in t.items())
    lines = [f"{name}({args}); {result['sampling']['n_configurations']} exact samples "
             f"({result['sampling']['sampler']}, acceptance {fmt(result['sampling'].get('acceptance'), '.3f')}); "
             f"MI in nats, estimators {methods} (primary {primary})",
             f"{'level':>5} {'mean':>8} {'var':>7} {'ex.kurt':>8} {'corr':>7} "
             + " ".join(f"{'MI ' + m[:6]:>10}" for m in methods) + f" {'r_rms':>7} {'r_90':>6}"]
    resp = {e["level"]: e for e in result["response"]["levels"]}
    for s in result["level_stats"]:
        nb = s["neighbours"]
        e = resp[s["level"]]
        lines.append(f"{s['level']:>5} {fmt(s['mean'], '8.4f')} {fmt(s['variance'], '7.4f')} "
                     f"{fmt(s['excess_kurtosis'], '8.3f')} {fmt(nb['correlation'], '7.3f')} "
                     + " ".join(f"{fmt(nb['mi'][m], '10.4f')}" for m in methods)
                     + f" {e['radius_rms_mean']:7.2f} {e['radius_90_mean']:6.2f}")
    for p in result["physical_pairs"]:
        lines.append(f"physical x, distance {p['distance']}: corr {fmt(p['correlation'], '.3f')}, MI "
                     + ", ".join(f"{m} {fmt(p['mi'][m])}" for m in methods))
    ms = result["mi_summary"][primary]
    r = result["response"]
    lines += [f"MI physical nn / mean latent MI ({primary}): {fmt(ms['ratio_physical_nn_over_latent_mean'], '.2f')}",
              f"response radius growth per level: rms {fmt(r['growth_factor_rms'], '.2f')}, "
              f"90% {fmt(r['growth_factor_90'], '.2f')}, off-site rms {fmt(r['growth_factor_rms_offsite'], '.2f')} "
              f"(fit levels {r['fit_levels']}, expected 2)"]
    c = result["coarse_latents"]
    lines.append(f"coarsest latents: max |corr(z_top, m)| = {fmt(c['levels'][0]['max_abs_corr_m'], '.3f')}, "
                 f"R²(m | top levels) = {fmt(c['r2_m_linear'], '.3f')}, "
                 f"R²(e | top levels, quadratic) = {fmt(c['r2_energy_quadratic'], '.3f')}")
    rg = result.get("rg_organisation")
    if rg:
        rx = result.get("response_physical")
        lines.append(f"RG organisation: radius growth on {r.get('space', 'y')} {fmt(r['growth_factor_rms'], '.2f')}"
                     + (f", on x {fmt(rx['growth_factor_rms'], '.2f')}" if rx else "")
                     + f" (levels {r['fit_levels']}); R²(m | top 1, 2 levels) = "
                     + ", ".join(fmt(rg["r2_m_top_levels"][k], ".3f") for k in ("top1", "top2"))
                     + " (within one sign of m: "
                     + ", ".join(fmt((rg.get("r2_m_top_levels_one_sign") or {}).get(k), ".3f") for k in ("top1", "top2"))
                     + ")")
        sk = rg["structure_factor_explained"]
        lines.append("  S(k) explained linearly by top 1, 2 levels: k = 0: "
                     + ", ".join(fmt(sk[k]["k0"]["fraction"] if sk[k] else None, ".3f") for k in ("top1", "top2"))
                     + "; |k| = 2π/L: "
                     + ", ".join(fmt(sk[k]["kmin"]["fraction"] if sk[k] else None, ".3f") for k in ("top1", "top2"))
                     + "; MI ratio physical nn / latent per level: "
                     + ", ".join(fmt(v, ".1f") for v in rg["mi"]["ratio_physical_nn_over_latent_per_level"]))
    lt, lm = result["landscape"]["top_latent"], result["landscape"]["magnetisation"]
    lines.append(f"landscape z_top: BC = {fmt(lt['bimodality_coefficient'], '.3f')}, ρ(0)/ρmax = "
                 f"{fmt(lt['density_ratio_at_zero'], '.3f')};  m: BC = {fmt(lm['bimodality_coefficient'], '.3f')}, "
                 f"ρ(0)/ρmax = {fmt(lm['density_ratio_at_zero'], '.3f')}  (BC > 0.555: bimodal)")
    return "\n".join(lines)
