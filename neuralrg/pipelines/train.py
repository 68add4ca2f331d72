"""From a composed hydra config to a trained flow, its checkpoints and ``summary.json``.

``train.py`` only composes the config and calls ``run_training``. Keys of ``summary.json``:

* status ("completed", "interrupted" after Ctrl-C, or "stopped: <why>" after a NaN/inf), run_dir, target
  {class, **constructor arguments}, model (the flow's config + num_parameters), dtype, device, world_size, steps
  (global_step reached), batch_size (per rank), wall_time_s, rank_sample_fingerprints (one
  number per DDP rank from its first batch; they differ when the ranks draw different samples),
  relative_error_divides;
* exact: ``target.exact()`` (Ising: Kaufman's log_z, free_energy_per_site, energy_per_site,
  specific_heat_per_site of the discrete model, and continuous_log_z = ln Z_x; {} where unknown);
* the final evaluation (``neuralrg.sampling.importance.evaluate_flow``, only when completed):
  free_energy_per_site ± free_energy_per_site_err (F_q/N) and, where the target has an exact
  ln Z, exact_free_energy_per_site (−ln Z/N), gap_per_site, relative_error (gap / (ln Z/N));
  is_log_z_per_site ± err,
  is_free_energy_per_site, is_gap_per_site, ess_fraction, metropolis_acceptance, n_samples;
* z2_eval: the same evaluation of the Z2-symmetrised density, for a flow trained without Z2;
* rg_organisation (MERA flows): R²(m | top 1, 2 levels) on latents of exact samples of p (Wolff;
  else of the flow's samples, said in "samples") and the response-radius growth per level;
* warm_start (with ``init_from``): from, source_L, and which tensors were copied / new / unused.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from pytorch_lightning.loggers import WandbLogger

from ..analysis.quick import default_sample_count, format_rg, quick_rg_figures
from ..checkpoint import META_KEY, CheckpointError, flow_metadata, load_flow, read_checkpoint, target_summary
from ..flows import warm_start_flow
from ..physics.target import same_spec
from ..sampling.importance import evaluate_flow, format_is_estimate
from ..spec import parse_dtype
from ..training.data import StepIndices
from ..training.module import FIT_DATA_TIME_KEY, FIT_FINGERPRINTS_KEY, FIT_STEP_KEY, FlowModule, NonFiniteLossError, ignore_known_warnings
from .budget import RESERVE, BudgetReplan, max_time_string, plan_budget, replan_step
from .cli import parse_duration
from .resume import record_resume, resume_config
from .rundir import RunDirectoryError, check_run_dir, launched_rank
from .tracking import close_run
from .validate import check_training_config

__all__ = ["run_training", "build_module", "build_trainer", "final_evaluation", "format_summary",
           "RunDirectoryError", "NonFiniteLossError"]

log = logging.getLogger(__name__)


def _check_resume_matches(ckpt_path: str, module: FlowModule) -> None:
    meta = read_checkpoint(ckpt_path)[META_KEY]
    mine = flow_metadata(module.flow)
    if not same_spec(meta["target"], mine["target"]):
        raise CheckpointError(f"ckpt_path={ckpt_path} was trained with target {meta['target']}, "
                              f"but this run is configured with target {mine['target']}")
    theirs = load_flow(ckpt_path).config  # normalised like ours (older checkpoints store other keys)
    if theirs != mine["model"]:
        diff = sorted(k for k in set(theirs) | set(mine["model"]) if theirs.get(k) != mine["model"].get(k))
        raise CheckpointError(f"ckpt_path={ckpt_path} was trained with model {theirs}, but this run is "
                              f"configured with model {mine['model']} (they differ in {diff})")


def build_module(cfg: DictConfig) -> FlowModule:
    """Instantiate target, flow and LightningModule from the config (``init_from``: warm start,
    recorded as ``module.warm_start_info``)."""
    dtype = parse_dtype(cfg.dtype)
    target = instantiate(cfg.target)
    flow = instantiate(cfg.model)(target=target).to(dtype)
    info = warm_start(flow, cfg.init_from, resuming=bool(cfg.get("ckpt_path"))) if cfg.get("init_from") else None
    container = OmegaConf.to_container(cfg, resolve=True)
    module = FlowModule(
        flow, instantiate(cfg.optimizer), OmegaConf.to_container(cfg.scheduler, resolve=True),
        total_steps=cfg.steps, batch_size=cfg.batch_size, grad_clip=cfg.grad_clip,
        path_gradient=cfg.path_gradient, eval_every=cfg.eval_every, eval_samples=cfg.eval_samples,
        seed=cfg.seed, config=container, loss=container.get("loss"))
    module.warm_start_info = info
    return module


def warm_start(flow: Any, init_from: str, *, resuming: bool = False) -> dict[str, Any]:
    """Initialise ``flow`` from another run's trained flow (any L; same architecture), in place.

    Every tensor whose L-independent name and shape match is copied
    (``neuralrg.flows.warm_start_flow``: a level-shared MERA's shared blocks as they are, a
    per-level MERA's levels fine to fine and top to top, flat couplings by name); tensors the
    source lacks (more couplings or repeats) keep their identity start. Another kind of model,
    block type, activation, skeleton, preconditioner or level sharing, and tensors of other
    shapes, are refused with a ValueError naming them. Returns what was done (for summary.json:
    from, source_L, copied, new, unused, remapped) and logs it.
    """
    if resuming:
        raise ValueError("init_from and ckpt_path exclude each other: ckpt_path resumes a run, "
                         "init_from starts a new one from another run's weights")
    src = load_flow(init_from)
    try:
        report = warm_start_flow(src, flow)
    except ValueError as exc:
        raise ValueError(f"cannot warm-start from init_from={init_from} (L = {src.L}): {exc}") from None
    log.info("warm start from %s (L = %d -> %d): %s", init_from, src.L, flow.L, report.describe())
    return {"from": str(init_from), "source_L": src.L, **report.as_dict()}


def build_trainer(cfg: DictConfig, run_dir: Path, callbacks: Sequence[pl.Callback] = ()) -> pl.Trainer:
    """The Trainer of ``cfg.trainer`` with the configured loggers and callbacks (+ ``callbacks``)."""
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c and "_target_" in c]
    cbs = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
    precision = "64-true" if cfg.dtype == "float64" else "32-true"
    return instantiate(cfg.trainer, logger=loggers or False, callbacks=cbs + list(callbacks),
                       default_root_dir=str(run_dir), max_steps=cfg.steps, precision=precision,
                       max_epochs=math.ceil(cfg.steps / cfg.steps_per_epoch))  # the progress bar's total


def final_evaluation(flow: Any, n_samples: int) -> dict[str, Any]:
    """``evaluate_flow`` of the trained density and, for a Z2-symmetric target trained without
    Z2, of its symmetrised density (``z2_eval``); for a MERA also the cheap RG-organisation
    figures (``rg_organisation``: ``analysis.quick.quick_rg_figures`` on
    ``default_sample_count`` samples, 2048 at L = 16 and 512 from L = 32; a failure there is logged
    and recorded, never costs the run its summary)."""
    res = evaluate_flow(flow, n_samples)
    if not flow.z2 and flow.target.z2_symmetric:
        flow.z2 = True
        try:
            res["z2_eval"] = evaluate_flow(flow, n_samples)
        finally:
            flow.z2 = False
    if flow.config.get("kind") == "mera":
        try:
            n_rg = max(16, min(default_sample_count(flow.n_sites), int(n_samples)))
            res["rg_organisation"] = quick_rg_figures(flow, n_samples=n_rg)
        except Exception as exc:  # noqa: BLE001 -- a diagnostic must not lose the trained run's summary
            log.warning("RG-organisation figures failed (%s: %s)", type(exc).__name__, exc)
            res["rg_organisation"] = {"error": f"{type(exc).__name__}: {exc}"}
    return res


def _pin_hydra_run_dir(run_dir: Path) -> None:
    """Lightning's DDP relaunches this script with ``hydra.run.dir`` read from HydraConfig;
    pin it to this run's absolute directory so every rank shares it (a ``${now:...}`` pattern
    could otherwise resolve to another second)."""
    if not HydraConfig.initialized():
        return
    node = HydraConfig.instance().cfg.hydra.run
    with read_write(node):
        node.dir = str(run_dir.resolve())


@contextlib.contextmanager
def _log_to_file(path: Path) -> Iterator[None]:
    """Also send this package's log records to ``path`` (hydra's own job log may be off)."""
    if HydraConfig.initialized():  # hydra's file handler already writes <run_dir>/<job>.log
        yield
        return
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    pkg = logging.getLogger("neuralrg")
    pkg.addHandler(handler)
    try:
        yield
    finally:
        pkg.removeHandler(handler)
        handler.close()


def _finish_wandb(trainer: pl.Trainer, summary: dict[str, Any], failed: bool) -> None:
    """Close the training's W&B run with the final numbers (``tracking.close_run``)."""
    for lg in trainer.loggers:
        if isinstance(lg, WandbLogger) and getattr(lg, "_experiment", None) is not None:
            close_run(lg.experiment, {k: v for k, v in summary.items() if k != "exact"}, failed=failed)


def apply_budget(cfg: DictConfig, ckpt_path: str | None = None) -> tuple[dict[str, Any], float]:
    """``budget=10m``: set ``steps`` (and so the learning-rate schedule) from a measured step time
    (``pipelines.budget.plan_budget``) and ``trainer.max_time`` as a safety net; ``budget`` is then
    cleared in the config (config.yaml records the chosen steps, summary.json the plan). Single
    device only: DDP ranks would each measure their own plan. Returns the plan and the deadline of its
    training steps (``time.perf_counter()`` seconds: the budget less its reserve and the final evaluation)."""
    budget_s = parse_duration(cfg.get("budget"), "budget")
    if "ddp" in str((cfg.get("trainer") or {}).get("strategy", "")):
        raise ValueError("budget needs a single-device run (each DDP rank would plan its own steps); give steps instead")
    t0 = time.perf_counter()
    done = int(read_checkpoint(ckpt_path).get("global_step", 0)) if ckpt_path else 0
    plan = plan_budget(cfg, budget_s, build_module, done_steps=done)
    with open_dict(cfg):
        cfg.steps = plan["steps"]
        cfg.budget = None
        cfg.trainer.max_time = max_time_string(plan["max_time_s"])
    late = plan.get("latent_fisher_step_time_s")
    log.info("budget %.0f s: %d steps of %.3g s%s on %s (probe %.1f s, final evaluation ~%.1f s)", budget_s,
             plan["planned_new_steps"], plan["step_time_s"],
             "" if late is None else f" ({late:.3g} s with the latent smoothness term)", plan["device"],
             plan["probe_s"], plan["final_eval_s"])
    return plan, t0 + budget_s * (1.0 - RESERVE) - plan["final_eval_s"]


def _budget_replan(cfg: DictConfig, plan: dict[str, Any], deadline: float, config_path: Path) -> list[pl.Callback]:
    """The ``BudgetReplan`` callback of a ``budget=`` run (none for a run too short to time); a re-plan rewrites
    ``steps`` in the run's config file, so a resumed run goes on with the new length."""
    at = replan_step(plan["steps"] - plan["planned_new_steps"], plan["planned_new_steps"],
                     int((cfg.get("scheduler") or {}).get("warmup_steps", 0) or 0))
    if at is None:
        return []

    def record(steps: int) -> None:
        with open_dict(cfg):
            cfg.steps = steps
        text = config_path.read_text()
        header = text.splitlines(keepends=True)[0] if text.startswith("#") else ""  # a resume's comment line
        config_path.write_text(header + OmegaConf.to_yaml(cfg, resolve=True))

    return [BudgetReplan(plan, deadline, at, on_change=record)]


def run_training(cfg: DictConfig, callbacks: Sequence[pl.Callback] = (),
                 overrides: Sequence[str] | None = None) -> dict[str, Any]:
    """Train as configured; returns the summary (also written to <run_dir>/summary.json).

    ``callbacks`` are added to the configured ones. With ``resume=<run dir>`` the run continues
    in that directory from checkpoints/last.ckpt with its saved config and the allowed
    ``overrides`` (``pipelines.resume``; default: hydra's command-line overrides). Raises ``RunDirectoryError`` if the run
    directory already holds a run (unless ``ckpt_path`` resumes that run), ``CheckpointError``
    if ``ckpt_path`` does not match the configured model, and ``NonFiniteLossError`` (after
    writing summary.json with status "stopped: …") if training hit a NaN/inf; after Ctrl-C it
    writes summary.json with status "interrupted" (no evaluation) and exits with status 1.
    Under DDP only rank 0 returns the summary; the other ranks return {}.
    """
    applied: list[str] | None = None
    if cfg.get("resume"):
        if overrides is None:
            overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
        cfg, applied = resume_config(cfg, list(overrides))
    check_training_config(cfg)
    run_dir = Path(cfg.paths.run_dir)
    ckpt_path = cfg.get("ckpt_path")
    first_rank = launched_rank() == 0
    if first_rank:
        check_run_dir(run_dir, ckpt_path)
    plan, deadline = apply_budget(cfg, ckpt_path) if cfg.get("budget") is not None else (None, math.inf)
    run_dir.mkdir(parents=True, exist_ok=True)
    _pin_hydra_run_dir(run_dir)
    pl.seed_everything(cfg.seed, workers=False, verbose=False)
    module = build_module(cfg)
    if ckpt_path:
        _check_resume_matches(ckpt_path, module)
    config_path = run_dir / "config.yaml"
    if first_rank:
        if applied is None:
            config_path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
        else:
            config_path = record_resume(run_dir, cfg, applied)
    replan = _budget_replan(cfg, plan, deadline, config_path) if plan is not None else []
    trainer = build_trainer(cfg, run_dir, [*callbacks, *replan])
    data = StepIndices(cfg.steps_per_epoch)
    t0 = time.perf_counter()
    status = "completed"
    log_file = _log_to_file(run_dir / "train.log") if first_rank else contextlib.nullcontext()
    with log_file, warnings.catch_warnings():
        ignore_known_warnings()
        try:
            # the checkpoint holds plain data only (see neuralrg.checkpoint): load it safely
            trainer.fit(module, train_dataloaders=data, ckpt_path=ckpt_path,
                        weights_only=True if ckpt_path else None)
        except NonFiniteLossError as exc:
            status = f"stopped: {exc}"
            log.error("training stopped: %s", exc)
        except SystemExit:
            if not trainer.interrupted:
                raise
            status = "interrupted"  # Ctrl-C or SIGTERM: Lightning shut down and asks to exit
            log.warning("training interrupted at step %d (checkpoint written); continue it with "
                        "train.py resume=%s", trainer.global_step, run_dir)
        wall = time.perf_counter() - t0
        summary: dict[str, Any] = {}
        if trainer.is_global_zero:
            summary = _summarise(cfg, trainer, module, status, wall)
            if plan is not None:
                summary["budget"] = {**plan, "stopped_by_max_time": summary["steps"] < plan["steps"]}
            if applied is not None:
                summary["resumed_with"] = applied
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
            log.info("summary written to %s", run_dir / "summary.json")
        _finish_wandb(trainer, summary, failed=status != "completed")
    if status.startswith("stopped"):
        raise NonFiniteLossError(status)
    if status == "interrupted":
        raise SystemExit(1)
    return summary


def _summarise(cfg: DictConfig, trainer: pl.Trainer, module: FlowModule, status: str,
               wall: float) -> dict[str, Any]:
    # Lightning's teardown moved the module to the CPU: evaluate on the training device
    flow = module.flow.to(trainer.strategy.root_device).eval()
    target = flow.target
    metrics = trainer.callback_metrics  # the fit/ entries also reach the main process under ddp_spawn
    steps = int(metrics[FIT_STEP_KEY]) if FIT_STEP_KEY in metrics else int(trainer.global_step)
    fingerprints = ([float(v) for v in metrics[FIT_FINGERPRINTS_KEY].flatten()]
                    if FIT_FINGERPRINTS_KEY in metrics else module.rank_fingerprints)
    summary: dict[str, Any] = {
        "status": status,
        "run_dir": str(trainer.default_root_dir),
        "target": target_summary(target),
        "model": {**flow.config, "num_parameters": flow.num_parameters()},
        "dtype": cfg.dtype,
        "device": str(flow.device) + (f" ({torch.cuda.get_device_name(flow.device)})"
                                      if flow.device.type == "cuda" else ""),
        "world_size": trainer.world_size,
        "threads": torch.get_num_threads(),
        "steps": steps,
        "batch_size": int(cfg.batch_size),
        "wall_time_s": wall,
        "relative_error_divides": "exact ln Z per site of the target's density",
        "exact": target.exact(),
        "rank_sample_fingerprints": fingerprints,
    }
    if getattr(module, "warm_start_info", None) is not None:
        summary["warm_start"] = module.warm_start_info
    if FIT_DATA_TIME_KEY in metrics:  # exact-data generation (loss.name=data), part of wall_time_s
        summary["data_generation_s"] = float(metrics[FIT_DATA_TIME_KEY])
    if module.data is not None:  # loss.name=data: where the samples came from, and their chains' diagnostics
        summary["data"] = {**module.data.info, "warning": module.data.warning}
    if status == "completed":
        summary.update(final_evaluation(flow, int(cfg.final_eval_samples)))
    return summary


def format_summary(s: dict[str, Any]) -> str:
    """A few human lines for the terminal (exact comparisons only where the target has them)."""
    if "free_energy_per_site" not in s:
        return f"status: {s.get('status')}"
    t = dict(s["target"])
    name = str(t.pop("class", "target")).rpartition(":")[2]
    args = ", ".join(f"{k} = {v:.6g}" if isinstance(v, float) else f"{k} = {v}" for k, v in t.items())
    lines = [
        f"{name}({args}): {s['model']['kind']} flow, {s['model']['num_parameters']} "
        f"parameters, {s['steps']} steps in {s['wall_time_s']:.0f} s on {s['device']}",
        f"  F_q/N        = {s['free_energy_per_site']:.6f} ± {s['free_energy_per_site_err']:.6f}"
        "   (variational free energy, an upper bound on -ln Z/N)",
    ]
    if "gap_per_site" in s:
        lines += [f"  exact -lnZ/N = {s['exact_free_energy_per_site']:.6f}",
                  f"  gap/N        = {s['gap_per_site']:.5f}   (relative {s['relative_error']:.2e} of ln Z/N)"]
    lines.append(f"  IS {format_is_estimate(s)}, flow-MH acceptance = {s['metropolis_acceptance']:.3f}")
    if "z2_eval" in s:
        z2 = s["z2_eval"]
        lines.append("  Z2-symmetrised at evaluation: "
                     + (f"gap/N = {z2['gap_per_site']:.5f}, " if "gap_per_site" in z2 else
                        f"F_q/N = {z2['free_energy_per_site']:.6f}, ")
                     + f"IS {format_is_estimate(z2)}")
    rg = s.get("rg_organisation")
    if rg:
        lines.append("  RG organisation: " + (f"failed ({rg['error']})" if "error" in rg else
                                              f"{format_rg(rg)}  [{rg.get('samples')}]"))
    data = s.get("data")
    if data:
        lines.append(f"  training data: {data['n_samples']} samples from {data['source']}"
                     + (f" ({data['effective_samples']:.0f} effective)" if "effective_samples" in data else "")
                     + (f"; WARNING: {data['warning']}" if data.get("warning") else ""))
    if not math.isfinite(s["free_energy_per_site"]):
        lines.append("  (non-finite estimates)")
    return "\n".join(lines)
