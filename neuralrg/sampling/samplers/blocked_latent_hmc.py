"""Latent HMC blocked by RG level: one HMC move per block of levels (own step size each)."""
from __future__ import annotations

from typing import Any

import torch

from ...physics.target import LatticeTarget
from ..chains import ChainRun
from ..fold import validate_fold
from ..progress import Progress
from ..registry import Sampler
from .latent_hmc import DEFAULTS, level_blocks, run_latent_hmc


def default_blocks(n_levels: int) -> list[list[int]]:
    """Coarse collective variables (top two levels) and the fine levels, as two blocks."""
    if n_levels < 2:
        return [[0]]
    top = list(range(max(0, n_levels - 2), n_levels))
    fine = list(range(0, max(0, n_levels - 2)))
    return [top, fine] if fine else [top]


def _run(flow: Any, target: LatticeTarget, s: dict[str, Any], generator: torch.Generator | None, *,
         progress: Progress | None = None, max_time: float | None = None) -> ChainRun:
    s = dict(s)
    levels = s.pop("block_levels") or default_blocks(flow.n_levels)
    level_blocks(flow, levels)  # clear error before any work
    return run_latent_hmc(flow, generator=generator, block_levels=levels, progress=progress, max_time=max_time, **s)


SAMPLER = Sampler("blocked_latent_hmc", _run, {**DEFAULTS, "block_levels": None},
                  "latent HMC cycling through blocks of RG levels (default: top two levels, then the rest)",
                  validate=validate_fold)
