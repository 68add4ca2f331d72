"""Training pipeline: hydra configs, reverse-KL training, checkpoints, resume, NaN guard, DDP, W&B.

Everything runs on the CPU with tiny models (L = 4, 2 couplings of width 8) and writes only
under pytest's tmp_path. References are independent of the code under test: the exact ln Z_x
(Kaufman, neuralrg.physics.exact), the checkpoint files read back with torch.load, the YAML files of
conf/ read with OmegaConf.load.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

pl = pytest.importorskip("pytorch_lightning")

import neuralrg  # noqa: E402
from neuralrg.checkpoint import CheckpointError  # noqa: E402
from neuralrg.pipelines.cli import exit_on_user_error  # noqa: E402
from neuralrg.sampling.importance import evaluate_flow  # noqa: E402
from neuralrg.physics.exact import exact_solution  # noqa: E402
from neuralrg.flows import CheckerboardCoupling, PlaquetteBijector  # noqa: E402
from neuralrg.physics.ising import IsingTarget
from neuralrg.physics.target import LatticeTarget  # noqa: E402
from neuralrg.training.losses import LossConfig  # noqa: E402
from neuralrg.training.module import NonFiniteLossError  # noqa: E402
from neuralrg.pipelines.train import build_module, run_training  # noqa: E402
from neuralrg.pipelines.rundir import RunDirectoryError  # noqa: E402

torch.set_num_threads(1)
os.environ["WANDB_MODE"] = "disabled"

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
KC = 0.44068679350977147
# tiny and quiet: a few seconds per 100 steps on one core
QUIET = ["target.L=4", "logger=none", "callbacks=minimal", "trainer.enable_progress_bar=false",
         "trainer.accelerator=cpu", "batch_size=64", "eval_samples=256", "final_eval_samples=512"]
FAST = QUIET + ["model.block.n_couplings=2", "model.block.hidden=[8,8]"]


def make_cfg(*overrides: str, run_dir: Path | None = None, fast: bool = True,
             hydra_cfg: bool = False) -> DictConfig:
    """Compose conf/train.yaml like train.py does (no hydra run: paths.run_dir set directly)."""
    ov = (FAST if fast else []) + list(overrides)
    if run_dir is not None:
        ov.append(f"paths.run_dir={run_dir}")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config_name="train", overrides=ov, return_hydra_config=hydra_cfg)
    finally:
        GlobalHydra.instance().clear()


class Capture(pl.Callback):
    """Records the module, and the state right after a resume restored it (on_train_start)."""

    def __init__(self) -> None:
        self.module = None
        self.start: dict = {}
        self.batches: list[tuple[int, int, int]] = []  # (global_step, epoch, batch_idx)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append((trainer.global_step, trainer.current_epoch, batch_idx))

    def on_train_start(self, trainer, pl_module) -> None:
        opt = trainer.optimizers[0]
        self.start = {
            "global_step": trainer.global_step,
            "params": {k: v.detach().clone() for k, v in pl_module.state_dict().items()},
            "optimizer": {k: {n: (t.clone() if torch.is_tensor(t) else t) for n, t in s.items()}
                          for k, s in opt.state_dict()["state"].items()},
            "scheduler": trainer.lr_scheduler_configs[0].scheduler.state_dict(),
            "lr": opt.param_groups[0]["lr"],
        }

    def on_train_end(self, trainer, pl_module) -> None:
        self.module = pl_module


def snapshot(d: Path) -> dict:
    """Every file and folder under d (dot-dirs included): (size, mtime_ns, bytes) of files."""
    return {str(p.relative_to(d)): ((p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
                                    if p.is_file() else "dir")
            for p in sorted(d.rglob("*"))}


def load_ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# --- one short real training, shared by several tests -----------------------------------------

TRAIN_STEPS = 300


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """300 steps of batch 256 at L = 4, K_c (~3 s); the checkpoint interval (64) does not
    divide 300, so last.ckpt must come from the end-of-training save."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    cfg = make_cfg(f"steps={TRAIN_STEPS}", "batch_size=256", "eval_every=64", "steps_per_epoch=50",
                   "final_eval_samples=4096", "seed=3", run_dir=run_dir)
    torch.manual_seed(0)
    untrained = build_module(cfg).flow.eval()
    before = evaluate_flow(untrained, 4096, generator=torch.Generator().manual_seed(1))
    cap = Capture()
    summary = run_training(cfg, callbacks=[cap])
    return {"dir": run_dir, "summary": summary, "before": before, "module": cap.module, "cfg": cfg}


def test_short_training_approaches_exact_free_energy(trained):
    s, before = trained["summary"], trained["before"]
    exact = -exact_solution(4, KC, 0.1)["continuous_log_z"] / 16
    assert s["status"] == "completed" and s["steps"] == TRAIN_STEPS
    # The couplings start at the identity and the default model ends with the Gaussian
    # preconditioner, so q starts as N(0, A): gap 0.597 nats/site. 300 steps (batch 256, lr 3e-3
    # cosine) of this 2-coupling, width-8 silu model reach 0.0625-0.0642 over seeds 0, 3, 5
    # (the leaky-relu model without preconditioner: 0.107-0.118 from 1.13). 0.15 leaves a
    # factor ~2 of margin and still demands a 4x reduction of the gap.
    assert before["gap_per_site"] > 0.5
    assert s["gap_per_site"] < 0.15
    assert s["gap_per_site"] < before["gap_per_site"] / 4
    # the variational bound F_q >= -ln Z_x, within 4 standard errors of the sample mean
    assert s["free_energy_per_site"] >= exact - 4 * s["free_energy_per_site_err"]
    assert s["exact_free_energy_per_site"] == pytest.approx(exact, rel=1e-12)


def test_summary_json_keys_and_exact_values(trained):
    run_dir = trained["dir"]
    s = json.loads((run_dir / "summary.json").read_text())
    documented = {"status", "run_dir", "target", "model", "dtype", "device", "world_size", "steps",
                  "batch_size", "wall_time_s", "rank_sample_fingerprints", "relative_error_divides",
                  "exact", "free_energy_per_site", "free_energy_per_site_err",
                  "exact_free_energy_per_site", "gap_per_site", "relative_error",
                  "is_log_z_per_site", "is_log_z_per_site_err", "is_free_energy_per_site",
                  "is_gap_per_site", "ess_fraction", "metropolis_acceptance", "n_samples", "z2_eval",
                  "rg_organisation"}
    assert documented <= set(s), documented - set(s)
    assert s["target"] == {"class": "neuralrg.physics.ising:IsingTarget", "L": 4, "K": KC, "shift": 0.1}
    ref = exact_solution(4, KC, 0.1)
    assert s["exact"] == ref  # float JSON round trip is exact
    assert s["exact_free_energy_per_site"] == pytest.approx(-ref["continuous_log_z"] / 16, rel=1e-14)
    assert s["gap_per_site"] == pytest.approx(
        s["free_energy_per_site"] - s["exact_free_energy_per_site"], rel=1e-12)
    assert s["relative_error"] == pytest.approx(
        s["gap_per_site"] / (ref["continuous_log_z"] / 16), rel=1e-12)
    assert s["model"]["block"]["kwargs"]["n_couplings"] == 2 and s["model"]["block"]["kwargs"]["hidden"] == [8, 8]
    assert s["world_size"] == 1 and len(s["rank_sample_fingerprints"]) == 1
    assert set(s["z2_eval"]) >= {"free_energy_per_site", "gap_per_site", "ess_fraction"}
    rg = s["rg_organisation"]  # the RG figures beside gap and ESS, on exact (Wolff) samples of p
    assert "exact samples of p" in rg["samples"] and 0.0 <= rg["r2_m_top1"] <= rg["r2_m_top2"] + 1e-9 <= 1.0 + 1e-9
    assert rg["radius_growth"] > 1.0
    assert (run_dir / "config.yaml").is_file()


def test_load_flow_matches_trained_module(trained):
    ckpt = trained["dir"] / "checkpoints" / "last.ckpt"
    # plain data only: nothing a weights-only unpickler would refuse, no DictConfig inside
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(ckpt)) == []
    raw = load_ckpt(ckpt)
    assert raw["global_step"] == TRAIN_STEPS  # saved at the end, not only at step 256
    assert type(raw["hyper_parameters"]["config"]) is dict
    flow = neuralrg.load_flow(ckpt)
    same_dir = neuralrg.load_flow(trained["dir"], L=4, K=KC)  # run directory → last.ckpt
    trained_flow = trained["module"].flow.eval()
    assert not flow.training and flow.target.L == 4 and flow.target.K == KC
    x = trained_flow.sample(64, generator=torch.Generator().manual_seed(5))[0]
    with torch.no_grad():
        ref = trained_flow.log_prob(x)
        assert torch.equal(flow.log_prob(x), ref)
        assert torch.equal(same_dir.log_prob(x), ref)


def test_load_flow_errors(trained, tmp_path):
    ckpt = trained["dir"] / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointError, match=r"L = 4, not L = 8"):
        neuralrg.load_flow(ckpt, L=8)
    with pytest.raises(CheckpointError, match=r"K = 0.44.*not K = 0.3"):
        neuralrg.load_flow(ckpt, K=0.3)
    with pytest.raises(ValueError, match="checkpoint not found"):
        neuralrg.load_flow(tmp_path / "nope.ckpt")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        neuralrg.load_flow(tmp_path)  # a directory without checkpoints
    bad = tmp_path / "corrupt.ckpt"
    bad.write_bytes(ckpt.read_bytes()[:5000])  # truncated
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        neuralrg.load_flow(bad)
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(CheckpointError, match="not a neuralrg training checkpoint"):
        neuralrg.load_flow(other)
    # metadata that does not describe the stored weights
    raw = load_ckpt(ckpt)
    raw["neuralrg"]["model"]["n_couplings"] = 3
    torch.save(raw, other)
    with pytest.raises(CheckpointError, match="does not match its model config"):
        neuralrg.load_flow(other)
    raw["neuralrg"]["model"]["kind"] = "tree"
    torch.save(raw, other)
    with pytest.raises(CheckpointError, match="unusable neuralrg metadata"):
        neuralrg.load_flow(other)
    del raw["neuralrg"]["target"]
    torch.save(raw, other)
    with pytest.raises(CheckpointError, match="malformed"):
        neuralrg.load_flow(other)


# --- configs --------------------------------------------------------------------------------

PRESETS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def _preset_values(name: str) -> dict:
    """target / steps set by a preset file or the presets it includes (read as plain YAML)."""
    raw = OmegaConf.load(CONF / "experiment" / f"{name}.yaml")
    out: dict = {}
    for parent in raw.get("defaults", []):
        if isinstance(parent, str) and parent != "_self_":
            out.update(_preset_values(parent))
    for key in ("task_name", "steps", "batch_size"):
        if key in raw:
            out[key] = raw[key]
    for key in ("L", "K"):
        if "target" in raw and key in raw.target:
            out[f"target.{key}"] = raw.target[key]
    return out


def test_presets_found():
    assert {"demo", "ising8_critical", "ising16_critical", "ising32_critical", "ising8_sweep"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_experiment_preset_composes(name):
    cfg = make_cfg(f"experiment={name}", "paths.run_dir=unused", fast=False, hydra_cfg=True)
    for key, value in _preset_values(name).items():
        assert OmegaConf.select(cfg, key) == value, key
    target = instantiate(cfg.target)
    assert isinstance(target, LatticeTarget) and target.L == cfg.target.L
    loss = LossConfig.from_dict(OmegaConf.to_container(cfg.loss, resolve=True))  # e.g. a sign fold with loss.name=data
    assert loss.sign_fold is None or target.z2_symmetric
    if target.L <= 16:  # building the 32x32 model costs more than it shows
        flow = instantiate(cfg.model)(target=target)
        assert flow.L == target.L
    if name == "ising8_sweep":
        assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
        assert "target.K" in cfg.hydra.sweeper.params


def test_overrides_reach_instantiated_objects():
    cfg = make_cfg("model.block.n_couplings=3", "model.block.hidden=[5,5]", "target.K=0.3", "paths.run_dir=unused")
    module = build_module(cfg)
    flow = module.flow
    assert isinstance(flow.target, IsingTarget) and flow.target.K == 0.3 and flow.target.L == 4
    blocks = [m for m in flow.modules() if isinstance(m, PlaquetteBijector)]
    assert blocks and all(len(b.couplings) == 3 for b in blocks)
    assert all(b.couplings[0].first.out_features == 5 for b in blocks)
    assert module.batch_size == 64


def test_float64_training_and_checkpoint(tmp_path):
    run_training(make_cfg("dtype=float64", "steps=3", "eval_every=3", run_dir=tmp_path / "run"))
    flow = neuralrg.load_flow(tmp_path / "run")
    assert flow.dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in flow.parameters())
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["dtype"] == "float64"


def test_flat_model_composes_and_trains(tmp_path):
    cfg = make_cfg(*QUIET, "model=flat", "model.n_couplings=3", "steps=3", "eval_every=2", "steps_per_epoch=2",
                   run_dir=tmp_path / "flat", fast=False)
    summary = run_training(cfg)
    assert summary["model"]["kind"] == "flat" and summary["steps"] == 3
    flow = neuralrg.load_flow(tmp_path / "flat")
    assert sum(isinstance(m, CheckerboardCoupling) for m in flow.modules()) == 3
    assert math.isfinite(summary["free_energy_per_site"])


@pytest.mark.parametrize("override, error, words", [
    ("target.LL=4", ConfigCompositionException, "LL"),
    ("modle=mera", ConfigCompositionException, "modle"),
    ("model=mear", MissingConfigException, "mear"),
    ("experiment=ising9", MissingConfigException, "ising9"),
    ("trainer.devics=2", ConfigCompositionException, "devics"),
])
def test_misspelt_keys_fail_clearly(override, error, words):
    with pytest.raises(error, match=words):
        make_cfg(override, "paths.run_dir=unused")


def test_wandb_mode_defaults_to_offline(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = make_cfg("logger=wandb", "paths.run_dir=unused", fast=False)
    assert cfg.logger.wandb.mode == "offline"
    assert "offline" not in cfg.logger.wandb  # Lightning's offline=True would force dryrun mode
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert make_cfg("paths.run_dir=unused", fast=False).logger.wandb.mode == "disabled"


def test_wandb_logger_run_disabled(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home"))
    cfg = make_cfg("logger=wandb", "steps=4", "eval_every=2", "steps_per_epoch=2",
                   run_dir=tmp_path / "run")
    summary = run_training(cfg)
    assert summary["status"] == "completed" and summary["steps"] == 4
    assert not (tmp_path / "run" / "wandb").exists()  # disabled mode writes nothing


def test_default_callbacks_progress_bar_and_figures(tmp_path):
    cfg = make_cfg("callbacks=default", "trainer.enable_progress_bar=true", "steps=4", "eval_every=2",
                   "steps_per_epoch=2", run_dir=tmp_path / "run")
    assert cfg.callbacks.checkpoint.every_n_train_steps == 2  # tied to eval_every
    run_training(cfg)
    figs = sorted(p.name for p in (tmp_path / "run" / "figures").glob("*.png"))
    assert figs == ["latents_step000002.png", "latents_step000004.png",
                    "samples_step000002.png", "samples_step000004.png"]
    # one best checkpoint (by free energy) from one of the two evaluations
    best = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("best-*.ckpt"))
    assert len(best) == 1 and best[0] in ("best-step000002.ckpt", "best-step000004.ckpt")


@pytest.mark.parametrize("bad, words", [
    ("scheduler.name=linear", "scheduler name"), ("scheduler.min_factor=2", "min_factor"),
    ("scheduler.warmup_steps=-1", "warmup_steps"), ("dtype=float16", "dtype"),
    ("batch_size=1", "batch_size"), ("steps_per_epoch=0", "steps_per_epoch"),
])
def test_bad_training_settings_raise_value_error(tmp_path, bad, words):
    with pytest.raises(ValueError, match=words):
        run_training(make_cfg(bad, "steps=2", run_dir=tmp_path / "run"))


# --- save, interrupt, resume ------------------------------------------------------------------

class CrashAt(pl.Callback):
    """Simulates a crash (e.g. a killed job) at the start of step ``k``."""

    def __init__(self, k: int) -> None:
        self.k = k

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.k:
            raise RuntimeError(f"simulated crash at step {self.k}")


def test_save_interrupt_resume(tmp_path):
    run_dir = tmp_path / "run"
    # checkpoint every 10 steps; epochs of 25 steps, so step 30 is mid-epoch; cosine schedule
    common = ["eval_every=10", "steps_per_epoch=25", "scheduler.warmup_steps=5", "steps=60"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(make_cfg(*common, run_dir=run_dir), callbacks=[CrashAt(35)])
    last = run_dir / "checkpoints" / "last.ckpt"
    saved = load_ckpt(last)
    assert saved["global_step"] == 30
    assert not (run_dir / "summary.json").exists()

    cap = Capture()
    summary = run_training(make_cfg(*common, f"ckpt_path={last}", run_dir=run_dir), callbacks=[cap])
    start = cap.start
    # step counter, parameters, Adam moments and the schedule continue from the checkpoint
    assert start["global_step"] == 30
    for k, v in saved["state_dict"].items():
        assert torch.equal(start["params"][k], v), k
    opt_saved = saved["optimizer_states"][0]["state"]
    assert set(start["optimizer"]) == set(opt_saved) and opt_saved
    for idx, st in opt_saved.items():
        assert float(st["step"]) == 30
        assert torch.equal(start["optimizer"][idx]["exp_avg"], st["exp_avg"])
        assert torch.equal(start["optimizer"][idx]["exp_avg_sq"], st["exp_avg_sq"])
    sched_saved = saved["lr_schedulers"][0]
    assert start["scheduler"]["last_epoch"] == sched_saved["last_epoch"] == 30
    assert start["lr"] == pytest.approx(sched_saved["_last_lr"][0], rel=1e-12)
    # cosine factor at step 30 of 60 after 5 warm-up steps (min_factor 0.01), lr 3e-3
    frac = (30 - 5) / (60 - 5)
    assert start["lr"] == pytest.approx(3e-3 * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * frac))))

    # the mid-epoch resume finishes epoch 1 (steps 30-49) before epoch 2 starts: epochs stay
    # aligned with global_step // steps_per_epoch
    assert [b[0] for b in cap.batches] == list(range(30, 60))
    assert all((e, i) == divmod(g, 25) for g, e, i in cap.batches), cap.batches

    assert summary["status"] == "completed" and summary["steps"] == 60
    final = load_ckpt(last)
    assert final["global_step"] == 60
    assert all(float(st["step"]) == 60 for st in final["optimizer_states"][0]["state"].values())
    assert final["lr_schedulers"][0]["last_epoch"] == 60
    assert not list((run_dir / "checkpoints").glob("last-v*.ckpt"))  # last.ckpt was updated in place

    # resuming into a fresh run directory (README: ckpt_path=<old run>/checkpoints/last.ckpt)
    new_dir = tmp_path / "continued"
    more = run_training(make_cfg("eval_every=10", "steps_per_epoch=25", "steps=70", f"ckpt_path={last}",
                                 run_dir=new_dir))
    assert more["steps"] == 70 and load_ckpt(new_dir / "checkpoints" / "last.ckpt")["global_step"] == 70
    assert load_ckpt(last)["global_step"] == 60  # the old run is left as it was


class CtrlCAt(pl.Callback):
    def __init__(self, k: int) -> None:
        self.k = k

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.k:
            raise KeyboardInterrupt


def test_ctrl_c_writes_interrupted_summary(tmp_path):
    run_dir = tmp_path / "run"
    handler = signal.getsignal(signal.SIGINT)  # Lightning ignores SIGINT while shutting down
    try:
        with pytest.raises(SystemExit) as info:
            run_training(make_cfg("steps=20", "eval_every=5", run_dir=run_dir), callbacks=[CtrlCAt(7)])
    finally:
        signal.signal(signal.SIGINT, handler)
    assert info.value.code == 1
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "interrupted" and s["steps"] == 7
    # SIGINT writes a final checkpoint (SafetyCheckpoint): nothing done is lost
    assert load_ckpt(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 7
    resumed = run_training(make_cfg("steps=10", "eval_every=5",
                                    f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
                                    run_dir=run_dir))
    assert resumed["status"] == "completed" and resumed["steps"] == 10


def test_resume_with_other_model_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    run_training(make_cfg("steps=2", "eval_every=2", "steps_per_epoch=2", run_dir=run_dir))
    last = run_dir / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointError, match="n_couplings"):
        run_training(make_cfg("steps=4", "model.block.n_couplings=3", f"ckpt_path={last}",
                              run_dir=tmp_path / "other"))


# --- NaN guard --------------------------------------------------------------------------------

class NaNFrom(pl.Callback):
    """From step ``k`` on, the target's energy returns NaN (set before each training step)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.active = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.active = trainer.global_step >= self.k


def test_nan_guard_stops_with_clear_error(tmp_path, monkeypatch):
    trigger = NaNFrom(25)
    energy = IsingTarget.energy

    def nan_energy(self, x):
        e = energy(self, x)
        return torch.full_like(e, float("nan")) if trigger.active else e

    monkeypatch.setattr(IsingTarget, "energy", nan_energy)
    run_dir = tmp_path / "run"
    cfg = make_cfg("steps=60", "eval_every=10", "steps_per_epoch=20", run_dir=run_dir)
    with pytest.raises(NonFiniteLossError, match=r"at step 25, .*E\(x\) 64/64") as info:
        run_training(cfg, callbacks=[trigger])
    assert "variational free energy" in str(info.value) and "ln q(x) 0/64" in str(info.value)
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"].startswith("stopped") and "step 25" in s["status"]
    assert "free_energy_per_site" not in s  # no evaluation of a broken state
    # the last checkpoint is the last good state: step 20, finite, loadable
    last = run_dir / "checkpoints" / "last.ckpt"
    assert load_ckpt(last)["global_step"] == 20
    trigger.active = False
    flow = neuralrg.load_flow(last)
    assert all(torch.isfinite(p).all() for p in flow.parameters())
    with torch.no_grad():
        x, log_q = flow.sample(32)
        assert torch.isfinite(log_q).all() and torch.isfinite(flow.target.log_prob(x)).all()


def test_entry_point_reports_user_errors_in_one_line(capsys):
    with pytest.raises(SystemExit) as info, exit_on_user_error():
        raise NonFiniteLossError("non-finite variational free energy (loss = nan) at step 7")
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.strip() == "error: non-finite variational free energy (loss = nan) at step 7"
    with pytest.raises(SystemExit), exit_on_user_error():
        raise RunDirectoryError("run directory x already holds a run")
    assert capsys.readouterr().err.startswith("error: run directory x")


# --- the run-directory guard ------------------------------------------------------------------

def test_second_run_into_same_dir_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    run_training(make_cfg("steps=2", "eval_every=2", "steps_per_epoch=2", run_dir=run_dir))
    before = snapshot(run_dir)
    assert "summary.json" in before and "checkpoints/last.ckpt" in before
    with pytest.raises(RunDirectoryError, match="already holds a run"):
        run_training(make_cfg("steps=3", "seed=1", run_dir=run_dir))
    assert snapshot(run_dir) == before
    # resuming that run in place is allowed
    summary = run_training(make_cfg("steps=4", "eval_every=2", "steps_per_epoch=2",
                                    f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
                                    run_dir=run_dir))
    assert summary["steps"] == 4


# --- train.py as a user runs it -----------------------------------------------------------------

def _train_py(args: list[str], tmp_path: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_train_py_guard_and_config_errors(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text("{}")
    (run_dir / "train.log").write_text("first run\n")
    before = snapshot(run_dir)
    p = _train_py([f"hydra.run.dir={run_dir}", *FAST], tmp_path)
    assert p.returncode == 1
    assert "already holds a run" in p.stderr and "Traceback" not in p.stderr
    assert snapshot(run_dir) == before  # not even hydra's .hydra/ or train.log were written
    p = _train_py([f"hydra.run.dir={tmp_path / 'new'}", "target.LL=4"], tmp_path)
    assert p.returncode == 1 and "LL" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "new").exists()


def test_train_py_reports_nan_without_traceback(tmp_path):
    """The real entry point with a NaN injected into the energy from the 16th call on."""
    run_dir = tmp_path / "run"
    code = (
        "import sys, runpy, torch; import neuralrg.physics.ising as m; f = m.IsingTarget.energy; n = [0]\n"
        "def e(self, x):\n"
        "    n[0] += 1; r = f(self, x)\n"
        "    return r * float('nan') if n[0] > 15 else r\n"
        "m.IsingTarget.energy = e\n"
        f"sys.argv = ['train.py', 'hydra.run.dir={run_dir}', 'steps=40', 'eval_every=10', "
        f"'steps_per_epoch=20', 'eval_samples=256', 'memory_limit=off', "  # no probe passes: energy calls count steps
        + ", ".join(repr(a) for a in FAST) + "]\n"
        f"runpy.run_path({str(ROOT / 'train.py')!r}, run_name='__main__')\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=240, env=dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1"))
    assert p.returncode == 1, p.stderr[-2000:]
    last_line = p.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: stopped: non-finite variational free energy")
    assert "at step 14," in last_line and "Traceback" not in p.stderr
    assert load_ckpt(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 10


@pytest.mark.parametrize("strategy", ["ddp", pytest.param("ddp_spawn", marks=pytest.mark.slow)])
def test_ddp_two_cpu_ranks_via_train_py(tmp_path, strategy):
    """trainer=ddp on 2 CPU processes (gloo): Lightning relaunches train.py through hydra
    (ddp) or spawns workers (ddp_spawn); ~10-20 s."""
    run_dir = tmp_path / "ddp"
    p = _train_py([f"hydra.run.dir={run_dir}", *FAST, "trainer=ddp", "trainer.accelerator=cpu",
                   "trainer.devices=2", f"trainer.strategy={strategy}", "steps=6", "eval_every=3",
                   "steps_per_epoch=4"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "completed" and s["world_size"] == 2 and s["steps"] == 6
    fp = s["rank_sample_fingerprints"]
    assert len(fp) == 2 and fp[0] != fp[1]  # the ranks drew different samples
    # both ranks wrote into the one run directory, nothing was created elsewhere
    assert (run_dir / "train.log").is_file()
    if strategy == "ddp":  # the relaunched rank 1 logs next to rank 0
        assert (run_dir / "train_ddp_process_1.log").is_file()
    assert sorted(q.name for q in tmp_path.iterdir()) == ["ddp"]
    assert load_ckpt(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 6


def test_warm_start_from_smaller_lattice(tmp_path):
    """init_from: an L = 4 run initialises an L = 8 MERA (translation-invariant blocks)."""
    small_dir = tmp_path / "small"
    run_training(make_cfg("steps=20", "eval_every=10", run_dir=small_dir))
    module = build_module(make_cfg("target.L=8", f"init_from={small_dir}", run_dir=tmp_path / "big"))
    small = neuralrg.load_flow(small_dir)
    s0 = [m for m in small.flows if getattr(m, "kind", "") == "decimator0"][0].block.state_dict()
    b0 = [m for m in module.flow.flows if getattr(m, "kind", "") == "decimator0"][0].block.state_dict()
    assert all(torch.equal(s0[k], b0[k].to(s0[k].dtype)) for k in s0)
    with pytest.raises(ValueError, match="init_from"):
        build_module(make_cfg("target.L=8", f"init_from={small_dir}",
                              f"ckpt_path={small_dir}/checkpoints/last.ckpt", run_dir=tmp_path / "c"))
