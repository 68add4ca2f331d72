"""Sampling you can watch, bound and share: progress displays, time budgets (sample.py
``settings.max_time``, train.py ``budget``), ``threads``, the W&B story of sample.py (offline run
grouped with the training run; nothing with WANDB_MODE=disabled) and a submitit_local sweep.
"""
from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import save_checkpoint, tiny_trained_flow
from neuralrg.pipelines import sample as pipeline
from neuralrg.pipelines.cli import default_threads, parse_duration, set_threads
from neuralrg.pipelines.progress import LineProgress, RichProgress, make_progress
from neuralrg.sampling.progress import NULL_PROGRESS, Progress

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
CONTROL = [chr(c) for c in range(32) if chr(c) not in "\n\t"] + ["\x7f"]
SMALL = dict(n_chains=8, n_warmup=5, n_leapfrog=2, max_keep=64)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A training-run-like directory: checkpoint, config.yaml (W&B project/group) and summary.json."""
    d = tmp_path_factory.mktemp("train_run")
    save_checkpoint(tiny_trained_flow(), d / "checkpoints" / "last.ckpt")
    (d / "config.yaml").write_text("task_name: watch_task\nlogger:\n  wandb:\n    project: watch_project\n"
                                   "    group: watch_task\n")
    (d / "summary.json").write_text(json.dumps({"status": "completed", "steps": 10}))
    return d


def wandb_env(tmp: Path, mode: str) -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": mode, "WANDB_DIR": str(tmp / "wb"), "WANDB_CACHE_DIR": str(tmp / "wb_cache"),
            "WANDB_DATA_DIR": str(tmp / "wb_data"), "WANDB_CONFIG_DIR": str(tmp / "wb_config"),
            "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def run_py(script: str, *args: str, cwd: Path, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def wandb_records(path: Path) -> list:
    """The protobuf records of an offline run's ``run-<id>.wandb`` (W&B's leveldb-style log:
    a 7-byte file header, 32 KiB blocks, chunks with a 7-byte header crc/length/type)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, buf, out = 7, b"", []
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and n == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7: pos + 7 + n], pos + 7 + n
        if kind == 1:
            out.append(chunk)
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            out.append(buf + chunk)
            buf = b""
    records = []
    for raw in out:
        rec = pb.Record()
        rec.ParseFromString(raw)
        records.append(rec)
    return records


# ----------------------------------------------------------------------------- small pieces
@pytest.mark.parametrize("text, seconds", [("10m", 600.0), ("90s", 90.0), ("1h", 3600.0), ("1.5h", 5400.0),
                                           (45, 45.0), ("12", 12.0), (None, None)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["10x", "", "-5s", 0, "m", True, "inf"])
def test_parse_duration_refuses(bad):
    with pytest.raises(ValueError, match="max_time"):
        parse_duration(bad)


def test_default_threads_follow_affinity_and_slurm(monkeypatch):
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert default_threads() == len(os.sched_getaffinity(0))
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert default_threads() == 3
    before = torch.get_num_threads()
    try:
        assert set_threads(None) == 3 and torch.get_num_threads() == 3
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="threads"):
        set_threads(0)


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_choice_and_plain_lines():
    assert make_progress(quiet=True) is NULL_PROGRESS
    assert isinstance(make_progress(stream=FakeTTY()), RichProgress)
    buf = io.StringIO()
    p = make_progress(stream=buf)
    assert isinstance(p, LineProgress)
    p.start("latent_hmc: sampling", 10)
    for _ in range(10):
        p.update(1, accept=0.75, step_size=0.125)
    p.finish("done")
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1  # one summary line per stage, nothing per update
    assert lines[0].startswith("latent_hmc: sampling: 10/10 in ") and lines[0].endswith("(acceptance 0.750, step size 0.125); done")
    tty = FakeTTY()
    r = RichProgress(tty)
    r.start("x", 3)
    r.update(3, accept=0.5)
    r.finish()
    assert "3/3" in tty.getvalue()


# ----------------------------------------------------------------------------- time budget
class SlowFlow(torch.nn.Module):
    """A flow whose proposals cost ``delay`` seconds each (q = p = N(0, 1) per site)."""

    def __init__(self, L: int, delay: float) -> None:
        super().__init__()
        self.L, self.delay = L, delay
        self.latent_levels = torch.zeros(L, L)
        self.target = self

    def sample_with_latent(self, b, generator=None):
        time.sleep(self.delay * b)
        z = torch.randn(b, self.L, self.L, generator=generator, dtype=torch.float64)
        return z, z, -0.5 * z.pow(2).sum((1, 2))

    def log_prob(self, x):
        return -0.5 * x.pow(2).sum((1, 2))

    def energy(self, x):
        return 0.5 * x.pow(2).sum((1, 2))

    def observables(self, x, generator=None):
        return {"m2": x.mean((1, 2)).pow(2)}


def test_flow_metropolis_budget_shrinks_its_batches():
    """A time budget bounds flow Metropolis to about one step of all chains past it, even when a
    batch of proposals takes longer than the whole budget."""
    from neuralrg.sampling.samplers.flow_metropolis import run_flow_metropolis
    flow = SlowFlow(2, 2e-4)  # a full batch of 4096 proposals takes 0.8 s
    t0 = time.perf_counter()
    run = run_flow_metropolis(flow, n_chains=8, n_warmup=2, n_samples=10**5, batch_size=4096, max_time=0.2,
                              generator=torch.Generator().manual_seed(0))
    wall = time.perf_counter() - t0
    assert run.partial and wall < 0.2 + 0.8 + 0.3  # warm-up batch + budget + one short batch, not 4096 more
    T = run.observables["m2"].shape[1]
    assert 2 <= T < 10**5
class StageClock(Progress):
    """Records how long each stage took and the updates it got."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}
        self.updates: dict[str, int] = {}

    def start(self, stage: str, total: int) -> None:
        self.stage, self.t0 = stage, time.perf_counter()
        self.updates[stage] = 0

    def update(self, n: int = 1, **info: float) -> None:
        self.updates[self.stage] += n

    def finish(self, summary: str = "") -> None:
        self.stages[self.stage] = time.perf_counter() - self.t0


def test_max_time_stops_cleanly_with_honest_partial_results(run_dir, tmp_path):
    budget = 4.0
    clock = StageClock()
    out = tmp_path / "out"
    samplers = ["physical_hmc", "flow_metropolis", "wolff"]
    t0 = time.perf_counter()
    summary = pipeline.run_sampling(run=str(run_dir), samplers=samplers, out_dir=str(out), L=4, seed=1,
                                    device="cpu", importance_samples=0, figures=False,
                                    settings={**SMALL, "n_samples": 10**6, "max_time": "4s"}, progress=clock)
    wall = time.perf_counter() - t0
    sampling = sum(v for k, v in clock.stages.items() if k.endswith(": sampling"))
    warmup = sum(v for k, v in clock.stages.items() if k.endswith(": warm-up"))
    # within 10 % of the budget (each sampler's share is measured by its seconds per trajectory,
    # which for flow Metropolis includes its post-processing, so the total may fall a bit short)
    assert 0.7 * budget <= sampling <= 1.1 * budget, clock.stages
    assert wall <= 1.1 * budget + warmup + 5.0  # + loading the flow, summaries, writing
    assert set(clock.stages) == {f"{s}: {st}" for s in samplers for st in ("warm-up", "sampling")}

    js = json.loads((out / "summary.json").read_text())
    assert js["partial"] is True and js["max_time_s"] == budget and js["settings"]["max_time"] == "4s"
    data = np.load(out / "samples.npz")
    for s in samplers:
        r = js["samplers"][s]
        T = r["trajectories_kept"]
        assert r["partial"] is True and r["trajectories_requested"] == 10**6 and 2 <= T < 10**6
        assert clock.updates[f"{s}: sampling"] == T
        m2 = data[f"{s}__m2"].astype(np.float64)
        assert m2.shape == (8, T)
        # the error bar is that of the kept samples: mean, and err = max(σ/√(C·T) · √(2 τ_int), the
        # between-chain error std(chain means)/√C) with C = 8 chains
        obs = r["observables"]["m2"]
        assert obs["mean"] == pytest.approx(m2.mean(), rel=1e-9)
        naive = m2.std() / np.sqrt(m2.size)
        between = m2.mean(axis=1).std(ddof=1) / np.sqrt(m2.shape[0])
        assert obs["err"] == pytest.approx(max(naive * np.sqrt(2 * max(obs["tau_int"], 0.0)), between), rel=0.05)
    table = pipeline.format_table(summary)
    assert table.count("[partial]") == 2 * len(samplers)


def test_without_max_time_nothing_is_partial(run_dir, tmp_path):
    summary = pipeline.run_sampling(run=str(run_dir), samplers=["physical_hmc"], out_dir=str(tmp_path / "o"),
                                    device="cpu", importance_samples=0, figures=False,
                                    settings={**SMALL, "n_samples": 20})
    r = summary["samplers"]["physical_hmc"]
    assert "partial" not in summary and r["partial"] is False and r["trajectories_kept"] == 20
    assert "[partial]" not in pipeline.format_table(summary)


# ----------------------------------------------------------------------------- sample.py: W&B, threads, logs
SAMPLE_ARGS = ("mode=compare", "device=cpu", "importance_samples=256", "settings.n_chains=8", "settings.n_warmup=3",
               "settings.n_samples=12", "settings.n_leapfrog=2", "compare=[physical_hmc,flow_metropolis]")


def test_sample_py_offline_wandb_grouped_with_training_run(run_dir, tmp_path):
    out = tmp_path / "out"
    res = run_py("sample.py", f"run={run_dir}", f"out_dir={out}", "threads=1", *SAMPLE_ARGS, cwd=tmp_path,
                 env=wandb_env(tmp_path, "offline"))
    assert res.returncode == 0, res.stderr
    # not a terminal: plain lines, one per stage, no control characters (no bar redraws, no colour)
    assert not [c for c in CONTROL if c in res.stdout], repr(res.stdout[:300])
    for stage in ("physical_hmc: warm-up: 3/3", "physical_hmc: sampling: 12/12", "flow_metropolis: sampling: 12/12",
                  "importance sampling: 256/256"):
        assert sum(line.startswith(stage) for line in res.stdout.splitlines()) == 1, (stage, res.stdout)
    js = json.loads((out / "summary.json").read_text())
    assert js["threads"] == 1 and js["wandb_logged"] is True

    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    files = runs[0] / "files"
    tables = list(files.glob("media/table/sampler_comparison_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"][0] == "sampler" and [row[0] for row in table["data"]] == ["physical_hmc", "flow_metropolis"]
    images = list(files.glob("media/images/**/*.png"))
    assert any("trace_physical_hmc" in p.name for p in images) and any("samples" in p.name for p in images)
    records = wandb_records(next(runs[0].glob("run-*.wandb")))
    run_rec = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (run_rec.run_group, run_rec.job_type, run_rec.project) == ("watch_task", "sample", "watch_project")
    summary_keys = {"/".join(i.nested_key) or i.key for r in records if r.WhichOneof("record_type") == "summary"
                    for i in r.summary.update}
    assert any(k.startswith("samplers") and "ess_per_second" in k or k == "samplers" for k in summary_keys), summary_keys

    # the training run's summary.json gained the final sampling numbers
    train = json.loads((run_dir / "summary.json").read_text())
    assert train["status"] == "completed" and js["training_run_updated"] == "summary.json"
    rec = train["sampling"]
    assert rec["out_dir"] == str(out) and set(rec["samplers"]) == {"physical_hmc", "flow_metropolis"}
    assert rec["samplers"]["flow_metropolis"]["ess_per_second"] == pytest.approx(
        js["samplers"]["flow_metropolis"]["ess_per_second"])
    assert "is_log_z_per_site" in rec["importance_sampling"]


def test_sample_py_disabled_wandb_writes_nothing_and_default_threads(run_dir, tmp_path):
    before = (run_dir / "summary.json").read_text()
    out = tmp_path / "out"
    env = wandb_env(tmp_path, "disabled")
    env.pop("SLURM_CPUS_PER_TASK", None)
    res = run_py("sample.py", f"run={run_dir}", f"out_dir={out}", "quiet=true", *SAMPLE_ARGS, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    assert not any(line.startswith("physical_hmc: ") for line in res.stdout.splitlines())  # quiet
    assert res.stdout.splitlines()[0].startswith("sampler")
    js = json.loads((out / "summary.json").read_text())
    assert js["threads"] == len(os.sched_getaffinity(0))
    assert "wandb_logged" not in js
    assert not (out / "wandb").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("wb")]  # no W&B dirs at all
    assert (run_dir / "summary.json").read_text() == before


# ----------------------------------------------------------------------------- train.py
TINY_TRAIN = ("target.L=4", "trainer=cpu", "callbacks=minimal", "logger=none", "batch_size=32", "eval_every=0",
              "eval_samples=64", "final_eval_samples=256", "steps_per_epoch=50")


def test_train_budget_picks_steps_and_finishes_near_it(tmp_path):
    budget = 15.0
    run = tmp_path / "run"
    res = run_py("train.py", *TINY_TRAIN, "budget=15s", "threads=1", f"hydra.run.dir={run}", cwd=tmp_path,
                 env=wandb_env(tmp_path, "disabled"))
    assert res.returncode == 0, res.stderr[-3000:]
    s = json.loads((run / "summary.json").read_text())
    plan = s["budget"]
    assert plan["budget_s"] == budget and plan["device"] == "cpu" and plan["step_time_s"] > 0
    assert plan["steps"] >= 10 and plan["max_time_s"] <= budget
    # the planned steps, or fewer if trainer.max_time (the safety net) stopped a slowed-down run
    assert s["steps"] == plan["steps"] or (plan["stopped_by_max_time"] and 0 < s["steps"] < plan["steps"])
    assert s["threads"] == 1
    used = s["wall_time_s"] + plan["probe_s"]  # fit (with final evaluation) + the probe
    assert 0.6 * budget <= used <= 1.15 * budget, (used, plan)
    saved = (run / "config.yaml").read_text()
    assert f"steps: {plan['steps']}\n" in saved and "budget: null" in saved and "max_time: 00:00:00:" in saved


def test_train_sweep_through_submitit_local(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    res = run_py("train.py", "-m", "hydra/launcher=submitit_local", "target.K=0.3,0.4", *TINY_TRAIN, "steps=4",
                 "threads=1", f"hydra.sweep.dir={sweep}", "hydra.launcher.timeout_min=5", cwd=tmp_path,
                 env=wandb_env(tmp_path, "disabled"), timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    summaries = sorted(sweep.glob("*/summary.json"))
    assert [p.parent.name for p in summaries] == ["0", "1"]
    Ks = []
    for p in summaries:
        s = json.loads(p.read_text())
        assert s["status"] == "completed" and s["steps"] == 4 and s["target"]["L"] == 4
        Ks.append(s["target"]["K"])
    assert Ks == [0.3, 0.4]
    assert list(sweep.glob(".submitit/*/*_log.out"))  # really ran through submitit


UPDATE_OFFLINE = """
import json, sys, time
from pathlib import Path
import wandb
from neuralrg.pipelines.tracking import training_run_info, update_training_run
d = Path(sys.argv[1])
(d / "config.yaml").write_text("task_name: upd_task\\nlogger:\\n  wandb:\\n    project: upd_project\\n")
(d / "summary.json").write_text(json.dumps({"status": "completed"}))
run = wandb.init(project="upd_project", group="upd_task", job_type="train", mode="offline", dir=str(d))
run.summary["final/gap"] = 0.01
run.finish()
time.sleep(1.1)  # run directories are named to the second; a real sampling run comes minutes later
info = training_run_info(d)
assert info["wandb_id"] == run.id, (info, run.id)
print(update_training_run(info, "sampling", {"samplers": {"latent_hmc": {"ess_per_second": 3.5}}, "note": "x"},
                          mode="offline"))
print(run.id)
"""


def test_offline_training_run_gains_sampling_summary_as_resumed_offline_run(tmp_path):
    """Offline: the training run's W&B summary update is a second offline directory with the same id
    (synced after the first by ``wandb sync``), holding ``sampling/...`` numbers and the run's group."""
    d = tmp_path / "train_run"
    d.mkdir()
    res = subprocess.run([sys.executable, "-c", UPDATE_OFFLINE, str(d)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, env=wandb_env(tmp_path, "offline"))
    assert res.returncode == 0, res.stderr
    where, run_id = res.stdout.split()[-2:]
    assert where == "summary.json+wandb"
    assert json.loads((d / "summary.json").read_text())["sampling"]["samplers"]["latent_hmc"]["ess_per_second"] == 3.5
    dirs = sorted((d / "wandb").glob("offline-run-*"))
    assert len(dirs) == 2 and all(p.name.endswith("-" + run_id) for p in dirs)
    records = wandb_records(next(dirs[1].glob("run-*.wandb")))
    run_rec = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (run_rec.run_id, run_rec.run_group, run_rec.job_type, run_rec.project) == (
        run_id, "upd_task", "train", "upd_project")
    updates = {"/".join(i.nested_key) or i.key: i.value_json for r in records
               if r.WhichOneof("record_type") == "summary" for i in r.summary.update}
    assert json.loads(updates["sampling/samplers/latent_hmc/ess_per_second"]) == 3.5
    assert "sampling/note" not in updates  # only finite numbers go to W&B


def test_plain_lines_report_a_long_stage_while_it_runs():
    """A stage that runs past ``every_s`` gets interim lines (never one that looks like the final line)."""
    buf = io.StringIO()
    p = LineProgress(buf, every_s=0.0)
    p.start("latent_hmc: warm-up", 3)
    for _ in range(3):
        p.update(1, accept=0.5)
    p.finish()
    lines = buf.getvalue().splitlines()
    assert [ln.split(" so far")[0] for ln in lines[:-1]] == ["latent_hmc: warm-up: 1/3", "latent_hmc: warm-up: 2/3"]
    assert lines[-1].startswith("latent_hmc: warm-up: 3/3 in ")
    quiet = io.StringIO()
    p = LineProgress(quiet, every_s=None)
    p.start("x", 2)
    p.update(1)
    p.update(1)
    p.finish()
    assert len(quiet.getvalue().splitlines()) == 1
