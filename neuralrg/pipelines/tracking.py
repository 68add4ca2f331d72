"""The one W&B helper of the entry points: open a run, log, close it with its final numbers.

Offline unless ``mode`` / WANDB_MODE say otherwise (no network needed); ``disabled`` writes
nothing. W&B never costs the work: every failure is a warning and the outputs on disk stay
complete. Training logs through Lightning's ``WandbLogger`` (conf/logger/wandb.yaml) and
closes its run with ``close_run`` too. ``sample.py`` and ``analyze.py`` log into the training
run's project and group (``training_run_info``; job_type sample / analyze) and hand the
training run their final numbers (``update_training_run``).
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger("neuralrg")
MODES = ("offline", "online", "disabled")


def open_run(*, project: str = "neuralrg", name: str | None = None, dir: str, mode: str | None = None,
             job_type: str | None = None, group: str | None = None, config: dict[str, Any] | None = None) -> Any:
    """``wandb.init`` with these settings; returns the run, or None (warning) if W&B is unusable."""
    try:
        import wandb
    except ImportError:
        log.warning("W&B logging requested but the wandb package is not installed; skipped")
        return None
    mode = mode or os.environ.get("WANDB_MODE", "offline")
    if mode not in MODES:
        log.warning("wandb mode must be one of %s, got %r; skipped", MODES, mode)
        return None
    try:
        return wandb.init(project=project, name=name, dir=dir, mode=mode, job_type=job_type, group=group,
                          config=config or {}, reinit="finish_previous")
    except Exception as exc:  # noqa: BLE001 - W&B must never cost the work
        log.warning("W&B init failed (%s: %s); the outputs on disk are complete", type(exc).__name__, exc)
        return None


def numeric_items(d: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Finite numbers of a nested dict, flattened to "a/b/c" keys (booleans left out)."""
    out: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(numeric_items(v, key + "/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
            out[key] = float(v)
    return out


def close_run(run: Any, summary: dict[str, Any] | None = None, *, failed: bool = False, prefix: str = "final/") -> None:
    """Copy the finite numbers of ``summary`` into the run summary and finish the run (a hydra
    multirun needs one finish per job). Never raises."""
    if run is None:
        return
    try:
        if summary and hasattr(run, "summary"):
            run.summary.update(numeric_items(summary, prefix))
        if hasattr(run, "finish"):
            run.finish(exit_code=1 if failed else 0)
    except Exception as exc:  # noqa: BLE001
        log.warning("closing the W&B run failed (%s: %s)", type(exc).__name__, exc)


def training_run_info(run: str | Path) -> dict[str, Any]:
    """The training run behind ``run`` (its directory, or a .ckpt in ``<dir>/checkpoints/``):
    run_dir, project and group (its ``config.yaml``: logger.wandb, else task_name, else the
    directory name) and wandb_id (from ``<run_dir>/wandb/*run-*``, or None)."""
    p = Path(run)
    d = p if p.is_dir() else (p.parent.parent if p.parent.name == "checkpoints" else p.parent)
    info: dict[str, Any] = {"run_dir": d, "project": "neuralrg", "group": d.name, "wandb_id": None}
    cfg_path = d / "config.yaml"
    if cfg_path.is_file():
        try:
            from omegaconf import OmegaConf

            cfg = OmegaConf.to_container(OmegaConf.load(cfg_path), resolve=False)
            wb = ((cfg.get("logger") or {}).get("wandb") or {}) if isinstance(cfg, dict) else {}
            info["project"] = wb.get("project") or info["project"]
            info["group"] = wb.get("group") or cfg.get("task_name") or info["group"]
        except Exception as exc:  # noqa: BLE001 - the group is a convenience
            log.warning("could not read %s (%s); W&B group = %s", cfg_path, exc, info["group"])
    runs = sorted((d / "wandb").glob("*run-*")) if (d / "wandb").is_dir() else []
    runs = [r for r in runs if r.is_dir() and not r.is_symlink()]
    if runs:
        info["wandb_id"] = runs[-1].name.rpartition("-")[2]
    return info


def log_images(run: Any, paths: Sequence[Path], prefix: str = "figures/") -> None:
    """Log PNGs the pipeline wrote as ``wandb.Image`` under ``<prefix><file stem>``."""
    import wandb

    if paths:
        run.log({f"{prefix}{Path(p).stem}": wandb.Image(str(p)) for p in paths})


def update_training_run(info: dict[str, Any], key: str, record: dict[str, Any], mode: str | None = None) -> str:
    """Give the training run the final numbers of a later stage (``key``: "sampling", ...).

    Always: ``<run_dir>/summary.json`` gains ``record`` under ``key`` (if that file exists). With a
    known W&B id the training W&B run is resumed and its summary updated with the finite numbers as
    ``<key>/...``: online at once; offline as a second offline directory with the same run id in
    ``<run_dir>/wandb/``, which ``wandb sync <run_dir>/wandb/offline-run-*`` uploads after the first
    (W&B >= 0.30 syncs the files of one resumed run in order of start time). Returns where it went:
    "summary.json", "summary.json+wandb" or "none". Never raises.
    """
    where = []
    summary_path = Path(info["run_dir"]) / "summary.json"
    try:
        if summary_path.is_file():
            data = json.loads(summary_path.read_text())
            data[key] = record
            tmp = summary_path.with_name("summary.json.tmp")
            tmp.write_text(json.dumps(data, indent=2, default=float))
            os.replace(tmp, summary_path)
            where.append("summary.json")
    except Exception as exc:  # noqa: BLE001
        log.warning("could not update %s (%s)", summary_path, exc)
    mode = mode or os.environ.get("WANDB_MODE", "offline")
    if mode in ("online", "offline") and info.get("wandb_id"):
        try:
            import wandb

            run = wandb.init(project=info["project"], id=info["wandb_id"], mode=mode,
                             resume="must" if mode == "online" else "allow", dir=str(info["run_dir"]),
                             group=info["group"], job_type="train", reinit="finish_previous")
            run.summary.update(numeric_items(record, key + "/"))
            run.finish()
            where.append("wandb")
        except Exception as exc:  # noqa: BLE001
            log.warning("could not update the training W&B run %s (%s)", info["wandb_id"], exc)
    return "+".join(where) or "none"
