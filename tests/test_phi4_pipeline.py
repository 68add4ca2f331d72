"""φ⁴ end to end: flow exactness in float64, training (no exact ln Z: variational bound and IS),
sampling with every sampler against each other, analysis, and bad input through train.py."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neuralrg import build_mera
from helpers import compose_train
from neuralrg.physics.phi4 import Phi4Target
from neuralrg.pipelines.analyze import run_analysis
from neuralrg.pipelines.sample import format_table, run_sampling
from neuralrg.pipelines.train import format_summary, run_training
from test_flows import randomise

ROOT = Path(__file__).resolve().parents[1]
F64 = torch.float64


make_cfg = compose_train


@pytest.mark.parametrize("L", [4, 8])
def test_phi4_flow_round_trip_and_log_det(L):
    t = Phi4Target(L, 0.25, 0.022)
    f = randomise(build_mera(t, n_couplings=2, hidden=8, activation="silu").to(F64), scale=0.1)
    assert f.config["precondition"] is False  # φ⁴ has no Gaussian-part hook
    z = torch.randn(2, L, L, dtype=F64)
    x, ld = f.forward_and_log_det(z)
    z_back, ld_inv = f.inverse_and_log_det(x)
    assert (z_back - z).abs().max() < 1e-12 and (ld + ld_inv).abs().max() < 1e-10
    J = torch.autograd.functional.jacobian(lambda v: f.forward(v.reshape(1, L, L)).reshape(-1), z[0].reshape(-1))
    assert abs(torch.linalg.slogdet(J)[1].item() - ld[0].item()) < 1e-9
    assert abs(ld[0].item()) > 1e-3


def test_phi4_preconditioner_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="precondition=true needs a target with a Gaussian part"):
        build_mera(Phi4Target(4, 0.2, 0.022), precondition=True)


@pytest.fixture(scope="module")
def phi4_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("phi4") / "run"
    cfg = make_cfg("experiment=phi4_8", "target.L=4", "target.kappa=0.2", "model.block.n_couplings=4",
                   "model.block.hidden=[16,16]", "logger=none", "callbacks=minimal",
                   "trainer.enable_progress_bar=false", "trainer.accelerator=cpu", "batch_size=256", "steps=300",
                   "eval_every=100", "eval_samples=256", "final_eval_samples=4096", f"paths.run_dir={run_dir}")
    return run_dir, run_training(cfg)


def test_phi4_trains_and_is_consistent_with_the_bound(phi4_run):
    run_dir, s = phi4_run
    assert s["status"] == "completed" and s["exact"] == {}
    assert s["target"] == {"class": "neuralrg.physics.phi4:Phi4Target", "L": 4, "kappa": 0.2, "lam": 0.022}
    assert "gap_per_site" not in s  # no exact ln Z for φ⁴
    # IS: E_q[ln w] = −F_q ≤ ln Z, so ln Ẑ/N ≥ −F_q/N within errors, and close to it for a decent flow
    lz, lz_err = s["is_log_z_per_site"], s["is_log_z_per_site_err"]
    f, f_err = s["free_energy_per_site"], s["free_energy_per_site_err"]
    assert lz >= -f - 4 * (lz_err + f_err)
    assert lz - (-f) < 0.05, (lz, -f)
    assert s["ess_fraction"] > 0.2
    text = format_summary(s)
    assert "Phi4Target(L = 4, kappa = 0.2, lam = 0.022)" in text
    # no exact sampler for phi^4: the RG figures come from the flow's samples, and say so
    assert "flow q" in s["rg_organisation"]["samples"] and "RG organisation: R²(m|top1,2)" in text
    assert "exact" not in text.replace("no exact sampler", "")


def test_phi4_samplers_agree(phi4_run, tmp_path):
    run_dir, _ = phi4_run
    s = run_sampling(run=str(run_dir), samplers=["physical_hmc", "latent_hmc", "flow_metropolis"],
                     settings=dict(n_chains=32, n_warmup=50, n_samples=300, n_leapfrog=5, step_size=0.2,
                                   target_accept=0.8), per_sampler={"physical_hmc": {"n_samples": 600}},
                     expect={"kappa": 0.2}, out_dir=str(tmp_path / "s"), device="cpu", importance_samples=2048,
                     figures=True)
    ref = s["samplers"]["physical_hmc"]["observables"]
    for name in ("latent_hmc", "flow_metropolis"):
        obs = s["samplers"][name]["observables"]
        for key in ("action_per_site", "m2", "abs_m"):
            d = abs(obs[key]["mean"] - ref[key]["mean"])
            assert d < 4 * (obs[key]["err"] ** 2 + ref[key]["err"] ** 2) ** 0.5, (name, key, obs[key], ref[key])
        assert {"susceptibility", "binder", "correlation_length"} <= set(obs)
    assert s["samplers"]["latent_hmc"]["exact"] == {} and s["samplers"]["latent_hmc"]["deviation_sigma"] == {}
    assert "s ± err" in format_table(s)
    assert (tmp_path / "s" / "trace_latent_hmc.png").is_file()
    with pytest.raises(ValueError, match="kappa = 0.2, not kappa = 0.3"):
        run_sampling(run=str(run_dir), samplers=["latent_hmc"], settings={}, expect={"kappa": 0.3}, device="cpu")


def test_phi4_analysis(phi4_run, tmp_path):
    run_dir, _ = phi4_run
    res = run_analysis(run=str(run_dir), out_dir=str(tmp_path / "a"), sampler="flow_metropolis",
                       settings=dict(n_chains=16, n_warmup=20, n_samples=64, max_keep=512),
                       mi={"methods": ["gaussian"], "max_samples": 400}, response={"n_latents": 2, "n_configs": 1},
                       device="cpu", figures=False)
    assert res["target"]["class"] == "neuralrg.physics.phi4:Phi4Target"
    assert len(res["level_stats"]) == 3 and (tmp_path / "a" / "analysis.json").is_file()


@pytest.mark.parametrize("override,name", [("target.lam=-1", "lam"), ("target.kappa=nan", "kappa"),
                                           ("target.L=1", "L")])
def test_train_py_refuses_bad_phi4_input(tmp_path, override, name):
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(ROOT / "train.py"), "experiment=phi4_8", override, "logger=none",
                          f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 1
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {name} must be"), res.stderr
