"""The one W&B helper of the entry points: open a run, log, close it with its final numbers.

Offline unless ``mode`` / WANDB_MODE say otherwise (no network needed); ``disabled`` writes
nothing. W&B never costs the work: every failure is a warning and the outputs on disk stay
complete. Training logs through Lightning's ``WandbLogger`` (conf/logger/wandb.yaml) and
closes its run with ``close_run`` too.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any

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
