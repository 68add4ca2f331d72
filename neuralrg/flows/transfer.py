"""Moving flows between lattice sizes: "train small, sample large", and warm starts.

Every trainable tensor of a flow gets a *canonical name* that does not depend on L or on the
position of its layer in ``flow.flows`` (``canonical_parameters``):

* MERA, one set of blocks per level: ``decimator<k>.<p>`` and ``disentangler<k>.<r>.<p>``
  (level k = 0 finest, repeat r, p the tensor's name inside the layer's block);
* MERA with ``share_levels``: ``decimator.<p>`` and ``disentangler.<r>.<p>``, one entry per
  shared tensor, however many levels use it;
* flat: the state-dict name (its couplings' shapes do not depend on L).

Nothing else in a flow is size dependent *and* stored: the Gaussian preconditioner (A's
spectrum, ½ ln det A), the latent level map, the prior's shape, the plaquette spacings and the
flat couplings' parity masks are rebuilt from the target by ``build_flow``, and the Haar
skeleton is a constant. So a level-shared MERA trained at L runs at any other power of two
with exactly the same parameters (``transfer_flow``), and a warm start copies the tensors whose
canonical names and shapes match (``warm_start_flow``).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from ..physics.target import LatticeTarget, target_from_spec
from .build import build_flow
from .hierarchy import _level_map
from .model import NeuralRGFlow

_KIND = re.compile(r"(disentangler|decimator)(\d+)(?:\.(\d+))?")
#: config entries two flows must share for tensors of one to be meaningful in the other
#: (``skeleton`` and ``precondition`` change what the blocks act on)
STRUCTURE_KEYS = ("kind", "share_levels", "skeleton", "precondition")
_DEFAULTS = {"skeleton": "none", "share_levels": False}  # configs older than the options


def _role(kind: str) -> tuple[str, int, int]:
    m = _KIND.fullmatch(kind)
    if m is None:
        raise ValueError(f"unknown MERA layer kind {kind!r}")
    return m.group(1), int(m.group(2)), int(m.group(3) or 0)


def _shared(flow: Any) -> bool:
    return bool(flow.config.get("share_levels", False))


def canonical_parameters(flow: Any) -> dict[str, torch.Tensor]:
    """{canonical name: tensor} of the flow's state (module docstring), the tensors themselves
    (``keep_vars``): writing into them changes the flow. Shared tensors appear once."""
    kind = flow.config.get("kind")
    if kind == "flat":
        return dict(flow.state_dict(keep_vars=True))
    if kind != "mera":
        raise ValueError(f"flow kind must be 'mera' or 'flat', got {kind!r}")
    shared = _shared(flow)
    out: dict[str, torch.Tensor] = {}
    for layer in flow.flows:
        if not hasattr(layer, "kind"):  # parameter-free layers (the Gaussian preconditioner)
            continue
        role, k, r = _role(layer.kind)
        prefix = role if shared else f"{role}{k}"
        if role == "disentangler":
            prefix += f".{r}"
        for p, t in layer.block.state_dict(keep_vars=True).items():
            out.setdefault(f"{prefix}.{p}", t)
    return out


def _levels(names: Any) -> int:
    """Number of RG levels named in per-level canonical names."""
    ks = [int(m.group(1)) for n in names if (m := re.match(r"(?:disentangler|decimator)(\d+)\.", n))]
    return 1 + max(ks) if ks else 0


def source_name(name: str, n_src: int, n_dst: int) -> str:
    """The source's canonical name that initialises the destination tensor ``name``: itself,
    except for per-level MERA names between hierarchies of ``n_src`` and ``n_dst`` levels: fine
    levels one to one, top to top, extra middle levels from the last non-top source level
    (``hierarchy.transfer_mera_weights``' map)."""
    m = re.match(r"(disentangler|decimator)(\d+)(\..*)", name)
    if m is None or n_src == n_dst:
        return name
    return f"{m.group(1)}{_level_map(int(m.group(2)), n_src, n_dst)}{m.group(3)}"


def _settings(flow: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(structure, layout) of a flow's config: structure must agree for its tensors to mean the
    same in another flow (``skeleton`` and ``precondition`` change what the blocks act on);
    layout (the networks' widths and depths) must agree for a copy to keep the trained maps."""
    c = flow.config
    structure = {k: c.get(k, _DEFAULTS.get(k)) for k in STRUCTURE_KEYS}
    if c.get("kind") == "mera":
        block = c.get("block") or {}
        kw = block.get("kwargs") or {}
        dec = c.get("decimator_block") or {}
        # configs without a transform (older spline runs, blocks without the option) mean the spline's
        structure.update({"block class": block.get("class"), "activation": kw.get("activation"),
                          "transform": kw.get("transform", "rational_quadratic"),
                          "decimator block class": dec.get("class")})
        return structure, {"hidden": kw.get("hidden"), "decimator hidden": (dec.get("kwargs") or {}).get("hidden"),
                           "coarse": c.get("coarse")}
    structure["activation"] = c.get("activation")
    return structure, {k: c.get(k) for k in ("hidden", "n_hidden_layers", "kernel_size")}


def check_compatible(src: Any, dst: Any, what: str = "source") -> None:
    """ValueError naming the setting unless ``src``'s tensors mean the same in ``dst``: same kind,
    level sharing, skeleton, preconditioner, block class, activation and element-wise map (``_settings``)."""
    a, b = _settings(src)[0], _settings(dst)[0]
    for key in a:
        if a[key] != b[key]:
            raise ValueError(f"the {what} model differs in {key}: {a[key]!r} there, {b[key]!r} here")


def _listing(items: list[str], limit: int = 6) -> str:
    return ", ".join(items[:limit]) + (f", … ({len(items)} in all)" if len(items) > limit else "")


@dataclass
class WarmStartReport:
    """What ``warm_start_flow`` did, by canonical name: ``copied`` {destination: source},
    ``new`` (destination tensors without a source, left as initialised: identity couplings)
    and ``unused`` (source tensors nothing took)."""

    copied: dict[str, str] = field(default_factory=dict)
    new: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    def remapped(self) -> dict[str, str]:
        """{destination layer: source layer} where a per-level MERA's levels were remapped."""
        return dict(sorted({_group(d): _group(s) for d, s in self.copied.items() if d != s}.items()))

    def as_dict(self) -> dict[str, Any]:
        """Plain data for summaries: counts, the remapped layers, new and unused tensor names."""
        return {"copied": len(self.copied), "new": list(self.new), "unused": list(self.unused),
                "remapped": self.remapped()}

    def describe(self) -> str:
        """One line: counts, the remapped layers, and where the new / unused tensors are."""
        text = f"{len(self.copied)} tensors copied, {len(self.new)} new, {len(self.unused)} unused"
        if self.copied and self.remapped():
            text += "; levels remapped: " + _listing([f"{d} <- {s}" for d, s in self.remapped().items()])
        for label, names in (("new", self.new), ("unused", self.unused)):
            if names:
                text += f"; {label}: " + _listing(sorted(set(map(_part, names))))
        return text


def _group(name: str) -> str:
    """The layer part of a canonical name (``decimator3``, ``disentangler1.0``)."""
    m = re.match(r"((?:disentangler|decimator)\d*(?:\.\d+)?)\.", name)
    return m.group(1) if m else name


def _part(name: str) -> str:
    """A canonical name cut after its coupling (``decimator3.couplings.2``), else after its layer."""
    m = re.match(r"(.*?couplings\.\d+)\.", name) or re.match(r"(.*?flows\.\d+)\.", name)
    return m.group(1) if m else _group(name)


def plan_warm_start(src: Any, dst: Any, what: str = "source") -> WarmStartReport:
    """Which source tensor initialises which destination tensor (nothing is copied yet).

    ValueError unless the models agree (``check_compatible``), naming every tensor whose shapes
    differ (e.g. other hidden widths) or, for networks of another depth, the tensors without a
    counterpart. Other numbers of couplings, disentangler repeats or RG levels are fine: the
    extra tensors are ``new`` (couplings start as the identity) or ``unused``."""
    check_compatible(src, dst, what)
    sp, dp = canonical_parameters(src), canonical_parameters(dst)
    n_src, n_dst = _levels(sp), _levels(dp)
    report = WarmStartReport()
    bad = []
    for name, t in dp.items():
        s = source_name(name, n_src, n_dst)
        if s not in sp:
            report.new.append(name)
        elif sp[s].shape != t.shape:
            bad.append(f"{name} {tuple(sp[s].shape)} there, {tuple(t.shape)} here")
        else:
            report.copied[name] = s
    if bad:
        raise ValueError(f"the {what} model does not match this one (other block sizes?); "
                         f"tensors whose shapes differ: {_listing(bad)}")
    taken = set(report.copied.values())
    report.unused = [n for n in sp if n not in taken]
    la, lb = _settings(src)[1], _settings(dst)[1]
    diff = [k for k in la if la[k] != lb[k]]
    if diff:
        what_differs = ", ".join(f"{k} {la[k]!r} there, {lb[k]!r} here" for k in diff)
        raise ValueError(f"the {what} model's networks have another layout ({what_differs}); "
                         f"tensors without a counterpart: {_listing(report.new + report.unused)}")
    return report


@torch.no_grad()
def warm_start_flow(src: Any, dst: Any, what: str = "source") -> WarmStartReport:
    """Initialise ``dst`` in place from the trained ``src`` (any L, same architecture): every
    tensor whose canonical name (after the level map of per-level MERAs, ``source_name``)
    and shape match is copied, values converted to ``dst``'s dtype and device. Returns the
    ``WarmStartReport``; ValueError as ``plan_warm_start`` before anything is written."""
    report = plan_warm_start(src, dst, what)
    sp, dp = canonical_parameters(src), canonical_parameters(dst)
    for d, s in report.copied.items():
        dp[d].copy_(sp[s])
    return report


def resized_target(target: LatticeTarget, L: int) -> LatticeTarget:
    """A new target like ``target`` (its spec) on the L×L lattice."""
    spec = target.spec()
    return target_from_spec({"class": spec["class"], "kwargs": {**spec["kwargs"], "L": int(L)}})


def _check_same_model_but_L(src: LatticeTarget, dst: LatticeTarget) -> None:
    a, b = src.spec(), dst.spec()
    if a["class"] != b["class"]:
        raise ValueError(f"target must be a {a['class']} like the flow's, got {b['class']}")
    ka, kb = dict(a["kwargs"]), dict(b["kwargs"])
    ka.pop("L", None), kb.pop("L", None)
    diff = sorted(k for k in set(ka) | set(kb) if ka.get(k) != kb.get(k))
    if diff:
        raise ValueError(f"target must differ from the flow's only in L; it differs in {diff} "
                         f"({ {k: ka.get(k) for k in diff} } -> { {k: kb.get(k) for k in diff} })")


def transfer_flow(flow: NeuralRGFlow, target: LatticeTarget | int, depth: int | None = None) -> NeuralRGFlow:
    """The trained ``flow`` on another lattice size, with exactly the same parameters.

    ``target``: the target at the new L (same class and arguments but L), or just the new L.
    ``depth``: RG levels of the new flow; default the full hierarchy log2 L' when ``flow`` has
    the full hierarchy, else ``flow``'s depth. Works for level-shared MERAs (the extra levels
    reuse the shared blocks; no new parameters), flat flows, and per-level MERAs at the same
    depth; anything that would need a tensor the flow does not have is refused (ValueError)
    with the missing names. Size-dependent parts are rebuilt for the new target, never copied
    (module docstring). The result is a new module in ``flow``'s dtype, device and mode; its
    tensors are copies.
    """
    if isinstance(target, int) and not isinstance(target, bool):
        target = resized_target(flow.target, target)
    if not isinstance(target, LatticeTarget):
        raise ValueError(f"target must be a LatticeTarget or a lattice size L, got {type(target).__name__}")
    _check_same_model_but_L(flow.target, target)
    config = dict(flow.config)
    if config.get("kind") == "mera":
        full = config.get("depth") == int(math.log2(flow.L))
        new_depth = (int(math.log2(target.L)) if full else config.get("depth")) if depth is None else depth
        config["depth"] = new_depth
        old_depth = flow.config.get("depth")
        if not _shared(flow) and new_depth != old_depth:
            raise ValueError(
                f"flow has one set of blocks per RG level (share_levels=false) for {old_depth} levels; at "
                f"L = {target.L} depth {new_depth} would need blocks it does not have: train with "
                f"model.share_levels=true, pass depth={old_depth}, or warm-start (init_from) and train at L = {target.L}")
    elif depth is not None:
        raise ValueError(f"depth is for MERA flows, got depth={depth!r} for a {config.get('kind')!r} flow")
    new = build_flow(target, **config).to(dtype=flow.dtype, device=flow.device)
    report = warm_start_flow(flow, new, what="trained")
    if report.new or report.unused or any(d != s for d, s in report.copied.items()):
        raise ValueError(f"flow's tensors do not map one to one onto the flow at L = {target.L}: {report.describe()}")
    return new.train(flow.training)
