"""Plaquette couplings with parameters of their own at every plaquette: for disordered targets.

The blocks of ``coupling`` and ``context`` are translation invariant: one set of weights serves
every plaquette of a layer. That is right for uniform couplings, but a ±J glass has different
bonds at every site, so the map from the latents to p is different at every site and a
translation-invariant block can only learn its average. Here the conditioner's first layer of
every coupling gets a learnable bias per plaquette, a tensor (m, m, width) for the layer's
m × m grid of plaquettes (zero at the start, so the flow still starts as the identity). Its
other weights stay shared, so the extra parameters are m²·width per coupling.

The first layer is the ``ContextPlaquetteCoupling``'s (the 3×3 neighbourhood of plaquettes).
``SiteSplinePlaquetteCoupling`` / ``SiteSplinePlaquetteBijector`` do the same for the context spline
couplings (``context.ContextSplinePlaquetteCoupling``): the disentanglers of ``conf/model/mera_site_spline.yaml``.
Tensors are the grid (B, m, m, 4), log_det (B, m, m); ``forward`` is the generative direction.
The grid size is fixed at construction (``grid_size``), so a flow with these blocks serves one L
only, and levels cannot share blocks: ``mera_layers`` passes each layer's grid size to any
block class with ``per_site = True``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .context import (ContextPlaquetteBijector, ContextPlaquetteCoupling, ContextSplinePlaquetteBijector,
                      ContextSplinePlaquetteCoupling, check_radius)
from .spline import check_spline_args, check_transform

__all__ = ["SitePlaquetteCoupling", "SitePlaquetteBijector", "SiteSplinePlaquetteCoupling",
           "SiteSplinePlaquetteBijector"]


def check_grid_size(grid_size: object) -> int:
    """``grid_size`` as an int >= 1, or a ValueError."""
    if isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size < 1:
        raise ValueError(f"grid_size must be an integer >= 1, got {grid_size!r}")
    return grid_size


def add_site_bias(coupling: nn.Module, grid_size: int) -> None:
    """Give ``coupling`` (whose first layer is ``first``) a zero first-layer bias per plaquette, (m, m, width)."""
    coupling.grid_size = int(grid_size)
    coupling.site_bias = nn.Parameter(torch.zeros(coupling.grid_size, coupling.grid_size, coupling.first.out_features))


def site_first_layer(coupling: nn.Module, first: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The shared first layer's output ``first`` (B, m, m, width) plus the coupling's bias per plaquette;
    a clear error where the grid of ``y`` is not the one the coupling was built for."""
    if tuple(y.shape[1:3]) != (coupling.grid_size, coupling.grid_size):
        raise ValueError(f"this block was built for a {coupling.grid_size}×{coupling.grid_size} grid of plaquettes, "
                         f"got {tuple(y.shape[1:3])}: per-site blocks serve the lattice size they were built for")
    return first + coupling.site_bias


class SitePlaquetteCoupling(ContextPlaquetteCoupling):
    """``ContextPlaquetteCoupling`` plus a learnable first-layer bias per plaquette, (m, m, width)."""

    def __init__(self, partition: int, hidden: Sequence[int], scale_bound: float = 2.0,
                 activation: str = "leaky_relu", grid_size: int = 1) -> None:
        super().__init__(partition, hidden, scale_bound, activation)
        add_site_bias(self, grid_size)

    def _first(self, y: torch.Tensor) -> torch.Tensor:
        return site_first_layer(self, super()._first(y), y)


class SitePlaquetteBijector(ContextPlaquetteBijector):
    """``ContextPlaquetteBijector`` of ``SitePlaquetteCoupling``s for an m × m grid (``grid_size``).

    ``PlaquetteBijector``'s arguments plus ``grid_size`` (≥ 1), which ``mera_layers`` supplies.
    """

    per_site = True

    def __init__(self, n_couplings: int, hidden: Sequence[int], scale_bound: float = 2.0,
                 activation: str = "leaky_relu", grid_size: int = 1) -> None:
        check_grid_size(grid_size)
        nn.Module.__init__(self)
        self.couplings = nn.ModuleList(
            SitePlaquetteCoupling(i, hidden, scale_bound, activation, grid_size) for i in range(n_couplings))


class SiteSplinePlaquetteCoupling(ContextSplinePlaquetteCoupling):
    """``ContextSplinePlaquetteCoupling`` (spline, then affine) plus a learnable first-layer bias per plaquette."""

    def __init__(self, partition: int, hidden: Sequence[int], scale_bound: float = 2.0,
                 activation: str = "leaky_relu", n_bins: int = 8, tail_bound: float = 5.0, radius: int = 1,
                 grid_size: int = 1, transform: str = "rational_quadratic") -> None:
        super().__init__(partition, hidden, scale_bound, activation, n_bins, tail_bound, radius, transform)
        add_site_bias(self, grid_size)

    def _first(self, y: torch.Tensor) -> torch.Tensor:
        return site_first_layer(self, super()._first(y), y)


class SiteSplinePlaquetteBijector(ContextSplinePlaquetteBijector):
    """``ContextSplinePlaquetteBijector`` of ``SiteSplinePlaquetteCoupling``s for an m × m grid (``grid_size``).

    The context spline block's arguments (``transform`` included) plus ``grid_size`` (≥ 1), which ``mera_layers`` supplies;
    tensors (B, m, m, 4), log_det (B, m, m).
    """

    per_site = True

    def __init__(self, n_couplings: int, hidden: Sequence[int], scale_bound: float = 2.0,
                 activation: str = "leaky_relu", n_bins: int = 8, tail_bound: float = 5.0, radius: int = 1,
                 grid_size: int = 1, transform: str = "rational_quadratic") -> None:
        n_bins, tail_bound = check_spline_args(n_bins, tail_bound)
        check_radius(radius)
        check_grid_size(grid_size)
        check_transform(transform)
        nn.Module.__init__(self)
        self.couplings = nn.ModuleList(
            SiteSplinePlaquetteCoupling(i, hidden, scale_bound, activation, n_bins, tail_bound, radius, grid_size,
                                        transform)
            for i in range(n_couplings))
