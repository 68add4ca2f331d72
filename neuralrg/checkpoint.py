"""Loading trained flows from Lightning checkpoints or run directories (no Lightning import).

A training checkpoint carries, next to Lightning's own entries, ``checkpoint["neuralrg"]`` =
{"model": flow.config, "target": target.spec() = {"class", "kwargs"}, "dtype":
"float32"|"float64", "format": 2} — plain Python data, so ``torch.load(weights_only=True)``
suffices and no training config object is ever unpickled. Format 1 (before the lattice-target
protocol) stored the Ising target as {"L", "K", "shift"}; it still loads.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from .flows import build_flow, transfer_flow
from .flows.model import NeuralRGFlow
from .physics.fold import fold_field, order_gauge_tensor
from .physics.target import LatticeTarget, target_from_spec
from .spec import dtype_name, parse_dtype

META_KEY = "neuralrg"
STATE_PREFIX = "flow."
FORMAT = 2


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not match what was asked for."""


def flow_metadata(flow: NeuralRGFlow) -> dict[str, Any]:
    """What ``load_flow`` needs to rebuild ``flow``: model config, target spec, dtype."""
    return {"model": dict(flow.config), "target": flow.target.spec(), "dtype": dtype_name(flow.dtype),
            "format": FORMAT}


def target_summary(target: LatticeTarget) -> dict[str, Any]:
    """The target as one flat dict for summaries: {"class": …, **constructor arguments}."""
    spec = target.spec()
    return {"class": spec["class"], **spec["kwargs"]}


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
    tgt = meta.get("target") if isinstance(meta, dict) else None
    if not (isinstance(meta, dict) and isinstance(meta.get("model"), dict) and isinstance(tgt, dict)
            and ({"class", "kwargs"} <= set(tgt) or {"L", "K", "shift"} <= set(tgt))):
        raise CheckpointError(f"{p} has malformed '{META_KEY}' metadata: {meta!r}")
    ckpt["_path"] = str(p)
    return ckpt


def checkpoint_target(ckpt: dict[str, Any]) -> LatticeTarget:
    """The target a checkpoint (from ``read_checkpoint``) was trained for."""
    try:
        return target_from_spec(ckpt[META_KEY]["target"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {ckpt['_path']} has an unusable target "
                              f"{ckpt[META_KEY]['target']}: {exc}") from None


def check_expected(target: LatticeTarget, expect: dict[str, Any], where: str) -> None:
    """``CheckpointError`` unless every given (non-None) constructor argument in ``expect``
    equals the target's (floats to 1e-9 relative); names what differs."""
    have = target.spec()["kwargs"]
    for key, want in expect.items():
        if want is None:
            continue
        if key not in have:
            raise CheckpointError(f"{where} is a {type(target).__name__}, which has no parameter {key!r} "
                                  f"(its parameters: {sorted(have)})")
        got = have[key]
        same = (math.isclose(float(want), float(got), rel_tol=1e-9, abs_tol=1e-12)
                if isinstance(got, (int, float)) and isinstance(want, (int, float)) else want == got)
        if not same:
            raise CheckpointError(f"{where} was trained for {key} = {got}, not {key} = {want}")


#: the state-dict key of the sign fold's weight (``loss.sign_fold``), beside the flow's
FOLD_KEY = "sign_fold.weight"


def load_flow(path: str | Path, *, L: int | None = None, K: float | None = None,
              expect: dict[str, Any] | None = None, map_location: str | torch.device = "cpu",
              dtype: torch.dtype | None = None) -> NeuralRGFlow:
    """Rebuild the trained flow from a checkpoint or run directory, in eval mode.

    ``L`` / ``K`` / ``expect`` (any target constructor arguments, e.g. {"kappa": 0.25}): when
    given, the checkpoint's target must have exactly those values, otherwise
    ``CheckpointError`` (a ``ValueError``) says what differs.
    """
    ckpt = read_checkpoint(path)
    meta = ckpt[META_KEY]
    target = checkpoint_target(ckpt)
    check_expected(target, {"L": L, "K": K, **(expect or {})}, f"checkpoint {ckpt['_path']}")
    try:
        flow = build_flow(target, **dict(meta["model"]))
        flow = flow.to(parse_dtype(meta.get("dtype", "float32")))
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
    flow = flow.to(map_location).eval()
    fold = ckpt["state_dict"].get(FOLD_KEY)  # trained with loss.sign_fold: the samplers use it (settings.fold=auto)
    flow.sign_fold_weight = (None if fold is None  # in the target's order frame (a uniform fold on an antiferromagnet)
                             else fold_field(fold.to(device=flow.device, dtype=flow.dtype), order_gauge_tensor(target)))
    return flow


def load_flow_at(path: str | Path, L: int, *, trained_L: int | None = None, K: float | None = None,
                 expect: dict[str, Any] | None = None, map_location: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None) -> NeuralRGFlow:
    """The trained flow of a checkpoint or run directory on the L×L lattice, same parameters.

    ``load_flow`` (``trained_L`` / ``K`` / ``expect`` check the trained target) and then
    ``flows.transfer_flow``: a level-shared MERA or a flat flow trained at any L runs at this L,
    its preconditioner and level map rebuilt for the new lattice; a per-level MERA is refused
    (``CheckpointError`` saying why). In eval mode.
    """
    if isinstance(L, bool) or not isinstance(L, int) or L < 2:
        raise ValueError(f"L must be a lattice size (an integer >= 2), got {L!r}")
    flow = load_flow(path, L=trained_L, K=K, expect=expect, map_location=map_location, dtype=dtype)
    try:
        return transfer_flow(flow, L).eval()
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {resolve_checkpoint(path)} (L = {flow.L}) cannot run at L = {L}: {exc}") from None
