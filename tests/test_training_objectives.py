"""Training objectives beyond reverse KL: adaptive flow-MCMC and exact-data warm start.

References independent of the code under test: central finite differences of the loss, a
Gaussian target with known moments, the exact ln Z_x (Kaufman) through ``evaluate_flow``.
Tiny models at L = 4 on the CPU (float64 where precision matters).
"""
from __future__ import annotations

import functools
import math
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

pl = pytest.importorskip("pytorch_lightning")

from neuralrg.flows import build_mera  # noqa: E402
from neuralrg.physics.ising import IsingTarget  # noqa: E402
from neuralrg.physics.target import LatticeTarget  # noqa: E402
from neuralrg.pipelines.train import build_module, format_summary, run_training  # noqa: E402
from neuralrg.sampling.importance import evaluate_flow  # noqa: E402
from neuralrg.training.chains import _LAST_DATA, FlowMCMCChains, TrainingData  # noqa: E402
from neuralrg.training.losses import LossConfig, TemperSchedule, WeightSchedule  # noqa: E402
from neuralrg.training.module import FIT_DATA_TIME_KEY, FlowModule, NonFiniteLossError  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_training import load_ckpt, make_cfg  # noqa: E402

torch.set_num_threads(1)
os.environ["WANDB_MODE"] = "disabled"
KC = 0.44068679350977147


class GaussianTarget(LatticeTarget):
    """Independent Gaussian field: p(x) ∝ exp(−Σ x²/(2σ²)), mean 0, variance σ² per site."""

    def __init__(self, L: int, sigma: float) -> None:
        super().__init__()
        self.L, self.n_sites, self.sigma = L, L * L, float(sigma)

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x.square().sum(dim=(-2, -1)) / self.sigma**2

    def grad_energy(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.sigma**2

    def observables(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        m = x.mean(dim=(-2, -1))
        return {"energy": self.energy(x) / self.n_sites, "m": m, "m2": m * m}

    def spec_kwargs(self) -> dict[str, Any]:
        return {"L": self.L, "sigma": self.sigma}


def random_flow(target: LatticeTarget, scale: float, seed: int = 0, z2: bool = False):
    """A tiny float64 MERA with all parameters perturbed: a deliberately 'wrong' density."""
    torch.manual_seed(seed)
    flow = build_mera(target, n_couplings=2, hidden=4, z2=z2).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(scale * torch.randn_like(p))
    return flow


# --- the loss and its gradient -----------------------------------------------------------------

@pytest.mark.parametrize("weight", [0.3, 1.0])
def test_mixed_loss_gradient_matches_finite_differences(weight):
    """The module's flow_mcmc loss (its real code path: reverse-KL batch from fixed latents,
    forward KL on fixed chain states) against an independently written loss and its central
    finite differences, in float64."""
    target = IsingTarget(4, KC)
    flow = random_flow(target, 0.2)
    opt = functools.partial(torch.optim.Adam, lr=1e-3)
    module = FlowModule(flow, opt, total_steps=10, batch_size=8,
                        loss={"name": "flow_mcmc", "forward_weight": weight, "n_chains": 6, "local_steps": 1,
                              "burn_in": 0})
    torch.manual_seed(11)
    x_chain = 1.5 * torch.randn(6, 4, 4, dtype=torch.float64)  # fixed "chain states"
    chains = module.chains
    params = [p for p in flow.parameters() if p.requires_grad]

    def module_loss() -> torch.Tensor:
        chains.x, chains.energy = x_chain.clone(), target.energy(x_chain)
        torch.manual_seed(5)  # the same latents every call
        return module._forward_kl_step("flow_mcmc", step=0)[0]

    def reference_loss() -> torch.Tensor:
        torch.manual_seed(5)
        z = torch.randn(8, 4, 4, dtype=torch.float64)
        x, log_det = flow.forward_and_log_det(z)
        log_q = (-0.5 * z.square().sum(dim=(1, 2)) - 8 * math.log(2 * math.pi)) - log_det
        rev = (log_q + target.energy(x)).mean()
        fwd = -flow.log_prob(x_chain).mean()
        return (1 - weight) * rev + weight * fwd

    loss = module_loss()
    assert float(loss.detach()) == pytest.approx(float(reference_loss().detach()), rel=1e-12, abs=1e-10)
    grads = torch.autograd.grad(loss, params)
    assert any(float(g.abs().max()) > 1e-3 for g in grads)  # not a trivially zero gradient

    # directional derivatives along random directions, and a few single coordinates
    gen = torch.Generator().manual_seed(3)
    dirs = [[torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params] for _ in range(2)]
    biggest = max(range(len(params)), key=lambda i: float(grads[i].abs().max()))
    e = [torch.zeros_like(p) for p in params]
    e[biggest].view(-1)[int(grads[biggest].abs().argmax())] = 1.0
    dirs.append(e)
    h = 1e-5
    for v in dirs:
        analytic = sum(float((g * d).sum()) for g, d in zip(grads, v))
        with torch.no_grad():
            for p, d in zip(params, v):
                p.add_(h * d)
            up = float(reference_loss())
            for p, d in zip(params, v):
                p.sub_(2 * h * d)
            down = float(reference_loss())
            for p, d in zip(params, v):
                p.add_(h * d)
        numeric = (up - down) / (2 * h)
        assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-7)


def test_weight_schedule_and_phase_switch():
    ramp = WeightSchedule("linear", final=0.8, initial=0.2, start=10, end=30)
    assert [ramp(s) for s in (0, 10, 20, 30, 100)] == pytest.approx([0.2, 0.2, 0.5, 0.8, 0.8])
    assert WeightSchedule("constant", final=0.4)(7) == 0.4
    cfg = LossConfig(name="data", pretrain_steps=5, after="flow_mcmc")
    assert [cfg.objective(s, 64) for s in (0, 4, 5, 9)] == ["data", "data", "flow_mcmc", "flow_mcmc"]
    assert LossConfig(name="data").objective(10**6, 64) == "data"  # no pretrain_steps: data throughout
    # data_epochs: 2 epochs of 100 samples in batches of 30 -> ceil(200 / 30) = 7 steps
    cfg = LossConfig(name="data", data_samples=100, data_epochs=2, data_batch_size=30)
    assert cfg.objective(6, 64) == "data" and cfg.objective(7, 64) == "reverse_kl"


def test_temper_schedule():
    t = TemperSchedule(initial=0.25, until=0.5)
    assert [t(s, 100) for s in (0, 25, 50, 99)] == pytest.approx([0.25, 0.625, 1.0, 1.0])
    assert LossConfig().temper_schedule()(0, 10) == 1.0  # no tempering by default


def test_tempered_reverse_kl_is_against_p_to_the_s(tmp_path):
    """With loss.temper the reverse-KL step's loss is mean[ln q + s·E] of the same batch, s ramping
    to 1; the free energy it returns (logged as the gap) stays the one against p."""
    plain = build_module(make_cfg("steps=20", run_dir=tmp_path / "p"))
    hot = build_module(make_cfg("steps=20", "loss.temper={initial:0.3,until:0.5}", run_dir=tmp_path / "t"))
    hot.flow.load_state_dict(plain.flow.state_dict())
    for step, s in ((0, 0.3), (5, 0.65), (10, 1.0)):
        torch.manual_seed(5)
        a, f_plain, _, parts, _ = plain.step_loss(step)
        torch.manual_seed(5)
        b, f_hot, _, _, extra = hot.step_loss(step)
        assert extra["temper"] == pytest.approx(s)
        torch.testing.assert_close(f_hot, f_plain)
        want = (parts["ln q(x)"] + s * parts["E(x)"]).mean()
        assert float(b.detach()) == pytest.approx(float(want.detach()), rel=1e-10)
        assert (float(b.detach()) == pytest.approx(float(a.detach()), rel=1e-12)) == (s == 1.0)


# --- the chains leave p invariant ------------------------------------------------------------

@pytest.mark.parametrize("z2, local_steps, sigma, scale", [(False, 2, 1.5, 0.3), (True, 0, 0.8, 0.1)])
def test_chains_sample_p_from_a_wrong_flow(z2, local_steps, sigma, scale):
    """Gaussian p with σ² known; the flow is random (its variance is far from σ²). After
    burn-in the chain states' per-site mean, variance and neighbour covariance match p within
    4.5 standard errors (128 independent chains, per-chain time averages)."""
    target = GaussianTarget(4, sigma)
    flow = random_flow(target, scale, z2=z2)
    torch.manual_seed(1)
    chains = FlowMCMCChains(128, local_steps=local_steps, n_leapfrog=3, step_size=0.3, adapt_steps=50, burn_in=0)
    with torch.no_grad():
        x_q, _ = flow.sample(4096)
    chains.init_from_flow(flow)
    for _ in range(100):
        chains.step(flow)
    mean, var, cov = [], [], []
    for _ in range(200):
        chains.step(flow)
        x = chains.x
        mean.append(x.mean(dim=(1, 2)))
        var.append(x.square().mean(dim=(1, 2)))
        cov.append((x * x.roll(1, dims=-1)).mean(dim=(1, 2)))
    assert chains.x.dtype == torch.float64 and chains.x.shape == (128, 4, 4)
    se = {}
    for name, series, expected in (("mean", mean, 0.0), ("var", var, sigma**2), ("cov", cov, 0.0)):
        per_chain = torch.stack(series, dim=1).mean(dim=1)
        se[name] = float(per_chain.std()) / math.sqrt(per_chain.numel())
        assert abs(float(per_chain.mean()) - expected) < 4.5 * se[name], name
    # the test can tell: the flow's own samples are far from p
    assert abs(float(x_q.square().mean()) - sigma**2) > 10 * se["var"]
    assert 0.0 < chains.mh_acceptance < 1.0
    if local_steps:
        assert 0.3 < chains.last_hmc_acceptance <= 1.0


def test_exact_ising_data():
    target = IsingTarget(4, KC)
    data = TrainingData(target, 100, n_chains=8, sweep_spacing=2, warmup_sweeps=5, seed=0)
    assert data.x.shape == (100, 4, 4) and data.x.dtype == torch.float64 and data.source == "wolff"
    assert data.generation_s > 0 and data.info["n_chains"] == 8 and data.warning is None
    assert len({tuple(r.flatten().tolist()) for r in data.x}) == 100
    seen = torch.cat([data.batch(30, torch.device("cpu"), torch.float32) for _ in range(3)])
    assert seen.dtype == torch.float32 and data.epoch == 0
    assert len({tuple(r.flatten().tolist()) for r in seen}) == 90  # no repeats within an epoch
    data.batch(30, torch.device("cpu"), torch.float32)
    assert data.epoch == 1


def test_parallel_tempering_data_for_a_glass_match_the_transfer_matrix():
    """data_source auto on a ±J glass (no Wolff): the T = 1 replica's states of parallel tempering,
    one every sweep_spacing steps; their energy and m² agree with the transfer matrix, and the
    diagnostics pass (spacing > 2 τ_int: every sample counts). A warm-up far shorter than 20 τ_int
    is flagged."""
    target = IsingTarget(4, 1.0, disorder="pm_j", seed=3)
    data = TrainingData(target, 2048, n_chains=64, sweep_spacing=6, warmup_sweeps=200, seed=0)
    assert data.source == "parallel_tempering" and data.x.shape == (2048, 4, 4) and data.x.dtype == torch.float64
    assert data.info["tau_converged"] and data.info["equilibrated"] and data.warning is None
    assert set(data.info["tau_int"]) >= {"energy", "m2"} and data.info["effective_samples"] == 2048
    assert len(data.info["swap_accept"]) == 7 and data.info["temperatures"][0] == 1.0
    assert len({tuple(r.flatten().tolist()) for r in data.x}) == 2048
    exact = target.exact()
    obs = target.observables(data.x)
    for name in ("energy", "m2"):
        v = obs[name].to(torch.float64)
        # the samples are ~independent (6 steps > 2 τ_int(E)); widen by 2 for the residual correlation
        err = 2 * float(v.std()) / math.sqrt(v.numel())
        assert abs(float(v.mean()) - exact[f"{name}_per_site" if name == "energy" else name]) < 4 * err, name
    again = TrainingData(target, 2048, n_chains=64, sweep_spacing=6, warmup_sweeps=200, seed=0)
    assert again.reused and again.x is data.x and again.info == data.info  # the last set is kept (budget probes)
    _LAST_DATA.clear()
    same = TrainingData(target, 2048, n_chains=64, sweep_spacing=6, warmup_sweeps=200, seed=0)
    assert not same.reused and torch.equal(same.x, data.x)  # generated again: seeded
    other = TrainingData(target, 2048, n_chains=64, sweep_spacing=6, warmup_sweeps=200, seed=1)
    assert not other.reused and not torch.equal(other.x, data.x)
    short = TrainingData(target, 256, n_chains=64, sweep_spacing=1, warmup_sweeps=2, seed=1)
    assert short.warning is not None and "raise loss.data_warmup_sweeps" in short.warning
    assert short.info["effective_samples"] < 256


# --- training through hydra ----------------------------------------------------------------------

class Metrics(pl.Callback):
    """Keeps the logged metrics of every step."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []
        self.final: dict[str, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append({k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1})

    def on_train_end(self, trainer, pl_module) -> None:
        self.final = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        self.trainer, self.module = trainer, pl_module


def _train(tmp_path: Path, name: str, *overrides: str) -> tuple[dict, dict, Metrics]:
    cfg = make_cfg("eval_every=50", "steps_per_epoch=50", "final_eval_samples=4096", "seed=3",
                   *overrides, run_dir=tmp_path / name)
    torch.manual_seed(0)
    before = evaluate_flow(build_module(cfg).flow.eval(), 4096, generator=torch.Generator().manual_seed(1))
    cap = Metrics()
    return before, run_training(cfg, callbacks=[cap]), cap


def test_flow_mcmc_training_improves_gap(tmp_path):
    before, s, cap = _train(tmp_path, "mcmc", "steps=150", "loss.name=flow_mcmc", "loss.n_chains=64",
                            "loss.schedule.name=linear", "loss.schedule.end=50")
    assert s["status"] == "completed" and s["steps"] == 150
    # the untrained flow is N(0, A): gap 0.597/site; reverse KL alone reaches ~0.14 in 150 steps here
    assert before["gap_per_site"] > 0.5 and s["gap_per_site"] < 0.25
    first, last = cap.steps[0], cap.final
    for key in ("train/forward_kl", "train/reverse_kl", "train/chain_mh_acceptance",
                "train/chain_hmc_acceptance", "train/forward_weight", "train/forward_gap"):
        assert key in last and math.isfinite(last[key]), key
    assert first["train/forward_weight"] == 0.0 and last["train/forward_weight"] == 0.5
    assert 0.0 <= last["train/chain_mh_acceptance"] <= 1.0
    assert 0.2 < last["train/chain_hmc_acceptance"] <= 1.0
    assert last["train/forward_gap"] < first["train/forward_gap"]  # KL(p‖q) on the chains fell


def test_data_training_improves_gap_then_switches(tmp_path):
    # pure maximum likelihood on exact samples
    before, s, cap = _train(tmp_path, "data", "steps=100", "loss.name=data", "loss.data_samples=1024",
                            "loss.data_chains=32")
    assert s["status"] == "completed"
    assert s["gap_per_site"] < before["gap_per_site"] / 2
    assert "train/chain_mh_acceptance" not in cap.final and "train/free_energy" not in cap.final
    gen_s = cap.module.data_generation_s
    assert gen_s > 0 and cap.steps[0]["train/data_generation_s"] == pytest.approx(gen_s)
    assert float(cap.trainer.callback_metrics[FIT_DATA_TIME_KEY]) == pytest.approx(gen_s)
    assert s["wall_time_s"] > gen_s  # generated inside fit: part of the run's wall time
    assert cap.final["train/data_epoch"] >= 5  # 100 steps x 64 / 1024 samples
    # data for 60 steps, then flow_mcmc takes over
    before, s, cap = _train(tmp_path, "switch", "steps=100", "loss.name=data", "loss.data_samples=512",
                            "loss.data_chains=32", "loss.pretrain_steps=60", "loss.after=flow_mcmc",
                            "loss.n_chains=32")
    assert s["status"] == "completed" and s["gap_per_site"] < before["gap_per_site"] / 2
    assert "train/chain_mh_acceptance" not in cap.steps[59] and "train/chain_mh_acceptance" in cap.steps[60]
    assert cap.steps[59]["train/forward_weight"] == 1.0 and cap.steps[60]["train/forward_weight"] == 0.5


def test_data_training_on_a_glass_draws_parallel_tempering_data(tmp_path):
    """loss.name=data on a ±J glass: auto picks parallel tempering, the run trains and logs the
    data's effective sample count; the flow moves toward p (its gap falls)."""
    before, s, cap = _train(tmp_path, "glass", "steps=60", "target=ising_glass", "target.L=4",
                            "loss.name=data", "loss.data_samples=1024", "loss.data_chains=32",
                            "loss.data_sweep_spacing=10", "loss.data_warmup_sweeps=300", "loss.data_weight=0.5",
                            "loss.data_settings={n_temperatures:4,t_max:3.0}")
    assert s["status"] == "completed" and s["gap_per_site"] < before["gap_per_site"]
    data = cap.module.data
    assert data.source == "parallel_tempering" and len(data.info["temperatures"]) == 4
    assert cap.steps[0]["train/data_effective_samples"] == pytest.approx(data.info["effective_samples"])
    assert 0 < data.info["effective_samples"] <= 1024 and data.warning is None
    assert s["data"]["source"] == "parallel_tempering" and s["data"]["warning"] is None  # in summary.json too
    line = format_summary(s).splitlines()[-1]
    assert line.startswith("  training data: 1024 samples from parallel_tempering (") and "WARNING" not in line
    flagged = format_summary({**s, "data": {**s["data"], "warning": "too short"}})
    assert flagged.splitlines()[-1].endswith("; WARNING: too short")


def test_data_weight_mixes_reverse_kl_into_the_data_phase(tmp_path):
    before, s, cap = _train(tmp_path, "mixed", "steps=100", "loss.name=data", "loss.data_samples=1024",
                            "loss.data_chains=32", "loss.data_weight=0.25")
    assert s["status"] == "completed" and s["gap_per_site"] < before["gap_per_site"] / 2
    last = cap.final
    assert last["train/forward_weight"] == 0.25
    for key in ("train/free_energy", "train/forward_kl", "train/forward_gap"):  # both terms were computed
        assert key in last and math.isfinite(last[key]), key
    assert "train/chain_mh_acceptance" not in last


def test_nan_guard_covers_flow_mcmc(tmp_path, monkeypatch):
    energy = IsingTarget.energy
    state = {"bad": False}

    class Trigger(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            state["bad"] = trainer.global_step >= 12

    def nan_energy(self, x):
        e = energy(self, x)
        return torch.full_like(e, float("nan")) if state["bad"] else e

    monkeypatch.setattr(IsingTarget, "energy", nan_energy)
    run_dir = tmp_path / "run"
    cfg = make_cfg("steps=30", "eval_every=10", "steps_per_epoch=10", "loss.name=flow_mcmc",
                   "loss.n_chains=32", run_dir=run_dir)
    with pytest.raises(NonFiniteLossError, match=r"non-finite flow_mcmc loss .* at step 12, .*E\(x\) 64/64"):
        run_training(cfg, callbacks=[Trigger()])
    assert load_ckpt(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 10


# --- configuration errors ------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, words", [
    (["loss.name=forward_kl"], "loss.name must be one of"),
    (["loss.name=flow_mcmc", "loss.forward_weight=1.5"], r"loss.forward_weight must be a number in \[0.0, 1.0\]"),
    (["loss.name=flow_mcmc", "loss.forward_weight=-0.1"], "loss.forward_weight"),
    (["loss.schedule.name=linear", "loss.schedule.start=10", "loss.schedule.end=5"], "end > start"),
    (["+loss.n_chain=8"], r"unknown loss setting\(s\) \['n_chain'\]"),
    (["loss.name=data", "loss.after=data"], "loss.after"),
    (["loss.name=data", "loss.data_source=wolff", "target=phi4", "target.L=4"],
     "loss.data_source=wolff.*not a Phi4Target.*loss.data_source=parallel_tempering"),
    (["loss.name=data", "loss.data_source=wolff", "target=ising_glass", "target.L=4"],
     "loss.data_source=wolff.*translation-invariant couplings"),
    (["loss.name=data", "loss.data_source=exact"], "loss.data_source must be one of"),
    (["loss.name=data", "loss.data_settings=3"], "loss.data_settings must be null or a mapping"),
    (["loss.name=data", "loss.data_settings={t_max:4}"], "loss.data_settings .* set parallel tempering's sampler"),
    (["loss.name=data", "target=ising_glass", "target.L=4", "loss.data_settings={n_temps:4}"],
     r"unknown loss.data_settings key\(s\) \['n_temps'\]"),
    (["loss.name=data", "target=ising_glass", "target.L=4", "loss.data_settings={t_max:0.5}"], "t_max"),
    (["loss.name=data", "loss.data_epochs=2", "loss.pretrain_steps=5"], "exclude each other"),
    (["loss.name=data", "loss.data_weight=0"], r"loss.data_weight must be a number in \(0.0, 1.0\]"),
    (["loss.temper={initial:0,until:0.5}"], r"loss.temper.initial must be a number in \(0.0, 1.0\]"),
    (["loss.temper={initial:0.5,until:1.5}"], r"loss.temper.until must be a number in \(0.0, 1.0\]"),
    (["loss.temper={initial:0.5,after:3}"], r"unknown loss.temper setting\(s\) \['after'\]"),
    (["loss.temper=3"], "loss.temper must be null or a mapping"),
    (["loss.temper={initial:0.5}", "loss.name=flow_mcmc"], "loss.temper tempers the reverse-KL steps"),
])
def test_bad_loss_config_raises_value_error(tmp_path, overrides, words):
    with pytest.raises(ValueError, match=words):
        build_module(make_cfg(*overrides, run_dir=tmp_path / "run"))


def test_default_is_reverse_kl():
    cfg = make_cfg("paths.run_dir=unused")
    assert cfg.loss.name == "reverse_kl"
    module = build_module(cfg)
    assert module.loss_cfg.name == "reverse_kl" and module.chains is None


# --- budget planning across objective phases -----------------------------------------------------

def test_steps_that_fit_counts_phase_by_phase():
    from neuralrg.pipelines.budget import steps_that_fit
    assert steps_that_fit(5.0, [(0, 0.25)]) == 20
    assert steps_that_fit(-1.0, [(0, 0.25)]) == 0
    # 10 data steps of 1 s, then 0.25 s a step: 20 s -> 10 + 40
    assert steps_that_fit(20.0, [(0, 1.0), (10, 0.25)]) == 50
    assert steps_that_fit(7.5, [(0, 1.0), (10, 0.25)]) == 7  # the budget ends inside the first phase
    assert steps_that_fit(20.0, [(5, 1.0), (10, 0.25)]) == 5 + 60  # a resumed run: phase 1 has 5 steps left


def test_budget_probes_every_objective_phase(tmp_path):
    from neuralrg.pipelines.budget import objective_phases, plan_budget
    assert objective_phases(build_module(make_cfg(run_dir=tmp_path / "a"))) == [0]
    data = ("loss.name=data", "loss.data_samples=256", "loss.data_chains=16", "loss.pretrain_steps=40")
    module = build_module(make_cfg(*data, run_dir=tmp_path / "b"))
    assert objective_phases(module) == [0, 40] and objective_phases(module, 50) == [50]
    assert objective_phases(build_module(make_cfg(*data[:3], run_dir=tmp_path / "c"))) == [0]  # data all run
    cfg = make_cfg(*data, "loss.data_weight=0.5", "eval_every=0", "final_eval_samples=64", run_dir=tmp_path / "d")
    plan = plan_budget(cfg, 60.0, build_module)
    times = plan["phase_step_times_s"]
    assert list(times) == [0, 40] and plan["step_time_s"] == times[0] and min(times.values()) > 0
    assert build_module(cfg)._ensure_data().reused  # the run takes the probe's data set, not a second one


def test_a_late_smoothness_term_is_counted_where_it_starts():
    """loss.latent_fisher_from: the steps from ⌈late·(done + new)⌉ on cost t_fisher; the planned run is the
    longest that fits, and one step more does not (checked by counting the seconds step by step)."""
    from neuralrg.pipelines.budget import fisher_phases, steps_that_fit, steps_with_late_term
    assert fisher_phases([(0, 1.0)], ["reverse_kl"], 30, 3.0) == [(0, 1.0), (30, 3.0)]
    assert fisher_phases([(0, 1.0)], ["reverse_kl"], 0, 3.0) == [(0, 3.0)]
    # a data phase up to step 40 keeps its cost; the term starts inside (at 30) or after (at 50) it
    assert fisher_phases([(0, 2.0), (40, 1.0)], ["data", "reverse_kl"], 30, 3.0) == [(0, 2.0), (40, 3.0)]
    assert fisher_phases([(0, 2.0), (40, 1.0)], ["data", "reverse_kl"], 50, 3.0) == [(0, 2.0), (40, 1.0), (50, 3.0)]

    def seconds(n: int, phases, objectives, late, t_f, done=0) -> float:
        switch = math.ceil(late * (done + n))
        per = dict(fisher_phases(phases, objectives, switch, t_f))
        starts = sorted(per)
        return sum(per[max(k for k in starts if k <= step)] for step in range(done, done + n))

    for budget, phases, objectives, late, t_f, done in [
            (100.0, [(0, 1.0)], ["reverse_kl"], 0.5, 3.0, 0),      # 25 + 25 steps: 25 + 75 s
            (100.0, [(0, 1.0)], ["reverse_kl"], 0.8, 1.5, 0),
            (77.0, [(0, 2.0), (10, 1.0)], ["data", "reverse_kl"], 0.3, 2.5, 0),
            (60.0, [(20, 1.0)], ["reverse_kl"], 0.5, 2.0, 20)]:  # resumed after 20 steps
        n = steps_with_late_term(budget, phases, objectives, late, t_f, done)
        assert seconds(n, phases, objectives, late, t_f, done) <= budget + 1e-9
        assert seconds(n + 1, phases, objectives, late, t_f, done) > budget
        assert n < steps_that_fit(budget, phases)
    assert steps_with_late_term(100.0, [(0, 1.0)], ["reverse_kl"], 0.5, 3.0) == 50


def test_budget_times_a_late_smoothness_term(tmp_path):
    from neuralrg.pipelines.budget import plan_budget
    cfg = make_cfg("loss.latent_fisher=0.1", "loss.latent_fisher_batch=8", "loss.latent_fisher_from=0.5",
                   "eval_every=0", "final_eval_samples=64", run_dir=tmp_path / "a")
    plan = plan_budget(cfg, 30.0, build_module)
    assert plan["latent_fisher_step_time_s"] > plan["step_time_s"] > 0  # a double backward more
    assert {"latent_fisher_from", "latent_fisher_every", "latent_fisher_min_level"} <= set(cfg.loss)  # named in conf
    assert plan_budget(make_cfg("eval_every=0", "final_eval_samples=64", run_dir=tmp_path / "b"), 30.0,
                       build_module)["latent_fisher_step_time_s"] is None


# --- the sign-folded reverse KL (loss.sign_fold) -------------------------------------------------

def _gauss(x: torch.Tensor, mu: float, s: float) -> torch.Tensor:
    return torch.exp(-0.5 * ((x - mu) / s) ** 2) / (s * math.sqrt(2 * math.pi))


def test_sign_fold_is_a_normalised_fold_and_bounds_the_z2_gap():
    """On a 1-D grid (quadrature, float64): p_φ = 2σ(φ)p integrates to 1 and its symmetrisation is p
    for any odd φ; KL(q_sym‖p) ≤ KL(q‖p_φ), with equality at φ = ln q(x) − ln q(−x); φ = 0 is the
    plain reverse KL, which for a one-sided q exceeds the Z2 gap by about ln 2."""
    from neuralrg.training.losses import SignFold
    x = torch.linspace(-12, 12, 24001, dtype=torch.float64)
    dx = float(x[1] - x[0])
    p = 0.5 * _gauss(x, 2.0, 0.8) + 0.5 * _gauss(x, -2.0, 0.8)  # an even double well
    q = _gauss(x, 1.9, 0.9)  # one sign only
    q_sym = 0.5 * (q + q.flip(0))

    def kl(a, b):
        return float((a * (a.clamp_min(1e-300).log() - b.clamp_min(1e-300).log())).sum() * dx)

    fold = SignFold("uniform", 1, dtype=torch.float64)
    grid = x.reshape(-1, 1, 1)
    z2_gap = kl(q_sym, p)
    bounds = {}
    for a in (0.0, 0.5, 2.0, 8.0):
        with torch.no_grad():
            fold.weight.fill_(a)
            w = fold.log_weight(grid).exp()
            w_minus = fold.log_weight(-grid).exp()
        assert torch.allclose(w + w_minus, torch.full_like(w, 2.0), atol=1e-12)
        p_phi = w * p
        assert float(p_phi.sum() * dx) == pytest.approx(1.0, abs=1e-9)
        assert torch.allclose(0.5 * (p_phi + p_phi.flip(0)), p, atol=1e-12)
        bounds[a] = kl(q, p_phi)
        assert bounds[a] >= z2_gap - 1e-9
    assert bounds[0.0] == pytest.approx(kl(q, p))  # φ = 0: the plain reverse KL
    assert bounds[0.0] - z2_gap > 0.6  # loose by ≈ ln 2 for a one-sided q
    assert min(bounds.values()) - z2_gap < 0.01  # a steep enough fold is nearly tight
    phi_opt = q.clamp_min(1e-300).log() - q.flip(0).clamp_min(1e-300).log()
    assert kl(q, 2 * torch.sigmoid(phi_opt) * p) == pytest.approx(z2_gap, abs=1e-9)


def test_sign_fold_field_is_odd_and_checks_shapes():
    from neuralrg.training.losses import SignFold
    fold = SignFold("field", 4, dtype=torch.float64)
    with torch.no_grad():
        fold.weight.normal_(generator=torch.Generator().manual_seed(0))
    x = torch.randn(5, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(fold.phi(-x), -fold.phi(x), atol=0)
    assert torch.allclose(fold.log_weight(x).exp() + fold.log_weight(-x).exp(),
                          torch.full((5,), 2.0, dtype=torch.float64), atol=1e-14)
    with pytest.raises(ValueError, match="built for L = 4"):
        fold.phi(torch.zeros(2, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="loss.sign_fold must be one of"):
        SignFold("staggered", 4)


def test_sign_fold_starts_as_reverse_kl_and_is_trained(tmp_path):
    """At step 0 (φ = 0) the folded loss is the reverse KL of the same batch; training moves a, the
    checkpoint keeps it (resume restores it) and load_flow reads the flow alone; the fold's bound on
    the Z2 gap is logged and the trained flow's Z2 gap lies below it."""
    from neuralrg.checkpoint import load_flow
    plain = build_module(make_cfg(run_dir=tmp_path / "p"))
    folded = build_module(make_cfg("loss.sign_fold=uniform", run_dir=tmp_path / "f"))
    folded.flow.load_state_dict(plain.flow.state_dict())
    torch.manual_seed(5)
    a = plain.step_loss(0)[0]
    torch.manual_seed(5)
    b, _, _, _, extra = folded.step_loss(0)
    assert float(b.detach()) == pytest.approx(float(a.detach()), rel=1e-12) and float(extra["fold_weight_norm"]) == 0.0
    assert folded.trained_parameters()[-1] is folded.sign_fold.weight

    class Metrics(pl.Callback):
        final: dict = {}

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            Metrics.final = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}

    run_dir = tmp_path / "run"
    s = run_training(make_cfg("steps=150", "loss.sign_fold=uniform", "final_eval_samples=4096", run_dir=run_dir),
                     callbacks=[Metrics()])
    assert s["status"] == "completed"
    state = load_ckpt(run_dir / "checkpoints" / "last.ckpt")["state_dict"]
    assert abs(float(state["sign_fold.weight"])) > 0.1  # the fold was learned
    # logged before the last optimizer step
    assert Metrics.final["train/fold_weight_norm"] == pytest.approx(abs(float(state["sign_fold.weight"])), rel=1e-3)
    flow = load_flow(run_dir)
    assert flow.L == 4 and "sign_fold.weight" not in flow.state_dict()
    assert float(flow.sign_fold_weight) == float(state["sign_fold.weight"])  # for flow Metropolis' fold=auto
    flow.z2 = True
    z2_gap = evaluate_flow(flow, 8192, generator=torch.Generator().manual_seed(2))["gap_per_site"]
    assert z2_gap < Metrics.final["train/fold_bound"] + 0.01  # the bound (last batch, 64 samples: noisy)


@pytest.mark.parametrize("overrides, words", [
    (["loss.sign_fold=magnetisation"], "loss.sign_fold must be one of"),
    (["loss.sign_fold=uniform", "loss.name=flow_mcmc"], "needs loss.name=reverse_kl"),
    (["loss.sign_fold=uniform", "model.z2=true"], "model.z2=true"),
    (["experiment=ising16_critical", "loss.name=data"], r"add loss.sign_fold=null"),
])
def test_bad_sign_fold_config(tmp_path, overrides, words):
    with pytest.raises(ValueError, match=words):
        build_module(make_cfg(*overrides, run_dir=tmp_path / "run"))


def test_sign_fold_refuses_a_target_without_z2_symmetry():
    target = GaussianTarget(4, 1.0)
    target.z2_symmetric = False  # as a target with an external field would declare
    flow = build_mera(target, n_couplings=2, hidden=4)
    with pytest.raises(ValueError, match="needs a Z2-symmetric target; GaussianTarget is not"):
        FlowModule(flow, functools.partial(torch.optim.Adam, lr=1e-3), total_steps=10, batch_size=8,
                   loss={"sign_fold": "uniform"})


def test_uniform_sign_fold_acts_along_the_staggered_magnetisation_of_an_antiferromagnet(tmp_path):
    """On the antiferromagnet (L = 4, K = −K_c: an order gauge g) a uniform fold is φ(x) = a·Σ gᵢxᵢ/√N, in
    training (the weight is learned: along Σ xᵢ, which vanishes in an antiferromagnet, it would not be),
    in the checkpoint's weight for the samplers (the field a·g) and in a numeric fold (±0.7·g)."""
    from neuralrg.checkpoint import load_flow
    from neuralrg.physics.couplings import sublattice_gauge
    from neuralrg.sampling.fold import fold_weight
    g = torch.as_tensor(sublattice_gauge(4, True, True), dtype=torch.float64)
    run_dir = tmp_path / "afm"
    s = run_training(make_cfg("steps=150", "target.K=-0.44068679350977147", "loss.sign_fold=uniform",
                              "final_eval_samples=1024", run_dir=run_dir))
    assert s["status"] == "completed"
    a = float(load_ckpt(run_dir / "checkpoints" / "last.ckpt")["state_dict"]["sign_fold.weight"])
    assert abs(a) > 0.1  # learned along the order parameter
    flow = load_flow(run_dir)
    assert any(type(m).__name__ == "SignGauge" for m in flow.flows)  # model.gauge=auto
    torch.testing.assert_close(flow.sign_fold_weight.double(), a * g, rtol=1e-6, atol=1e-6)
    w = fold_weight(flow.double(), 0.7, torch.Generator().manual_seed(0))
    assert w.shape == (4, 4) and torch.equal(w.abs(), torch.full((4, 4), 0.7, dtype=w.dtype))
    assert bool((w * g).gt(0).all() or (w * g).lt(0).all())  # ±0.7·g


# --- the latent smoothness term (loss.latent_fisher) ------------------------------------------

def _residual_grad_sq(flow, z, log_weight=None):
    """|∇_z (U(z) − ½|z|²)|² per sample, U written out here: E(x) − ln|det ∂g/∂z| (− ln 2σ(φ(x)) with a fold),
    or E(x) + ln q_sym(x) − ln N(z) for a Z2 flow (ln q_sym by the inverse pass, flow.log_prob)."""
    z = z.detach().clone().requires_grad_(True)
    x, log_det = flow.forward_and_log_det(z)
    if flow.z2:
        u = flow.target.energy(x) + flow.log_prob(x) + 0.5 * z.pow(2).flatten(1).sum(1)
    else:
        u = flow.target.energy(x) - log_det - (0.0 if log_weight is None else log_weight(x))
    (g,) = torch.autograd.grad((u - 0.5 * z.pow(2).flatten(1).sum(1)).sum(), z)
    return g.pow(2).flatten(1).sum(1)


@pytest.mark.parametrize("z2, fold", [(False, False), (True, False), (False, True)])
def test_latent_fisher_is_the_squared_force_residual_of_latent_hmc(z2, fold):
    """latent_fisher(z) equals |∇U(z) − z|² with latent HMC's potential written out independently (plain,
    q_sym by the inverse pass, sign fold), on the same z; the fold's weight gets a gradient."""
    from neuralrg.training.losses import SignFold, latent_fisher
    from test_rg_organisation import randomised
    flow = randomised(build_mera(IsingTarget(4, KC), n_couplings=2, hidden=8, activation="silu", z2=z2).double(),
                      scale=0.2, seed=3)
    sf = None
    if fold:
        sf = SignFold("uniform", 4, dtype=torch.float64)
        with torch.no_grad():
            sf.weight.fill_(1.7)
    torch.manual_seed(11)
    got = latent_fisher(flow, 5, None if sf is None else sf.field())
    torch.manual_seed(11)
    z, _ = flow.q0(5)
    want = _residual_grad_sq(flow, z, None if sf is None else sf.log_weight)
    torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-9, atol=1e-12)
    assert got.requires_grad and float(got.detach().min()) > 1e-3  # a random flow is far from exact
    if sf is not None:
        (g,) = torch.autograd.grad(got.sum(), sf.weight)
        assert float(g.abs()) > 0


def test_latent_fisher_vanishes_for_an_exact_flow_and_its_gradient_is_a_double_backward():
    """For an exactly Gaussian target the fresh preconditioned flow is exact: r is constant and the
    term is 0 (to rounding). On a random flow the term's parameter gradient matches central finite
    differences (the double backward through the flow reaches the parameters)."""
    from neuralrg.training.losses import latent_fisher
    from test_rg_organisation import GaussianTarget, randomised
    flow = build_mera(GaussianTarget(4), n_couplings=2, hidden=8, activation="silu", precondition=True).double()
    torch.manual_seed(0)
    assert float(latent_fisher(flow, 8).detach().max()) < 1e-20
    flow = randomised(flow, scale=0.2, seed=1)
    p = next(q for q in flow.parameters() if q.numel() > 4)

    def value() -> torch.Tensor:
        torch.manual_seed(2)
        return latent_fisher(flow, 4).mean()
    (grad,) = torch.autograd.grad(value(), p)
    d = torch.randn(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(3))
    h = 1e-5
    with torch.no_grad():
        p.add_(h * d)
    up = float(value().detach())
    with torch.no_grad():
        p.sub_(2 * h * d)
    down = float(value().detach())
    with torch.no_grad():
        p.add_(h * d)
    assert (grad * d).sum().item() == pytest.approx((up - down) / (2 * h), rel=1e-5)


def test_latent_fisher_joins_the_reverse_kl_step(tmp_path):
    """step_loss with loss.latent_fisher = λ: the reverse KL of the same batch plus λ·mean|∇r|², logged
    per site; bad values and objectives without reverse-KL steps are refused naming the key."""
    plain = build_module(make_cfg(run_dir=tmp_path / "p"))
    smooth = build_module(make_cfg("loss.latent_fisher=0.5", "loss.latent_fisher_batch=3", run_dir=tmp_path / "s"))
    smooth.flow.load_state_dict(plain.flow.state_dict())
    torch.manual_seed(5)
    a = plain.step_loss(0)[0]
    torch.manual_seed(5)
    b, _, _, parts, extra = smooth.step_loss(0)
    fisher = parts["|grad r|^2"]
    assert fisher.shape == (3,)
    assert float(b.detach()) == pytest.approx(float(a.detach()) + 0.5 * float(fisher.detach().mean()), rel=1e-6)  # float32
    assert float(extra["latent_fisher"]) == pytest.approx(float(fisher.detach().mean()) / 16, rel=1e-6)
    for bad in (-0.1, float("nan"), True):
        with pytest.raises(ValueError, match="loss.latent_fisher must be"):
            LossConfig(latent_fisher=bad)
    with pytest.raises(ValueError, match="loss.latent_fisher_batch"):
        LossConfig(latent_fisher=0.1, latent_fisher_batch=0)
    with pytest.raises(ValueError, match="latent_fisher is added to the reverse-KL steps"):
        LossConfig(name="flow_mcmc", latent_fisher=0.1)
    LossConfig(name="data", after="reverse_kl", latent_fisher=0.1)  # reverse-KL steps after the data phase


def test_latent_fisher_from_switches_the_term_on_late(tmp_path):
    """loss.latent_fisher_from = f: the steps before f·total_steps are the plain reverse KL, the later ones
    add the term; values outside [0, 1) are refused."""
    late = build_module(make_cfg("loss.latent_fisher=0.5", "loss.latent_fisher_batch=3", "loss.latent_fisher_from=0.5",
                                 "steps=40", run_dir=tmp_path / "l"))
    assert [late.loss_cfg.fisher_on(k, 40) for k in (0, 19, 20, 39)] == [False, False, True, True]
    assert "latent_fisher" not in late.step_loss(19)[4] and "latent_fisher" in late.step_loss(20)[4]
    assert not LossConfig(latent_fisher=0.0, latent_fisher_from=0.5).fisher_on(30, 40)
    assert LossConfig(latent_fisher=0.1).fisher_on(0, 40)
    assert not late.step_loss(30, fisher=False)[4].get("latent_fisher") and "latent_fisher" in late.step_loss(3, fisher=True)[4]
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="loss.latent_fisher_from must be"):
            LossConfig(latent_fisher=0.1, latent_fisher_from=bad)


def test_latent_fisher_every_k_steps_and_on_the_coarse_levels(tmp_path):
    """latent_fisher_every = k: k·λ·term on the steps ≡ 0 mod k, nothing between; latent_fisher_min_level = l:
    the sum over the latents of level ≥ l equals the full per-site squared gradient summed over those sites."""
    from neuralrg.training.losses import latent_fisher
    every = build_module(make_cfg("loss.latent_fisher=0.5", "loss.latent_fisher_batch=3", "loss.latent_fisher_every=4",
                                  run_dir=tmp_path / "e"))
    plain = build_module(make_cfg(run_dir=tmp_path / "p"))
    plain.flow.load_state_dict(every.flow.state_dict())
    assert [every.loss_cfg.fisher_on(k, 100) for k in range(6)] == [True, False, False, False, True, False]
    torch.manual_seed(3)
    a = plain.step_loss(8)[0]
    torch.manual_seed(3)
    b, _, _, parts, _ = every.step_loss(8)
    assert float(b.detach()) == pytest.approx(float(a.detach()) + 4 * 0.5 * float(parts["|grad r|^2"].detach().mean()),
                                              rel=1e-6)
    torch.manual_seed(3)
    assert float(every.step_loss(9)[0].detach()) == pytest.approx(float(a.detach()), rel=1e-6)  # the same batch, no term
    flow = every.flow.to(torch.float64)
    levels = flow.latent_levels
    torch.manual_seed(11)
    z, _ = flow.q0(2)  # the draws latent_fisher makes after the same seed
    z = z.to(torch.float64).requires_grad_(True)
    from neuralrg.sampling.latent import latent_potential
    r = latent_potential(flow)(z) - 0.5 * z.pow(2).flatten(1).sum(1)
    (g,) = torch.autograd.grad(r.sum(), z)
    for lo in (0, 1, 2):
        torch.manual_seed(11)
        got = latent_fisher(flow, 2, min_level=lo)
        want = (g.pow(2) * (levels >= lo)).flatten(1).sum(1)
        assert torch.allclose(got.detach(), want, rtol=1e-10)
        if lo == 0:
            torch.manual_seed(11)
            assert torch.equal(got, latent_fisher(flow, 2))
    with pytest.raises(ValueError, match="latent_fisher_every"):
        LossConfig(latent_fisher=0.1, latent_fisher_every=0)
    with pytest.raises(ValueError, match="latent_fisher_min_level = 9: this flow's latents have RG levels 0 to"):
        build_module(make_cfg("loss.latent_fisher=0.1", "loss.latent_fisher_min_level=9", run_dir=tmp_path / "m"))
