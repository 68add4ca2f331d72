"""Loading trained flows from Lightning checkpoints or run directories (no Lightning import).

A training checkpoint carries, next to Lightning's own entries, ``checkpoint["neuralrg"]`` =
{"model": flow.config, "target": {"L", "K", "shift"}, "dtype": "float32"|"float64"} — plain
Python data, so ``torch.load(weights_only=True)`` suffices and no training config object is
ever unpickled.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from .flows import build_flow
from .flows.model import NeuralRGFlow
from .physics.ising import IsingTarget

META_KEY = "neuralrg"
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
STATE_PREFIX = "flow."


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not match what was asked for."""


def flow_metadata(flow: NeuralRGFlow) -> dict[str, Any]:
    """What ``load_flow`` needs to rebuild ``flow``: model config, target, dtype."""
    t = flow.target
    return {"model": dict(flow.config), "target": {"L": t.L, "K": t.K, "shift": t.shift},
            "dtype": str(flow.dtype).replace("torch.", ""), "format": 1}


def resolve_checkpoint(path: str | Path) -> Path:
    """A .ckpt file, or a run directory (→ checkpoints/last.ckpt, else the newest .ckpt)."""
    p = Path(path).expanduser()
    if p.is_dir():
        for cand in (p / "checkpoints" / "last.ckpt", p / "last.ckpt"):
            if cand.is_file():
                return cand
        found = sorted(p.rglob("*.ckpt"), key=lambda q: q.stat().st_mtime)
        if not found:
            raise CheckpointError(f"no checkpoint (*.ckpt) found under run directory {p}")
        return found[-1]
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    return p


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """torch.load(weights_only=True) of a neuralrg checkpoint, with clear errors."""
    p = resolve_checkpoint(path)
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, or not a torch file
        raise CheckpointError(f"cannot read checkpoint {p}: {type(exc).__name__}: {exc}") from None
    if not isinstance(ckpt, dict) or META_KEY not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{p} is not a neuralrg training checkpoint (no '{META_KEY}' metadata)")
    meta = ckpt[META_KEY]
    if not (isinstance(meta, dict) and isinstance(meta.get("model"), dict)
            and isinstance(meta.get("target"), dict) and {"L", "K", "shift"} <= set(meta["target"])):
        raise CheckpointError(f"{p} has malformed '{META_KEY}' metadata: {meta!r}")
    ckpt["_path"] = str(p)
    return ckpt


def load_flow(path: str | Path, *, L: int | None = None, K: float | None = None,
              map_location: str | torch.device = "cpu", dtype: torch.dtype | None = None
              ) -> NeuralRGFlow:
    """Rebuild the trained flow from a checkpoint or run directory, in eval mode.

    ``L`` / ``K``: when given, the checkpoint must have been trained for exactly that lattice
    size / coupling, otherwise ``CheckpointError`` (a ``ValueError``) says what differs.
    """
    ckpt = read_checkpoint(path)
    meta = ckpt[META_KEY]
    tgt = meta["target"]
    if L is not None and int(L) != int(tgt["L"]):
        raise CheckpointError(f"checkpoint {ckpt['_path']} was trained for L = {tgt['L']}, not L = {L}")
    if K is not None and not math.isclose(float(K), float(tgt["K"]), rel_tol=1e-9, abs_tol=1e-12):
        raise CheckpointError(f"checkpoint {ckpt['_path']} was trained for K = {tgt['K']}, not K = {K}")
    try:
        target = IsingTarget(tgt["L"], tgt["K"], tgt["shift"])
        flow = build_flow(target, **dict(meta["model"]))
        flow = flow.to(_DTYPES[meta.get("dtype", "float32")])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {ckpt['_path']} has unusable neuralrg metadata "
                              f"{meta}: {type(exc).__name__}: {exc}") from None
    state = {k[len(STATE_PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(STATE_PREFIX)}
    try:
        flow.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {ckpt['_path']} does not match its model config: {exc}") from None
    if dtype is not None:
        flow = flow.to(dtype)
    return flow.to(map_location).eval()
