"""Sampling a trained flow: latent potential, exactness of every sampler against Kaufman's
solution, blocked moves, flow Metropolis, the sample.py pipeline and its error handling.

The test flow (tests/helpers.py) is an L = 4 MERA flow trained ~5 s at K_c by reverse KL: a gap
of ~0.06 per site, and collapsed onto the m < 0 mode (as reverse KL does). Its plain q is a
poor independence proposal (ESS/M ~ 1e-3), so flow Metropolis is checked with the
Z2-symmetrised density (flow.z2 = True, ESS/M ~ 0.15), which is exact either way.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import assert_unsigned_states_follow_p_phi, tiny_trained_flow
from neuralrg.checkpoint import CheckpointError
from neuralrg.physics.exact import exact_solution
from neuralrg.physics.fold import fold_log_weight
from neuralrg.sampling import (independence_metropolis, latent_potential, physical_potential_and_grad,
                               run_flow_metropolis, run_latent_hmc, run_physical_hmc, summarize_run)
from neuralrg.pipelines import sample as pipeline
from neuralrg.sampling.samplers.blocked_latent_hmc import default_blocks
from neuralrg.physics.statistics import autocorrelation

torch.set_num_threads(1)
F64 = torch.float64
REPO = Path(__file__).resolve().parents[1]
N_SIGMA = 4.0


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def files_under(path: Path) -> set[Path]:
    return {p for p in path.rglob("*")}


def check_exact(summary: dict, key: str, L: int, K: float, max_err: float) -> None:
    """Mean within N_SIGMA error bars of Kaufman's value, and the error bar small enough to matter."""
    exact = exact_solution(L, K)[key]
    obs = summary["observables"][key]
    assert 0 < obs["err"] < max_err, obs
    dev = (obs["mean"] - exact) / obs["err"]
    assert abs(dev) < N_SIGMA, (key, obs, exact)
    assert summary["deviation_sigma"][key] == pytest.approx(dev)


# ----------------------------------------------------------------------------- statistics
def test_autocorrelation_matches_direct_sum():
    rng = np.random.default_rng(3)
    x = np.cumsum(rng.standard_normal((3, 50)), axis=1) * 0.3 + rng.standard_normal((3, 50))
    y = x - x.mean()
    C, T = y.shape
    acov = np.array([np.mean([np.dot(y[c, : T - t], y[c, t:]) / (T - t) for c in range(C)]) for t in range(T)])
    rho = autocorrelation(torch.from_numpy(x))
    np.testing.assert_allclose(rho, acov / acov[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(autocorrelation(x, max_lag=7), rho[:8])
    assert autocorrelation(x[0], max_lag=500).shape == (50,)  # one chain; lag capped at T - 1
    np.testing.assert_array_equal(autocorrelation(np.ones((2, 5))), [1, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="max_lag"):
        autocorrelation(x, max_lag=-1)


# ----------------------------------------------------------------------------- potentials
@pytest.mark.parametrize("z2", [False, True])
def test_latent_potential_is_pulled_back_density(z2):
    """U(z) = −[ln N(z) + ln p̃(g(z)) − ln q(g(z))] + const, with q_sym (via the inverse) for Z2."""
    f = tiny_trained_flow(z2=z2)
    z = 1.3 * torch.randn((64, 4, 4), dtype=F64, generator=gen(1))
    with torch.no_grad():
        u = latent_potential(f)(z)
        x = f.forward(z)
        log_q = f.log_prob(x)  # inverse pass; q_sym when z2
        ref = 0.5 * z.pow(2).sum(dim=(1, 2)) - f.target.log_prob(x) + log_q
        diff = u - ref
        torch.testing.assert_close(diff, diff.mean().expand_as(diff), rtol=0, atol=1e-9)
        # the check has power: the plain and symmetrised potentials really differ
        f.z2 = not z2
        other = latent_potential(f)(z) - ref
        assert (other - other.mean()).abs().max() > 1e-3


def test_physical_potential_gradient_matches_autograd(flow):
    x = torch.randn((8, 4, 4), dtype=F64, generator=gen(2)).requires_grad_(True)
    e, g = physical_potential_and_grad(flow.target)(x.detach())
    auto = torch.autograd.grad(flow.target.energy(x).sum(), x)[0]
    torch.testing.assert_close(e, flow.target.energy(x).detach())
    torch.testing.assert_close(g, auto)


# ----------------------------------------------------------------------------- exactness
HMC = dict(step_size=0.3, target_accept=0.8)
EXACT_CASES = {
    "latent_hmc": (run_latent_hmc, dict(n_chains=32, n_warmup=100, n_samples=500, n_leapfrog=4, **HMC)),
    "blocked_latent_hmc": (run_latent_hmc, dict(n_chains=32, n_warmup=100, n_samples=400, n_leapfrog=3,
                                                block_levels=[[1, 2], [0]], **HMC)),
    "physical_hmc": (run_physical_hmc, dict(n_chains=64, n_warmup=100, n_samples=1000, n_leapfrog=5, **HMC)),
    "flow_metropolis": (run_flow_metropolis, dict(n_chains=64, n_warmup=50, n_samples=1000)),
}


@pytest.mark.parametrize("name", list(EXACT_CASES))
def test_sampler_is_exact(name):
    """Energy per site (every sampler) and specific heat (all but the short latent runs) within
    4 standard errors (τ_int-aware) of the exact L = 4, K_c values."""
    f = tiny_trained_flow(z2=name == "flow_metropolis")
    fn, kw = EXACT_CASES[name]
    r = fn(f, generator=gen(11), **kw)
    assert r.sampler == name
    C, T = kw["n_chains"], kw["n_samples"]
    assert all(v.shape == (C, T) for v in r.observables.values())
    s = summarize_run(r, f.target)
    assert 0.3 < s["acceptance"] <= 1.0
    assert s["tau_int"]["energy"]["converged"] and s["tau_int"]["m2"]["converged"]
    assert s["ess_per_second"] > 0
    check_exact(s, "energy_per_site", 4, f.target.K, max_err=0.02)
    if name in ("physical_hmc", "flow_metropolis", "blocked_latent_hmc"):
        check_exact(s, "specific_heat_per_site", 4, f.target.K, max_err=0.04)
    # kept configurations are consistent with what the sampler reports
    torch.testing.assert_close(r.energy, f.target.energy(r.x))
    if name == "blocked_latent_hmc":
        assert len(s["settings"]["step_size"]) == 2 and len(s["settings"]["accept_per_block"]) == 2


def test_z2_latent_hmc_exact_and_both_signs():
    f = tiny_trained_flow(z2=True)
    r = run_latent_hmc(f, n_chains=64, n_warmup=40, n_samples=120, n_leapfrog=4, generator=gen(12), **HMC)
    s = summarize_run(r, f.target)
    check_exact(s, "energy_per_site", 4, f.target.K, max_err=0.02)
    m = r.observables["m"]
    assert 0.35 < float((m > 0).to(F64).mean()) < 0.65
    signs = torch.sign(r.x.sum(dim=(1, 2)))
    assert (signs > 0).any() and (signs < 0).any()
    # x = ±g(z) and log_q is the symmetrised density of x
    with torch.no_grad():
        gz = f.forward(r.z)
        same = torch.isclose(r.x, gz).flatten(1).all(1) | torch.isclose(r.x, -gz).flatten(1).all(1)
        assert bool(same.all())
        torch.testing.assert_close(r.log_q, f.log_prob(r.x))


# ----------------------------------------------------------------------------- blocked moves
@pytest.mark.parametrize("levels", [[[1]], [[2]], [[0, 2]]])
def test_blocked_hmc_moves_only_chosen_levels(flow, levels):
    C = 6
    r = run_latent_hmc(flow, n_chains=C, n_warmup=3, n_samples=6, n_leapfrog=2, block_levels=levels,
                       generator=gen(5), **HMC)
    mask = torch.isin(flow.latent_levels, torch.tensor(levels[0]))
    start = r.start[torch.arange(r.z.shape[0]) % C]  # kept sample i belongs to chain i mod C
    assert r.z.shape[0] == C * 6
    assert torch.equal(r.z[:, ~mask], start[:, ~mask])
    assert bool((r.z[:, mask] != start[:, mask]).any())
    assert r.settings["block_levels"] == levels


@pytest.mark.parametrize("bad", [[[3]], [[]], [[-1]], [[0.5]], "01"])
def test_bad_block_levels(flow, bad):
    with pytest.raises(ValueError, match="block_levels"):
        run_latent_hmc(flow, n_chains=2, n_warmup=0, n_samples=2, block_levels=bad)


def test_default_blocks():
    assert default_blocks(1) == [[0]]
    assert default_blocks(2) == [[0, 1]]
    assert default_blocks(3) == [[1, 2], [0]]
    assert default_blocks(5) == [[3, 4], [0, 1, 2]]


# ----------------------------------------------------------------------------- flow Metropolis
def test_flow_metropolis_accepts_everything_when_q_is_p(monkeypatch):
    f = tiny_trained_flow()
    monkeypatch.setattr(f.target, "log_prob", f.log_prob)  # target density := the flow's own q
    r = run_flow_metropolis(f, n_chains=8, n_warmup=5, n_samples=50, generator=gen(6))
    assert r.accept == 1.0
    assert r.settings["ess_fraction"] == pytest.approx(1.0, abs=1e-9)


def brute_force_metropolis(log_w: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    C, T = log_w.shape
    index = np.zeros((C, T), dtype=np.int64)
    acc = np.zeros((C, T), dtype=bool)
    for c in range(C):
        cur = 0
        acc[c, 0] = True
        for t in range(1, T):
            prop, now = log_w[c, t], log_w[c, cur]
            if np.isfinite(prop) and (not np.isfinite(now) or math.log(u[c, t]) < prop - now):
                cur = t
                acc[c, t] = True
            index[c, t] = cur
    return index, acc


def test_independence_metropolis_matches_sequential_loop():
    rng = np.random.default_rng(7)
    log_w = rng.normal(0.0, 1.5, (5, 300))
    log_w[1, 0] = -np.inf   # a chain starting on a zero-weight state leaves it
    log_w[2, 0] = np.nan
    log_w[3, 10:20] = np.nan  # non-finite proposals are rejected
    log_w[4, 5] = -np.inf
    u = rng.random((5, 300))
    idx, acc = independence_metropolis(torch.from_numpy(log_w), uniforms=torch.from_numpy(u))
    ref_idx, ref_acc = brute_force_metropolis(log_w, u)
    np.testing.assert_array_equal(idx.numpy(), ref_idx)
    np.testing.assert_array_equal(acc.numpy(), ref_acc)
    assert 0.2 < acc[:, 1:].double().mean() < 0.8  # a non-trivial mix of accepts and rejects
    idx1, acc1 = independence_metropolis(torch.from_numpy(log_w[0]), uniforms=torch.from_numpy(u[0]))
    np.testing.assert_array_equal(idx1.numpy(), ref_idx[0])


def test_independence_metropolis_targets_p():
    """Discrete toy: proposals from q over 3 states, weights p/q; the chains' states follow p."""
    g = gen(8)
    p = torch.tensor([0.6, 0.3, 0.1], dtype=F64)
    q = torch.tensor([0.2, 0.3, 0.5], dtype=F64)
    C, T = 4000, 30
    states = torch.multinomial(q, C * T, replacement=True, generator=g).reshape(C, T)
    log_w = (p.log() - q.log())[states]
    idx, _ = independence_metropolis(log_w, generator=g)
    final = torch.gather(states, 1, idx[:, -1:]).flatten()
    freq = torch.bincount(final, minlength=3).to(F64) / C
    err = torch.sqrt(p * (1 - p) / C)
    assert bool(((freq - p).abs() < N_SIGMA * err).all()), freq


# ----------------------------------------------------------------------------- pipeline
SMALL = dict(n_chains=8, n_warmup=5, n_samples=20, n_leapfrog=2, step_size=0.3, target_accept=0.8,
             block_levels=None)


def test_run_sampling_writes_complete_outputs(run_dir, flow, tmp_path):
    out = tmp_path / "out"
    samplers = ["physical_hmc", "latent_hmc", "blocked_latent_hmc", "flow_metropolis"]
    summary = pipeline.run_sampling(run=str(run_dir), samplers=samplers, settings=dict(SMALL), out_dir=str(out),
                                    L=4, seed=3, device="cpu", importance_samples=256, figures=True,
                                    symmetrize=False)
    assert summary["symmetrized"] is False and summary["trained_with_z2"] is False
    names = {p.name for p in out.iterdir()}
    pngs = {"samples.png", "latents.png", *(f"trace_{s}.png" for s in samplers)}
    assert names == {"samples.npz", "summary.json", *pngs}
    for n in pngs:
        assert (out / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    data = np.load(out / "samples.npz")
    assert {"x", "z", "log_q", "energy_per_sample", "latent_levels"} <= set(data.files)
    for s in samplers:
        assert data[f"{s}__m2"].shape == data[f"{s}__energy"].shape == (8, 20)
    x, z, lq = (torch.from_numpy(data[k]) for k in ("x", "z", "log_q"))
    assert x.shape == z.shape == (x.shape[0], 4, 4) and lq.shape == (x.shape[0],)
    with torch.no_grad():  # physical HMC (first sampler): z = g⁻¹(x), log_q = ln q(x), E(x)
        torch.testing.assert_close(flow.forward(z), x)
        torch.testing.assert_close(lq, flow.log_prob(x))
        torch.testing.assert_close(torch.from_numpy(data["energy_per_sample"]), flow.target.energy(x))
    np.testing.assert_array_equal(data["latent_levels"], flow.latent_levels.numpy())

    js = json.loads((out / "summary.json").read_text())
    assert js["target"] == {"class": "neuralrg.physics.ising:IsingTarget", "L": 4, "K": flow.target.K, "shift": flow.target.shift}
    assert js["settings"] == SMALL and js["seed"] == 3
    assert set(js["samplers"]) == set(samplers)
    for s in samplers:
        r = js["samplers"][s]
        assert r["settings"]["n_chains"] == 8 and 0 <= r["acceptance"] <= 1 and r["ess_per_second"] > 0
        for key in ("energy_per_site", "m2"):
            assert {"mean", "err", "tau_int"} <= set(r["observables"][key])
        assert {"mean", "err"} <= set(r["observables"]["specific_heat_per_site"])
        assert "energy_per_site" in r["deviation_sigma"]
        assert r["tau_int"]["m2"]["trajectories"] > 0
    assert js["samplers"]["blocked_latent_hmc"]["settings"]["block_levels"] == [[1, 2], [0]]
    assert "is_log_z_per_site" in js["importance_sampling"] and "ess_fraction" in js["importance_sampling_z2"]
    assert summary["out_dir"] == str(out)

    table = pipeline.format_table(summary)
    assert all(s in table for s in samplers) and "exact energy per site" in table
    with pytest.raises(ValueError, match="already holds a completed"):
        pipeline.run_sampling(run=str(run_dir), samplers=["flow_metropolis"], settings=dict(SMALL),
                              out_dir=str(out), device="cpu")


def test_latent_run_npz_latents_map_to_samples(run_dir, flow, tmp_path):
    out = tmp_path / "o"
    pipeline.run_sampling(run=str(run_dir / "checkpoints" / "last.ckpt"), samplers=["latent_hmc"],
                          settings=dict(SMALL), out_dir=str(out), device="cpu", figures=False)
    data = np.load(out / "samples.npz")
    x, z = torch.from_numpy(data["x"]), torch.from_numpy(data["z"])
    with torch.no_grad():  # default symmetrize=True: x = ±g(z) with a random sign, log_q = ln q_sym(x)
        gz = flow.forward(z)
        sign = torch.sign((x * gz).sum(dim=(1, 2)))[:, None, None]
        torch.testing.assert_close(sign * gz, x)
        assert (sign > 0).any() and (sign < 0).any()
        lq_plain, lq_flip = flow.log_prob(x), flow.log_prob(-x)
        torch.testing.assert_close(torch.from_numpy(data["log_q"]),
                                   torch.logaddexp(lq_plain, lq_flip) - math.log(2.0))
    assert {p.name for p in out.iterdir()} == {"samples.npz", "summary.json"}


def _corrupt(d: Path) -> Path:
    p = d / "bad" / "last.ckpt"
    p.parent.mkdir()
    p.write_bytes(b"this is not a torch checkpoint")
    return p


def _truncated(d: Path, run_dir: Path) -> Path:
    p = d / "trunc" / "last.ckpt"
    p.parent.mkdir()
    good = (run_dir / "checkpoints" / "last.ckpt").read_bytes()
    p.write_bytes(good[: len(good) // 2])
    return p


BAD_INPUTS = {
    # name: (extra run_sampling kwargs / settings overrides, exception type, message fragment)
    "missing_checkpoint": (dict(run="MISSING"), CheckpointError, "not found"),
    "corrupt_checkpoint": (dict(run="CORRUPT"), CheckpointError, "cannot read checkpoint"),
    "truncated_checkpoint": (dict(run="TRUNCATED"), CheckpointError, "cannot read checkpoint"),
    "mismatched_L": (dict(L=8), CheckpointError, "L = 4, not L = 8"),
    "mismatched_K": (dict(K=0.3), CheckpointError, "K = "),
    "zero_chains": (dict(settings=dict(n_chains=0)), ValueError, "n_chains must be an integer >= 1, got 0"),
    "zero_step": (dict(settings=dict(step_size=0.0)), ValueError, "step_size must be a finite number > 0"),
    "negative_step": (dict(settings=dict(step_size=-0.1)), ValueError, "step_size"),
    "nan_step": (dict(settings=dict(step_size=float("nan"))), ValueError, "step_size"),
    "unknown_setting": (dict(settings=dict(n_chain=4)), ValueError, "unknown key"),
    "bad_target_accept": (dict(settings=dict(target_accept=1.0)), ValueError, "target_accept"),
    "unknown_sampler": (dict(samplers=["gibbs"]), ValueError, "sampler must be one of"),
    "bad_block_levels": (dict(samplers=["blocked_latent_hmc"], settings=dict(block_levels=[[0], [7]])),
                         ValueError, "block_levels"),
    "bad_device": (dict(device="abacus"), ValueError, "device"),
    "bad_importance_samples": (dict(importance_samples=1), ValueError, "importance_samples"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_run_sampling_bad_input_writes_nothing(run_dir, tmp_path, case):
    kw, exc, msg = BAD_INPUTS[case]
    kw = dict(kw)
    run = {"MISSING": lambda: tmp_path / "nope" / "last.ckpt", "CORRUPT": lambda: _corrupt(tmp_path),
           "TRUNCATED": lambda: _truncated(tmp_path, run_dir)}.get(kw.pop("run", None), lambda: run_dir)()
    settings = {**SMALL, **kw.pop("settings", {})}
    args = dict(run=str(run), samplers=["latent_hmc"], settings=settings, out_dir=str(tmp_path / "out"),
                device="cpu", importance_samples=0, figures=False)
    args.update(kw)
    before_tmp, before_run = files_under(tmp_path), files_under(run_dir)
    with pytest.raises(exc, match=msg):
        pipeline.run_sampling(**args)
    assert files_under(tmp_path) == before_tmp and files_under(run_dir) == before_run


def test_failure_during_sampling_leaves_no_summary(run_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"

    def broken(*a, **k):
        raise RuntimeError("figure backend exploded")

    monkeypatch.setattr(pipeline, "write_figures", broken)  # fails after samples.npz is written
    with pytest.raises(RuntimeError):
        pipeline.run_sampling(run=str(run_dir), samplers=["flow_metropolis"], settings=dict(SMALL),
                              out_dir=str(out), device="cpu")
    assert not (out / "summary.json").exists() and not list(out.glob("*.tmp"))


@pytest.mark.parametrize("n_chains,step", [(0, 0.1), (4, 0.0), (4, -1.0)])
def test_runner_bad_arguments(flow, n_chains, step):
    with pytest.raises(ValueError, match="n_chains" if n_chains == 0 else "step_size"):
        run_latent_hmc(flow, n_chains=n_chains, n_warmup=0, n_samples=2, step_size=step)
    with pytest.raises(ValueError, match="n_chains" if n_chains == 0 else "step_size"):
        run_physical_hmc(flow, n_chains=n_chains, n_warmup=0, n_samples=2, step_size=step)
    if n_chains == 0:
        with pytest.raises(ValueError, match="n_chains"):
            run_flow_metropolis(flow, n_chains=0, n_warmup=0, n_samples=2)


# ----------------------------------------------------------------------------- sample.py
def sample_py(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, str(REPO / "sample.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_sample_py_compare(run_dir, tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    res = sample_py(f"run={run_dir}", "mode=compare", "device=cpu", "importance_samples=512", "figures=false",
                    "settings.n_chains=8", "settings.n_warmup=5", "settings.n_samples=20",
                    "settings.n_leapfrog=2", "annealed_importance.samples=32", "annealed_importance.stages=2",
                    cwd=cwd)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("sampler"))
    rows = lines[header + 1: header + 5]
    assert [r.split()[0] for r in rows] == ["latent_hmc", "physical_hmc", "flow_metropolis", "wolff"]
    assert lines[header + 5].startswith("exact energy per site: -1.565624")
    assert any(line.startswith("flow importance sampling") for line in lines)
    assert any(line.startswith("Z2-symmetrised flow importance sampling") for line in lines)
    assert any(line.startswith("annealed importance sampling (2 stages x 5 leapfrog") for line in lines)
    summaries = list((run_dir / "sampling").glob("*/summary.json"))  # default out_dir
    assert len(summaries) == 1 and (summaries[0].parent / "samples.npz").exists()
    assert not list(cwd.iterdir())  # no hydra log or output folder in the working directory


@pytest.mark.parametrize("case", ["missing", "corrupt", "mismatched_L", "zero_chains", "zero_step"])
def test_sample_py_bad_input(run_dir, tmp_path, case):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    run = {"missing": tmp_path / "missing_run", "corrupt": _corrupt(tmp_path)}.get(case, run_dir)
    extra = {"mismatched_L": ["L=8"], "zero_chains": ["settings.n_chains=0"],
             "zero_step": ["settings.step_size=0"]}.get(case, [])
    before_tmp, before_run = files_under(tmp_path), files_under(run_dir)
    res = sample_py(f"run={run}", "device=cpu", f"out_dir={tmp_path / 'out'}", *extra, cwd=cwd)
    assert res.returncode == 1
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), res.stderr
    expect = {"missing": "checkpoint not found", "corrupt": "cannot read checkpoint",
              "mismatched_L": "not L = 8", "zero_chains": "n_chains", "zero_step": "step_size"}[case]
    assert expect in err[0]
    assert files_under(tmp_path) == before_tmp and files_under(run_dir) == before_run


@pytest.mark.parametrize("ess, flagged", [(0.01, True), (0.5, False)])
def test_table_flags_flow_metropolis_with_heavy_tailed_weights(ess, flagged):
    def row(settings):
        tau = {"trajectories": 3.0, "converged": True}
        return {"settings": settings, "acceptance": 0.5, "seconds_per_trajectory": 0.01, "ess_per_second": 1.0,
                "tau_int": {"m2": tau, "energy": tau}, "observables": {"energy_per_site": {"mean": -1.5, "err": 0.01}},
                "exact": {"energy_per_site": -1.49}, "deviation_sigma": {"energy_per_site": -1.0}}
    summary = {"samplers": {"latent_hmc": row({}), "flow_metropolis": row({"ess_fraction": ess})}}
    table = pipeline.format_table(summary)
    assert ("†" in table) == flagged
    assert ("heavy tailed" in table) == flagged
    assert "sign fold" not in table
    summary["samplers"]["latent_hmc"] = row({"fold": 0.3})
    assert "sign fold (settings.fold): latent_hmc sampled" in pipeline.format_table(summary)


@pytest.mark.parametrize("fold", [1.0, "field"])
def test_folded_flow_metropolis_is_exact_and_samples_both_signs(fold):
    """Proposals from the plain (one-sign) q targeting p_φ, then a random sign: the energy and specific
    heat at L = 4, K_c within 4σ of exact for a uniform and a per-site fold weight; m takes both signs
    in equal shares; the kept x are consistent with their energies."""
    f = tiny_trained_flow(z2=True)  # the sampler must use the plain q whatever flow.z2 says
    if fold == "field":
        with torch.no_grad():  # oriented towards the sign of m this flow covers, as training would learn it
            f.z2 = False
            side = torch.sign(f.sample(256, generator=gen(4))[0].sum())
            f.z2 = True
        fold_w = side * (0.5 + 0.5 * torch.rand(4, 4, dtype=torch.float64, generator=gen(3)))
        f.sign_fold_weight, fold = fold_w, "auto"
    r = run_flow_metropolis(f, n_chains=64, n_warmup=50, n_samples=1000, fold=fold, generator=gen(13))
    assert f.z2  # restored
    s = summarize_run(r, f.target)
    assert 0.4 < s["acceptance"] <= 1.0
    check_exact(s, "energy_per_site", 4, f.target.K, max_err=0.02)
    check_exact(s, "specific_heat_per_site", 4, f.target.K, max_err=0.04)
    m = r.observables["m"] if "m" in r.observables else None
    signs = torch.sign(r.x.sum(dim=(1, 2)))
    assert 0.4 < float((signs > 0).double().mean()) < 0.6, "both signs of m, in equal shares"
    if m is not None:
        assert abs(float(m.mean())) < 0.1
    torch.testing.assert_close(r.energy, f.target.energy(r.x))
    assert r.settings["fold"] is not None
    assert_unsigned_states_follow_p_phi(r, f)


def test_folded_flow_metropolis_orients_a_number_towards_q():
    """fold = ±a gives the same weight: its sign is the side of m the plain q covers."""
    from neuralrg.sampling.fold import fold_weight
    f = tiny_trained_flow()
    w1 = fold_weight(f, 0.7, gen(5))
    w2 = fold_weight(f, -0.7, gen(5))
    with torch.no_grad():
        side = torch.sign(f.sample(256, generator=gen(5))[0].sum())
    assert float(w1) == float(w2) == pytest.approx(0.7 * float(side))


def test_folded_flow_metropolis_bad_settings():
    f = tiny_trained_flow()
    for bad in ("yes", float("nan"), True):
        with pytest.raises(ValueError, match="fold must be null, 'auto' or a"):
            run_flow_metropolis(f, n_chains=4, n_warmup=1, n_samples=2, fold=bad)
    from neuralrg.sampling.registry import resolve_settings
    with pytest.raises(ValueError, match="fold must be null, 'auto' or a"):  # before any sampling
        resolve_settings("flow_metropolis", {}, {"fold": "yes"})
    f.sign_fold_weight = torch.zeros(8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="shaped like one field"):
        run_flow_metropolis(f, n_chains=4, n_warmup=1, n_samples=2, fold="auto")


@pytest.mark.parametrize("name", ["latent_hmc", "blocked_latent_hmc", "latent_hmc_flow_mh"])
def test_folded_latent_hmc_is_exact_and_samples_both_signs(name):
    """Latent HMC on the pull-back of p_φ through the plain q, then a random sign: energy at L = 4, K_c
    within 4σ of exact; m takes both signs in equal shares; x = ±g(z) with log_q the plain q's; flow.z2
    restored. The potential is the folded one: U(z) − ½|z|² + ln 2σ(φ(g(z))) = ln q − ln p̃ at g(z)."""
    from neuralrg.sampling.registry import resolve_settings, run_sampler
    f = tiny_trained_flow(z2=True)  # the fold must use the plain q whatever flow.z2 says
    s = resolve_settings(name, dict(n_chains=64, n_warmup=40, n_samples=150, n_leapfrog=4, fold=1.0, **HMC),
                         {"k": 1} if name == "latent_hmc_flow_mh" else {})
    r = run_sampler(name, f, f.target, s, gen(12))
    assert f.z2  # restored
    summ = summarize_run(r, f.target)
    check_exact(summ, "energy_per_site", 4, f.target.K, max_err=0.02)
    signs = torch.sign(r.x.sum(dim=(1, 2)))
    assert 0.35 < float((signs > 0).to(F64).mean()) < 0.65, "both signs of m, in equal shares"
    assert summ["settings"]["fold"] is not None
    assert_unsigned_states_follow_p_phi(r, f)
    torch.testing.assert_close(r.energy, f.target.energy(r.x))
    with torch.no_grad():
        f.z2 = False
        gz, log_det = f.forward_and_log_det(r.z)
        same = torch.isclose(r.x, gz).flatten(1).all(1) | torch.isclose(r.x, -gz).flatten(1).all(1)
        assert bool(same.all())
        log_q = f.log_prob_from_forward(r.z, gz, log_det)
        torch.testing.assert_close(r.log_q, log_q)
        w = torch.tensor(summ["settings"]["fold"], dtype=F64)
        u = latent_potential(f, w)(r.z)
        lhs = u - 0.5 * r.z.flatten(1).square().sum(1) + fold_log_weight(gz, w)
        rhs = log_q - f.target.log_prob(gz)
        torch.testing.assert_close(lhs - lhs[0], rhs - rhs[0])
        f.z2 = True


@pytest.mark.parametrize("name", ["latent_hmc", "blocked_latent_hmc", "latent_hmc_flow_mh"])
def test_folded_latent_hmc_bad_settings(name):
    from neuralrg.sampling.registry import resolve_settings
    with pytest.raises(ValueError, match="fold must be null, 'auto' or a"):  # when settings are resolved
        resolve_settings(name, {}, {"fold": "yes"})


@pytest.mark.parametrize("name", ["flow_metropolis", "hybrid", "latent_hmc", "latent_hmc_flow_mh"])
def test_fold_auto_without_a_trained_fold_is_no_fold(name):
    """fold=auto (the default of sample.py) on a flow trained without loss.sign_fold: the same chains,
    to the last bit, as fold=null (q_sym with flow.z2), and the run records no fold."""
    from neuralrg.sampling.registry import resolve_settings, run_sampler
    f = tiny_trained_flow(z2=True)
    assert getattr(f, "sign_fold_weight", None) is None
    runs = [run_sampler(name, f, f.target, resolve_settings(name, dict(n_chains=4, n_warmup=2, n_samples=3,
                                                                      n_leapfrog=2, fold=fold)), gen(1))
            for fold in ("auto", None)]
    assert f.z2 and runs[0].settings["fold"] is None
    torch.testing.assert_close(runs[0].x, runs[1].x, rtol=0, atol=0)
