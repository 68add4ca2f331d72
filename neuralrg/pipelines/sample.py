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
flow without Z2, ``importance_sampling_z2`` (the same for its symmetrised density q_sym);
``threads`` (torch's intra-op threads during the run); with ``max_time``: ``max_time_s`` and
``partial`` (true if any sampler stopped at its share of the budget; per sampler ``partial``,
``trajectories_kept`` of ``trajectories_requested``; error bars are from the kept part).
With ``log_to="wandb"`` the run is logged to W&B in the training run's project and group
(``log_to_wandb``), and the training run's summary.json gains ``sampling`` (``training_record``).
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import load_flow, load_flow_at, resolve_checkpoint, target_summary
from ..plotting import plot_configurations, plot_latent_levels, plot_traces, save_figure
from ..physics.statistics import autocorrelation
from ..sampling.chains import WARMUP_TAUS, ChainRun, summarize_run
from ..sampling.annealed import annealed_importance, annealed_summary, check_annealing, format_annealed
from ..sampling.importance import draw_log_weights, flow_summary, format_is_estimate
from ..sampling.progress import Progress
from ..sampling.registry import (available, check_common_keys, check_supported, get_sampler, resolve_settings,
                                 run_sampler, unsupported_reason)
from ..spec import dtype_name
from ..training.memory import check_step_memory
from .cli import parse_duration
from .runs import resolve_device, run_output_dir
from .tracking import close_run, log_images, open_run, training_run_info, update_training_run

log = logging.getLogger("neuralrg")

COMPARE = ("latent_hmc", "physical_hmc", "flow_metropolis", "wolff")
#: samplers whose chains differentiate through the flow: memory like a training step with n_chains samples
GRADIENT_THROUGH_FLOW = ("latent_hmc", "latent_hmc_flow_mh", "blocked_latent_hmc")
HEAVY_TAIL_ESS = 0.1  # flow-Metropolis runs below this importance-sampling ESS/M get a warning


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def sampler_settings(samplers: list[str], settings: dict[str, Any] | None,
                     per_sampler: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """Resolved, validated settings of every sampler in ``samplers`` (see ``registry.resolve_settings``):
    ``settings`` are shared (each sampler takes the keys it knows), ``per_sampler[name]`` its own."""
    if isinstance(samplers, str) or not samplers:
        raise ValueError(f"samplers must be a non-empty list of {sorted(available())}, got {samplers!r}")
    for name in samplers:
        get_sampler(name)
    if settings is not None and not isinstance(settings, dict):
        raise ValueError(f"settings must be a dict, got {type(settings).__name__}")
    check_common_keys(dict(settings or {}), samplers)
    per_sampler = {k: dict(v or {}) for k, v in (per_sampler or {}).items()}
    for name in per_sampler:
        get_sampler(name)
    return {name: resolve_settings(name, settings, per_sampler.get(name)) for name in samplers}


ANNEALED_KEYS = {"samples": 0, "stages": 16, "n_leapfrog": 5, "step_size": None, "batch_size": 256}
"""Settings of ``annealed`` (``conf/sample.yaml``, annealed_importance) and their defaults."""


def annealed_settings(annealed: dict[str, Any] | None) -> dict[str, Any] | None:
    """``annealed`` completed with ``ANNEALED_KEYS``' defaults and checked; None when it skips (no
    dict, or samples 0). An unknown key or a bad value is a ValueError naming it."""
    if annealed is None:
        return None
    if not isinstance(annealed, dict):
        raise ValueError(f"annealed_importance must be a mapping of {sorted(ANNEALED_KEYS)}, got {annealed!r}")
    unknown = sorted(set(annealed) - set(ANNEALED_KEYS))
    if unknown:
        raise ValueError(f"annealed_importance: unknown key(s) {unknown}; known: {sorted(ANNEALED_KEYS)}")
    s = {**ANNEALED_KEYS, **annealed}
    if s["samples"] == 0 and _is_int(s["samples"]):
        return None
    try:
        check_annealing(s["samples"], s["stages"], s["n_leapfrog"], s["step_size"], s["batch_size"])
    except ValueError as exc:
        raise ValueError(f"annealed_importance: {exc}") from None
    return s


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
                 L: int | None = None, K: float | None = None, expect: dict[str, Any] | None = None,
                 at_L: int | None = None,
                 seed: int = 0, device: str = "auto", importance_samples: int = 0, figures: bool = True,
                 symmetrize: bool = True, per_sampler: dict[str, dict[str, Any]] | None = None,
                 max_time: float | str | None = None, progress: Progress | None = None,
                 log_to: str = "none", wandb: dict[str, Any] | None = None,
                 memory_limit: Any = None, annealed: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run ``samplers`` (registry names) on the flow of ``run`` (run dir or .ckpt), write the outputs.

    ``symmetrize``: sample with the Z2-symmetrised flow q_sym (random global sign; latent HMC
    uses U with q_sym, flow Metropolis the q_sym weights) where the target is Z2 symmetric.
    Reverse KL tends to cover only one sign of m, so this is the default; it costs one extra
    inverse pass per density evaluation. ``settings``: shared by all samplers (each takes the
    keys it knows); ``per_sampler``: settings of one sampler, e.g. {"physical_hmc": {"n_samples": 8000}}.
    ``L`` / ``K`` / ``expect``: expected target parameters of the checkpoint; ``at_L``: run the
    trained flow on the at_L × at_L lattice with the same parameters (a level-shared MERA or a
    flat flow: ``checkpoint.load_flow_at``, zero-shot transfer); ``importance_samples``:
    0, or M ≥ 2 flow samples for ln Z and ESS. ``max_time``: wall-time budget of the sampling
    ("10m", "90s", "1h" or seconds; also read from ``settings["max_time"]``), shared by the
    samplers in turn (each gets an equal share of what is left, after its warm-up) and stopped
    cleanly: partial results are flagged. ``progress``: a ``sampling.progress.Progress``.
    ``log_to``: none | wandb (``wandb``: project / name / mode overrides). ``memory_limit``: the
    samplers that differentiate through the flow (latent HMC and its variants) are refused before
    they start when their chains would not fit (``training.memory``; null: the device's free
    memory, off: no check). Returns the summary
    (plus ``out_dir``). Bad input raises ``ValueError`` (``CheckpointError`` for checkpoints)
    before anything is written.
    """
    settings = dict(settings or {})
    if "max_time" in settings:
        max_time = settings.pop("max_time") if max_time is None else max_time
        settings_record = {**settings, "max_time": max_time}
    else:
        settings_record = settings
    budget = parse_duration(max_time)
    if log_to not in ("none", "wandb"):
        raise ValueError(f"log_to must be 'none' or 'wandb', got {log_to!r}")
    resolved = sampler_settings(samplers, settings, per_sampler)
    if not _is_int(importance_samples) or importance_samples < 0 or importance_samples == 1:
        raise ValueError(f"importance_samples must be 0 (skip) or an integer >= 2, got {importance_samples!r}")
    if not _is_int(seed):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    anneal = annealed_settings(annealed)
    if at_L is None:
        flow = load_flow(run, L=L, K=K, expect=expect, map_location=resolve_device(device))
    else:
        flow = load_flow_at(run, at_L, trained_L=L, K=K, expect=expect, map_location=resolve_device(device))
    for name in (n for n in samplers if n in GRADIENT_THROUGH_FLOW):
        try:
            check_step_memory(flow, resolved[name]["n_chains"], memory_limit, device=flow.device, what="n_chains")
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    if anneal is not None:
        check_step_memory(flow, anneal["batch_size"], memory_limit, device=flow.device,
                          what="annealed_importance.batch_size")
    target = flow.target
    trained_z2 = flow.z2
    flow.z2 = (bool(symmetrize) and target.z2_symmetric) or trained_z2
    out = Path(out_dir) if out_dir else run_output_dir(run, "sampling")
    _check_out_dir(out)
    gen = torch.Generator(device=flow.device).manual_seed(seed)
    skipped, samplers = applicable_samplers(samplers, target)

    results: dict[str, Any] = {}
    runs: dict[str, ChainRun] = {}
    spent = 0.0  # sampling seconds (after warm-up) used so far
    for i, name in enumerate(samplers):
        share = None if budget is None else max(budget - spent, 0.0) / (len(samplers) - i)
        r = run_sampler(name, flow, target, resolved[name], gen, progress=progress, max_time=share)
        runs[name] = r
        results[name] = summarize_run(r, target)
        spent += r.seconds_per_step * results[name]["trajectories_kept"]
    summary: dict[str, Any] = {
        "run": str(run), "checkpoint": str(resolve_checkpoint(run)), "target": target_summary(target),
        "model": flow.config, "device": str(flow.device), "dtype": dtype_name(flow.dtype),
        "threads": torch.get_num_threads(),
        "seed": seed, "settings": settings_record, "per_sampler": per_sampler or {}, "resolved_settings": resolved,
        "symmetrized": flow.z2, "trained_with_z2": trained_z2, "samplers": results,
    }
    if budget is not None:
        summary["max_time_s"] = budget
        summary["partial"] = any(r["partial"] for r in results.values())
    if skipped:
        summary["skipped"] = skipped
    if importance_samples:
        # the density as trained, and (if trained without Z2) the symmetrised one: reverse KL
        # tends to cover one sign of m, and then the plain ln Ẑ misses ln 2
        symmetrized, flow.z2 = flow.z2, trained_z2
        try:
            summary["importance_sampling"] = importance_summary(flow, importance_samples, gen, progress)
            if not trained_z2 and target.z2_symmetric:
                flow.z2 = True
                summary["importance_sampling_z2"] = importance_summary(flow, importance_samples, gen, progress,
                                                                       "importance sampling (Z2)")
        finally:
            flow.z2 = symmetrized
    if anneal is not None:
        draws = annealed_importance(flow, anneal.pop("samples"), fold=settings.get("fold"), generator=gen,
                                    progress=progress, **anneal)
        summary["annealed_importance"] = annealed_summary(flow, draws, gen)

    main = runs[samplers[0]]
    arrays = {"x": main.x, "z": main.z, "log_q": main.log_q, "energy_per_sample": main.energy,
              "latent_levels": flow.latent_levels}
    for name, r in runs.items():
        for k in ("m2", "energy"):
            arrays[f"{name}__{k}"] = r.observables[k]
    np_arrays = {k: v.detach().cpu().numpy() for k, v in arrays.items() if v is not None}
    _check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / "samples.npz", lambda p: _save_npz(p, np_arrays))
    if figures:
        write_figures(out, flow, runs)
    if log_to == "wandb" and ((wandb or {}).get("mode") or os.environ.get("WANDB_MODE", "offline")) != "disabled":
        summary["wandb_logged"] = log_to_wandb(out, summary, dict(wandb or {}))
        summary["training_run_updated"] = update_training_run(training_run_info(run), "sampling",
                                                              training_record(summary, out), (wandb or {}).get("mode"))
    _atomic_write(out / "summary.json", lambda p: p.write_text(json.dumps(summary, indent=2, default=float)))
    summary["out_dir"] = str(out)
    return summary


TABLE_COLUMNS = ["sampler", "acceptance", "seconds_per_trajectory", "tau_int_m2", "tau_int_energy", "ess_per_second",
                 "headline", "mean", "err", "deviation_sigma", "reliable", "partial", "trajectories_kept"]


def comparison_rows(summary: dict[str, Any]) -> list[list[Any]]:
    """One row per sampler (``TABLE_COLUMNS``): the printed table as data."""
    rows = []
    for name, r in summary["samplers"].items():
        head = r.get("headline", "energy_per_site")
        e = r["observables"][head]
        rows.append([name, r["acceptance"], r["seconds_per_trajectory"], r["tau_int"]["m2"]["trajectories"],
                     r["tau_int"]["energy"]["trajectories"], r["ess_per_second"], head, e["mean"], e["err"],
                     r["deviation_sigma"].get(head), r.get("reliable"), r["partial"], r["trajectories_kept"]])
    return rows


def training_record(summary: dict[str, Any], out: Path) -> dict[str, Any]:
    """The final sampling numbers the training run's summary gains (``tracking.update_training_run``)."""
    rec: dict[str, Any] = {"out_dir": str(out), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                           "partial": summary.get("partial", False),
                           "samplers": {row[0]: dict(zip(TABLE_COLUMNS[1:], row[1:])) for row in comparison_rows(summary)}}
    for key in ("importance_sampling", "importance_sampling_z2", "annealed_importance"):
        if key in summary:
            rec[key] = {k: summary[key].get(k) for k in ("is_log_z_per_site", "is_log_z_per_site_err",
                                                          "ess_fraction", "is_khat", "is_reliable",
                                                          "free_energy_per_site")}
    return rec


def log_to_wandb(out: Path, summary: dict[str, Any], cfg: dict[str, Any]) -> bool:
    """Log a sampling run to W&B (``tracking``): project and group of the training run, job_type
    sample; the comparison table, the figures written to ``out`` (traces with autocorrelations,
    samples, latents) and, in the run summary, τ_int, ESS/s and the IS ln Z / ESS / k̂. Never raises."""
    info = training_run_info(summary["run"])
    t = summary["target"]
    run = open_run(project=cfg.get("project") or info["project"], name=cfg.get("name") or f"sample_L{t.get('L')}",
                   dir=str(out), mode=cfg.get("mode"), job_type="sample", group=info["group"],
                   config={"run": summary["run"], "target": t, "model": summary["model"],
                           "settings": summary["resolved_settings"], "seed": summary["seed"],
                           "training_wandb_id": info["wandb_id"], "max_time_s": summary.get("max_time_s")})
    if run is None:
        return False
    try:
        import wandb

        run.log({"sampler_comparison": wandb.Table(columns=TABLE_COLUMNS, data=comparison_rows(summary))})
        log_images(run, sorted(out.glob("*.png")))
    except Exception as exc:  # noqa: BLE001 - W&B must never cost the sampling
        log.warning("W&B logging failed (%s: %s); the outputs on disk are complete", type(exc).__name__, exc)
        close_run(run, failed=True)
        return False
    numbers = {"samplers": {n: {k: v for k, v in r.items() if k in ("acceptance", "ess_per_second", "tau_int",
                                                                      "seconds_per_trajectory", "trajectories_kept")}
                            for n, r in summary["samplers"].items()}}
    for key in ("importance_sampling", "importance_sampling_z2", "annealed_importance"):
        if key in summary:
            numbers[key] = summary[key]
    close_run(run, numbers, prefix="")
    return True


def applicable_samplers(samplers: list[str], target: Any) -> tuple[dict[str, str], list[str]]:
    """({name: reason} of the samplers that do not apply to ``target``, the others in order).

    One sampler (single mode) that does not apply is a ValueError; in a comparison (several)
    those are skipped, but at least one must apply."""
    if len(samplers) == 1:
        check_supported(samplers[0], target)
    skipped = {n: r for n in samplers if (r := unsupported_reason(n, target)) is not None}
    kept = [n for n in samplers if n not in skipped]
    if not kept:
        raise ValueError(f"none of the samplers {samplers} applies to {target.describe()}: {skipped}")
    return skipped, kept


def importance_summary(flow: Any, n_samples: int, generator: torch.Generator, progress: Progress | None = None,
                       stage: str = "importance sampling") -> dict[str, float]:
    """``flow_summary`` (F_q, IS ln Z, ESS, k̂) of ``n_samples`` fresh flow samples."""
    lq, lp = draw_log_weights(flow, n_samples, generator=generator, progress=progress, stage=stage)
    return flow_summary(flow, lq, lp)


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
    """One line per sampler: acceptance, τ_int, ESS/s, the headline observable vs exact (where known)."""
    first = next(iter(summary["samplers"].values()))
    head = first.get("headline", "energy_per_site")
    label = {"energy_per_site": "e", "action_per_site": "s"}.get(head, head)
    rows = [f"{'sampler':<20} {'accept':>6} {'s/traj':>8} {'tau(m2)':>9} {'tau(E)':>8} {'ESS/s':>9} "
            f"{label + ' ± err':>22} {'dev':>6}"]
    exact_e = None
    heavy_tails = None
    for name, r in summary["samplers"].items():
        ess = r["settings"].get("ess_fraction")
        if name == "flow_metropolis" and ess is not None and ess < HEAVY_TAIL_ESS:
            heavy_tails = ess
        e = r["observables"][head]
        exact_e = r["exact"].get(head, exact_e)
        tm, te = r["tau_int"]["m2"], r["tau_int"]["energy"]
        flag = lambda t: "" if t["converged"] else ">"  # noqa: E731
        rows.append(f"{name:<20} {r['acceptance']:6.3f} {r['seconds_per_trajectory']:8.4f} "
                    f"{flag(tm) + format(tm['trajectories'], '.1f'):>9} {flag(te) + format(te['trajectories'], '.1f'):>8} "
                    f"{r['ess_per_second']:9.2f} {e['mean']:>11.5f} ± {e['err']:.5f} "
                    f"{r['deviation_sigma'].get(head, float('nan')):6.2f}{'' if te['converged'] else '*'}"
                    f"{'' if r.get('equilibrated', True) else '~'}"
                    f"{'†' if name == 'flow_metropolis' and heavy_tails is not None else ''}"
                    f"{' [partial]' if r.get('partial') else ''}")
    rows.append(("" if exact_e is None else f"exact {head.replace('_', ' ')}: {exact_e:.6f}   ")
                + "('>': τ_int window not converged, lower bound;\n"
                "'*': so the error bar is too small and the deviation in σ overstated — run longer chains;\n"
                f"'~': warm-up shorter than {WARMUP_TAUS:.0f} τ_int: the chains may still carry their start's bias "
                "— raise n_warmup)")
    for name, r in summary["samplers"].items():
        if r.get("partial"):
            rows.append(f"[partial] {name}: stopped at its share of max_time = {summary.get('max_time_s', float('nan')):.0f} s "
                        f"after {r['trajectories_kept']}/{r['trajectories_requested']} trajectories; error bars are "
                        "from those (a short run: check the '>' and '*' flags)")
    for name, reason in summary.get("skipped", {}).items():
        rows.append(f"skipped {name}: {reason}")
    folded = [name for name, r in summary["samplers"].items() if r["settings"].get("fold") is not None]
    if folded:
        rows.append(f"sign fold (settings.fold): {', '.join(folded)} sampled the folded target 2σ(φ)·p with the "
                    "plain q and gave each state a random sign (exact; settings.fold=null for q_sym)")
    if heavy_tails is not None:
        rows.append(f"† flow Metropolis: importance weights are heavy tailed (ESS/M = {heavy_tails:.3g} < "
                    f"{HEAVY_TAIL_ESS}); chains hold rare high-weight states for long stretches, so a run this "
                    "short has not equilibrated and its τ_int and error bar are not reliable even where the window converged")
    return "\n".join(rows)


def format_importance(summary: dict[str, Any]) -> str:
    """The importance-sampling lines (``sampling.importance.format_is_estimate``)."""
    lines = []
    for key, label in (("importance_sampling", "flow"), ("importance_sampling_z2", "Z2-symmetrised flow")):
        if key in summary:
            lines.append(f"{label} importance sampling: {format_is_estimate(summary[key])}")
    if "annealed_importance" in summary:
        lines.append(format_annealed(summary["annealed_importance"]))
    return "\n".join(lines)
