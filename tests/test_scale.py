"""Train small, sample large: level-shared flows at other sizes, warm starts, the ladder, memory.

References are independent of the code under test where it matters: parameters are compared
tensor by tensor against the source flow's own modules, the log-det against the autograd
Jacobian, and the memory bound against N² = (L²)² counted by a dispatch mode on every op.
"""
from __future__ import annotations

import json
import math
import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from helpers import compose_train, load_benchmark, save_checkpoint
from neuralrg.checkpoint import CheckpointError, load_flow_at
from neuralrg.flows import build_flat, build_mera, canonical_parameters, transfer_flow
from neuralrg.physics.ising import IsingTarget

torch.set_num_threads(1)
os.environ["WANDB_MODE"] = "disabled"

KC = 0.44068679350977147
F64 = torch.float64
SMALL = dict(n_couplings=2, hidden=8, activation="silu", skeleton="haar", precondition="auto")
# tiny and quiet Lightning runs (as in test_training.py)
QUIET = ["logger=none", "callbacks=minimal", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu",
         "model.block.n_couplings=2", "model.block.hidden=[8,8]"]


def randomised(flow, scale: float = 0.2, seed: int = 0):
    """Move every parameter away from the identity start (values stay O(1))."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return flow


def shared_flow(L: int = 8, **kw):
    return randomised(build_mera(IsingTarget(L, KC), share_levels=True, **{**SMALL, **kw}).to(F64))


def layer_blocks(flow) -> dict[str, torch.nn.Module]:
    """{layer kind: its block module} (the flow's own modules, not canonical names)."""
    return {layer.kind: layer.block for layer in flow.flows if hasattr(layer, "kind")}


# ----------------------------------------------------------------------------- transfer
def test_shared_flow_runs_at_larger_sizes_with_the_same_parameters(tmp_path):
    src = shared_flow(8)
    src_blocks = layer_blocks(src)
    for L in (16, 32):
        big = transfer_flow(src, L)
        assert big.L == L and big.config["depth"] == int(math.log2(L)) and big.dtype == F64
        assert big.num_parameters() == src.num_parameters()  # the extra levels add nothing
        assert set(canonical_parameters(big)) == set(canonical_parameters(src))
        for kind, blk in layer_blocks(big).items():  # every level, the new ones included
            role = "decimator0" if kind.startswith("decimator") else "disentangler0.0"
            ref = src_blocks[role].state_dict()
            got = blk.state_dict()
            assert set(got) == set(ref)
            assert all(torch.equal(got[k], ref[k]) for k in ref), kind
        # size-dependent parts belong to the new target
        pre = big.flows[-1]
        assert pre.L == L and pre.half_logdet == pytest.approx(0.5 * big.target.logdet_A)
        assert big.latent_levels.shape == (L, L) and int(big.latent_levels.max()) == int(math.log2(L))
        x, log_q = big.sample(4)
        assert x.shape == (4, L, L) and torch.isfinite(log_q).all()
        assert torch.allclose(log_q, big.log_prob(x), atol=1e-8)
    # the same through a checkpoint
    save_checkpoint(src, tmp_path / "run" / "checkpoints" / "last.ckpt")
    loaded = load_flow_at(tmp_path / "run", 16)
    ref = transfer_flow(src, 16).state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in loaded.state_dict().items())
    assert not loaded.training


def test_transfer_refuses_what_it_cannot_map(tmp_path):
    per_level = randomised(build_mera(IsingTarget(8, KC), **SMALL).to(F64))
    with pytest.raises(ValueError, match="share_levels=false"):
        transfer_flow(per_level, 16)
    kept = transfer_flow(per_level, 16, depth=3)  # same depth: every level has its blocks
    assert kept.config["depth"] == 3 and kept.num_parameters() == per_level.num_parameters()
    with pytest.raises(ValueError, match=r"differs in \['K'\]"):
        transfer_flow(shared_flow(8), IsingTarget(16, 0.3))
    save_checkpoint(per_level, tmp_path / "c.ckpt")
    with pytest.raises(CheckpointError, match="cannot run at L = 16.*share_levels"):
        load_flow_at(tmp_path / "c.ckpt", 16)
    flat = randomised(build_flat(IsingTarget(8, KC), n_couplings=2, hidden=4).to(F64))
    assert torch.equal(transfer_flow(flat, 16).flows[0].net[0].weight, flat.flows[0].net[0].weight)


def test_transferred_flow_is_an_exact_bijection_at_L16():
    big = transfer_flow(shared_flow(8, hidden=6), 16)
    z = torch.randn(3, 16, 16, dtype=F64)
    x, ld = big.forward_and_log_det(z)
    assert not torch.allclose(x, z, atol=1e-2)
    z_back, ld_inv = big.inverse_and_log_det(x)
    assert (z_back - z).abs().max() <= 1e-10 and (ld + ld_inv).abs().max() <= 1e-10
    with torch.no_grad():
        J = torch.autograd.functional.jacobian(lambda v: big.forward(v.reshape(1, 16, 16)).reshape(-1),
                                               z[0].reshape(-1), vectorize=True)
    assert ld[0].item() == pytest.approx(torch.linalg.slogdet(J)[1].item(), abs=1e-8)


# ----------------------------------------------------------------------------- warm start
def _source_run(tmp_path, L: int, **model):
    """A run directory holding a randomised flow of the QUIET model (float32 like training)."""
    flow = randomised(build_mera(IsingTarget(L, KC), **{**dict(n_couplings=2, hidden=[8, 8], share_levels=True,
                                                             skeleton="haar", precondition=True,
                                                             activation="silu"), **model}))
    d = tmp_path / f"src_L{L}"
    save_checkpoint(flow, d / "checkpoints" / "last.ckpt")
    return flow, d


def test_warm_start_copies_every_matching_tensor(tmp_path):
    from neuralrg.pipelines.train import build_module

    src, d = _source_run(tmp_path, 8)
    module = build_module(compose_train(*QUIET, "model.share_levels=true", "target.L=16", f"init_from={d}",
                                        f"paths.run_dir={tmp_path / 'x'}"))
    dst = module.flow
    assert dst.L == 16
    sp, dp = canonical_parameters(src), canonical_parameters(dst)
    assert set(sp) == set(dp)
    for name, t in dp.items():  # per parameter: the source's exact values
        assert torch.equal(t, sp[name]), name
    info = module.warm_start_info
    assert info["copied"] == len(dp) and info["new"] == [] and info["unused"] == [] and info["source_L"] == 8

    # a per-level MERA: fine levels one to one, top to top, the extra middle level from the last non-top one
    src2, d2 = _source_run(tmp_path, 4, share_levels=False)
    module = build_module(compose_train(*QUIET, "model.share_levels=false", "target.L=16", f"init_from={d2}",
                                        f"paths.run_dir={tmp_path / 'y'}"))
    blocks, ref = layer_blocks(module.flow), layer_blocks(src2)
    for dst_kind, src_kind in (("decimator0", "decimator0"), ("decimator1", "decimator0"),
                               ("decimator2", "decimator0"), ("decimator3", "decimator1"),
                               ("disentangler3.0", "disentangler1.0")):
        a, b = blocks[dst_kind].state_dict(), ref[src_kind].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in b), dst_kind
    assert module.warm_start_info["remapped"] == {
        "decimator1": "decimator0", "decimator2": "decimator0", "decimator3": "decimator1",
        "disentangler1.0": "disentangler0.0", "disentangler2.0": "disentangler0.0", "disentangler3.0": "disentangler1.0"}


@pytest.mark.parametrize("override,match", [
    ("model.block.hidden=[8,4]", r"shapes differ: decimator\.block\.couplings\.0\.hidden\.0\.weight \(8, 8\) there, \(4, 8\) here"),
    ("model.block.hidden=[8,8,8]", r"another layout \(hidden \[8, 8\] there, \[8, 8, 8\] here\).*hidden\.1\.weight"),
    ("model.block._target_=neuralrg.flows.odd.OddPlaquetteBijector", "block class"),
    ("model.skeleton=none", "skeleton"),
    ("model.share_levels=false", "share_levels"),
])
def test_warm_start_refuses_mismatched_models(tmp_path, override, match):
    from neuralrg.pipelines.train import build_module

    _, d = _source_run(tmp_path, 8)
    shared = [] if override.startswith("model.share_levels") else ["model.share_levels=true"]
    cfg = compose_train(*QUIET, *shared, "target.L=16", f"init_from={d}", override, f"paths.run_dir={tmp_path / 'x'}")
    with pytest.raises(ValueError, match=f"cannot warm-start from init_from={d} \\(L = 8\\): .*{match}"):
        build_module(cfg)


# ----------------------------------------------------------------------------- the ladder
def _ladder_cfg(tmp_path, *overrides):
    return compose_train(*QUIET, "model.share_levels=true", "batch_size=16", "eval_samples=64", "final_eval_samples=128", "eval_every=0",
                         f"paths.run_dir={tmp_path / 'ladder'}", *overrides)


@pytest.mark.parametrize("rungs,match", [
    ("[8,12,16]", "powers of two >= 4, got 12"),
    ("[16,8]", "strictly increasing, got 16 then 8"),
    ("[8,8]", "strictly increasing"),
    ("[2,4]", "powers of two >= 4, got 2"),
    ("[]", "non-empty list"),
])
def test_ladder_refuses_bad_rungs(tmp_path, rungs, match):
    from neuralrg.pipelines.validate import check_training_config

    with pytest.raises(ValueError, match=f"ladder.rungs must be .*{match}"):
        check_training_config(_ladder_cfg(tmp_path, f"ladder.rungs={rungs}"))


def test_ladder_config_checks_and_rungs(tmp_path):
    from neuralrg.pipelines.ladder import rung_configs
    from neuralrg.pipelines.validate import check_training_config

    with pytest.raises(ValueError, match=r"ladder.steps must give one value per rung \(3\)"):
        check_training_config(_ladder_cfg(tmp_path, "ladder.rungs=[4,8,16]", "ladder.steps=[5,6]"))
    with pytest.raises(ValueError, match="ladder.steps or ladder.budget, not both"):
        check_training_config(_ladder_cfg(tmp_path, "ladder.rungs=[4,8]", "ladder.steps=5", "ladder.budget=1m"))
    with pytest.raises(ValueError, match="ladder.per_rung may not set"):
        check_training_config(_ladder_cfg(tmp_path, "ladder.rungs=[4,8]", "+ladder.per_rung.target={L: 4}"))
    # init_from: another K is refused, the same target at any L is fine
    _, other_k = _source_run(tmp_path, 4)
    other = IsingTarget(4, 0.3)
    flow = randomised(build_mera(other, n_couplings=2, hidden=[8, 8], share_levels=True, skeleton="haar",
                                 precondition=True, activation="silu"))
    save_checkpoint(flow, tmp_path / "k03" / "checkpoints" / "last.ckpt")
    with pytest.raises(ValueError, match=r"init_from=.*k03 was trained for another target \(K = 0.3 there, "
                                         r"0.4406867935\d* here\)"):
        check_training_config(_ladder_cfg(tmp_path, "ladder.rungs=[8,16]", f"init_from={tmp_path / 'k03'}"))
    cfg = _ladder_cfg(tmp_path, "ladder.rungs=[8,16,32]", "ladder.steps=[5,6,7]", f"init_from={other_k}",
                      "+ladder.per_rung.batch_size=[32,16,8]")
    check_training_config(cfg)
    rungs = rung_configs(cfg, tmp_path / "lad")
    assert [c.target.L for c in rungs] == [8, 16, 32] and [c.steps for c in rungs] == [5, 6, 7]
    assert [c.batch_size for c in rungs] == [32, 16, 8]
    assert [c.init_from for c in rungs] == [str(other_k), str(tmp_path / "lad" / "L8"), str(tmp_path / "lad" / "L16")]
    assert [c.paths.run_dir for c in rungs] == [str(tmp_path / "lad" / f"L{L}") for L in (8, 16, 32)]
    assert all(c.ladder is None for c in rungs)
    # a model that the next rung cannot warm-start from is refused before any work
    with pytest.raises(ValueError, match=r"rung L = 8 cannot warm-start from rung L = 4: .*hidden"):
        check_training_config(_ladder_cfg(tmp_path, "ladder.rungs=[4,8]", "+ladder.per_rung.model.block.hidden=[[8,8],[8,4]]"))


def test_ladder_runs_and_writes_its_table(tmp_path):
    from neuralrg.pipelines.ladder import format_ladder, run_ladder

    result = run_ladder(_ladder_cfg(tmp_path, "ladder.rungs=[4,8]", "ladder.steps=[4,3]"))
    d = tmp_path / "ladder"
    saved = json.loads((d / "ladder.json").read_text())
    assert saved["status"] == result["status"] == "completed"
    rows = saved["rows"]
    assert [r["L"] for r in rows] == [4, 8] and [r["steps"] for r in rows] == [4, 3]
    for r, L in zip(rows, (4, 8)):
        exact = IsingTarget(L, KC).log_z / L**2
        assert r["exact_log_z_per_site"] == pytest.approx(exact, rel=1e-12)
        assert math.isfinite(r["gap_per_site"]) and math.isfinite(r["z2_gap_per_site"]) and 0 < r["ess_fraction"] <= 1
        assert 0 <= r["r2_m_top1"] <= 1 and r["radius_growth"] > 1  # the RG figures beside the gap
    s8 = saved["summaries"][1]
    assert s8["warm_start"]["from"] == str(d / "L4") and s8["warm_start"]["new"] == []
    assert (d / "L4" / "checkpoints" / "last.ckpt").is_file() and (d / "L8" / "summary.json").is_file()
    table = format_ladder(result)
    assert "Z2 gap/N" in table and "ln Z/N exact" in table and "R²(m|top)" in table and len(table.splitlines()) >= 4
    # ESS/M and IS ln Z/N are the Z2-symmetrised q's (the plain q may cover one sign of m only)
    assert all(r["z2_ess_fraction"] is not None for r in rows) and "the Z2-symmetrised q's" in table
    assert f"{rows[1]['z2_ess_fraction']:.4f}" in table and f"{rows[1]['z2_is_log_z_per_site']:.6f}" in table


# ----------------------------------------------------------------------------- memory
class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any dispatched op returns (forward, backward, optimizer)."""

    def __init__(self) -> None:
        super().__init__()
        self.numel, self.op = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.numel() > self.numel:
                self.numel, self.op = t.numel(), str(func)
        return out


@pytest.mark.parametrize("share_levels", [True, False])
def test_one_training_step_at_L64_has_no_dense_N_by_N_tensor(share_levels):
    """The default model (Haar skeleton, preconditioner, silu) at L = 64: building the target and
    flow, one reverse-KL step (sample, log q, E(x), backward, Adam) and the exact ln Z the
    training step logs allocate nothing of N² = 4096² elements (the largest is O(batch·N·width))."""
    L, batch = 64, 2
    N = L * L
    with LargestTensor() as mode:
        target = IsingTarget(L, KC)
        flow = build_mera(target, share_levels=share_levels, skeleton="haar", precondition="auto", activation="silu")
        opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
        loss = flow.reverse_kld(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert math.isfinite(target.log_z)
    assert torch.isfinite(loss)
    assert 0 < mode.numel < N * N, f"{mode.op} returned {mode.numel} elements"
    assert mode.numel <= 64 * batch * N, f"{mode.op} returned {mode.numel} elements"


def test_resuming_a_warm_started_rung_does_not_warm_start_again(tmp_path):
    """A rung's config.yaml holds init_from; resume continues from its own checkpoint instead."""
    from omegaconf import OmegaConf

    from neuralrg.pipelines.resume import resume_config

    run = tmp_path / "L16"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    saved = compose_train(*QUIET, "target.L=16", f"init_from={tmp_path / 'L8'}", f"paths.run_dir={run}")
    (run / "config.yaml").write_text(OmegaConf.to_yaml(saved, resolve=True))
    cfg, applied = resume_config(compose_train(f"resume={run}", "steps=50"), [f"resume={run}", "steps=50"])
    assert cfg.init_from is None and cfg.ckpt_path == str(run / "checkpoints" / "last.ckpt")
    assert cfg.steps == 50 and applied == ["steps=50"]


def test_sample_and_analyze_pipelines_run_a_flow_at_another_size(tmp_path):
    """``sample.py at_L=…`` / ``analyze.py at_L=…``: the L = 4 level-shared flow sampled at L = 8,
    compared with the exact L = 8 values; a bad at_L and a per-level flow are refused clearly."""
    from neuralrg.pipelines.analyze import run_analysis
    from neuralrg.pipelines.sample import run_sampling

    src = shared_flow(4)
    save_checkpoint(src, tmp_path / "run" / "checkpoints" / "last.ckpt")
    summary = run_sampling(run=str(tmp_path / "run"), samplers=["latent_hmc"], at_L=8, L=4, out_dir=str(tmp_path / "s"),
                           settings=dict(n_chains=4, n_warmup=3, n_samples=10, n_leapfrog=2), importance_samples=64,
                           figures=False)
    assert summary["target"]["L"] == 8
    r = summary["samplers"]["latent_hmc"]
    assert r["exact"]["energy_per_site"] == pytest.approx(IsingTarget(8, KC).exact()["energy_per_site"])
    with pytest.raises(ValueError, match="L must be a lattice size"):
        run_sampling(run=str(tmp_path / "run"), samplers=["latent_hmc"], at_L=0, out_dir=str(tmp_path / "s2"),
                     settings={})
    with pytest.raises(CheckpointError, match="trained for L = 4, not L = 8"):  # L checks the checkpoint
        run_sampling(run=str(tmp_path / "run"), samplers=["latent_hmc"], at_L=8, L=8, out_dir=str(tmp_path / "s3"),
                     settings={})
    result = run_analysis(run=str(tmp_path / "run"), at_L=8, out_dir=tmp_path / "a", figures=False, device="cpu",
                          settings=dict(n_chains=8, n_warmup=3, n_samples=20, n_leapfrog=2), mi={"max_samples": 100},
                          response={"n_latents": 1, "n_configs": 1})
    assert result["latent_levels"]["n_levels"] == 4  # the L = 8 hierarchy: levels 0..3
    assert len(result["level_stats"]) == 4


def test_step_memory_is_linear_in_batch_and_measured():
    """The probe's per-sample bytes predict what autograd saves at another batch size (exactly:
    the saved tensors are linear in the batch), and grow ~4× from L = 16 to 32 (linear in N)."""
    from neuralrg.training.memory import _saved_bytes, step_memory

    torch.manual_seed(0)
    flow = build_mera(IsingTarget(16, KC), **SMALL).to(F64)
    mem = step_memory(flow)
    assert mem.saved_per_sample > 0 and mem.parameter_bytes == 4 * 8 * sum(p.numel() for p in flow.parameters())
    assert _saved_bytes(flow, 7) == mem.saved_fixed + 7 * mem.saved_per_sample
    big = step_memory(build_mera(IsingTarget(32, KC), **SMALL).to(F64))
    assert 3.5 < big.saved_per_sample / mem.saved_per_sample < 4.5
    # float32 halves the saved bytes
    assert step_memory(flow.to(torch.float32)).saved_per_sample * 2 == mem.saved_per_sample


@pytest.mark.parametrize("value,bytes_", [("4GB", 4e9), ("512MiB", 512 * 2**20), ("1.5gib", 1.5 * 2**30),
                                          (1000000, 1e6), ("2e9", 2e9), (None, None), ("off", math.inf)])
def test_parse_memory(value, bytes_):
    from neuralrg.training.memory import parse_memory

    assert parse_memory(value) == bytes_


@pytest.mark.parametrize("bad", ["4 parsecs", "-1GB", 0, "lots", True])
def test_parse_memory_refuses_nonsense(bad):
    from neuralrg.training.memory import parse_memory

    with pytest.raises(ValueError, match="memory_limit must be a size like 4GB"):
        parse_memory(bad)


def test_a_batch_that_does_not_fit_is_refused_before_any_work(tmp_path):
    """train.py's config check refuses a batch over memory_limit, naming the largest that fits, before
    the run directory exists; that batch passes; memory_limit=off skips the check; a ladder is
    checked at every rung before the first trains."""
    from neuralrg.pipelines.validate import check_training_config
    from neuralrg.training.memory import MARGIN, step_memory

    run = tmp_path / "run"
    cfg = compose_train(*QUIET, "target.L=32", "batch_size=4096", "memory_limit=64MiB", f"paths.run_dir={run}")
    with pytest.raises(ValueError, match=r"batch_size=4096 at L = 32 needs about .* more than the 64 MiB of "
                                         r"memory_limit: lower batch_size to (\d+) or less") as exc:
        check_training_config(cfg)
    assert not run.exists()
    fits = int(str(exc.value).split("lower batch_size to ")[1].split()[0])
    mem = step_memory(check_training_config(compose_train(*QUIET, "target.L=32", "memory_limit=off")))
    assert mem.total(fits) * MARGIN <= 64 * 2**20 < mem.total(fits + 1) * MARGIN
    check_training_config(compose_train(*QUIET, "target.L=32", f"batch_size={fits}", "memory_limit=64MiB"))
    check_training_config(compose_train(*QUIET, "target.L=32", "batch_size=4096", "memory_limit=off"))
    with pytest.raises(ValueError, match="memory_limit must be a size"):
        check_training_config(compose_train(*QUIET, "memory_limit=plenty"))
    with pytest.raises(ValueError, match=r"ladder rung L = 32: batch_size=2048 at L = 32 needs about"):
        check_training_config(_ladder_cfg(tmp_path, "ladder.rungs=[8,16,32]", "ladder.steps=2",
                                          "memory_limit=64MiB", "+ladder.per_rung.batch_size=[16,16,2048]"))


def test_latent_hmc_chains_that_do_not_fit_are_refused_before_sampling(tmp_path):
    from neuralrg.pipelines.sample import run_sampling

    torch.manual_seed(0)
    ckpt = save_checkpoint(build_mera(IsingTarget(16, KC), **SMALL), tmp_path / "f.ckpt")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"latent_hmc: n_chains=4096 at L = 16 needs about .* lower n_chains "
                                         r"to \d+ or less"):
        run_sampling(run=str(ckpt), samplers=["physical_hmc", "latent_hmc"], settings={"n_chains": 4096},
                     out_dir=str(out), memory_limit="32MiB")
    assert not out.exists()


def test_ess_ratio_crossing_and_its_errors() -> None:
    """benchmarks/critical_slowing.ess_ratio on rows with a known law: latent/physical ESS/s = (L/100)^0.5
    for m² and half that for E, so the fit must give slope 0.5 and a crossing at L = 100 (E: 400); the
    ratio errors follow from the τ errors (ESS ∝ 1/τ) and unconverged windows make the ratio a bound."""
    cs = load_benchmark("critical_slowing")
    rows = []
    for L in (8, 16, 32, 64):
        rows.append(dict(L=L, sampler="physical_hmc", zero_shot=False, ess_per_second=1.0, tau_m2=100.0,
                         tau_m2_err=3.0, tau_m2_converged=True, tau_energy=50.0, tau_energy_err=2.0,
                         tau_energy_converged=True))
        rows.append(dict(L=L, sampler="latent_hmc", zero_shot=False, ess_per_second=(L / 100) ** 0.5, tau_m2=2.0,
                         tau_m2_err=0.08, tau_m2_converged=True, tau_energy=2.0, tau_energy_err=0.06,
                         tau_energy_converged=True))
    m2, en = cs.ess_ratio(rows, "latent_hmc"), cs.ess_ratio(rows, "latent_hmc", "energy")
    assert m2["slope"] == pytest.approx(0.5, abs=1e-9) and m2["L_cross"] == pytest.approx(100.0, rel=1e-6)
    # E: physical ESS_E is ESS_m2·τ_m2/τ_E = 2, the latent one unchanged (τ_m2 = τ_E): half the m² ratio
    assert en["ratios"][16] == pytest.approx(0.5 * (16 / 100) ** 0.5) and en["L_cross"] == pytest.approx(400.0, rel=1e-6)
    assert m2["errors"][32] == pytest.approx(m2["ratios"][32] * math.hypot(0.04, 0.03))
    lo, hi = m2["L_cross_range"]
    assert lo < 100.0 < hi and not m2["crossed"] and all(b is None for b in m2["bounds"].values())
    rows[6]["tau_m2_converged"] = False  # physical HMC at L = 64: its τ a lower bound, so the ratio a lower bound
    rows[1]["tau_m2_converged"] = False  # latent HMC at L = 8: an upper bound
    b = cs.ess_ratio(rows, "latent_hmc")["bounds"]
    assert b == {8: "upper", 16: None, 32: None, 64: "lower"}
    falling = [dict(r, ess_per_second=1.0 / r["L"]) if r["sampler"] == "latent_hmc" else r for r in rows]
    assert cs.ess_ratio(falling, "latent_hmc")["L_cross"] is None
    assert cs.ess_ratio(rows[:2], "latent_hmc") is None


def test_pool_rows_pools_seeds_by_sample_count() -> None:
    """benchmarks/critical_slowing.pool_rows: two rows of one (L, sampler) become one with τ the sample-weighted
    mean and its propagated error, the mean cost, ESS/s ∝ 1/(τ·cost) kept, and converged only if both were;
    others pass unchanged."""
    cs = load_benchmark("critical_slowing")

    def row(L, sampler, tau, err, sec, converged=True):
        return dict(L=L, sampler=sampler, zero_shot=False, acceptance=0.8, seconds_per_trajectory=sec,
                    us_per_trajectory_site=sec, ess_per_second=8.0 / (2 * tau * sec), step_size=[0.05],
                    leapfrog_per_trajectory=30, tau_m2=tau, tau_m2_err=err, tau_m2_converged=converged,
                    tau_energy=tau / 2, tau_energy_err=err / 2, tau_energy_converged=True,
                    tau_m2_grads=30 * tau, tau_m2_grads_err=30 * err, tau_energy_grads=15 * tau,
                    tau_energy_grads_err=15 * err)
    single = row(32, "latent_hmc", 2.0, 0.4, 1.0)
    rows = [dict(row(64, "latent_hmc", 3.0, 1.0, 5.0), n_samples=300, step_size=[0.05, 0.03]),
            dict(row(64, "latent_hmc", 6.0, 2.0, 7.0, converged=False), n_samples=100, step_size=[0.07, 0.01]), single,
            row(64, "physical_hmc", 100.0, 10.0, 0.01)]
    out = {(r["L"], r["sampler"]): r for r in cs.pool_rows(rows)}
    assert len(out) == 3 and out[(32, "latent_hmc")] is single
    p = out[(64, "latent_hmc")]
    want = 0.75 * 3.0 + 0.25 * 6.0  # weights ∝ samples: 3/4 and 1/4
    assert p["tau_m2"] == pytest.approx(want) and p["tau_m2_err"] == pytest.approx(math.hypot(0.75 * 1.0, 0.25 * 2.0))
    assert p["n_samples"] == 400
    assert p["tau_energy"] == pytest.approx(want / 2) and p["tau_m2_grads"] == pytest.approx(30 * want)
    assert p["seeds"] == 2 and not p["tau_m2_converged"] and p["tau_energy_converged"]
    assert p["seconds_per_trajectory"] == pytest.approx(6.0)
    assert p["step_size"] == pytest.approx([0.06, 0.02])  # every block's step, each the mean
    assert p["ess_per_second"] == pytest.approx(8.0 / (2 * want * 6.0))  # the same law, at the pooled τ and cost
    assert out[(64, "physical_hmc")] is rows[3]
