"""Collective-variable analysis: causal cones of the response maps, per-level statistics on
known cases, landscape diagnostics, and the pipeline end to end (function, analyze.py, sweep)."""
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

from helpers import load_benchmark
from neuralrg import IsingTarget, K_C, build_mera
from neuralrg.analysis import (bimodality_coefficient, coarse_latent_correlations, free_energy_landscape,
                               latents_under_p, level_moments, level_pair_statistics, pair_statistics,
                               same_level_pairs)
from neuralrg.analysis.response import causal_cone, jacobian_columns, response_analysis, response_radius
from neuralrg.checkpoint import flow_metadata, load_flow

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
F64 = torch.float64


def randomised_mera(L: int, scale: float = 0.5, seed: int = 0, **kw):
    """A MERA flow moved far from its identity initialisation (float64)."""
    f = build_mera(IsingTarget(L, K_C), n_couplings=4, hidden=8, **kw).to(F64)  # 4: every channel mixes
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in f.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return f


# ----------------------------------------------------------------------------- causal cones
def cone_1d(L: int, level: int, c: int) -> set[int]:
    """Coordinates along one axis that a level-``level`` latent at coordinate c reaches.

    Generative order from its own level down: at spacing d = 2^k the decimator pairs
    {2dm, 2dm + d}, then the disentangler pairs {2dm + d, 2dm + 2d} (mod L); a pair that
    contains a reached coordinate reaches both. A 2×2 plaquette is the product of a row pair
    and a column pair, and the support stays on the current sub-grid, so the 2D cone is the
    product of the two 1D cones.
    """
    S = {c}
    for k in range(level, -1, -1):
        d = 2 ** k
        for off in (0, d):
            new = set(S)
            for p in S:
                assert p % d == 0
                start = off + 2 * d * ((p - off) // (2 * d))
                new |= {start % L, (start + d) % L}
            S = new
    return S


def expected_cone(L: int, depth: int, level: int, site) -> torch.Tensor:
    start = min(level, depth - 1)  # the top latent enters at the last decimator, like level depth-1
    rows, cols = cone_1d(L, start, int(site[0])), cone_1d(L, start, int(site[1]))
    mask = torch.zeros(L, L, dtype=torch.bool)
    mask[np.ix_(sorted(rows), sorted(cols))] = True
    return mask


def test_response_maps_vanish_exactly_outside_the_causal_cone():
    L = 16
    f = randomised_mera(L)
    depth = f.n_levels - 1
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, L, L, generator=g, dtype=F64)
    levels = f.latent_levels
    checked_strict = 0
    for k in range(f.n_levels):
        cand = (levels == k).nonzero()
        sites = cand[torch.randperm(len(cand), generator=g)[:3]].tolist()
        cols = jacobian_columns(f, z[0], sites)
        for site, col in zip(sites, cols):
            cone = expected_cone(L, depth, k, site)
            assert torch.equal(causal_cone(f, site), cone)
            assert bool((col[~cone] == 0).all()), f"level {k} site {site}: response outside its cone"
            assert float((col[cone] != 0).to(F64).mean()) > 0.9
            checked_strict += int((~cone).any())
    assert checked_strict >= 6  # levels 0 and 1 have cones smaller than the 16×16 torus
    # level-0 cone is 4×4, level-1 cone 10×10 (3·2^{k+1} − 2 per axis)
    assert int(expected_cone(L, depth, 0, (0, 1)).sum()) == 16
    assert int(expected_cone(L, depth, 1, (2, 4)).sum()) == 100


def test_jacobian_columns_match_dense_autograd_jacobian():
    L = 4
    f = randomised_mera(L, seed=3)
    z = torch.randn(L, L, dtype=F64)
    J = torch.autograd.functional.jacobian(lambda v: f.forward(v.reshape(1, L, L)).reshape(-1), z.reshape(-1))
    sites = [(i, j) for i in range(L) for j in range(L)]
    cols = jacobian_columns(f, z, sites).reshape(len(sites), -1)
    torch.testing.assert_close(cols, J.T, rtol=1e-10, atol=1e-12)


def test_response_radius_grows_with_level_on_random_flow():
    L = 16
    f = randomised_mera(L, seed=2)
    z = torch.randn(3, L, L, generator=torch.Generator().manual_seed(4), dtype=F64)
    summary, maps, cones = response_analysis(f, z, n_latents=8, n_configs=2)
    r = [e["radius_rms_mean"] for e in summary["levels"]]
    r90 = [e["radius_90_mean"] for e in summary["levels"]]
    assert r[0] < r[1] < r[2] < r[3], r
    assert r90[0] < r90[1] < r90[2], r90
    assert summary["fit_levels"] == [0, 1, 2]  # levels 0–2 below the top
    assert summary["fit_levels_unsaturated"] == [0, 1]  # levels 2+ wrap the 16×16 torus
    assert 1.5 < summary["growth_factor_rms"] < 3.5
    assert all(e["outside_cone_max_abs"] == 0.0 for e in summary["levels"])
    assert maps.shape == (f.n_levels, L, L) and len(cones) == f.n_levels


def test_response_radius_of_known_maps():
    L = 16
    delta = torch.zeros(1, L, L, dtype=F64)
    delta[0, 15, 3] = 2.0
    r = response_radius(delta)
    assert float(r["radius_rms"]) == pytest.approx(0.0, abs=1e-9)
    assert r["centre"][0].tolist() == pytest.approx([15.0, 3.0])
    # four equal weights at (0, 0), (0, 1), (15, 0), (15, 1) straddle the boundary: centre (15.5, 0.5)
    sq = torch.zeros(1, L, L, dtype=F64)
    sq[0, [0, 0, 15, 15], [0, 1, 0, 1]] = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=F64)
    r = response_radius(sq)
    assert r["centre"][0].tolist() == pytest.approx([15.5, 0.5])
    assert float(r["radius_rms"]) == pytest.approx(math.sqrt(0.5))
    assert float(r["radius_fraction"]) == pytest.approx(math.sqrt(0.5))


# ----------------------------------------------------------------------------- latent statistics
def identity_flow(L: int = 8):
    return build_mera(IsingTarget(L, K_C), n_couplings=2, hidden=8).to(F64)  # untrained: exact identity


def reference_pairs(x: np.ndarray, lv: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Same-level pairs by explicit loops: (i, j) and (i, j + d) or (i + d, j), both level k."""
    L = lv.shape[0]
    d = 2 ** k
    a, b = [], []
    for i in range(L):
        for j in range(L):
            if lv[i, j] != k:
                continue
            for (ii, jj) in ((i, (j + d) % L), ((i + d) % L, j)):
                if lv[ii, jj] == k and d < L:
                    a.append(x[:, i, j])
                    b.append(x[:, ii, jj])
    if not a:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(a), np.concatenate(b)


def test_level_statistics_match_numpy_on_identity_flow():
    L = 8
    f = identity_flow(L)
    lv = f.latent_levels.numpy()
    rng = np.random.default_rng(0)
    M = 3000
    scale = np.array([1.0, 2.0, 0.5, 3.0])[lv]            # level-dependent variance
    noise = rng.laplace(size=(M, L, L))                      # excess kurtosis 3
    x_np = scale * (noise + 0.6 * np.roll(noise, 2, axis=2) + 0.3 * np.roll(noise, 1, axis=1)) + 0.25 * lv
    x = torch.from_numpy(x_np)
    z, y = latents_under_p(f, x)
    assert torch.equal(z, x) and torch.equal(y, x)
    stats = level_moments(z, f.latent_levels)
    for s in stats:
        v = x_np[:, lv == s["level"]].ravel()
        c = v - v.mean()
        assert s["n_values"] == v.size and s["spacing"] == 2 ** s["level"]
        assert s["mean"] == pytest.approx(v.mean(), rel=1e-10)
        assert s["variance"] == pytest.approx(v.var(), rel=1e-10)
        assert s["excess_kurtosis"] == pytest.approx(np.mean(c ** 4) / np.mean(c ** 2) ** 2 - 3, rel=1e-9)
        assert s["skewness"] == pytest.approx(np.mean(c ** 3) / np.mean(c ** 2) ** 1.5, rel=1e-8, abs=1e-12)
    pairs = level_pair_statistics(z, f.latent_levels, methods=["gaussian", "gaussian_copula"])
    n_with_pairs = 0
    for p in pairs:
        a, b = reference_pairs(x_np, lv, p["level"])
        assert p["n_pairs"] == a.size
        if a.size:
            n_with_pairs += 1
            rho = np.corrcoef(a, b)[0, 1]
            assert p["correlation"] == pytest.approx(rho, rel=1e-9)
            assert p["mi"]["gaussian"] == pytest.approx(-0.5 * math.log(1 - rho ** 2), rel=1e-8)
            aa, bb = same_level_pairs(z, f.latent_levels, p["level"])
            assert sorted(zip(aa.tolist(), bb.tolist())) == sorted(zip(a.tolist(), b.tolist()))
        else:
            assert p["correlation"] is None
    assert n_with_pairs == 3  # levels 0, 1, 2; the single top site has no same-level neighbour
    assert abs(pairs[1]["correlation"]) > 0.2  # the roll by 2 correlates level-1 neighbours (distance 2)


def test_mi_between_independent_latents_is_near_zero():
    L = 8
    f = identity_flow(L)
    x = torch.randn(2000, L, L, generator=torch.Generator().manual_seed(5), dtype=F64)
    z, _ = latents_under_p(f, x)
    stats = level_moments(z, f.latent_levels)
    for s in stats[:-1]:
        assert abs(s["mean"]) < 0.05 and abs(s["variance"] - 1) < 0.1 and abs(s["excess_kurtosis"]) < 0.3
    for p in level_pair_statistics(z, f.latent_levels, methods=["ksg", "gaussian_copula"], max_samples=2000):
        if p["n_pairs"]:
            assert abs(p["mi"]["ksg"]) < 0.04, p  # KSG noise at 2000 pooled pairs is ~0.015
            assert abs(p["mi"]["gaussian_copula"]) < 0.01, p
            assert abs(p["correlation"]) < 0.05
    # and a dependent pair is detected by both estimators
    a = torch.randn(3000, generator=torch.Generator().manual_seed(6), dtype=F64)
    b = 0.8 * a + 0.6 * torch.randn(3000, generator=torch.Generator().manual_seed(7), dtype=F64)
    res = pair_statistics(a, b)
    truth = -0.5 * math.log(1 - 0.64)
    assert res["mi"]["ksg"] == pytest.approx(truth, abs=0.06)
    assert res["mi"]["gaussian_copula"] == pytest.approx(truth, abs=0.04)


def test_z2_latents_are_consistent_with_the_flow():
    L = 4
    f = randomised_mera(L, scale=0.1, seed=8, z2=True)
    x = torch.randn(64, L, L, generator=torch.Generator().manual_seed(9), dtype=F64)
    z, y = latents_under_p(f, x, generator=torch.Generator().manual_seed(10))
    sign = (y / x).flatten(1)
    assert bool(((sign == 1).all(1) | (sign == -1).all(1)).all())
    torch.testing.assert_close(f.forward(z), y, rtol=1e-9, atol=1e-9)


def test_coarse_latent_correlations_on_identity_flow():
    L = 4
    f = identity_flow(L)
    rng = np.random.default_rng(11)
    M = 500
    a = rng.normal(size=(M, 1, 1))
    x_np = a + 0.7 * rng.normal(size=(M, L, L))
    x = torch.from_numpy(x_np)
    mom = f.target.observables(x)
    res = coarse_latent_correlations(x, mom["m"], mom["energy"], f.latent_levels)
    m = np.tanh(x_np).mean(axis=(1, 2))
    top = res["levels"][0]
    assert top["level"] == 2 and top["sites"][0]["site"] == [0, 0]
    assert top["sites"][0]["corr_m"] == pytest.approx(np.corrcoef(x_np[:, 0, 0], m)[0, 1], rel=1e-9)
    assert top["max_abs_corr_m"] > 0.5
    assert res["levels"][1]["level"] == 1 and len(res["levels"][1]["sites"]) == 3
    assert 0.5 < res["r2_m_linear"] <= 1.0


def test_landscape_diagnostics():
    rng = np.random.default_rng(12)
    gauss = rng.normal(size=20000)
    mix = np.concatenate([rng.normal(-2, 0.5, 10000), rng.normal(2, 0.5, 10000)])
    assert bimodality_coefficient(gauss) == pytest.approx(1 / 3, abs=0.02)
    assert bimodality_coefficient(mix) > 5 / 9
    lg, lm = free_energy_landscape(gauss), free_energy_landscape(mix)
    assert lg["density_ratio_at_zero"] > 0.95 and lm["density_ratio_at_zero"] < 0.1
    grid = np.array(lg["kde"]["grid"])
    F = np.array(lg["kde"]["free_energy"], dtype=float)
    inner = np.abs(grid) < 2
    np.testing.assert_allclose(F[inner], 0.5 * grid[inner] ** 2 - np.min(0.5 * grid[inner] ** 2), atol=0.15)
    assert np.trapezoid(lm["kde"]["density"], lm["kde"]["grid"]) == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(ValueError, match="bins"):
        free_energy_landscape(gauss, bins=1)


# ----------------------------------------------------------------------------- end to end
EXPECTED_KEYS = {"run", "checkpoint", "created", "target", "model", "device", "dtype", "seed", "sampling",
                 "latent_levels", "mi_estimator", "level_stats", "physical_pairs", "mi_summary", "response",
                 "coarse_latents", "landscape", "figures", "timing"}
FIGURES = {"latent_stats.png", "mutual_information.png", "response_maps.png", "top_latent_landscape.png",
           "rg_levels.png"}
SMALL = dict(n_chains=16, n_warmup=20, n_samples=40, n_leapfrog=5)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny MERA flow (L = 4, K = 0.3) trained briefly by reverse KL, saved as a run directory."""
    torch.manual_seed(0)
    flow = build_mera(IsingTarget(4, 0.3), n_couplings=2, hidden=8)
    opt = torch.optim.Adam(flow.parameters(), lr=5e-3)
    for _ in range(120):
        opt.zero_grad()
        flow.reverse_kld(64).backward()
        opt.step()
    run = tmp_path_factory.mktemp("multirun") / "0"  # a one-job "multirun" directory
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": {"flow." + k: v for k, v in flow.state_dict().items()},
                "neuralrg": flow_metadata(flow)}, run / "checkpoints" / "last.ckpt")
    return run


def _strict_json(path: Path) -> dict:
    def bad(c):
        raise AssertionError(f"non-standard JSON constant {c} in {path}")
    return json.loads(path.read_text(), parse_constant=bad)


def check_outputs(out: Path, sampler: str) -> dict:
    res = _strict_json(out / "analysis.json")
    assert EXPECTED_KEYS <= set(res)
    assert set(res["figures"]) == FIGURES
    for name in FIGURES:
        assert (out / name).stat().st_size > 1000
    assert res["sampling"]["sampler"] == sampler and res["sampling"]["exact"] is True
    assert res["mi_estimator"]["primary"] == "ksg" and res["mi_estimator"]["units"] == "nats"
    n_levels = res["latent_levels"]["n_levels"]
    assert n_levels == 3 and len(res["level_stats"]) == 3 and len(res["response"]["levels"]) == 3
    for s in res["level_stats"]:
        assert {"mean", "variance", "excess_kurtosis", "neighbours"} <= set(s)
        assert set(s["neighbours"]["mi"]) == {"ksg", "gaussian_copula"}
    assert [p["distance"] for p in res["physical_pairs"]] == [1, 2]
    assert all(e["outside_cone_max_abs"] == 0.0 for e in res["response"]["levels"])
    assert res["coarse_latents"]["levels"][0]["level"] == 2
    for key in ("top_latent", "magnetisation"):
        assert 0 < res["landscape"][key]["bimodality_coefficient"] < 1
    return res


def test_run_analysis_end_to_end(trained_run, tmp_path):
    from neuralrg.pipelines.analyze import format_report, run_analysis

    out = tmp_path / "a"
    res = run_analysis(run=str(trained_run), out_dir=str(out), settings=SMALL, mi={"max_samples": 800},
                       response={"n_latents": 2, "n_configs": 1}, seed=3, device="cpu")
    check_outputs(out, "latent_hmc")
    assert res["sampling"]["n_configurations"] == 16 * 40
    assert "level" in format_report(res)
    with pytest.raises(ValueError, match="already holds"):
        run_analysis(run=str(trained_run), out_dir=str(out), settings=SMALL, device="cpu")
    with pytest.raises(ValueError, match="sampler"):
        run_analysis(run=str(trained_run), out_dir=str(tmp_path / "b"), sampler="raw_flow", device="cpu")
    with pytest.raises(ValueError, match="n_chains"):
        run_analysis(run=str(trained_run), out_dir=str(tmp_path / "c"), settings={"n_chains": 0}, device="cpu")
    with pytest.raises(ValueError, match="fold must be null, 'auto' or a"):
        run_analysis(run=str(trained_run), out_dir=str(tmp_path / "f"), settings={"fold": "yes"}, device="cpu")
    res = run_analysis(run=str(trained_run), out_dir=str(tmp_path / "fm"), sampler="flow_metropolis",
                       settings=dict(n_chains=16, n_warmup=10, n_samples=40), mi={"max_samples": 800},
                       response={"n_latents": 2, "n_configs": 1}, device="cpu", figures=False)
    assert res["sampling"]["sampler"] == "flow_metropolis" and res["figures"] == []
    assert 0 < res["sampling"]["acceptance"] <= 1
    # configurations from a sample.py run (samples.npz, key x) instead of sampling
    with torch.no_grad():
        x = load_flow(trained_run).sample(64)[0]
    np.savez(tmp_path / "samples.npz", x=x.numpy())
    res = run_analysis(run=str(trained_run), out_dir=str(tmp_path / "npz"), samples=str(tmp_path / "samples.npz"),
                       mi={"max_samples": 800}, response={"n_latents": 2, "n_configs": 1}, device="cpu",
                       figures=False)
    assert res["sampling"]["sampler"] == "samples_file" and res["sampling"]["n_configurations"] == 64


def test_analyze_py_subprocess_and_sweep(trained_run, tmp_path):
    out = trained_run / "analysis" / "cli"
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "analyze.py", f"run={trained_run}", f"out_dir={out}", "threads=1", "device=cpu",
           *[f"settings.{k}={v}" for k, v in SMALL.items()], "mi.max_samples=800", "response.n_latents=2",
           "response.n_configs=1", "log_to=wandb"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "outputs:" in proc.stdout
    res = check_outputs(out, "latent_hmc")
    assert res["wandb_logged"] is True
    bad = subprocess.run([sys.executable, "analyze.py", f"run={trained_run}", "sampler=nope", "threads=1"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    # the conf/sampler/ group: hydra names the bad choice and lists the registry's samplers
    assert bad.returncode == 1 and "Could not find 'sampler/nope'" in bad.stderr and "flow_metropolis" in bad.stderr

    sweep = load_benchmark("sweep_analysis")
    assert sweep.find_runs([str(trained_run.parent)]) == [trained_run]
    assert sweep.main([str(trained_run), "--reuse", "--out", str(tmp_path / "sweep")]) == 0
    summary = _strict_json(tmp_path / "sweep" / "sweep_analysis.json")
    (row,) = summary["runs"]
    assert row["K"] == pytest.approx(0.3) and len(row["mi_per_level"]["ksg"]) == 3
    assert (tmp_path / "sweep" / "sweep_analysis.png").stat().st_size > 1000


def test_preconditioned_flow_responses_are_those_of_the_hierarchy():
    """With the fixed x = A^{1/2} y at the end, responses are ∂y/∂z (causal cone intact), and
    A^{1/2} applied to them gives the full ∂x/∂z."""
    from neuralrg.analysis.response import hierarchy_forward

    L = 8
    t = IsingTarget(L, K_C)
    f = build_mera(t, precondition=True, activation="silu").to(F64)
    plain = build_mera(t, activation="silu").to(F64)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p, q in zip(f.parameters(), plain.parameters()):
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=F64))
            q.copy_(p)
    z = torch.randn(L, L, dtype=F64, generator=g)
    site = (0, 1)
    col = jacobian_columns(f, z, [site])[0]
    assert torch.allclose(col, jacobian_columns(plain, z, [site])[0], atol=1e-12)
    cone = causal_cone(f, site)
    assert cone is not None and bool((col[~cone] == 0).all())
    tangent = torch.zeros(1, L, L, dtype=F64)
    tangent[0, site[0], site[1]] = 1.0
    full = torch.func.jvp(f.forward, (z[None],), (tangent,))[1][0]
    assert not bool((full[~cone] == 0).all())  # A^{1/2} spreads x's response over the torus
    assert torch.allclose(f.flows[-1](col[None])[0][0], full, atol=1e-12)
    assert torch.allclose(hierarchy_forward(f, z[None]), plain.forward(z[None]), atol=1e-12)


def test_level_mi_is_not_fooled_by_sites_with_different_marginals():
    """Independent latents whose sites have different scales (as the three Haar details of a
    plaquette do, and as the two sites of a 2-site sub-grid seen both ways round): pooling raw
    pairs makes a "+"-shaped cloud with large KSG MI; per-site normal scores remove it."""
    from neuralrg.analysis.latents import normal_scores_per_site, same_level_pairs

    L = 8
    f = identity_flow(L)
    g = torch.Generator().manual_seed(9)
    scale = torch.ones(L, L, dtype=F64)
    scale[4, 4] = 6.0  # one site of the level-2 sub-grid is much wider than its two neighbours
    z = torch.randn(3000, L, L, generator=g, dtype=F64) * scale
    level = 2  # the 2-site sub-grid at L = 8: each pair appears both ways round
    raw = pair_statistics(*same_level_pairs(z, f.latent_levels, level), methods=["ksg"], max_samples=3000)
    stats = level_pair_statistics(z, f.latent_levels, methods=["ksg", "gaussian_copula"], max_samples=3000)
    fixed = next(p for p in stats if p["level"] == level)
    assert raw["mi"]["ksg"] > 0.1  # the artefact
    assert abs(fixed["mi"]["ksg"]) < 0.04 and abs(fixed["mi"]["gaussian_copula"]) < 0.01
    zs = normal_scores_per_site(z)
    assert torch.allclose(zs.mean(0), torch.zeros(L, L, dtype=F64), atol=1e-12)
    assert torch.equal(zs.argsort(0), z.argsort(0))  # monotone per site: the copula is kept
