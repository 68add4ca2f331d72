"""Runs that resume as they were: resume by run directory after a SIGKILL, refused overrides,
safety checkpoints, and config errors refused before any work (no directory left behind)."""
from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FAST = ["target.L=4", "model.block.n_couplings=2", "model.block.hidden=[8,8]", "logger=none", "callbacks=minimal",
        "trainer.enable_progress_bar=false", "trainer.accelerator=cpu", "batch_size=64", "eval_samples=256",
        "final_eval_samples=512"]


def _env() -> dict:
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def _train(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _step(ckpt: Path) -> int:
    return int(torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"])


def test_sigkill_then_resume_by_run_directory(tmp_path):
    run_dir = tmp_path / "run"
    args = [f"hydra.run.dir={run_dir}", *FAST, "steps=400", "eval_every=25", "steps_per_epoch=50", "seed=5"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = run_dir / "checkpoints" / "last.ckpt"
    t0 = time.monotonic()
    while not last.exists() and proc.poll() is None and time.monotonic() - t0 < 120:
        time.sleep(0.2)
    assert last.exists(), "no start-up checkpoint"  # written right after start-up (step 0)
    time.sleep(random.Random(0).uniform(0.5, 3.0))  # a random moment after start-up
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (run_dir / "summary.json").exists()
    killed_at = _step(last)
    assert 0 <= killed_at < 400

    res = _train([f"resume={run_dir}", "eval_samples=128"], tmp_path)  # an allowed override
    assert res.returncode == 0, res.stderr[-3000:]
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "completed" and s["steps"] == 400 == _step(last)  # as an uninterrupted run
    assert s["resumed_with"] == ["eval_samples=128"]
    resumed_cfgs = list(run_dir.glob("config.resume-*.yaml"))
    assert len(resumed_cfgs) == 1 and "eval_every: 25" in resumed_cfgs[0].read_text()  # its saved config
    assert not (tmp_path / "runs").exists() and not (tmp_path / "outputs").exists()  # no new run directory

    # more steps later: allowed and recorded; the step counter continues
    res = _train([f"resume={run_dir}", "steps=450"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 450 == _step(last)


def test_resume_refuses_changes_to_what_was_trained(tmp_path):
    run_dir = tmp_path / "run"
    assert _train([f"hydra.run.dir={run_dir}", *FAST, "steps=4", "eval_every=2"], tmp_path).returncode == 0
    before = sorted(p.name for p in run_dir.rglob("*"))
    res = _train([f"resume={run_dir}", "model.block.n_couplings=3", "batch_size=32", "steps=8"], tmp_path)
    assert res.returncode == 1
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "model.block.n_couplings: 2 -> 3" in err[0] and "batch_size: 64 -> 32" in err[0]
    assert "steps" not in err[0].split("(")[1].split(")")[0]  # steps is allowed, not listed as a difference
    assert sorted(p.name for p in run_dir.rglob("*")) == before
    res = _train([f"resume={tmp_path / 'nowhere'}"], tmp_path)
    assert res.returncode == 1 and "no such run directory" in res.stderr


@pytest.mark.parametrize("override,words", [("target.K=nan", "K must be"), ("model.depth=9", "depth must be"),
                                            ("dtype=float16", "dtype must be"), ("batch_size=1", "batch_size")])
def test_invalid_config_is_refused_before_any_work(tmp_path, override, words):
    run_dir = tmp_path / "run"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    res = _train([f"hydra.run.dir={run_dir}", override], tmp_path)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert res.returncode == 1 and res.stderr.strip().startswith("error: ") and words in res.stderr
    assert "Traceback" not in res.stderr
    assert not run_dir.exists() and not list(tmp_path.iterdir())  # nothing left behind
    # no Lightning import: < 5 s of CPU (wall time depends on how busy the machine is)
    assert cpu < 5.0, (cpu, wall)
