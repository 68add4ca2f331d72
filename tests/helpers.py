"""Shared test helpers: a tiny, briefly trained flow and its checkpoint file; benchmark scripts as modules.

Import with ``from helpers import ...`` (pytest puts tests/ on sys.path). Training is a plain
PyTorch loop on ``flow.reverse_kld`` (no Lightning), deterministic for a given seed, and
cached per process: every call with the same arguments gets a fresh copy of the same flow.
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from neuralrg.checkpoint import META_KEY, STATE_PREFIX, flow_metadata
from neuralrg.flows import build_flow
from neuralrg.flows.model import NeuralRGFlow
from neuralrg.physics.ising import IsingTarget
from neuralrg.physics.lattice import K_C

TINY_MODEL = dict(kind="mera", n_couplings=4, hidden=16, n_hidden_layers=1)


@functools.lru_cache(maxsize=8)
def _trained_state(L: int, K: float, steps: int, batch_size: int, lr: float, seed: int, dtype: torch.dtype,
                   model: tuple[tuple[str, Any], ...]) -> dict[str, torch.Tensor]:
    with torch.random.fork_rng(devices=[]):  # reverse_kld draws from the global RNG
        torch.manual_seed(seed)
        flow = build_flow(IsingTarget(L, K), **dict(model)).to(dtype)
        opt = torch.optim.Adam(flow.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        for _ in range(steps):
            opt.zero_grad()
            flow.reverse_kld(batch_size).backward()
            opt.step()
            sched.step()
    return {k: v.detach().clone() for k, v in flow.state_dict().items()}


def tiny_trained_flow(L: int = 4, K: float = K_C, *, steps: int = 400, batch_size: int = 256, lr: float = 1e-2,
                      seed: int = 0, dtype: torch.dtype = torch.float64, z2: bool = False,
                      **model: Any) -> NeuralRGFlow:
    """A flow for the L×L relaxation at K trained by reverse KL for ``steps`` Adam steps
    (cosine-decayed lr), in eval mode. Defaults (L = 4 at K_c, ~5 s on one core) reach a
    variational gap of ~0.06 per site. ``model`` overrides ``TINY_MODEL`` (build_flow
    arguments); ``z2`` only switches symmetrisation on for use (training is without it)."""
    cfg = {**TINY_MODEL, **model}
    state = _trained_state(L, float(K), steps, batch_size, lr, seed, dtype, tuple(sorted(cfg.items())))
    flow = build_flow(IsingTarget(L, K), **{**cfg, "z2": z2}).to(dtype)
    flow.load_state_dict(state)
    return flow.eval()


def save_checkpoint(flow: NeuralRGFlow, path: str | Path) -> Path:
    """Write ``flow`` in the format ``neuralrg.checkpoint.load_flow`` reads; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {STATE_PREFIX + k: v for k, v in flow.state_dict().items()}
    torch.save({"state_dict": state, META_KEY: flow_metadata(flow)}, path)
    return path


def compose_train(*overrides: str):
    """conf/train.yaml composed with ``overrides`` like train.py does (no hydra run; GlobalHydra cleared)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
            return compose(config_name="train", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


def assert_unsigned_states_follow_p_phi(r: Any, flow: Any, tol: float = 0.03) -> None:
    """A sign-folded run's unsigned states y = g(z) are draws of p_φ = 2σ(φ)·p, not of p: for odd f,
    E_{p_φ}[f] = E_p[tanh(φ/2)·f], so ⟨tanh(φ(y)/2)⟩ must equal ⟨tanh²(φ(x)/2)⟩ over the signed x ~ p
    (a sampler whose moves target p instead would give a value near 0)."""
    from neuralrg.physics.fold import fold_phi

    w = torch.tensor(r.settings["fold"], dtype=r.x.dtype)
    z2 = flow.z2
    flow.z2 = False
    try:
        with torch.no_grad():
            y = flow.forward(r.z)
    finally:
        flow.z2 = z2
    a = float(torch.tanh(fold_phi(y, w) / 2).mean())
    b = float((torch.tanh(fold_phi(r.x, w) / 2) ** 2).mean())
    assert abs(a - b) < tol, f"unsigned states: <tanh(phi/2)> = {a:.3f}, but p_phi needs <tanh^2(phi/2)> = {b:.3f}"


def assert_mera_exact_in_float64(flow: NeuralRGFlow, L: int, seed: int = 0) -> None:
    """A float64 ``flow`` on the L×L lattice (parameters moved off the identity): z → x moves z,
    inverts to 1e-10, and its log-det matches the autograd Jacobian's to 1e-9."""
    z = torch.randn(2, L, L, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    x, ld = flow.forward_and_log_det(z)
    assert (x - z).abs().max() > 1e-1
    z_back, ld_inv = flow.inverse_and_log_det(x)
    assert (z_back - z).abs().max() <= 1e-10 and (ld + ld_inv).abs().max() <= 1e-10
    J = torch.autograd.functional.jacobian(lambda v: flow.forward_and_log_det(v.reshape(1, L, L))[0].reshape(-1),
                                           z[:1].reshape(-1))
    assert abs(torch.linalg.slogdet(J)[1].item() - ld[0].item()) <= 1e-9


def load_benchmark(name: str) -> ModuleType:
    """The script ``benchmarks/<name>.py`` imported as a module (benchmarks/ is not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
