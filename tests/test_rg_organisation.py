"""The Haar skeleton of the MERA (an exact Gaussian block-spin RG) and the RG-organisation estimators."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neuralrg import IsingTarget, K_C, build_mera
from neuralrg.analysis.response import causal_cone, jacobian_columns, response_analysis
from neuralrg.analysis.rg_organisation import (linear_r2, mi_ratio_per_level, r2_top_levels,
                                               structure_factor_explained, top_level_features)
from neuralrg.flows import HaarDecimator, HaarPlaquette, transfer_mera_weights
from neuralrg.flows.build import build_flow
from neuralrg.physics.target import LatticeTarget, check_field_shape

torch.set_num_threads(1)
F64 = torch.float64


class GaussianTarget(LatticeTarget):
    """Exactly Gaussian N(0, A), A the Ising relaxation's coupling matrix: E(x) = ½ xᵀA⁻¹x."""

    def __init__(self, L: int, K: float = K_C) -> None:
        super().__init__()
        self.ising = IsingTarget(L, K)
        self.L, self.n_sites = L, L * L
        self.logdet_A = self.ising.logdet_A

    def apply_coupling_power(self, x: torch.Tensor, power: float) -> torch.Tensor:
        return self.ising.apply_coupling_power(x, power)

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        check_field_shape(x, self.L)
        return 0.5 * (x * self.apply_coupling_power(x, -1.0)).sum(dim=(-2, -1))

    def observables(self, x, generator=None):
        return {"m": x.mean(dim=(-2, -1)), "energy": self.energy(x) / self.n_sites}

    def spec_kwargs(self):
        return {"L": self.L}

    def sample_exact(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.apply_coupling_power(torch.randn(n, self.L, self.L, generator=generator, dtype=F64), 0.5)


def randomised(flow, scale: float = 0.3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return flow


# ----------------------------------------------------------------------------- the Haar layer
def test_haar_plaquette_is_orthonormal_and_puts_the_average_on_site_00():
    h = HaarPlaquette().double()
    p = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=F64)  # a, b, c, d
    out, ld = h.inverse(p)
    assert out.tolist() == [[5.0, -1.0, -2.0, 0.0]]  # (a+b+c+d)/2, (a−b+c−d)/2, (a+b−c−d)/2, (a−b−c+d)/2
    assert ld.tolist() == [0.0]
    H = h.inverse(torch.eye(4, dtype=F64))[0]
    torch.testing.assert_close(H @ H.T, torch.eye(4, dtype=F64), rtol=0, atol=1e-15)
    assert torch.equal(h(out)[0], p) and list(h.parameters()) == []


@pytest.mark.parametrize("L", [4, 8])
@pytest.mark.parametrize("precondition", [False, True])
def test_haar_mera_round_trip_and_log_det_match_autograd(L, precondition):
    f = randomised(build_mera(IsingTarget(L, K_C), n_couplings=4, hidden=8, activation="silu",
                              precondition=precondition, skeleton="haar").to(F64), seed=L)
    assert f.config["skeleton"] == "haar"
    assert sum(isinstance(l.block, HaarDecimator) for l in f.flows if hasattr(l, "block")) == int(math.log2(L))
    z = torch.randn(3, L, L, dtype=F64, generator=torch.Generator().manual_seed(1))
    x, ld = f.forward_and_log_det(z)
    assert not torch.allclose(x, z, atol=1e-2)
    z_back, ld_inv = f.inverse_and_log_det(x)
    assert (z_back - z).abs().max() <= 1e-12 and (ld + ld_inv).abs().max() <= 1e-10
    J = torch.autograd.functional.jacobian(lambda v: f.forward(v.reshape(1, L, L)).reshape(-1), z[0].reshape(-1))
    assert ld[0].item() == pytest.approx(torch.linalg.slogdet(J)[1].item(), abs=1e-9)
    # the skeleton really changes the map: same parameters without it give another x
    plain = build_mera(IsingTarget(L, K_C), n_couplings=4, hidden=8, activation="silu",
                       precondition=precondition).to(F64)
    plain.load_state_dict({k.replace("block.block.", "block."): v for k, v in f.state_dict().items()})
    assert not torch.allclose(plain.forward(z), x, atol=1e-3)


def test_skeleton_config_and_warm_start():
    t8, t16 = IsingTarget(8, K_C), IsingTarget(16, K_C)
    haar8 = randomised(build_mera(t8, n_couplings=2, hidden=8, skeleton="haar").double())
    haar16 = build_mera(t16, n_couplings=2, hidden=8, skeleton="haar").double()
    assert transfer_mera_weights(haar8, haar16) == 8
    with pytest.raises(ValueError, match="skeleton"):
        transfer_mera_weights(haar8, build_mera(t16, n_couplings=2, hidden=8).double())
    old = build_mera(t8, n_couplings=2, hidden=8)
    cfg = {k: v for k, v in old.config.items() if k != "skeleton"}  # a checkpoint from before the option
    assert build_flow(t8, **cfg).config["skeleton"] == "none"
    assert transfer_mera_weights(type("Old", (), {"config": cfg, "flows": old.flows})(), old) == 6
    assert build_flow(t8, **haar8.config).config == haar8.config
    with pytest.raises(ValueError, match="skeleton"):
        build_mera(t8, skeleton="wavelet")
    # no Gaussian part: the skeleton works without the preconditioner
    from neuralrg.physics.phi4 import Phi4Target
    f = build_mera(Phi4Target(8, 0.25, 0.022), skeleton="haar", precondition="auto").double()
    assert f.config["precondition"] is False
    x = torch.randn(2, 8, 8, dtype=F64)
    assert f.inverse(x)[:, 0, 0].tolist() == pytest.approx((x.sum((1, 2)) / 8).tolist(), abs=1e-12)


# ----------------------------------------------------------------------------- exact Gaussian RG
def test_untrained_haar_flow_decorrelates_an_exact_gaussian_target():
    L = 8
    t = GaussianTarget(L)
    f = build_mera(t, precondition=True, skeleton="haar").double()
    x = t.sample_exact(6000, torch.Generator().manual_seed(2))
    with torch.no_grad():
        z = f.inverse(x)
    # the top latent is exactly the zero mode of A^{-1/2}x: Σ_i (A^{-1/2}x)_i / L = Σ_i x_i / (L √λ_0)
    lam0 = float(t.ising.spectrum_rfft[0, 0])
    torch.testing.assert_close(z[:, 0, 0], x.sum((1, 2)) / (L * math.sqrt(lam0)), rtol=1e-12, atol=1e-12)
    # covariance of the latents is the identity: each entry within ~5 standard errors of 0 / 1
    zf = z.reshape(len(z), -1)
    C = (zf.T @ zf) / len(zf)
    err = 5.0 * math.sqrt(2.0 / len(zf))
    assert (C - torch.eye(L * L, dtype=F64)).abs().max() < err
    # while x itself is strongly correlated, and the flow without skeleton also whitens but keeps sites
    xf = x.reshape(len(x), -1)
    assert ((xf.T @ xf) / len(xf) - torch.diag(torch.diag((xf.T @ xf) / len(xf)))).abs().max() > 0.5
    # the top latents carry the whole of S(0) and a known part of S(k_min)
    sk = structure_factor_explained(x, z, f.latent_levels, n_top_levels=2)
    assert sk["k0"]["fraction"] == pytest.approx(1.0, abs=1e-12)
    # x̂(k_min) ∝ the plane wave of y; its projection on the 4 coarsest Haar functions (constant on
    # L/2 × L/2 blocks) keeps |Σ_{r<L/2} e^{2πir/L}|² · 2 / L per momentum = 0.4268 at L = 8
    ph = np.exp(2j * np.pi * np.arange(L // 2) / L)
    expected = 2 * abs(ph.sum()) ** 2 / (L // 2) / L
    assert sk["kmin"]["fraction"] == pytest.approx(expected, abs=0.03)
    none = build_mera(t, precondition=True).double()
    with torch.no_grad():
        sk_none = structure_factor_explained(x, none.inverse(x), none.latent_levels, n_top_levels=2)
    assert sk_none["k0"]["fraction"] < 0.2  # 4 sites of y out of 64 carry 4/64 of the zero mode


def test_untrained_haar_flow_whitens_a_gaussian_target_at_l12():
    """L = 12 = 4·3: two Haar levels and a 3×3 grid of top latents, still independent N(0, 1)."""
    L = 12
    t = GaussianTarget(L)
    f = build_mera(t, precondition=True, skeleton="haar").double()
    assert f.config["depth"] == 2 and int((f.latent_levels == 2).sum()) == 9
    x = t.sample_exact(6000, torch.Generator().manual_seed(3))
    with torch.no_grad():
        zf = f.inverse(x).reshape(len(x), -1)
    C = (zf.T @ zf) / len(zf)
    assert (C - torch.eye(L * L, dtype=F64)).abs().max() < 5.0 * math.sqrt(2.0 / len(zf))
    # the top latents are the 4×4 block sums of y = A^{-1/2} x, divided by 4
    y = t.ising.apply_coupling_power(x, -0.5)
    blocks = y.reshape(len(x), 3, 4, 3, 4).sum((2, 4)) / 4
    torch.testing.assert_close(zf.reshape(len(x), L, L)[:, ::4, ::4], blocks, rtol=1e-10, atol=1e-10)


def test_haar_responses_are_wavelets_with_radius_doubling_and_cones_unchanged():
    L = 16
    t = IsingTarget(L, K_C)
    f = build_mera(t, precondition=True, skeleton="haar").double()
    z = torch.randn(2, L, L, dtype=F64, generator=torch.Generator().manual_seed(3))
    s, maps, cones = response_analysis(f, z, n_latents=6, n_configs=1)
    # level-k details are ±2^{-(k+1)} on a 2^{k+1} square: r_rms² = (s² − 1)/6 (uniform square, side s)
    for k in range(3):
        side = 2 ** (k + 1)
        assert s["levels"][k]["radius_rms_mean"] == pytest.approx(math.sqrt((side ** 2 - 1) / 6), abs=1e-9)
    assert s["fit_levels"] == [0, 1, 2] and s["space"] == "y"
    assert 2.0 < s["growth_factor_rms"] < 2.3
    sx, maps_x, cones_x = response_analysis(f, z, n_latents=6, n_configs=1, physical=True)
    assert sx["space"] == "x" and all(c is None for c in cones_x) and 1.8 < sx["growth_factor_rms"] < 2.2
    torch.testing.assert_close(maps_x, t.apply_coupling_power(maps, 0.5), rtol=1e-10, atol=1e-12)
    # the default flow's untrained responses: deltas on y (radius 0), columns of A^{1/2} on x (level-blind)
    plain = build_mera(t, precondition=True).double()
    s0, _, _ = response_analysis(plain, z, n_latents=6, n_configs=1)
    s0x, _, _ = response_analysis(plain, z, n_latents=6, n_configs=1, physical=True)
    assert all(e["radius_rms_mean"] < 1e-9 for e in s0["levels"]) and s0["growth_factor_rms"] is None
    assert s0x["growth_factor_rms"] == pytest.approx(1.0, abs=1e-9)
    # cones: the Haar mixing is plaquette-local, so a randomised haar flow stays inside the plain cones
    r = randomised(build_mera(t, n_couplings=4, hidden=8, skeleton="haar").double(), seed=5)
    for site in [(0, 1), (2, 4), (4, 8), (8, 8)]:
        cone = causal_cone(r, site)
        assert torch.equal(cone, causal_cone(plain, site))
        col = jacobian_columns(r, z[0], [site])[0]
        assert bool((col[~cone] == 0).all()) and float((col[cone] != 0).double().mean()) > 0.9


# ----------------------------------------------------------------------------- estimators
def test_r2_estimators_on_synthetic_cases():
    rng = np.random.default_rng(4)
    M, L = 20000, 8
    levels = build_mera(IsingTarget(L, K_C), n_couplings=1, hidden=4).latent_levels
    z = rng.normal(size=(M, L, L))
    F, used = top_level_features(z, levels, 2)
    assert used == [3, 2] and F.shape == (M, 4)
    np.testing.assert_array_equal(F[:, 0], z[:, 0, 0])
    np.testing.assert_array_equal(F[:, 1:], z[:, [0, 4, 4], [4, 0, 4]])
    m = 0.3 + 2.0 * z[:, 0, 0] + 1.0 * z[:, 4, 4] + 1.5 * rng.normal(size=M)
    # top level explains 4 / (4 + 1 + 2.25), top two levels 5 / 7.25
    assert r2_top_levels(z, m, levels, 1) == pytest.approx(4 / 7.25, abs=0.02)
    assert r2_top_levels(z, m, levels, 2) == pytest.approx(5 / 7.25, abs=0.02)
    exact = 1.0 - 2.0 * z[:, 0, 4]
    assert r2_top_levels(z, exact, levels, 2) == pytest.approx(1.0, abs=1e-12)
    assert abs(r2_top_levels(z, z[:, 1, 1], levels, 2)) < 0.01  # a level-0 latent is not explained
    assert linear_r2(z[:, 0, 0], np.column_stack([z[:, 0, 0], rng.normal(size=M)])) == pytest.approx(0.5, abs=0.02)
    ratios = mi_ratio_per_level([{"mi": {"ksg": 0.1}}, {"mi": {"ksg": 0.0}}, {"mi": {"ksg": None}}], 0.6, "ksg")
    assert ratios[0] == pytest.approx(6.0) and ratios[1:] == [None, None]


def test_structure_factor_fraction_on_a_synthetic_case():
    rng = np.random.default_rng(5)
    M, L = 20000, 8
    N = L * L
    levels = build_mera(IsingTarget(L, K_C), n_couplings=1, hidden=4).latent_levels
    z = rng.normal(size=(M, L, L))
    u, v = z[:, 0, 0], z[:, 0, 4]                  # top latent, and a level-2 latent
    r1 = np.arange(L)[:, None] * np.ones(L)[None, :]  # first coordinate
    wave = np.cos(2 * np.pi * r1 / L), np.sin(2 * np.pi * r1 / L)
    s = 1.5
    x = u[:, None, None] * wave[0] + v[:, None, None] * wave[1] + s * rng.normal(size=(M, L, L))
    res = structure_factor_explained(x, z, levels, n_top_levels=2)
    # x̂(1, 0) = (N/2)(u − i v) + noise: explained (N²/4)·2, noise N s² per momentum; (0, 1) is noise only
    expl = N ** 2 / 2
    assert res["kmin"]["fraction"] == pytest.approx(expl / (expl + 2 * N * s ** 2), abs=0.02)
    assert res["kmin"]["S"] == pytest.approx((expl + 2 * N * s ** 2) / (2 * N), rel=0.03)
    assert abs(res["k0"]["fraction"]) < 0.01 and res["k0"]["S"] == pytest.approx(s ** 2, rel=0.03)
    # only the top level: v (level 2) is out, half of the explained part is lost
    res1 = structure_factor_explained(x, z, levels, n_top_levels=1)
    assert res1["kmin"]["fraction"] == pytest.approx((expl / 2) / (expl + 2 * N * s ** 2), abs=0.02)
    # a zero mode carried by the top latent
    x0 = 0.5 * u[:, None, None] + s * rng.normal(size=(M, L, L))
    assert structure_factor_explained(x0, z, levels, 1)["k0"]["fraction"] == pytest.approx(
        (0.25 * N ** 2) / (0.25 * N ** 2 + N * s ** 2), abs=0.02)


def test_analysis_pipeline_reports_the_rg_organisation(tmp_path):
    """analyze_samples → rg_organisation section, scalar metrics, report line and rg_levels.png; on the
    exactly Gaussian target the haar flow's top latent IS the magnetisation (R² = 1), the plain one's is not."""
    from neuralrg.pipelines.analyze import _jsonable, analyze_samples, format_report, scalar_metrics, write_figures

    L = 4
    t = GaussianTarget(L)
    x = t.sample_exact(400, torch.Generator().manual_seed(6))
    kw = dict(mi={"max_samples": 400}, response={"n_latents": 2, "n_configs": 1})
    out, arrays = {}, {}
    for sk in ("haar", "none"):
        f = build_mera(t, precondition=True, skeleton=sk, n_couplings=2, hidden=8).double()
        out[sk], arrays[sk] = analyze_samples(f, x, **kw)
    rg = out["haar"]["rg_organisation"]
    assert rg["r2_m_top_levels"]["top1"] == pytest.approx(1.0, abs=1e-10)
    assert rg["structure_factor_explained"]["top1"]["k0"]["fraction"] == pytest.approx(1.0, abs=1e-10)
    assert out["none"]["rg_organisation"]["r2_m_top_levels"]["top1"] < 0.2  # 1 of 16 sites of y: ≈ 1/16
    assert rg["response_y"]["space"] == "y" and rg["response_x"]["space"] == "x"
    assert out["haar"]["response_physical"]["space"] == "x" and out["haar"]["response"]["space"] == "y"
    assert len(rg["mi"]["ratio_physical_nn_over_latent_per_level"]) == 3
    result = _jsonable({"target": {"class": "GaussianTarget", "L": L}, "sampling": {
        "n_configurations": 400, "sampler": "exact", "acceptance": None}, **out["haar"]})
    metrics = scalar_metrics(result)
    assert metrics["rg/r2_m_top1"] == pytest.approx(1.0, abs=1e-10) and "rg/skmin_fraction_top2" in metrics
    assert "response_x/growth_factor_rms" in metrics
    assert "RG organisation" in format_report(result) and "S(k) explained" in format_report(result)
    names = write_figures(tmp_path, result, arrays["haar"])
    assert "rg_levels.png" in names and (tmp_path / "rg_levels.png").stat().st_size > 1000


def test_quick_rg_figures_for_benchmark_tables():
    """The benchmark-table figures: under exact (Wolff) samples of p the untrained Haar flow's top
    latent is the zero mode of y, so it carries m almost entirely, and its radii double per level;
    the untrained plain MERA (the identity on y) has one site of y there, and no growth."""
    from neuralrg.analysis.quick import format_rg, quick_rg_figures
    from neuralrg.physics.phi4 import Phi4Target

    torch.manual_seed(0)
    t = IsingTarget(8, K_C)
    haar = quick_rg_figures(build_mera(t, precondition=True, skeleton="haar", n_couplings=2, hidden=8),
                                      n_samples=512)
    assert "exact samples of p" in haar["samples"]
    assert haar["r2_m_top1"] > 0.97 and 1.7 <= haar["radius_growth"] <= 2.5 and haar["radius_space"] == "y"
    assert haar["r2_m_top1"] - 1e-9 <= haar["r2_m_cubic_top1"] <= 1.0  # more features never fit worse
    plain = quick_rg_figures(build_mera(t, precondition=True, skeleton="none", n_couplings=2, hidden=8),
                                       n_samples=512)
    assert plain["r2_m_top1"] < 0.7 and plain["radius_growth"] is None
    assert "R²(m|top1,2)" in format_rg(haar) and "(q)" not in format_rg(haar)
    # no exact sampler (phi^4): the flow's own samples, and the cell says so
    phi = quick_rg_figures(build_mera(Phi4Target(4, 0.2, 0.5), n_couplings=1, hidden=4), n_samples=64)
    assert "flow q" in phi["samples"] and "(q)" in format_rg(phi)
    assert "n/a" in format_rg({"r2_m_top1": None})
    with pytest.raises(ValueError, match="n_samples"):
        quick_rg_figures(build_mera(t, n_couplings=1, hidden=4), n_samples=4)



def test_one_sign_r2_is_r2_of_sign_aligned_latents():
    """The one-sign R² is R²(m | top level) of the latents of σx, σ drawn from P(σ | x) ∝ q(σx)
    (as a Z2 flow maps x); the untrained Haar flow is linear and odd, so taking the sign out costs
    nothing there: both figures stay near 1. Without a Wolff sampler (φ⁴) the quick figures come
    from q and carry no one-sign figure."""
    from neuralrg.analysis.latents import latents_under_p
    from neuralrg.analysis.quick import format_rg, one_sign_r2, quick_rg_figures
    from neuralrg.analysis.rg_organisation import r2_top_levels
    from neuralrg.physics.phi4 import Phi4Target
    from neuralrg.physics.wolff import exact_x_samples

    torch.manual_seed(0)
    t = IsingTarget(8, K_C)
    flow = build_mera(t, precondition=True, skeleton="haar", n_couplings=2, hidden=8)
    x, _ = exact_x_samples(t, 256, seed=3, dtype=flow.dtype)
    got = one_sign_r2(flow, x, seed=5)
    assert flow.z2 is False  # left as it was
    flow.z2 = True
    z, y = latents_under_p(flow, x, generator=torch.Generator().manual_seed(5 + 2))
    flow.z2 = False
    want = r2_top_levels(z, t.observables(y.double())["m"], flow.latent_levels, 1)
    assert got["top1"] == pytest.approx(want, abs=1e-12)
    rg = quick_rg_figures(flow, n_samples=512)
    assert rg["r2_m_one_sign_top1"] > 0.95 and rg["r2_m_top1"] > 0.95
    assert "one sign" in format_rg(rg)
    phi = quick_rg_figures(build_mera(Phi4Target(4, 0.2, 0.5), n_couplings=1, hidden=4), n_samples=64)
    assert phi["r2_m_one_sign_top1"] is None and "one sign" not in format_rg(phi)
