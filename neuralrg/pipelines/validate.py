"""Checking a training config before any work: no Lightning import, no directory created.

``check_training_config`` builds the target and the flow from the config (cheap) and checks the
plain settings, so a bad config is refused in seconds, before the run directory exists and
before Lightning is imported (``train.py``'s run-directory guard calls it).
"""
from __future__ import annotations

from typing import Any

import torch

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from ..spec import parse_dtype
from ..training.memory import check_step_memory, parse_memory
from ..training.schedule import SCHEDULES


def instantiation_message(exc: InstantiationException) -> str:
    """The constructor's own ValueError message (``… (config: key)``), else hydra's in one line."""
    cause = exc.__cause__
    where = f" (config: {exc.full_key})" if getattr(exc, "full_key", None) else ""
    return f"{cause}{where}" if isinstance(cause, ValueError) else " ".join(str(exc).split())


def _int(cfg: DictConfig, key: str, lo: int) -> None:
    v = cfg.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{key} must be an integer >= {lo}, got {v!r}")


def check_training_config(cfg: DictConfig) -> Any:
    """ValueError naming the setting unless ``cfg`` can train; returns the built (untrained) flow
    (of a ladder, ``ladder.rungs`` set: every rung is checked, ``ladder.check_ladder_config``,
    and the first rung's flow is returned)."""
    if (cfg.get("ladder") or {}).get("rungs") is not None:
        from .ladder import check_ladder_config

        return check_ladder_config(cfg)[0][1]
    parse_dtype(cfg.get("dtype"))
    for key, lo in (("steps", 1), ("batch_size", 2), ("steps_per_epoch", 1), ("eval_every", 0),
                    ("eval_samples", 2), ("final_eval_samples", 2)):
        _int(cfg, key, lo)
    name = (cfg.get("scheduler") or {}).get("name", "constant")
    if name not in SCHEDULES:
        raise ValueError(f"scheduler name must be one of {SCHEDULES}, got {name!r}")
    parse_memory(cfg.get("memory_limit"))  # a bad setting is named before the flow is built
    try:
        target = instantiate(cfg.target)
        flow = instantiate(cfg.model)(target=target)
    except InstantiationException as exc:
        raise ValueError(instantiation_message(exc)) from None
    check_step_memory(flow.to(parse_dtype(cfg.dtype)), cfg.batch_size, cfg.get("memory_limit"),
                      device=run_device(cfg))
    return flow


def run_device(cfg: DictConfig) -> str:
    """The device type a run of ``cfg`` will train on: cuda for trainer.accelerator gpu/cuda (or
    auto with a GPU present), else cpu."""
    acc = str((cfg.get("trainer") or {}).get("accelerator", "auto")).lower()
    if acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"
