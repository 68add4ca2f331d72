"""From a composed hydra config to a trained flow, its checkpoints and ``summary.json``.

``train.py`` only composes the config and calls ``run_training``. Keys of ``summary.json``:
target, model, dtype, device, steps, wall_time_s, status, the final evaluation
(``neuralrg.evaluation.evaluate_flow``: free_energy_per_site ± err, exact_free_energy_per_site
(−ln Z_x/N), gap_per_site, relative_error, is_log_z_per_site ± err, ess_fraction,
metropolis_acceptance), exact (Kaufman reference for the discrete model), and, for a flow
trained without Z2, the same evaluation of its Z2-symmetrised density under ``z2_eval``.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ..checkpoint import META_KEY, flow_metadata, read_checkpoint
from ..evaluation import evaluate_flow
from ..exact import exact_solution
from .data import StepIndices
from .module import FlowModule, NonFiniteLossError

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "float64": torch.float64}


class RunDirectoryError(ValueError):
    """The run directory already holds another run."""


def _check_run_dir(run_dir: Path, ckpt_path: str | None) -> None:
    taken = [p for p in (run_dir / "summary.json", run_dir / "checkpoints") if p.exists()]
    if not taken:
        return
    if ckpt_path and Path(ckpt_path).resolve().is_relative_to(run_dir.resolve()):
        return  # resuming in place from this directory's own checkpoint
    raise RunDirectoryError(
        f"run directory {run_dir} already holds a run ({taken[0].name}); choose another "
        "hydra.run.dir, or resume it with ckpt_path=<that run's checkpoints/last.ckpt>")


def _check_resume_matches(ckpt_path: str, module: FlowModule) -> None:
    meta = read_checkpoint(ckpt_path)[META_KEY]
    mine = flow_metadata(module.flow)
    for key in ("target", "model"):
        if meta[key] != mine[key]:
            raise ValueError(f"ckpt_path={ckpt_path} was trained with {key} {meta[key]}, "
                             f"but this run is configured with {key} {mine[key]}")


def build_module(cfg: DictConfig) -> FlowModule:
    """Instantiate target, flow and LightningModule from the config."""
    if cfg.dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {cfg.dtype!r}")
    target = instantiate(cfg.target)
    flow = instantiate(cfg.model)(target=target).to(DTYPES[cfg.dtype])
    container = OmegaConf.to_container(cfg, resolve=True)
    return FlowModule(
        flow, instantiate(cfg.optimizer), dict(cfg.scheduler), total_steps=cfg.steps,
        batch_size=cfg.batch_size, grad_clip=cfg.grad_clip, path_gradient=cfg.path_gradient,
        eval_every=cfg.eval_every, eval_samples=cfg.eval_samples, seed=cfg.seed, config=container)


def build_trainer(cfg: DictConfig, run_dir: Path) -> pl.Trainer:
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c and "_target_" in c]
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
    precision = "64-true" if cfg.dtype == "float64" else "32-true"
    return instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks,
                       default_root_dir=str(run_dir), max_steps=cfg.steps, precision=precision)


def final_evaluation(flow: Any, n_samples: int) -> dict[str, Any]:
    res = evaluate_flow(flow, n_samples)
    if not flow.z2:
        flow.z2 = True
        try:
            res["z2_eval"] = evaluate_flow(flow, n_samples)
        finally:
            flow.z2 = False
    return res


def run_training(cfg: DictConfig) -> dict[str, Any]:
    """Train as configured; returns the summary (also written to <run_dir>/summary.json)."""
    run_dir = Path(cfg.paths.run_dir)
    _check_run_dir(run_dir, cfg.get("ckpt_path"))
    run_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.seed, workers=False, verbose=False)
    module = build_module(cfg)
    if cfg.get("ckpt_path"):
        _check_resume_matches(cfg.ckpt_path, module)
    trainer = build_trainer(cfg, run_dir)
    if trainer.is_global_zero:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    data = StepIndices(cfg.steps_per_epoch)
    t0 = time.perf_counter()
    status = "completed"
    try:
        trainer.fit(module, train_dataloaders=data, ckpt_path=cfg.get("ckpt_path"))
    except NonFiniteLossError as exc:
        status = f"stopped: {exc}"
        log.error("training stopped: %s", exc)
    wall = time.perf_counter() - t0
    if trainer.interrupted and status == "completed":
        status = "interrupted"
    summary: dict[str, Any] = {}
    if trainer.is_global_zero:
        flow = module.flow.eval()
        target = flow.target
        summary = {
            "status": status,
            "run_dir": str(run_dir),
            "target": {"L": target.L, "K": target.K, "shift": target.shift},
            "model": {**flow.config, "num_parameters": flow.num_parameters()},
            "dtype": cfg.dtype,
            "device": str(flow.device) + (f" ({torch.cuda.get_device_name(flow.device)})"
                                          if flow.device.type == "cuda" else ""),
            "world_size": trainer.world_size,
            "steps": int(trainer.global_step),
            "batch_size": int(cfg.batch_size),
            "wall_time_s": wall,
            "relative_error_divides": "continuous ln Z_x per site",
            "exact": exact_solution(target.L, target.K, target.shift),
            "rank_sample_fingerprints": module.rank_fingerprints,
        }
        if status == "completed" or status == "interrupted":
            summary.update(final_evaluation(flow, int(cfg.final_eval_samples)))
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    if status.startswith("stopped"):
        raise NonFiniteLossError(status)
    return summary


def format_summary(s: dict[str, Any]) -> str:
    """A few human lines for the terminal."""
    if "free_energy_per_site" not in s:
        return f"status: {s.get('status')}"
    t = s["target"]
    lines = [
        f"L = {t['L']}, K = {t['K']:.6f}: {s['model']['kind']} flow, {s['model']['num_parameters']} "
        f"parameters, {s['steps']} steps in {s['wall_time_s']:.0f} s on {s['device']}",
        f"  F_q/N        = {s['free_energy_per_site']:.6f} ± {s['free_energy_per_site_err']:.6f}",
        f"  exact -lnZx/N = {s['exact_free_energy_per_site']:.6f}",
        f"  gap/N        = {s['gap_per_site']:.5f}   (relative {s['relative_error']:.2e} of ln Z_x/N)",
        f"  IS lnZ/N     = {s['is_log_z_per_site']:.6f} ± {s['is_log_z_per_site_err']:.6f}, "
        f"ESS/M = {s['ess_fraction']:.3f}, flow-MH acceptance = {s['metropolis_acceptance']:.3f}",
    ]
    if "z2_eval" in s:
        lines.append(f"  Z2-symmetrised at evaluation: gap/N = {s['z2_eval']['gap_per_site']:.5f}, "
                     f"ESS/M = {s['z2_eval']['ess_fraction']:.3f}")
    if not math.isfinite(s["free_energy_per_site"]):
        lines.append("  (non-finite estimates)")
    return "\n".join(lines)
