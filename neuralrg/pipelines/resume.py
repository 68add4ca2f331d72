"""Resuming a training run by its directory (no Lightning import: used before any work starts).

``train.py resume=<run dir>`` continues that run *in its directory* with *its* saved config
(``config.yaml``, or the newest ``config.resume-*.yaml`` of an earlier resume). Command-line
overrides are applied on top of it when they make sense for a resumed run (``RESUMABLE``: more
steps, evaluation settings, trainer/device, logger, callbacks, seed) and recorded in a new
``config.resume-<time>.yaml``; any override that changes what was being trained (target, model,
dtype, batch size, optimizer, schedule, loss, …) is refused with the list of keys that differ.
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

#: top-level keys a resumed run may change; everything else must match the saved run
RESUMABLE = ("steps", "eval_every", "eval_samples", "final_eval_samples", "trainer", "logger", "callbacks", "seed",
             "paths", "hydra", "resume", "budget", "memory_limit", "threads")
#: keys that only describe where/how this invocation runs
IGNORED = ("paths", "hydra", "resume", "ckpt_path")
RESUME_CONFIG_GLOB = "config.resume-*.yaml"


def saved_config_path(run_dir: str | Path) -> Path:
    """The newest config of the run: the last ``config.resume-*.yaml``, else ``config.yaml``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"resume={run_dir}: no such run directory")
    resumed = sorted(run_dir.glob(RESUME_CONFIG_GLOB))
    path = resumed[-1] if resumed else run_dir / "config.yaml"
    if not path.is_file():
        raise ValueError(f"resume={run_dir}: not a training run directory (no config.yaml)")
    if not (run_dir / "checkpoints" / "last.ckpt").is_file():
        raise ValueError(f"resume={run_dir}: the run has no checkpoints/last.ckpt to resume from")
    return path


def _override_key(override: str) -> str | None:
    """The config key (or group) an override string names; None for hydra's own keys."""
    key = override.split("=", 1)[0].lstrip("+~")
    if key.startswith("hydra") or "/" in key.split(".")[0]:
        return None
    return key


def _value(cfg: DictConfig, key: str) -> Any:
    """The plain value at ``key`` (None where absent)."""
    v = OmegaConf.select(cfg, key)
    return OmegaConf.to_container(v, resolve=True) if isinstance(v, (DictConfig, ListConfig)) else v


def _flat(node: Any, prefix: str) -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: node}


def resume_config(current: DictConfig, overrides: list[str]) -> tuple[DictConfig, list[str]]:
    """(the config to continue with, the overrides applied) for ``current.resume``.

    ``current`` is the config composed for this invocation (defaults + ``overrides``); only the
    keys that ``overrides`` name are taken from it. ValueError lists every refused difference.
    """
    run_dir = Path(str(current.resume)).expanduser().resolve()
    saved = OmegaConf.load(saved_config_path(run_dir))
    mine, theirs = set(current.keys()), set(saved.keys())
    applied, refused = [], []
    for override in overrides:
        key = _override_key(override)
        if key is None or key.split(".")[0] in IGNORED:
            continue
        top = key.split(".")[0]
        if key == "experiment" or top not in RESUMABLE:
            names = (sorted(k for k in set(mine) | set(theirs) if k not in RESUMABLE and k not in IGNORED)
                     if key == "experiment" else [key])
            for name in names:
                a, b = _flat(_value(current, name), name), _flat(_value(saved, name), name)
                refused += [f"{k}: {b.get(k)!r} -> {a.get(k)!r}" for k in sorted(set(a) | set(b))
                            if a.get(k) != b.get(k)]
            continue
        OmegaConf.update(saved, key, OmegaConf.select(current, key), merge=False, force_add=True)
        applied.append(override)
    if refused:
        raise ValueError(f"resume={run_dir} refuses overrides that change what was trained ({'; '.join(refused)}); "
                         f"a resumed run may change only {', '.join(k for k in RESUMABLE if k not in IGNORED)}. "
                         "Start a new run (init_from=<run dir> warm-starts from its weights) to change these")
    OmegaConf.update(saved, "paths.run_dir", str(run_dir), force_add=True)
    OmegaConf.update(saved, "resume", str(run_dir), force_add=True)
    OmegaConf.update(saved, "ckpt_path", str(run_dir / "checkpoints" / "last.ckpt"), force_add=True)
    if saved.get("init_from"):  # a warm-started run (e.g. a ladder rung): its weights are in the checkpoint now
        OmegaConf.update(saved, "init_from", None, force_add=True)
    return saved, applied


def record_resume(run_dir: Path, cfg: DictConfig, applied: list[str]) -> Path:
    """Write the resumed run's config as ``config.resume-<time>.yaml`` with its overrides in a comment."""
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    path = Path(run_dir) / f"config.resume-{stamp}.yaml"
    path.write_text(f"# resumed {stamp} with overrides: {applied}\n" + OmegaConf.to_yaml(cfg, resolve=True))
    return path
