"""Memory of a training step, estimated before any work, and the check against what the user allows.

A reverse-KL step holds, at its peak, the parameters with their gradients and the two Adam moments
(4 × the parameter bytes) and every tensor autograd saved for the backward pass. The saved tensors
are measured, not modelled: two probe passes of ``flow.reverse_kld`` at batch 2 and 4 record the
bytes of every distinct storage autograd keeps (``torch.autograd.graph.saved_tensors_hooks``), so
bytes = fixed + per_sample · batch exactly for this flow and dtype, on the device the flow is on.
Transient tensors that die before the backward pass are not counted; ``MARGIN`` covers them.
The objectives that add chain states or data (``loss.name``) add their own batch; the estimate is
that of the plain reverse-KL step.

``memory_limit`` (train.yaml): null = the memory free on the device the run will use (CUDA: free
device memory, CPU: the host's MemAvailable); a size such as ``4GB``, ``512MiB`` or a number of
bytes; ``off`` = no check.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["MARGIN", "StepMemory", "step_memory", "parse_memory", "available_memory", "check_step_memory",
           "format_bytes"]

#: the estimate is multiplied by this before it is compared with the limit: transient tensors and the
#: allocator's slack (measured peak-RSS growth of a CPU step / estimate at batch 16: 1.64 at L = 32,
#: 1.50 at L = 64, 1.37 at L = 128; benchmarks/scaling.py, results/scaling_memory_estimate.json)
MARGIN = 1.7
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


@dataclass(frozen=True)
class StepMemory:
    """Bytes of one training step: ``parameter_bytes`` (weights, gradients, 2 Adam moments),
    ``saved_fixed`` + ``saved_per_sample`` · batch (what autograd keeps for the backward pass)."""
    parameter_bytes: int
    saved_fixed: int
    saved_per_sample: int

    def total(self, batch_size: int) -> int:
        """Estimated peak bytes at ``batch_size`` samples, without ``MARGIN``."""
        return self.parameter_bytes + self.saved_fixed + self.saved_per_sample * int(batch_size)

    def max_batch(self, limit: float) -> int:
        """The largest batch whose estimate times ``MARGIN`` fits in ``limit`` bytes (0: none)."""
        room = limit / MARGIN - self.parameter_bytes - self.saved_fixed
        return max(0, int(room // max(1, self.saved_per_sample)))


def _saved_bytes(flow: Any, batch: int) -> int:
    """Bytes of the distinct storages autograd saves in one ``flow.reverse_kld(batch)``."""
    seen: dict[tuple[Any, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        seen[(t.device, s.data_ptr())] = s.nbytes()
        return t

    with torch.random.fork_rng(devices=[]), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.enable_grad():
            flow.reverse_kld(batch)
    return sum(seen.values())


def step_memory(flow: Any) -> StepMemory:
    """Measure the memory of a reverse-KL training step of ``flow`` (two probes at batch 2, 4;
    the flow's parameters, device and dtype; the global CPU RNG state is restored)."""
    params = sum(p.numel() * p.element_size() for p in flow.parameters() if p.requires_grad)
    b2, b4 = _saved_bytes(flow, 2), _saved_bytes(flow, 4)
    per = max(0, (b4 - b2) // 2)
    return StepMemory(4 * params, max(0, b2 - 2 * per), per)


def parse_memory(value: Any, name: str = "memory_limit") -> float | None:
    """Bytes from ``4GB`` / ``512MiB`` / ``1e9`` / 1000000; None for null; ``off`` -> inf (no check).
    ValueError naming ``name`` otherwise."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() in ("off", "none", "inf"):
        return math.inf
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value > 0 and math.isfinite(value):
            return float(value)
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", value)
        if m and m.group(2).lower() in _UNITS and float(m.group(1)) > 0:
            return float(m.group(1)) * _UNITS[m.group(2).lower()]
    raise ValueError(f"{name} must be a size like 4GB, 512MiB or a number of bytes > 0, "
                     f"null (the free memory of the device) or off, got {value!r}")


def available_memory(device: torch.device | str) -> float | None:
    """Free bytes on ``device`` (CUDA: ``mem_get_info``; CPU: the host's MemAvailable), None if unknown."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return float(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as fh:
                for line in fh:
                    if line.startswith("MemAvailable:"):
                        return float(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def format_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def check_step_memory(flow: Any, batch_size: int, limit: Any = None, *, device: torch.device | str = "cpu",
                      what: str = "batch_size") -> dict[str, Any]:
    """ValueError, before any work, if a training step of ``flow`` at ``batch_size`` would not fit.

    ``limit``: the ``memory_limit`` setting (``parse_memory``); null compares with the memory free
    on ``device`` (the device the run will use; the probe itself runs where the flow is). The
    message gives the estimate, the limit and the largest ``what`` that fits. Returns the figures
    (bytes): estimate, limit (None if unknown), per_sample, max_batch (all None for ``off``)."""
    limit_b = parse_memory(limit)
    if limit_b == math.inf:  # memory_limit=off: no probe
        return {"estimate": None, "limit": None, "per_sample": None, "max_batch": None}
    source = "memory_limit"
    if limit_b is None:
        limit_b, source = available_memory(device), f"free memory on {torch.device(device)}"
    mem = step_memory(flow)
    need = mem.total(batch_size) * MARGIN
    out = {"estimate": need, "limit": limit_b, "per_sample": mem.saved_per_sample, "max_batch": None}
    if limit_b is None:
        return out
    out["max_batch"] = mem.max_batch(limit_b)
    if need > limit_b:
        fits = out["max_batch"]
        hint = (f"lower {what} to {fits} or less" if fits >= 2 else
                "not even 2 samples fit: use a smaller model, float32 or a device with more memory")
        raise ValueError(
            f"{what}={batch_size} at L = {flow.L} needs about {format_bytes(need)} for a training step "
            f"({format_bytes(mem.saved_per_sample)} per sample kept for the backward pass, "
            f"{format_bytes(mem.parameter_bytes)} of parameters, gradients and Adam moments, ×{MARGIN} margin), "
            f"more than the {format_bytes(limit_b)} of {source}: {hint}, or raise memory_limit "
            f"(memory_limit=off skips this check)")
    return out
