"""neuralrg — Neural Network Renormalization Group for the 2D Ising model.

Public API (loaded lazily; no Lightning or hydra import happens here):

* ``K_C``, ``IsingTarget(L, K, shift)``, ``ising_energy(s)`` — the physics core;
* ``exact_solution(L, K, shift)`` — Kaufman's finite-lattice solution (``python -m neuralrg.physics.exact``);
* ``build_flow(target, kind="mera"|"flat", **kw)``, ``build_mera``, ``build_flat`` — flow models;
* ``load_flow(path)`` — a trained flow from a checkpoint or run directory; ``load_flow_at(path, L)`` —
  the same parameters on another lattice size (level-shared MERA, flat).
"""
from __future__ import annotations

import importlib
from typing import Any

from .physics.lattice import K_C

_LAZY = {
    "IsingTarget": "physics.ising", "ising_energy": "physics.ising",
    "exact_solution": "physics.exact",
    "build_flow": "flows", "build_mera": "flows", "build_flat": "flows",
    "NeuralRGFlow": "flows", "latent_levels": "flows",
    "load_flow": "checkpoint", "load_flow_at": "checkpoint", "CheckpointError": "checkpoint",
}

__all__ = ["K_C", *_LAZY]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'neuralrg' has no attribute {name!r}")
