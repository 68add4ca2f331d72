"""Building flow models from plain arguments (what hydra's ``conf/model/*.yaml`` instantiate).

Flows are built for any ``LatticeTarget``. The MERA takes its plaquette block from config: a
*block spec* {"class": "<module>:<qualname>", "kwargs": {...}}, or a callable (hydra's
``_partial_`` of a block class) that builds one fresh block per call. The flow's ``config``
stores the spec as plain data, so checkpoints rebuild the same blocks. Checkpoints made before
blocks were configurable store n_couplings / hidden / scale_bound / activation at top level:
those are the default block's (``PlaquetteBijector``) arguments and still load.
"""
from __future__ import annotations

import functools
import inspect
from numbers import Integral
from collections.abc import Mapping
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..physics.lattice import check_lattice_size
from ..spec import import_object, object_path
from ..physics.target import LatticeTarget
from .context import check_radius
from .coupling import check_activation
from .flat import flat_layers
from .hierarchy import latent_levels, mera_layers
from .model import NeuralRGFlow
from .gauge import SignGauge
from .precondition import GaussianPreconditioner
from ..physics.fold import order_gauge_tensor
from .spline import check_spline_args, check_transform
from .wavelet import check_skeleton

#: the default plaquette block, and the arguments older configs held at top level
DEFAULT_BLOCK = "neuralrg.flows.coupling:PlaquetteBijector"
BLOCK_KEYS = ("n_couplings", "hidden", "n_hidden_layers", "scale_bound", "activation")
#: arguments only some block classes take (the spline block's n_bins / tail_bound / transform, the context
#: block's radius), stored only when given
EXTRA_BLOCK_KEYS = ("n_bins", "tail_bound", "transform", "radius")


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


def _check_flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def _plain(obj: Any) -> Any:
    """Mappings → dicts and lists/tuples → lists, recursively (config nodes to plain data)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, Sequence) and not isinstance(obj, str):
        return [_plain(v) for v in obj]
    return obj


def block_spec(block: Any = None, **kwargs: Any) -> dict[str, Any]:
    """Normalise a block choice to {"class", "kwargs"} (plain data, validated).

    ``block``: None (the default ``PlaquetteBijector``), a spec dict, a class or dotted path, or a
    ``functools.partial`` of a class (hydra ``_partial_``); ``kwargs`` (n_couplings, hidden,
    n_hidden_layers, scale_bound, activation) override the spec's arguments. The spline block's
    n_bins / tail_bound / transform and the context block's radius are kept only when given, and refused by a
    class that does not take them. ``hidden`` is stored as a list of widths (an int is repeated
    ``n_hidden_layers`` times).
    """
    block = _plain(block)
    if block is None:
        path, args = DEFAULT_BLOCK, {}
    elif isinstance(block, dict):
        if "class" not in block:
            raise ValueError(f"block must be a spec {{'class': ..., 'kwargs': ...}}, got keys {sorted(block)}")
        path, args = str(block["class"]), dict(block.get("kwargs") or {})
    elif isinstance(block, functools.partial):
        if block.args:
            raise ValueError("block partial must take keyword arguments only")
        func = block.func
        path, args = object_path(func), dict(block.keywords)
    elif isinstance(block, str):
        path, args = block, {}
    elif isinstance(block, type):
        path, args = object_path(block), {}
    else:
        raise ValueError(f"block must be None, a spec dict, a class path or a partial, got {type(block).__name__}")
    cls = import_object(path, "block class")
    path = object_path(cls)  # a dotted path normalised to module:qualname
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"block class {path!r} is not a torch module")
    args.update({k: v for k, v in kwargs.items() if v is not None})
    unknown = sorted(set(args) - set(BLOCK_KEYS) - set(EXTRA_BLOCK_KEYS))
    if unknown:
        raise ValueError(f"block arguments {unknown} are not known; allowed: {list(BLOCK_KEYS + EXTRA_BLOCK_KEYS)}")
    extra = {k: args[k] for k in EXTRA_BLOCK_KEYS if k in args}
    accepted = inspect.signature(cls).parameters
    refused = sorted(k for k in extra if k not in accepted)
    if refused:
        raise ValueError(f"block class {path!r} takes no argument {refused}")
    n_layers = args.pop("n_hidden_layers", 2)
    out = {"n_couplings": _positive_int(args.get("n_couplings", 8), "n_couplings"),
           "hidden": _hidden_widths(args.get("hidden", 32), n_layers),
           "scale_bound": args.get("scale_bound", 2.0),
           "activation": check_activation(args.get("activation", "leaky_relu"))}
    sb = out["scale_bound"]
    if isinstance(sb, bool) or not isinstance(sb, (int, float)) or not 0 < float(sb) < 20:
        raise ValueError(f"scale_bound must be a number in (0, 20), got {sb!r}")
    out["scale_bound"] = float(sb)
    if "n_bins" in extra or "tail_bound" in extra:
        out["n_bins"], out["tail_bound"] = check_spline_args(extra.get("n_bins", 8), extra.get("tail_bound", 5.0))
    if "transform" in extra:
        out["transform"] = check_transform(extra["transform"])
    if "radius" in extra:
        out["radius"] = check_radius(extra["radius"])
    return {"class": path, "kwargs": out}


def block_factory(spec: dict[str, Any]) -> Callable[[], nn.Module]:
    """A callable building one fresh block of ``spec`` (from ``block_spec``) per call."""
    cls = import_object(spec["class"], "block class")
    return functools.partial(cls, **spec["kwargs"])


def _resolve_auto(value: bool | str, name: str, has: bool, needs: str) -> bool:
    """A true | false | "auto" option of a fixed layer the target may or may not support (``has``):
    "auto" = ``has``; true where the target lacks it is a ValueError saying what it ``needs``."""
    if value == "auto":
        return has
    value = _check_flag(value, name)
    if value and not has:
        raise ValueError(f"{name}=true needs {needs}: use {name}=false or auto")
    return value


def _preconditioner(target: LatticeTarget, precondition: bool | str) -> bool:
    """Resolve ``precondition`` (true | false | "auto": where the target has a Gaussian part)."""
    return _resolve_auto(precondition, "precondition", callable(getattr(target, "apply_coupling_power", None)),
                         f"a target with a Gaussian part (apply_coupling_power); {type(target).__name__} has none")


def _check_z2(target: LatticeTarget, z2: object) -> bool:
    z2 = _check_flag(bool(z2) if isinstance(z2, int) else z2, "z2")
    if z2 and not target.z2_symmetric:
        raise ValueError(f"z2=true needs a Z2-symmetric target; {type(target).__name__} is not")
    return z2


def _gauge(target: LatticeTarget, gauge: bool | str) -> bool:
    """Resolve ``gauge`` (true | false | "auto": where the target has an order gauge, ``IsingTarget.order_gauge``)."""
    return _resolve_auto(gauge, "gauge", order_gauge_tensor(target) is not None,
                         f"an unfrustrated antiferromagnet on an even torus (a target with an order_gauge); "
                         f"{target!r} has none")


def _output_layers(layers: list, target: LatticeTarget, precondition: bool, gauge: bool = False) -> list:
    """The learned layers, then the fixed output layers: the sign gauge (``gauge``), the preconditioner."""
    return (list(layers) + ([SignGauge(target)] if gauge else [])
            + ([GaussianPreconditioner(target)] if precondition else []))


def _overrides(coarse: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """``block_spec`` overrides of ``spec`` from a checked ``coarse``: a width alone keeps the
    block's number of hidden layers, a number of layers alone the block's first width."""
    out = {k: v for k, v in coarse.items() if k != "from_level"}
    widths = spec["kwargs"]["hidden"]
    if "hidden" in out and "n_hidden_layers" not in out:
        out["n_hidden_layers"] = len(widths) if isinstance(out["hidden"], Integral) else len(out["hidden"])
    if "n_hidden_layers" in out and "hidden" not in out:
        out["hidden"] = widths[0]
    return out


def _decimator_spec(decimator_block: Any, spec: dict[str, Any]) -> dict[str, Any] | None:
    """The decimators' block spec: None (the same block as the disentanglers), a class path (that
    class with the main block's common arguments: n_couplings, hidden, scale_bound, activation),
    or anything ``block_spec`` takes."""
    if decimator_block is None:
        return None
    if isinstance(decimator_block, str):
        common = {k: v for k, v in spec["kwargs"].items() if k in BLOCK_KEYS}
        return block_spec(decimator_block, **common)
    return block_spec(decimator_block)


#: what ``build_mera``'s ``coarse`` may set besides ``from_level``
COARSE_KEYS = ("n_couplings", "hidden", "n_hidden_layers")


def check_coarse(coarse: Any, depth: int) -> dict[str, Any] | None:
    """Validate ``build_mera``'s ``coarse`` (None, or {from_level, hidden / n_couplings /
    n_hidden_layers}) as plain data; ``from_level`` must leave it a level of a ``depth``-level MERA."""
    coarse = _plain(coarse)
    if coarse is None:
        return None
    if not isinstance(coarse, dict):
        raise ValueError(f"coarse must be null or a mapping {{from_level, hidden, n_couplings}}, got {coarse!r}")
    unknown = sorted(set(coarse) - {"from_level", *COARSE_KEYS})
    if unknown:
        raise ValueError(f"coarse takes from_level and {list(COARSE_KEYS)}, got unknown keys {unknown}")
    if "from_level" not in coarse:
        raise ValueError("coarse needs from_level: the first RG level (0 = finest) built with the coarse blocks")
    overrides = {k: coarse[k] for k in COARSE_KEYS if coarse.get(k) is not None}
    if not overrides:
        raise ValueError(f"coarse sets none of {list(COARSE_KEYS)}: give the coarse levels' widths or couplings, "
                         f"or set coarse to null")
    first = _positive_int(coarse["from_level"], "coarse.from_level", minimum=0)
    if first >= depth:
        raise ValueError(f"coarse.from_level must be a level of the hierarchy, 0 to {depth - 1} "
                         f"(depth {depth}), got {first}")
    return {"from_level": first, **overrides}


def build_mera(target: LatticeTarget, depth: int | None = None, block: Any = None,
               disentangler_repeats: int = 1, share_levels: bool = False, z2: bool = False,
               precondition: bool | str = False, skeleton: str = "none", decimator_block: Any = None,
               gauge: bool | str = False, coarse: Any = None, *, n_couplings: int | None = None,
               hidden: int | Sequence[int] | None = None, n_hidden_layers: int | None = None,
               scale_bound: float | None = None, activation: str | None = None) -> NeuralRGFlow:
    """The hierarchical NeuralRG flow for ``target``: L = 2^n·c with c odd and n ≥ 1.

    depth: RG levels (default n, the full hierarchy: log2 L for a power of two, whose top level
    is one latent; otherwise the top level is a c×c grid of latents, e.g. 3×3 at L = 12); block:
    the plaquette block (see ``block_spec``; default ``PlaquetteBijector``), with n_couplings /
    hidden / n_hidden_layers / scale_bound / activation as shorthand for its arguments; disentangler_repeats:
    disentangler layers per level; share_levels: one set of blocks for all levels; z2:
    symmetrise q under x → −x; precondition: end with the fixed x = A^{1/2} y
    (``GaussianPreconditioner``; "auto" = where the target has a Gaussian part); skeleton:
    "none" or "haar" (a fixed orthonormal Haar transform inside every decimator,
    ``wavelet.HaarDecimator``: with the preconditioner the untrained flow is an exact Gaussian
    block-spin RG, top latent = zero mode of A^{−1/2}x; stored configs without it are "none");
    decimator_block: another block for the decimators, which define the latents (None: ``block``;
    a class path takes the main block's n_couplings / hidden / scale_bound / activation); gauge: the
    fixed sign gauge y → g·y before the preconditioner (``gauge.SignGauge``: an unfrustrated
    antiferromagnet becomes the ferromagnet for the MERA; "auto" = where the target has one; stored
    configs without it have none); coarse: None, or {"from_level": k, "hidden": ..., "n_couplings": ...,
    "n_hidden_layers": ...}: levels ≥ k build their disentanglers and decimators with these
    arguments in place of their blocks' (more capacity where there are few plaquettes; ``check_coarse``).
    """
    L = check_lattice_size(target.L)
    n = (L & -L).bit_length() - 1  # factors of two in L: L = 2^n·c with c odd
    if n == 0:
        raise ValueError(f"the MERA needs an even L (L = 2^n·c: n RG levels of 2×2 plaquettes, a c×c grid of "
                         f"top latents), got L = {L}")
    depth = n if depth is None else _positive_int(depth, "depth")
    if depth > n:
        raise ValueError(f"depth must be between 1 and {n} for L = {L} (L / 2^depth must be an integer), got {depth}")
    spec = block_spec(block, n_couplings=n_couplings, hidden=hidden, n_hidden_layers=n_hidden_layers,
                      scale_bound=scale_bound, activation=activation)
    repeats = _positive_int(disentangler_repeats, "disentangler_repeats", minimum=0)
    precondition = _preconditioner(target, precondition)
    skeleton = check_skeleton(skeleton)
    z2 = _check_z2(target, z2)
    dec_spec = _decimator_spec(decimator_block, spec)
    gauge = _gauge(target, gauge)
    coarse = check_coarse(coarse, depth)
    coarse_args = {} if coarse is None else {
        "coarse_from": coarse["from_level"],
        "new_coarse_block": block_factory(block_spec(spec, **_overrides(coarse, spec))),
        "new_coarse_decimator": block_factory(block_spec(dec_spec or spec, **_overrides(coarse, dec_spec or spec)))}
    layers = mera_layers(L, depth, block_factory(spec), disentangler_repeats=repeats,
                         share_levels=bool(share_levels), skeleton=skeleton,
                         new_decimator=None if dec_spec is None else block_factory(dec_spec), **coarse_args)
    config = dict(kind="mera", depth=depth, block=spec, disentangler_repeats=repeats,
                  share_levels=bool(share_levels), z2=z2, precondition=precondition, skeleton=skeleton)
    if dec_spec is not None:  # stored only when set: older configs rebuild unchanged
        config["decimator_block"] = dec_spec
    if gauge:
        config["gauge"] = True
    if coarse is not None:
        config["coarse"] = coarse
    return NeuralRGFlow(_output_layers(layers, target, precondition, gauge), target, z2=z2,
                        levels=latent_levels(L, depth), config=config)


def build_flat(target: LatticeTarget, n_couplings: int = 8, hidden: int = 16,
               n_hidden_layers: int = 2, kernel_size: int = 3, z2: bool = False,
               scale_bound: float = 2.0, precondition: bool | str = False,
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
    precondition = _preconditioner(target, precondition)
    z2 = _check_z2(target, z2)
    activation = check_activation(activation)
    layers = flat_layers(L, n_couplings, hidden, n_hidden_layers, kernel_size, float(scale_bound), activation)
    config = dict(kind="flat", n_couplings=n_couplings, hidden=hidden,
                  n_hidden_layers=n_hidden_layers, kernel_size=kernel_size, z2=z2,
                  scale_bound=float(scale_bound), precondition=precondition, activation=activation)
    levels = torch.zeros(L, L, dtype=torch.long)
    return NeuralRGFlow(_output_layers(layers, target, precondition), target, z2=z2, levels=levels,
                        config=config)


BUILDERS = {"mera": build_mera, "flat": build_flat}


def build_flow(target: LatticeTarget, kind: str = "mera", **kwargs: Any) -> NeuralRGFlow:
    """Build a flow by ``kind`` ('mera' or 'flat'); keyword arguments go to that builder.

    Accepts a stored ``flow.config`` (also of older checkpoints, see the module docstring).
    """
    if kind not in BUILDERS:
        raise ValueError(f"kind must be one of {sorted(BUILDERS)}, got {kind!r}")
    return BUILDERS[kind](target, **kwargs)
