"""Run-directory guard: a new run never writes into a directory that already holds a run.

No Lightning import here: ``RunDirGuard`` is a hydra callback that checks ``hydra.run.dir``
*before* hydra writes anything into it (``.hydra/``, ``train.log``), so a refused run leaves
the earlier run's files untouched. ``run_training`` repeats the check for composed configs.
"""
from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

# what marks a directory as holding a run (hydra's own files alone do not)
RUN_MARKERS = ("summary.json", "checkpoints", "config.yaml")
_RANK_VARS = ("RANK", "LOCAL_RANK", "SLURM_PROCID")


class RunDirectoryError(ValueError):
    """The run directory already holds another run."""


def launched_rank() -> int:
    """Process rank set by a DDP launcher (Lightning's relaunch, torchrun, srun); 0 if none."""
    for var in _RANK_VARS:
        value = os.environ.get(var, "0")
        if value.strip().isdigit() and int(value) != 0:
            return int(value)
    return 0


def check_run_dir(run_dir: str | Path, ckpt_path: str | None) -> None:
    """Raise ``RunDirectoryError`` if ``run_dir`` already holds a run, unless ``ckpt_path`` lies
    inside it (resuming that run in place)."""
    run_dir = Path(run_dir)
    taken = [p for p in (run_dir / m for m in RUN_MARKERS) if p.exists()]
    if not taken:
        return
    if ckpt_path and Path(ckpt_path).resolve().is_relative_to(run_dir.resolve()):
        return
    raise RunDirectoryError(
        f"run directory {run_dir} already holds a run ({taken[0].name} exists); choose another "
        f"hydra.run.dir, or continue that run with resume={run_dir}")


class RunDirGuard(Callback):
    """Hydra callback, before hydra writes anything: refuse (one line on stderr, exit status 1)
    a run whose ``hydra.run.dir`` already holds a run, or whose config cannot train
    (``validate.check_training_config``: no Lightning import, seconds). With ``resume=<run dir>``
    the job runs in that directory (hydra's own files under ``.hydra/resume-<time>``) and the
    resumed config is checked the same way. DDP ranks > 0 share rank 0's directory and skip it."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        if launched_rank() != 0:
            return
        from omegaconf import read_write

        from .resume import resume_config
        from .validate import check_training_config

        try:
            if config.get("resume"):
                resumed, _ = resume_config(config, list(config.hydra.overrides.task))
                with read_write(config.hydra):
                    config.hydra.run.dir = str(resumed.paths.run_dir)
                    config.hydra.output_subdir = f".hydra/resume-{datetime.now():%Y-%m-%d_%H-%M-%S}"
                check_training_config(resumed)
            else:
                check_run_dir(str(config.hydra.run.dir), config.get("ckpt_path"))
                check_training_config(config)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(1) from None
