"""The sampler registry: name → (flow, target, settings, generator) → ``ChainRun``.

A sampler is one module in ``neuralrg/sampling/samplers/`` that defines ``SAMPLER = Sampler(...)``
(found by scanning that package: no list to edit) plus one ``conf/sampler/<name>.yaml``.
``sample.py``, its compare mode and ``analyze.py`` all go through ``run_sampler``.

Settings: every sampler declares the keys it takes with their defaults. ``resolve_settings``
merges defaults < common settings (only the keys this sampler takes) < sampler-specific
settings (unknown keys refused) and validates the values of the known keys.

Targets: a sampler may apply to some targets only (Wolff: the ferromagnetic Ising model). Its
``supports(target)`` returns None where it applies, else the reason; ``run_sampler`` refuses an
inapplicable target with that reason, and compare mode (``pipelines.sample``) skips it.
"""
from __future__ import annotations

import importlib
import math
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..physics.target import LatticeTarget
from .chains import ChainRun
from .progress import NULL_PROGRESS, Prefixed, Progress

RunFn = Callable[..., ChainRun]


@dataclass(frozen=True)
class Sampler:
    """One sampling rule. ``run(flow, target, settings, generator, progress=, max_time=) -> ChainRun``
    (``progress``: a ``sampling.progress.Progress``; ``max_time``: wall seconds after warm-up, then
    a clean stop with ``ChainRun.partial``, or None); ``flow`` may be
    None when ``needs_flow`` is False. ``defaults``: every settings key it takes, with its
    default. ``exact``: its chains sample p exactly (analysis may use it). ``validate``:
    extra checks of its own settings (ValueError), after the common ones. ``supports``:
    ``supports(target)`` is None where the sampler applies to ``target``, else the reason
    (None: every target)."""

    name: str
    run: RunFn
    defaults: dict[str, Any]
    description: str
    needs_flow: bool = True
    exact: bool = True
    validate: Callable[[dict[str, Any]], None] | None = field(default=None)
    supports: Callable[[LatticeTarget], str | None] | None = field(default=None)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_int(lo: int) -> Callable[[str, Any], None]:
    def check(key: str, v: Any) -> None:
        if not _is_int(v) or v < lo:
            raise ValueError(f"{key} must be an integer >= {lo}, got {v!r}")
    return check


def _check_positive(key: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"{key} must be a finite number > 0, got {v!r}")


def _check_fraction(key: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
        raise ValueError(f"{key} must be a number in (0, 1), got {v!r}")


def _check_positive_or_none(key: str, v: Any) -> None:
    if v is not None:
        _check_positive(key, v)


def _check_bool(key: str, v: Any) -> None:
    if not isinstance(v, bool):
        raise ValueError(f"{key} must be true or false, got {v!r}")


#: value checks of the settings keys samplers share
COMMON_CHECKS: dict[str, Callable[[str, Any], None]] = {
    "n_chains": _check_int(1), "n_samples": _check_int(2), "n_warmup": _check_int(0),
    "n_leapfrog": _check_int(1), "max_keep": _check_int(1), "batch_size": _check_int(1),
    "step_size": _check_positive, "target_accept": _check_fraction, "cuda_graph": _check_bool,
    "trajectory_length": _check_positive_or_none,
}


def check_settings(**settings: Any) -> None:
    """Value checks of the shared settings keys among ``settings`` (ValueError naming the key)."""
    for key, value in settings.items():
        if key in COMMON_CHECKS:
            COMMON_CHECKS[key](key, value)


def available() -> dict[str, Sampler]:
    """All samplers found in ``neuralrg.sampling.samplers``, by name."""
    from . import samplers as pkg

    found: dict[str, Sampler] = {}
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{pkg.__name__}.{info.name}")
        spec = getattr(module, "SAMPLER", None)
        if isinstance(spec, Sampler):
            found[spec.name] = spec
    return found


def get_sampler(name: object) -> Sampler:
    """The sampler called ``name``; ValueError listing the available ones otherwise."""
    found = available()
    if not isinstance(name, str) or name not in found:
        raise ValueError(f"sampler must be one of {sorted(found)}, got {name!r}")
    return found[name]


def resolve_settings(name: str, common: dict[str, Any] | None = None,
                     own: dict[str, Any] | None = None) -> dict[str, Any]:
    """Settings of sampler ``name``: defaults < ``common`` (keys it takes) < ``own`` (all must be
    its keys), validated."""
    spec = get_sampler(name)
    common, own = dict(common or {}), dict(own or {})
    unknown = sorted(set(own) - set(spec.defaults))
    if unknown:
        raise ValueError(f"settings {unknown} are not taken by sampler {name}; it takes {sorted(spec.defaults)}")
    s = {**spec.defaults, **{k: v for k, v in common.items() if k in spec.defaults}, **own}
    check_settings(**s)
    if spec.validate is not None:
        spec.validate(s)
    return s


def check_common_keys(common: dict[str, Any], names: list[str]) -> None:
    """ValueError for a common settings key that no sampler in ``names`` (nor any other) takes."""
    taken = set().union(*(available()[n].defaults for n in names)) | set().union(
        *(s.defaults for s in available().values()))
    unknown = sorted(set(common) - taken)
    if unknown:
        raise ValueError(f"settings has unknown key(s) {unknown}; allowed: {sorted(taken)}")


def unsupported_reason(name: str, target: LatticeTarget) -> str | None:
    """Why sampler ``name`` does not apply to ``target`` (its ``supports``), or None if it does."""
    spec = get_sampler(name)
    return None if spec.supports is None else spec.supports(target)


def check_supported(name: str, target: LatticeTarget) -> None:
    """ValueError naming sampler, target and reason when ``name`` does not apply to ``target``."""
    reason = unsupported_reason(name, target)
    if reason is not None:
        raise ValueError(f"sampler {name} does not apply to {target.describe()}: {reason}")


def run_sampler(name: str, flow: Any, target: LatticeTarget, settings: dict[str, Any],
                generator: torch.Generator | None = None, *, progress: Progress | None = None,
                max_time: float | None = None) -> ChainRun:
    """Run sampler ``name`` with already resolved ``settings`` (``resolve_settings``); ValueError
    if it does not apply to ``target`` (``check_supported``) or needs a flow and has none.
    ``progress`` hears of every trajectory (stages prefixed with ``name``); ``max_time``: wall
    seconds of sampling after warm-up (None: run all ``n_samples``), then a clean, partial stop."""
    spec = get_sampler(name)
    check_supported(name, target)
    if spec.needs_flow and flow is None:
        raise ValueError(f"sampler {name} needs a trained flow")
    if max_time is not None and (isinstance(max_time, bool) or not isinstance(max_time, (int, float))
                                 or not max_time >= 0):
        raise ValueError(f"max_time must be a number of seconds >= 0 or None, got {max_time!r}")
    prog = Prefixed(progress, name) if progress is not None and progress is not NULL_PROGRESS else None
    return spec.run(flow, target, settings, generator, progress=prog, max_time=max_time)
