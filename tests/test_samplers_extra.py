"""Wolff as a registry sampler (exactness, refusals, compare mode with the ``supports`` hook) and the
two flow-Metropolis hybrids: ``hybrid`` (flow MH + k physical-HMC trajectories) and
``latent_hmc_flow_mh`` (latent HMC + flow MH global moves).

Exactness is checked at L = 4, K_c against Kaufman's energy (``exact_solution``) and the
transfer-matrix ⟨m²⟩ (``uniform_solution``), within 4 τ_int-aware standard errors. The test flow
(tests/helpers.py) is used Z2-symmetrised for the flow-MH samplers (its plain q is a poor
independence proposal; see tests/test_sampling.py). Even so its importance weights are heavy
tailed (ESS/M ~ 0.15): pure flow Metropolis (hybrid, k = 0) underestimates its error bar on
some seeds (about 1 in 6 at these lengths lands beyond 4σ, as for ``flow_metropolis``); the
seed is fixed, and any k > 0 or the latent variant is comfortably exact.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from helpers import assert_unsigned_states_follow_p_phi, save_checkpoint, tiny_trained_flow
from neuralrg.flows import build_mera
from neuralrg.physics.exact import exact_solution
from neuralrg.physics.ising import IsingTarget
from neuralrg.physics.lattice import K_C
from neuralrg.physics.phi4 import Phi4Target
from neuralrg.physics.transfer_matrix import uniform_solution
from neuralrg.pipelines import sample as pipeline
from neuralrg.sampling.chains import summarize_run
from neuralrg.sampling.latent import latent_potential
from neuralrg.sampling.registry import get_sampler, resolve_settings, run_sampler, unsupported_reason
from neuralrg.sampling.samplers.hybrid import run_hybrid
from neuralrg.sampling.samplers.latent_hmc_global import latent_log_weight, run_latent_hmc_flow_mh

torch.set_num_threads(1)
F64 = torch.float64
N_SIGMA = 4.0
SMALL = dict(n_chains=8, n_warmup=5, n_samples=20, n_leapfrog=2, step_size=0.3, target_accept=0.8)
EXACT = exact_solution(4, K_C)
M2_EXACT = float(uniform_solution(4, K_C)["m2"])


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def within(summary: dict, key: str, exact: float, max_err: float) -> float:
    """Deviation in σ of ``summary``'s ``key`` from ``exact``; asserts |dev| < 4 and a useful error bar."""
    obs = summary["observables"][key]
    assert 0 < obs["err"] < max_err, (key, obs)
    dev = (obs["mean"] - exact) / obs["err"]
    assert abs(dev) < N_SIGMA, (key, obs, exact)
    return dev


@pytest.fixture(scope="module")
def phi4_run(tmp_path_factory):
    torch.manual_seed(0)
    f = build_mera(Phi4Target(4, 0.2, 0.022), n_couplings=2, hidden=8).to(F64).eval()
    d = tmp_path_factory.mktemp("phi4")
    save_checkpoint(f, d / "checkpoints" / "last.ckpt")
    return d


class NoFlow:
    """Stands in for a flow: only dtype and device; any other use fails the test."""
    dtype = F64
    device = torch.device("cpu")

    def __getattr__(self, name):
        raise AssertionError(f"wolff used the flow ({name})")


# ----------------------------------------------------------------------------- Wolff
def test_wolff_through_registry_is_exact():
    target = IsingTarget(4, K_C)
    spec = get_sampler("wolff")
    assert spec.needs_flow is False and unsupported_reason("wolff", target) is None
    s = resolve_settings("wolff", {"n_leapfrog": 3}, dict(n_chains=32, n_warmup=20, n_samples=600))
    assert s == dict(n_chains=32, n_warmup=20, n_samples=600, max_keep=2048)  # shared keys it does not take are ignored
    r = run_sampler("wolff", NoFlow(), target, s, gen(1))
    assert r.sampler == "wolff" and r.z is None and r.log_q is None and r.accept == 1.0
    assert set(r.observables) == {"energy", "energy2", "m", "m2", "m4", "abs_m"}
    assert all(v.shape == (32, 600) and v.dtype == F64 for v in r.observables.values())
    assert r.seconds_per_step > 0 and r.wall_time >= r.seconds_per_step * 600
    # at K_c, L = 4 a cluster holds most of the lattice (⟨|C|⟩ = N⟨m²⟩ ≈ 12.2): one flip per sweep
    assert r.settings["clusters_per_sweep"] == 1
    assert r.settings["mean_cluster_size"] == pytest.approx(16 * M2_EXACT, rel=0.05)
    summ = summarize_run(r, target)
    assert summ["tau_int"]["m2"]["converged"] and summ["tau_int"]["m2"]["trajectories"] < 3
    within(summ, "energy_per_site", EXACT["energy_per_site"], 0.01)
    within(summ, "m2", M2_EXACT, 0.01)
    within(summ, "specific_heat_per_site", EXACT["specific_heat_per_site"], 0.05)
    assert summ["deviation_sigma"]["energy_per_site"] == pytest.approx(
        (summ["observables"]["energy_per_site"]["mean"] - EXACT["energy_per_site"])
        / summ["observables"]["energy_per_site"]["err"])
    # kept x are exact HS samples of kept spins (thinned to ~independent): the improved energy
    # estimator of the continuous target on them agrees with Kaufman too
    assert r.x.shape == (32 * 60, 4, 4) and r.x.dtype == F64  # every 10th sweep (≤ max_keep = 2048)
    torch.testing.assert_close(r.energy, target.energy(r.x))
    e = target.observables(r.x)["energy"]
    assert abs(float(e.mean()) - EXACT["energy_per_site"]) < N_SIGMA * float(e.std()) / math.sqrt(e.numel())
    # seeded: deterministic
    torch.testing.assert_close(run_sampler("wolff", NoFlow(), target, s, gen(1)).observables["m2"], r.observables["m2"])
    other = run_sampler("wolff", None, target, s, gen(2)).observables["m2"]  # no flow: torch's default dtype
    assert other.dtype == torch.get_default_dtype() and not torch.equal(other.to(F64), r.observables["m2"])


@pytest.mark.parametrize("target, match", [
    (IsingTarget(5, -K_C), "odd L = 5 torus is frustrated"),
    (Phi4Target(4, 0.2, 0.022), "Ising model with translation-invariant couplings .* not a Phi4Target"),
])
def test_wolff_refuses_other_targets(target, match):
    assert unsupported_reason("wolff", target) is not None
    with pytest.raises(ValueError, match=f"sampler wolff does not apply to {type(target).__name__}.*{match}"):
        run_sampler("wolff", None, target, resolve_settings("wolff"), gen(0))


def test_wolff_bad_settings():
    with pytest.raises(ValueError, match="wolff needs n_warmup >= 1"):
        resolve_settings("wolff", None, {"n_warmup": 0})
    with pytest.raises(ValueError, match="n_chains must be an integer >= 1"):
        resolve_settings("wolff", None, {"n_chains": 0})
    with pytest.raises(ValueError, match=r"\['k'\] are not taken by sampler wolff"):
        resolve_settings("wolff", None, {"k": 1})


def test_wolff_through_run_sampling(run_dir, tmp_path):
    out = tmp_path / "w"
    summary = pipeline.run_sampling(run=str(run_dir), samplers=["wolff"], out_dir=str(out), device="cpu", seed=4,
                                    settings=dict(n_chains=32, n_warmup=20, n_samples=600), figures=True)
    r = summary["samplers"]["wolff"]
    within(r, "energy_per_site", EXACT["energy_per_site"], 0.01)
    within(r, "m2", M2_EXACT, 0.01)
    assert "skipped" not in summary
    assert {p.name for p in out.iterdir()} == {"samples.npz", "summary.json", "samples.png", "trace_wolff.png"}
    data = np.load(out / "samples.npz")
    assert {"x", "energy_per_sample", "wolff__m2", "wolff__energy"} <= set(data.files)
    assert "z" not in data.files and "log_q" not in data.files and data["wolff__m2"].shape == (32, 600)


# ----------------------------------------------------------------------------- compare mode
def test_default_compare_list_has_wolff_after_flow_metropolis():
    compare = list(OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "sample.yaml").compare)
    assert compare[compare.index("flow_metropolis") + 1] == "wolff"
    assert tuple(compare) == pipeline.COMPARE


def test_compare_on_ising_includes_wolff(run_dir, tmp_path):
    summary = pipeline.run_sampling(run=str(run_dir), samplers=list(pipeline.COMPARE), settings=dict(SMALL),
                                    out_dir=str(tmp_path / "c"), device="cpu", figures=False)
    assert list(summary["samplers"]) == list(pipeline.COMPARE) and "skipped" not in summary
    rows = pipeline.format_table(summary).splitlines()
    assert rows[len(pipeline.COMPARE)].split()[0] == "wolff" and not any("skipped" in r for r in rows)


def test_compare_on_phi4_skips_wolff(phi4_run, tmp_path):
    out = tmp_path / "p"
    summary = pipeline.run_sampling(run=str(phi4_run), samplers=list(pipeline.COMPARE), settings=dict(SMALL),
                                    out_dir=str(out), device="cpu", figures=False)
    assert list(summary["samplers"]) == ["latent_hmc", "physical_hmc", "flow_metropolis"]
    reason = unsupported_reason("wolff", Phi4Target(4, 0.2, 0.022))
    assert summary["skipped"] == {"wolff": reason} and "Phi4Target" in reason
    assert json.loads((out / "summary.json").read_text())["skipped"] == {"wolff": reason}
    assert f"skipped wolff: {reason}" in pipeline.format_table(summary).splitlines()
    # single mode refuses it, before anything is written
    with pytest.raises(ValueError, match="sampler wolff does not apply to Phi4Target"):
        pipeline.run_sampling(run=str(phi4_run), samplers=["wolff"], settings={}, out_dir=str(tmp_path / "s"),
                              device="cpu")
    assert not (tmp_path / "s").exists()


# ----------------------------------------------------------------------------- hybrid
@pytest.mark.parametrize("k", [0, 2])
def test_hybrid_is_exact(k):
    f = tiny_trained_flow(z2=True)
    n = dict(n_chains=64, n_warmup=50, n_samples=300) if k else dict(n_chains=128, n_warmup=200, n_samples=400)
    s = resolve_settings("hybrid", None, dict(k=k, n_leapfrog=4, step_size=0.3, **n))
    r = run_sampler("hybrid", f, f.target, s, gen(5))
    assert r.sampler == "hybrid" and all(v.shape == (n["n_chains"], n["n_samples"]) for v in r.observables.values())
    summ = summarize_run(r, f.target)
    assert summ["settings"]["flow_mh_accept"] == r.accept and 0.4 < r.accept < 0.9
    assert summ["settings"]["leapfrog_per_block"] == [4]
    if k:
        assert 0.6 < summ["settings"]["hmc_accept"] < 1 and summ["settings"]["step_size"] != 0.3  # adapted
    else:
        assert math.isnan(summ["settings"]["hmc_accept"])
    assert summ["tau_int"]["energy"]["converged"]
    within(summ, "energy_per_site", EXACT["energy_per_site"], 0.02)
    torch.testing.assert_close(r.energy, f.target.energy(r.x))
    with torch.no_grad():
        torch.testing.assert_close(r.log_q, f.log_prob(r.x))


@pytest.mark.parametrize("fold", [1.0, "field"])
def test_folded_hybrid_is_exact_and_samples_both_signs(fold):
    """The hybrid on the sign-folded p_φ with the plain q (flow moves and HMC on E − ln 2σ(φ)), then a
    random sign: energy at L = 4, K_c within 4σ of exact for a uniform and a per-site fold; both signs
    of m in equal shares; the unsigned states follow p_φ; x = ±g(z) with log_q the plain q's; flow.z2
    restored."""
    f = tiny_trained_flow(z2=True)
    if fold == "field":
        f.sign_fold_weight = 0.5 + 0.5 * torch.rand(4, 4, dtype=F64, generator=gen(3))
        fold = "auto"
    s = resolve_settings("hybrid", None, dict(k=2, n_leapfrog=4, step_size=0.3, n_chains=64, n_warmup=50,
                                              n_samples=300, fold=fold))
    r = run_sampler("hybrid", f, f.target, s, gen(5))
    assert f.z2
    summ = summarize_run(r, f.target)
    assert summ["settings"]["fold"] is not None and 0.6 < summ["settings"]["hmc_accept"] < 1
    assert summ["tau_int"]["energy"]["converged"]
    within(summ, "energy_per_site", EXACT["energy_per_site"], 0.02)
    torch.testing.assert_close(r.energy, f.target.energy(r.x))
    signs = torch.sign(r.x.sum(dim=(1, 2)))
    assert 0.35 < float((signs > 0).to(F64).mean()) < 0.65
    assert_unsigned_states_follow_p_phi(r, f)  # both move types target p_φ
    with torch.no_grad():
        f.z2 = False
        gz, log_det = f.forward_and_log_det(r.z)
        same = torch.isclose(r.x, gz, atol=1e-9).flatten(1).all(1) | torch.isclose(r.x, -gz, atol=1e-9).flatten(1).all(1)
        assert bool(same.all())
        torch.testing.assert_close(r.log_q, f.log_prob(gz))
        f.z2 = True
    with pytest.raises(ValueError, match="fold must be null, 'auto' or a"):
        resolve_settings("hybrid", None, {"fold": "yes"})


@pytest.mark.parametrize("field", [False, True])
def test_folded_physical_potential_and_gradient(field):
    """E(y) − ln 2σ(φ(y)) and its analytic gradient against autograd, float64."""
    from neuralrg.physics.fold import fold_log_weight
    from neuralrg.sampling.latent import physical_potential_and_grad
    target = IsingTarget(4, K_C).to(F64)
    w = torch.randn(4, 4, dtype=F64, generator=gen(2)) if field else torch.tensor(-0.8, dtype=F64)
    y = torch.randn((8, 4, 4), dtype=F64, generator=gen(4)).requires_grad_(True)
    u, g = physical_potential_and_grad(target, w)(y.detach())
    ref = target.energy(y) - fold_log_weight(y, w)
    auto = torch.autograd.grad(ref.sum(), y)[0]
    torch.testing.assert_close(u, ref.detach())
    torch.testing.assert_close(g, auto)


def test_hybrid_flow_moves_accept_everything_when_q_is_p(monkeypatch):
    f = tiny_trained_flow(z2=True)
    monkeypatch.setattr(f.target, "energy", lambda x: -f.log_prob(x))  # target density := the flow's q_sym
    r = run_hybrid(f, n_chains=8, n_warmup=3, n_samples=20, k=0, generator=gen(6))
    assert r.accept == 1.0
    r = run_latent_hmc_flow_mh(f, n_chains=8, n_warmup=3, n_samples=20, k=0, generator=gen(6))
    assert r.accept == 1.0


@pytest.mark.parametrize("name", ["hybrid", "latent_hmc_flow_mh"])
@pytest.mark.parametrize("bad, match", [
    ({"k": -1}, "k .* must be an integer >= 0, got -1"),
    ({"k": 1.5}, "k .* must be an integer >= 0, got 1.5"),
    ({"k": True}, "k .* must be an integer >= 0"),
    ({"n_chains": 0}, "n_chains must be an integer >= 1, got 0"),
    ({"step_size": -0.1}, "step_size must be a finite number > 0"),
    ({"target_accept": 1.0}, "target_accept must be a number in"),
    ({"n_samples": 1}, "n_samples must be an integer >= 2"),
    ({"trajectory_length": 0.0}, "trajectory_length must be a finite number > 0"),
])
def test_mh_hmc_bad_settings(name, bad, match, flow):
    with pytest.raises(ValueError, match=match):
        resolve_settings(name, None, bad)
    runner = run_hybrid if name == "hybrid" else run_latent_hmc_flow_mh
    with pytest.raises(ValueError, match=match):
        runner(flow, **bad)


# ----------------------------------------------------------------------------- latent HMC + flow MH
@pytest.mark.parametrize("z2", [False, True])
def test_latent_log_weight_is_flow_mh_weight(z2):
    """ln w(z) = −U(z) + ½|z|² equals ln p̃(x) − ln q(x) (q_sym for Z2) at x = g(z), up to a constant."""
    f = tiny_trained_flow(z2=z2)
    z = 1.2 * torch.randn((64, 4, 4), dtype=F64, generator=gen(8))
    with torch.no_grad():
        x = f.forward(z)
        lw = latent_log_weight(z, latent_potential(f)(z))
        diff = lw - (f.target.log_prob(x) - f.log_prob(x))
        torch.testing.assert_close(diff, diff.mean().expand_as(diff), rtol=0, atol=1e-9)
        assert float(lw.std()) > 0.1  # the weights really vary: the identity has power


@pytest.mark.parametrize("trajectory_length", [None, 1.0])
def test_latent_hmc_flow_mh_is_exact(trajectory_length):
    f = tiny_trained_flow(z2=True)
    s = resolve_settings("latent_hmc_flow_mh", None, dict(n_chains=32, n_warmup=30, n_samples=150, k=1,
                                                           n_leapfrog=3, step_size=0.3,
                                                           trajectory_length=trajectory_length))
    r = run_sampler("latent_hmc_flow_mh", f, f.target, s, gen(9))
    summ = summarize_run(r, f.target)
    st = summ["settings"]
    assert st["trajectory_length"] == trajectory_length  # the leapfrog count at the frozen step is recorded
    assert st["leapfrog_per_block"] == [3 if trajectory_length is None else math.ceil(1.0 / st["step_size"] - 1e-9)]
    assert r.sampler == "latent_hmc_flow_mh" and 0.4 < r.accept < 0.9 and 0.6 < summ["settings"]["hmc_accept"] < 1
    assert summ["tau_int"]["energy"]["converged"]
    within(summ, "energy_per_site", EXACT["energy_per_site"], 0.02)
    torch.testing.assert_close(r.energy, f.target.energy(r.x))
    m = r.observables["m"]
    assert (m > 0.5).any() and (m < -0.5).any()  # Z2: both signs of m


def test_short_warm_up_is_flagged():
    """``summarize_run``: a run whose warm-up is shorter than WARMUP_TAUS τ_int is not
    ``equilibrated`` (nor ``reliable``), whatever its windows say; the table marks it '~'."""
    from neuralrg.sampling.chains import WARMUP_TAUS

    target = IsingTarget(4, 0.3)
    short = summarize_run(run_sampler("wolff", None, target, resolve_settings(
        "wolff", {"n_chains": 16, "n_warmup": 1, "n_samples": 200}), torch.Generator().manual_seed(0)), target)
    long = summarize_run(run_sampler("wolff", None, target, resolve_settings(
        "wolff", {"n_chains": 16, "n_warmup": 40, "n_samples": 200}), torch.Generator().manual_seed(0)), target)
    tau = max(long["tau_int"]["m2"]["trajectories"], long["tau_int"]["energy"]["trajectories"])
    assert tau < 40 / WARMUP_TAUS  # Wolff at high T: τ_int ≈ ½
    assert long["equilibrated"] and long["reliable"] and long["warmup_tau_ratio"] == pytest.approx(40 / max(tau, 0.5))
    assert short["equilibrated"] is False and short["reliable"] is False
    table = pipeline.format_table({"samplers": {"wolff": short}})
    assert table.splitlines()[1].rstrip().endswith("~") and "raise n_warmup" in table


# ----------------------------------------------------------------------------- fixed trajectory length
@pytest.mark.parametrize("name", ["latent_hmc", "blocked_latent_hmc", "physical_hmc"])
def test_fixed_trajectory_length_is_exact_and_recorded(name):
    """trajectory_length T: each block's move takes ceil(T/eps) leapfrog steps at its adapted eps
    (recorded in the settings); for the latent samplers the energy at L = 4, K_c stays within 4σ of
    exact (physical HMC mixes too slowly between the signs of m at this length to test it here)."""
    f = tiny_trained_flow(z2=True)
    n = 30 if name == "physical_hmc" else 150
    s = resolve_settings(name, None, dict(n_chains=32, n_warmup=40, n_samples=n, n_leapfrog=1, step_size=0.3,
                                          trajectory_length=1.2))
    r = run_sampler(name, f, f.target, s, gen(11))
    summ = summarize_run(r, f.target)
    st = summ["settings"]
    assert st["trajectory_length"] == 1.2
    assert st["leapfrog_per_block"] == [math.ceil(1.2 / e - 1e-9) for e in st["step_size"]]
    assert all(n >= 2 for n in st["leapfrog_per_block"])  # n_leapfrog = 1 was ignored
    if name != "physical_hmc":
        assert summ["tau_int"]["energy"]["converged"]
        within(summ, "energy_per_site", EXACT["energy_per_site"], 0.03)
    with pytest.raises(ValueError, match="trajectory_length must be a finite number > 0"):
        resolve_settings(name, None, {"trajectory_length": -1})
