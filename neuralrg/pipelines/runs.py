"""Where outputs of a training run go, and which device to use (shared by sample/analyze)."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

import torch

from ..checkpoint import resolve_checkpoint


def resolve_device(name: str) -> torch.device:
    """'auto' (CUDA if available, else CPU) or a torch device string such as 'cpu', 'cuda:1'."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:<index>', got {name!r}") from None
    if dev.type == "cuda" and (not torch.cuda.is_available()
                               or (dev.index is not None and dev.index >= torch.cuda.device_count())):
        raise ValueError(f"device {name!r} is not available (torch.cuda.device_count() = "
                         f"{torch.cuda.device_count()}); use device=cpu or device=auto")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:<index>', got {name!r}")
    return dev


def run_output_dir(run: str | Path, kind: str) -> Path:
    """<run dir>/<kind>/<timestamp>; for a checkpoint file the run dir is the folder above
    ``checkpoints/``, or the checkpoint's own folder."""
    ckpt = resolve_checkpoint(run)
    if Path(run).is_dir():
        base = Path(run)
    else:
        base = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    return base / kind / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
