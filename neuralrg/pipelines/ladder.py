"""Train small, sample large: a ladder of lattice sizes, each rung warm-started from the last.

``train.py experiment=ising_ladder`` (or any config with ``ladder.rungs``) calls ``run_ladder``:
one ordinary training run per rung in ``<ladder run dir>/L<L>/`` (config.yaml, checkpoints,
summary.json; ``resume=`` continues it like any run), rung k+1 started with ``init_from`` =
rung k (``pipelines.train.warm_start``; with ``model.share_levels=true`` every tensor is
copied and none is new). The ``ladder:`` node of the config:

* rungs: the lattice sizes, strictly increasing powers of two >= 4 (e.g. [8, 16, 32, 64]);
* steps / budget: optimizer steps or wall-clock budget per rung, a list (one per rung) or one
  value for all; at most one of the two (neither: the top-level ``steps`` / ``budget``);
* per_rung: {config key: [one value per rung]}, e.g. batch_size, final_eval_samples, or nested
  (``model: {block: {hidden: [[32, 32], [64, 64]]}}``); the list always has one entry per rung.

The top-level ``init_from`` (optional) starts the first rung; it must be a run of the same
target but L. Everything is checked before the first rung trains (``check_ladder_config``,
also run by the run-directory guard, without importing Lightning). At the end one table (L,
steps, training wall time, gap/site, Z2 gap/site, IS ESS/M, IS ln Z/N beside the exact one) is
printed and written with every rung's summary to ``<ladder run dir>/ladder.json``.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from ..checkpoint import load_flow
from ..flows.transfer import plan_warm_start
from .cli import parse_duration

log = logging.getLogger(__name__)

LADDER_FILE = "ladder.json"
#: top-level keys a rung may not take from ``ladder.per_rung`` (the ladder sets them itself)
RESERVED = ("target", "paths", "init_from", "ladder", "steps", "budget", "resume", "ckpt_path")


def is_ladder(cfg: DictConfig) -> bool:
    """Whether ``cfg`` asks for a ladder (``ladder.rungs`` set)."""
    node = cfg.get("ladder")
    return node is not None and node.get("rungs") is not None


def check_rungs(rungs: Any) -> list[int]:
    """``rungs`` as a list of ints, or a ValueError: strictly increasing powers of two >= 4."""
    values = list(rungs) if isinstance(rungs, (list, tuple, ListConfig)) else None
    if not values:
        raise ValueError(f"ladder.rungs must be a non-empty list of lattice sizes like [8, 16, 32, 64], got {rungs!r}")
    for L in values:
        if isinstance(L, bool) or not isinstance(L, int) or L < 4 or L & (L - 1):
            raise ValueError(f"ladder.rungs must be powers of two >= 4, got {L!r} in {values}")
    for a, b in zip(values, values[1:]):
        if b <= a:
            raise ValueError(f"ladder.rungs must be strictly increasing, got {a} then {b} in {values}")
    return [int(L) for L in values]


def _per_rung(value: Any, name: str, n: int) -> list[Any]:
    """One value per rung from a list of length n or a single value."""
    if isinstance(value, (list, tuple, ListConfig)):
        values = list(value)
        if len(values) != n:
            raise ValueError(f"{name} must give one value per rung ({n}) or one value for all, got {len(values)}: {values}")
        return values
    return [value] * n


def _leaves(node: Any, prefix: str) -> dict[str, Any]:
    """{dotted key: value} of the non-dict leaves of a nested dict (per_rung.model.block.hidden)."""
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, Any] = {}
    for k, v in node.items():
        out.update(_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _check_same_target(src: Any, dst: Any, init_from: str) -> None:
    """The first rung's ``init_from`` must be a run of the ladder's target (any L)."""
    theirs, mine = src.spec(), dst.spec()
    if theirs["class"] != mine["class"]:
        raise ValueError(f"ladder: init_from={init_from} was trained for a {theirs['class']}, "
                         f"this ladder for a {mine['class']}")
    a, b = dict(theirs["kwargs"]), dict(mine["kwargs"])
    a.pop("L", None), b.pop("L", None)
    diff = sorted(k for k in set(a) | set(b) if not _same(a.get(k), b.get(k)))
    if diff:
        what = ", ".join(f"{k} = {a.get(k)!r} there, {b.get(k)!r} here" for k in diff)
        raise ValueError(f"ladder: init_from={init_from} was trained for another target ({what}); "
                         "a ladder warm-starts only across lattice sizes of one target")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def rung_configs(cfg: DictConfig, ladder_dir: str | Path | None = None) -> list[DictConfig]:
    """The training config of every rung: ``cfg`` with target.L, steps / budget, the per_rung
    values, ``init_from`` (the previous rung's directory, the first rung keeps ``cfg.init_from``),
    ``paths.run_dir`` = <ladder_dir>/L<L> (when given) and no ``ladder``. ValueError naming the
    setting for a malformed ``ladder`` node."""
    node = cfg.ladder
    rungs = check_rungs(node.get("rungs"))
    n = len(rungs)
    unknown = sorted(set(node.keys()) - {"rungs", "steps", "budget", "per_rung"})
    if unknown:
        raise ValueError(f"ladder has unknown settings {unknown}; allowed: rungs, steps, budget, per_rung")
    if node.get("steps") is not None and node.get("budget") is not None:
        raise ValueError("give ladder.steps or ladder.budget, not both")
    steps = _per_rung(node.get("steps"), "ladder.steps", n)
    budgets = _per_rung(node.get("budget"), "ladder.budget", n)
    for b in budgets:
        parse_duration(b, "ladder.budget")
    raw = node.get("per_rung")
    per_rung = _leaves(OmegaConf.to_container(raw, resolve=True) if raw is not None else {}, "")
    bad = sorted(k for k in per_rung if k.split(".")[0] in RESERVED)
    if bad:
        raise ValueError(f"ladder.per_rung may not set {bad} (the ladder sets {', '.join(RESERVED)})")
    extra = {}
    for key, values in per_rung.items():
        if not isinstance(values, list) or len(values) != n:
            raise ValueError(f"ladder.per_rung.{key} must be a list of one value per rung ({n}), got {values!r}")
        extra[key] = values
    out = []
    for i, L in enumerate(rungs):
        c = copy.deepcopy(cfg)
        with open_dict(c):
            c.ladder = None
            c.target.L = L
            if steps[i] is not None:
                c.steps, c.budget = steps[i], None
            elif budgets[i] is not None:
                c.budget = budgets[i]
            for key, values in extra.items():
                OmegaConf.update(c, key, values[i], merge=False, force_add=True)
            if i > 0:
                c.init_from = str(Path(ladder_dir) / f"L{rungs[i - 1]}") if ladder_dir is not None else None
            if ladder_dir is not None:
                c.paths.run_dir = str(Path(ladder_dir) / f"L{L}")
        out.append(c)
    return out


def check_ladder_config(cfg: DictConfig) -> list[tuple[DictConfig, Any]]:
    """ValueError naming the setting unless every rung of the ladder can train and warm-start the
    next (before any work: no Lightning import, no directory made); returns (config without run
    directory, untrained flow) of every rung."""
    from .validate import check_training_config

    for key in ("resume", "ckpt_path"):
        if cfg.get(key):
            raise ValueError(f"a ladder starts new runs; {key} is not supported (resume a rung with resume=<ladder dir>/L<L>)")
    if "ddp" in str((cfg.get("trainer") or {}).get("strategy", "")):
        raise ValueError("a ladder trains on one device; trainer=ddp is not supported")
    configs = rung_configs(cfg)
    flows = []
    for c in configs:
        try:
            flows.append(check_training_config(c))
        except ValueError as exc:
            raise ValueError(f"ladder rung L = {c.target.L}: {exc}") from None
    pairs = list(zip(configs[:-1], flows[:-1], configs[1:], flows[1:]))
    if cfg.get("init_from"):
        src = load_flow(cfg.init_from)
        _check_same_target(src.target, flows[0].target, cfg.init_from)
        pairs.insert(0, (None, src, configs[0], flows[0]))
    for c_src, src, c_dst, dst in pairs:
        try:
            plan_warm_start(src, dst)
        except ValueError as exc:
            what = f"init_from={cfg.init_from}" if c_src is None else f"rung L = {c_src.target.L}"
            raise ValueError(f"ladder rung L = {c_dst.target.L} cannot warm-start from {what}: {exc}") from None
    return list(zip(configs, flows))


def _describe(target: Any) -> str:
    """``IsingTarget(K=0.440687, shift=0.1)``: the target without its L."""
    spec = target.spec()
    args = ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in spec["kwargs"].items() if k != "L")
    return f"{spec['class'].rpartition(':')[2]}({args})"


def _row(L: int, s: dict[str, Any]) -> dict[str, Any]:
    """The table row of one rung's training summary: the plain q's figures, and the Z2-symmetrised
    q's (``z2_`` keys; a flow trained with z2: its own numbers are the Z2 ones)."""
    z2 = s.get("z2_eval") or (s if (s.get("model") or {}).get("z2") else {})
    exact = s.get("exact_free_energy_per_site")
    row = {"L": L, "status": s.get("status"), "steps": s.get("steps"), "wall_time_s": s.get("wall_time_s"),
           "gap_per_site": s.get("gap_per_site"), "exact_log_z_per_site": None if exact is None else -exact,
           "copied_from": (s.get("warm_start") or {}).get("from"),
           "r2_m_top1": (s.get("rg_organisation") or {}).get("r2_m_top1"),
           "radius_growth": (s.get("rg_organisation") or {}).get("radius_growth")}
    for key in ("ess_fraction", "is_log_z_per_site", "is_log_z_per_site_err", "is_reliable", "is_khat"):
        row[key], row[f"z2_{key}"] = s.get(key), z2.get(key)
    row["z2_gap_per_site"] = z2.get("gap_per_site")
    return row


def _num(v: Any, fmt: str, width: int) -> str:
    return f"{v:{width}{fmt}}" if isinstance(v, (int, float)) and math.isfinite(v) else f"{'-':>{width}}"


def format_ladder(result: dict[str, Any]) -> str:
    """The ladder's table (``run_ladder``'s result) as text: ESS/M and the IS ln Z/N are the Z2-symmetrised
    q's where the summary has them (for a Z2-symmetric target the plain q may cover one sign of m only:
    with ``loss.sign_fold`` it does by design), else the plain q's, marked °."""
    head = (f"{'L':>4} {'steps':>7} {'train s':>8} {'gap/N':>9} {'Z2 gap/N':>9} {'ESS/M':>7} "
            f"{'ln Z/N (IS)':>23} {'ln Z/N exact':>12} {'R²(m|top)':>9} {'growth':>6}")
    lines = [f"ladder {result.get('target_description', '')}: {result['status']}, "
             f"{result['wall_time_s']:.0f} s in all ({result['run_dir']})", head]
    flagged = plain = False
    for r in result["rows"]:
        pre = "z2_" if r.get("z2_ess_fraction") is not None else ""
        mark = "" if pre else "°"
        plain = plain or not pre
        lz = "-"
        if isinstance(r.get(f"{pre}is_log_z_per_site"), float):
            lz = f"{r[f'{pre}is_log_z_per_site']:.6f} ± {r[f'{pre}is_log_z_per_site_err']:.6f}{mark}"
            if r.get(f"{pre}is_reliable") is False:
                lz, flagged = lz + "!", True
        ess = _num(r.get(f"{pre}ess_fraction"), '.4f', 6) + (mark or " ")
        lines.append(f"{r['L']:>4} {_num(r['steps'], 'd', 7)} {_num(r['wall_time_s'], '.1f', 8)} "
                     f"{_num(r['gap_per_site'], '.5f', 9)} {_num(r['z2_gap_per_site'], '.5f', 9)} "
                     f"{ess:>7} {lz:>23} {_num(r['exact_log_z_per_site'], '.6f', 12)} "
                     f"{_num(r.get('r2_m_top1'), '.2f', 9)} {_num(r.get('radius_growth'), '.2f', 6)}")
    lines.append("  ESS/M and ln Z/N (IS): the Z2-symmetrised q's" + ("; ° the plain q's (no Z2 evaluation)" if plain else ""))
    if flagged:
        lines.append("  ! is_reliable false (PSIS k̂, is_khat in ladder.json): that IS estimate or its error bar is unreliable")
    return "\n".join(lines)


def run_ladder(cfg: DictConfig) -> dict[str, Any]:
    """Train every rung (module docstring); returns {status, run_dir, rungs, rows, summaries,
    wall_time_s, …}, also written to <run dir>/ladder.json, after every rung (a stopped ladder
    keeps what it did). A rung that stops (NaN, Ctrl-C) stops the ladder and re-raises."""
    from hydra.utils import instantiate

    from .rundir import check_run_dir
    from .train import run_training

    check_ladder_config(cfg)
    ladder_dir = Path(cfg.paths.run_dir)
    configs = rung_configs(cfg, ladder_dir)
    for c in configs:
        check_run_dir(c.paths.run_dir, None)
    ladder_dir.mkdir(parents=True, exist_ok=True)
    settings = OmegaConf.to_container(cfg.ladder, resolve=True)
    result: dict[str, Any] = {
        "status": "running", "run_dir": str(ladder_dir), "ladder": settings,
        "target_description": _describe(instantiate(configs[0].target)),
        "init_from": cfg.get("init_from"), "rows": [], "summaries": [], "wall_time_s": 0.0}
    t0 = time.perf_counter()

    def write(status: str) -> None:
        result["status"] = status
        result["wall_time_s"] = time.perf_counter() - t0
        (ladder_dir / LADDER_FILE).write_text(json.dumps(result, indent=2, default=float))

    for c in configs:
        L = int(c.target.L)
        log.info("ladder rung L = %d in %s%s", L, c.paths.run_dir,
                 f" (warm start from {c.init_from})" if c.get("init_from") else "")
        t_rung = time.perf_counter()
        try:
            summary = run_training(c, overrides=[])
        except BaseException:  # NaN guard, Ctrl-C / SIGTERM (SystemExit), errors: keep what was done
            rung_file = Path(c.paths.run_dir) / "summary.json"
            if rung_file.is_file():  # the stopped rung wrote its summary (status "interrupted" / "stopped: …")
                stopped = json.loads(rung_file.read_text())
                result["summaries"].append(stopped)
                result["rows"].append(_row(L, stopped))
            write(f"stopped at L = {L}")
            raise
        summary = dict(summary, rung_total_s=time.perf_counter() - t_rung)
        result["summaries"].append(summary)
        result["rows"].append(_row(L, summary))
        write("running")
    write("completed")
    log.info("ladder summary written to %s", ladder_dir / LADDER_FILE)
    return result
