"""Analysis of trained flows: collective-variable statistics and mutual information.

Light modules are imported eagerly; the response maps are loaded on first use. The
``analyze.py`` orchestration lives in ``neuralrg.pipelines.analyze``. No Lightning or hydra import.
"""
from __future__ import annotations

import importlib
from typing import Any

from .landscape import bimodality_coefficient, free_energy_landscape
from .latents import (
    coarse_latent_correlations,
    latents_under_p,
    level_moments,
    level_pair_statistics,
    pair_statistics,
    physical_pair_statistics,
    same_level_pairs,
)
from .rg_organisation import linear_r2, r2_top_levels, rg_organisation, structure_factor_explained
from .mutual_information import (
    gaussian_copula_mi,
    gaussian_mi,
    ksg_mi,
    mutual_information,
    neighbour_pairs,
)

_LAZY = {
    "causal_cone": "response", "jacobian_columns": "response", "response_radius": "response",
    "response_analysis": "response", "quick_rg_figures": "quick",
}

__all__ = ["gaussian_copula_mi", "gaussian_mi", "ksg_mi", "mutual_information", "neighbour_pairs",
           "bimodality_coefficient", "free_energy_landscape", "coarse_latent_correlations", "latents_under_p",
           "level_moments", "level_pair_statistics", "pair_statistics", "physical_pair_statistics",
           "same_level_pairs", "linear_r2", "r2_top_levels", "rg_organisation", "structure_factor_explained",
           *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'neuralrg.analysis' has no attribute {name!r}")
