"""Annealed importance sampling from the flow (``neuralrg.sampling.annealed``): one stage is plain
importance sampling, the annealed weights are exact (ln Z and the energy against Kaufman at L = 4)
and lighter-tailed than the flow's own, the weighted means on synthetic draws with known answers,
the sample.py / run_sampling integration and its bad input."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from helpers import tiny_trained_flow
from neuralrg.physics.exact import exact_solution
from neuralrg.physics.importance import pareto_khat, weighted_means
from neuralrg.physics.lattice import K_C
from neuralrg.physics.statistics import ess_fraction, importance_log_z
from neuralrg.pipelines import sample as pipeline
from neuralrg.sampling.annealed import annealed_importance, annealed_summary, check_annealing, format_annealed
from neuralrg.sampling.importance import draw_log_weights

torch.set_num_threads(1)
N_SIGMA = 4.0


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("z2", [False, True])
def test_one_stage_is_plain_importance_sampling(z2):
    """K = 1: ln w = ln p̃(x₀) − ln q(x₀) of the first draw, whatever the move; the same z₀ as the flow's
    own sampler for the same seed (q_sym's weights with z2)."""
    flow = tiny_trained_flow(z2=z2)
    lq, lp = draw_log_weights(flow, 64, generator=gen(5))
    d = annealed_importance(flow, 64, stages=1, n_leapfrog=3, step_size=0.2, generator=gen(5))
    assert d.log_w.dtype == torch.float64 and d.log_w.shape == (64,)
    torch.testing.assert_close(d.log_w, lp - lq, rtol=0, atol=1e-9)
    assert d.pilot_step_size is None and d.step_size == 0.2 and d.grad_evals_per_draw == 4
    assert d.signed is z2
    d0 = annealed_importance(flow, 64, stages=0, generator=gen(5))  # no moves: the same weights and states
    torch.testing.assert_close(d0.log_w, lp - lq, rtol=0, atol=1e-9)
    assert d0.step_size is None and d0.grad_evals_per_draw == 0 and d0.accept.shape == (0,)
    s = annealed_summary(flow, d0)
    assert "0 stages" in format_annealed(s)


def test_annealing_is_exact_and_lighter_tailed():
    """A briefly trained flow (30 steps) whose own weights are heavy-tailed (k̂ > 0.7): 16 annealed
    stages give ln Z/N and the energy within 4σ of Kaufman, with k̂ ≤ 0.7 and a larger ESS/M."""
    flow = tiny_trained_flow(steps=30, z2=True)
    L, exact = flow.L, exact_solution(flow.L, K_C)
    lq, lp = draw_log_weights(flow, 4096, generator=gen(0))
    assert pareto_khat(lp - lq) > 0.7
    d = annealed_importance(flow, 1024, stages=16, n_leapfrog=5, generator=gen(1))
    assert d.pilot_step_size is not None and d.step_size == d.pilot_step_size
    assert d.accept.shape == (16,) and bool((d.accept > 0.5).all())
    lz, err = importance_log_z(d.log_w)
    exact_lz = flow.target.log_z
    assert abs(lz - exact_lz) < N_SIGMA * err and err / L**2 < 0.003
    assert pareto_khat(d.log_w) <= 0.7 and ess_fraction(d.log_w) > 10 * ess_fraction(lp - lq)
    s = annealed_summary(flow, d, gen(2))
    assert s["is_log_z_per_site"] == pytest.approx(lz / L**2)
    assert s["free_energy_per_site"] >= -exact_lz / L**2  # the mean work bounds F from above
    e = s["observables"]["energy_per_site"]
    assert abs(e["mean"] - exact["energy_per_site"]) < N_SIGMA * e["err"] and 0 < e["err"] < 0.05
    assert s["deviation_sigma"]["energy_per_site"] == pytest.approx((e["mean"] - exact["energy_per_site"]) / e["err"])
    assert (d.x.flatten(1).mean(1) > 0).any() and (d.x.flatten(1).mean(1) < 0).any()  # both signs of m


def test_sign_fold_and_float32():
    """The sign fold (plain q, a fold weight) and a float32 flow: exact ln Z, states of both signs,
    float64 weights, states in the flow's dtype."""
    flow = tiny_trained_flow(steps=100, dtype=torch.float32)
    d = annealed_importance(flow, 512, stages=8, n_leapfrog=4, fold=1.0, generator=gen(3))
    assert d.signed and d.log_w.dtype == torch.float64 and d.x.dtype == torch.float32
    lz, err = importance_log_z(d.log_w)
    assert abs(lz - flow.target.log_z) < N_SIGMA * err
    m = d.x.flatten(1).mean(1)
    assert (m > 0).any() and (m < 0).any()
    assert flow.z2 is False and all(p.requires_grad for p in flow.parameters())  # restored


def test_plain_density_of_a_z2_target_is_flagged():
    flow = tiny_trained_flow()
    s = annealed_summary(flow, annealed_importance(flow, 64, stages=2, n_leapfrog=2, step_size=0.2,
                                                   generator=gen(0)))
    assert s["is_reliable"] is False and "Z2-symmetrised" in s["is_note"]


# ----------------------------------------------------------------------------- weighted means
def test_weighted_means_equal_weights_are_plain_means():
    rng = np.random.default_rng(0)
    v = rng.normal(size=1000)
    r = weighted_means({"a": v}, np.full(1000, 3.7))["a"]
    assert r["mean"] == pytest.approx(v.mean())
    assert r["err"] == pytest.approx(v.std() / math.sqrt(1000))


def test_weighted_means_reweight_a_gaussian():
    """Draws of N(0, 1) weighted by N(1, 1)/N(0, 1): the mean of N(1, 1) within 4σ, its error ≈ the
    importance-sampling one."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=20000)
    r = weighted_means({"x": torch.from_numpy(x)}, torch.from_numpy(x - 0.5))["x"]
    assert abs(r["mean"] - 1.0) < N_SIGMA * r["err"] and 0.005 < r["err"] < 0.03


def test_weighted_means_pair_values_use_pair_weights():
    """A pair value (entries 2i and 2i+1) is weighted by w_{2i}·w_{2i+1}: pairs with −∞-like weight on
    one replica drop out, whatever the other's weight."""
    v = np.repeat([1.0, 5.0], 2)        # pair 0 carries 1, pair 1 carries 5
    lw = np.array([0.0, 0.0, 40.0, -80.0])  # pair 1's product weight is e^-40 of pair 0's
    r = weighted_means({"q2": v, "m2": v}, lw, pairs=("q2",))
    assert r["q2"]["mean"] == pytest.approx(1.0, abs=1e-12)
    assert r["m2"]["mean"] == pytest.approx(5.0, abs=1e-12)  # per-draw weights: draw 2 dominates


@pytest.mark.parametrize("values, lw, pairs, match", [
    ({"a": np.ones(3)}, np.zeros(4), (), "shaped like log_w"),
    ({"a": np.array([1.0, np.nan])}, np.zeros(2), (), "finite"),
    ({"q2": np.ones(3)}, np.zeros(3), ("q2",), "even number"),
    ({"a": np.ones(1)}, np.zeros(1), (), "at least 2"),
])
def test_weighted_means_bad_input(values, lw, pairs, match):
    with pytest.raises(ValueError, match=match):
        weighted_means(values, lw, pairs=pairs)


# ----------------------------------------------------------------------------- settings and pipeline
@pytest.mark.parametrize("kw, match", [
    (dict(n_samples=1), "samples"), (dict(stages=-1), "stages"), (dict(n_leapfrog=0), "n_leapfrog"),
    (dict(step_size=0.0), "step_size"), (dict(step_size=float("nan")), "step_size"),
    (dict(batch_size=0), "batch_size"), (dict(stages=2.5), "stages"),
])
def test_check_annealing_names_the_bad_setting(kw, match):
    args = {**dict(n_samples=8, stages=4, n_leapfrog=2, step_size=None, batch_size=8), **kw}
    with pytest.raises(ValueError, match=match):
        check_annealing(**args)


SMALL = dict(n_chains=4, n_warmup=2, n_samples=4, n_leapfrog=2, step_size=0.1)


@pytest.mark.parametrize("annealed, match", [
    ({"sample": 8}, "unknown key"), ({"samples": 1}, "annealed_importance: samples"),
    ({"samples": 8, "stages": -1}, "annealed_importance: stages"), ("many", "mapping"),
])
def test_run_sampling_bad_annealing_writes_nothing(run_dir, tmp_path, annealed, match):
    before = set(tmp_path.rglob("*")) | set(run_dir.rglob("*"))
    with pytest.raises(ValueError, match=match):
        pipeline.run_sampling(run=str(run_dir), samplers=["flow_metropolis"], settings=dict(SMALL),
                              out_dir=str(tmp_path / "out"), device="cpu", figures=False, annealed=annealed)
    assert set(tmp_path.rglob("*")) | set(run_dir.rglob("*")) == before


def test_run_sampling_reports_annealed_importance(run_dir, tmp_path):
    out = tmp_path / "out"
    summary = pipeline.run_sampling(run=str(run_dir), samplers=["flow_metropolis"], settings=dict(SMALL, fold=None),
                                    out_dir=str(out), device="cpu", figures=False, seed=1,
                                    annealed={"samples": 128, "stages": 4, "n_leapfrog": 3})
    s = summary["annealed_importance"]
    assert s["n_samples"] == 128 and s["stages"] == 4 and len(s["accept_per_stage"]) == 4
    assert s["grad_evals_per_draw"] == 13 and s["step_size"] == s["pilot_step_size"] > 0
    assert "energy_per_site" in s["observables"] and "energy_per_site" in s["deviation_sigma"]
    line = pipeline.format_importance(summary).splitlines()[-1]
    assert line.startswith("annealed importance sampling (4 stages x 3 leapfrog") and "ln Z/N = " in line
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["annealed_importance"]["is_log_z_per_site"] == pytest.approx(s["is_log_z_per_site"])
    skipped = pipeline.run_sampling(run=str(run_dir), samplers=["flow_metropolis"], settings=dict(SMALL),
                                    out_dir=str(tmp_path / "out2"), device="cpu", figures=False,
                                    annealed={"samples": 0})
    assert "annealed_importance" not in skipped


@pytest.mark.parametrize("z2, fold", [(False, None), (True, None), (False, 0.8)])
def test_latent_potential_with_state_returns_the_same_potential_and_x(z2, fold):
    from neuralrg.sampling.latent import latent_potential

    flow = tiny_trained_flow(z2=z2)
    w = None if fold is None else torch.tensor(fold, dtype=torch.float64)
    z = torch.randn((5, 4, 4), dtype=torch.float64, generator=gen(0))
    with torch.no_grad():
        U, x = latent_potential(flow, w, with_state=True)(z)
        torch.testing.assert_close(U, latent_potential(flow, w)(z), rtol=0, atol=0)
        torch.testing.assert_close(x, flow.forward(z), rtol=0, atol=1e-12)
