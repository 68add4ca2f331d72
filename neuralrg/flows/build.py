"""Building flow models from plain arguments (what hydra's ``conf/model/*.yaml`` instantiate)."""
from __future__ import annotations

import math
from numbers import Integral
from typing import Any, Sequence

import torch

from ..physics.ising import IsingTarget
from ..physics.lattice import check_lattice_size
from .coupling import check_activation
from .flat import flat_layers
from .hierarchy import latent_levels, mera_layers
from .model import NeuralRGFlow
from .precondition import GaussianPreconditioner


def _positive_int(value: object, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _hidden_widths(hidden: int | Sequence[int], n_hidden_layers: int) -> list[int]:
    if isinstance(hidden, Integral):
        return [_positive_int(hidden, "hidden")] * _positive_int(n_hidden_layers, "n_hidden_layers")
    widths = [_positive_int(h, "hidden") for h in hidden]
    if not widths:
        raise ValueError("hidden must be a positive width or a non-empty list of widths, got []")
    return widths


def build_mera(target: IsingTarget, depth: int | None = None, n_couplings: int = 8,
               hidden: int | Sequence[int] = 32, n_hidden_layers: int = 2,
               disentangler_repeats: int = 1, share_levels: bool = False, z2: bool = False,
               scale_bound: float = 2.0, precondition: bool = False,
               activation: str = "leaky_relu") -> NeuralRGFlow:
    """The hierarchical NeuralRG flow for ``target`` (an ``IsingTarget`` with L a power of two).

    depth: RG levels (default log2 L, the full hierarchy); n_couplings: RealNVP couplings per
    plaquette block; hidden / n_hidden_layers: MLP hidden widths (an int repeated
    n_hidden_layers times, or a list); disentangler_repeats: disentangler layers per level;
    share_levels: one set of blocks for all levels; z2: symmetrise q under x → −x;
    scale_bound: initial amplitude a of the bounded log-scale a·tanh(·); precondition: end
    with the fixed x = A^{1/2} y (``GaussianPreconditioner``), so the hierarchy acts on y;
    activation: the coupling MLPs' nonlinearity (``neuralrg.flows.coupling.ACTIVATIONS``; use a
    smooth one, e.g. silu, for latent HMC). The defaults rebuild checkpoints made before these
    options existed.
    """
    L = check_lattice_size(target.L, power_of_two=True)
    n = int(math.log2(L))
    depth = n if depth is None else _positive_int(depth, "depth")
    if depth > n:
        raise ValueError(f"depth must be between 1 and log2(L) = {n} for L = {L}, got {depth}")
    n_couplings = _positive_int(n_couplings, "n_couplings")
    widths = _hidden_widths(hidden, n_hidden_layers)
    repeats = _positive_int(disentangler_repeats, "disentangler_repeats", minimum=0)
    if not (isinstance(scale_bound, (int, float)) and 0 < float(scale_bound) < 20):
        raise ValueError(f"scale_bound must be a number in (0, 20), got {scale_bound!r}")
    precondition = _check_flag(precondition, "precondition")
    activation = check_activation(activation)
    layers = mera_layers(L, depth, n_couplings, widths, disentangler_repeats=repeats,
                         share_levels=bool(share_levels), scale_bound=float(scale_bound), activation=activation)
    config = dict(kind="mera", depth=depth, n_couplings=n_couplings, hidden=widths,
                  disentangler_repeats=repeats, share_levels=bool(share_levels), z2=bool(z2),
                  scale_bound=float(scale_bound), precondition=precondition, activation=activation)
    return NeuralRGFlow(_with_preconditioner(layers, target, precondition), target, z2=z2,
                        levels=latent_levels(L, depth), config=config)


def _with_preconditioner(layers: list, target: IsingTarget, precondition: bool) -> list:
    return list(layers) + [GaussianPreconditioner(target)] if precondition else list(layers)


def _check_flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def build_flat(target: IsingTarget, n_couplings: int = 8, hidden: int = 16,
               n_hidden_layers: int = 2, kernel_size: int = 3, z2: bool = False,
               scale_bound: float = 2.0, precondition: bool = False,
               activation: str = "leaky_relu") -> NeuralRGFlow:
    """The flat RealNVP baseline: checkerboard couplings with periodic CNNs (any even L);
    ``precondition`` and ``activation`` as in ``build_mera``."""
    L = check_lattice_size(target.L)
    if L % 2:
        raise ValueError(f"L must be even for checkerboard couplings, got {L}")
    n_couplings = _positive_int(n_couplings, "n_couplings")
    hidden = _positive_int(hidden, "hidden")
    n_hidden_layers = _positive_int(n_hidden_layers, "n_hidden_layers")
    kernel_size = _positive_int(kernel_size, "kernel_size")
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    precondition = _check_flag(precondition, "precondition")
    activation = check_activation(activation)
    layers = flat_layers(L, n_couplings, hidden, n_hidden_layers, kernel_size, float(scale_bound), activation)
    config = dict(kind="flat", n_couplings=n_couplings, hidden=hidden,
                  n_hidden_layers=n_hidden_layers, kernel_size=kernel_size, z2=bool(z2),
                  scale_bound=float(scale_bound), precondition=precondition, activation=activation)
    levels = torch.zeros(L, L, dtype=torch.long)
    return NeuralRGFlow(_with_preconditioner(layers, target, precondition), target, z2=z2, levels=levels,
                        config=config)


BUILDERS = {"mera": build_mera, "flat": build_flat}


def build_flow(target: IsingTarget, kind: str = "mera", **kwargs: Any) -> NeuralRGFlow:
    """Build a flow by ``kind`` ('mera' or 'flat'); keyword arguments go to that builder."""
    if kind not in BUILDERS:
        raise ValueError(f"kind must be one of {sorted(BUILDERS)}, got {kind!r}")
    return BUILDERS[kind](target, **kwargs)
