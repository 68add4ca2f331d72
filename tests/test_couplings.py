"""General Ising couplings behind the target protocol: anisotropic, antiferromagnetic (any L) and
bond-disordered (±J / Gaussian Edwards–Anderson) relaxations, their exact references, improved
estimators with bonds, the replica overlap, Wolff's refusals and the parallel-tempering sampler.

Independent references: dense N×N matrices built here with explicit loops, brute-force
enumeration of the spins (``transfer_matrix.brute_force_solution`` and sums written out here),
Gauss–Hermite quadrature of ∫ e^{−E(x)} dx at L = 2, and the row transfer matrix.
"""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from helpers import save_checkpoint
from neuralrg.checkpoint import load_flow
from neuralrg.flows import build_mera
from neuralrg.physics.exact import exact_solution, main as exact_main
from neuralrg.physics.ising import IsingTarget
from neuralrg.physics.lattice import K_C
from neuralrg.physics.observables import (conditional_moments, pair_overlap_moments, spin_moments,
                                          summarize_overlap)
from neuralrg.physics.target import same_spec, target_from_spec
from neuralrg.physics.transfer_matrix import brute_force_solution, random_bonds, transfer_matrix_solution
from neuralrg.sampling.chains import summarize_run
from neuralrg.sampling.registry import get_sampler, resolve_settings, run_sampler, unsupported_reason
from neuralrg.sampling.samplers.parallel_tempering import run_parallel_tempering, temperature_ladder
from neuralrg.sampling.samplers.physical_hmc import run_physical_hmc

torch.set_num_threads(1)
F64 = torch.float64
N_SIGMA = 4.0


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def dense_kmat(Kx: np.ndarray, Ky: np.ndarray) -> np.ndarray:
    """Kmat with explicit loops: K_b on both directed entries of every right/down bond."""
    L = Kx.shape[0]
    k = np.zeros((L * L, L * L))
    for i in range(L):
        for j in range(L):
            n, r, d = i * L + j, i * L + (j + 1) % L, ((i + 1) % L) * L + j
            k[n, r] += Kx[i, j]; k[r, n] += Kx[i, j]
            k[n, d] += Ky[i, j]; k[d, n] += Ky[i, j]
    return k


def dense_reference(t: IsingTarget) -> tuple[np.ndarray, float]:
    """(A, c) from the dense Kmat of the target's couplings, c putting λ_min(A) at shift."""
    kmat = dense_kmat(*t.couplings())
    c = t.shift - np.linalg.eigvalsh(kmat).min()
    return kmat + c * np.eye(t.n_sites), c


TARGETS = {
    "pm_j_L3": lambda: IsingTarget(3, 0.8, disorder="pm_j", seed=1),
    "gauss_L4": lambda: IsingTarget(4, 0.6, 0.3, disorder="gaussian", seed=7),
    "pm_j_L2": lambda: IsingTarget(2, 0.9, disorder="pm_j", seed=2),
    "afm_L5": lambda: IsingTarget(5, -0.35),
    "afm_L3": lambda: IsingTarget(3, -0.5),
    "aniso_L4": lambda: IsingTarget(4, 0.6, K_y=0.25),
    "aniso_L3": lambda: IsingTarget(3, 0.3, K_y=-0.7),
}


# ----------------------------------------------------------------------------- the density
@pytest.mark.parametrize("name", list(TARGETS))
def test_energy_and_gaussian_part_against_dense_matrices(name):
    t = TARGETS[name]()
    A, c = dense_reference(t)
    assert t.c == pytest.approx(c, abs=1e-12)
    assert t.logdet_A == pytest.approx(np.linalg.slogdet(A)[1], rel=1e-12, abs=1e-12)
    x = 1.5 * torch.randn(6, t.L, t.L, generator=gen(1), dtype=F64)
    xf = x.reshape(6, -1).numpy()
    ref = 0.5 * np.einsum("bi,ij,bj->b", xf, np.linalg.inv(A), xf) - np.log(np.cosh(xf)).sum(1)
    np.testing.assert_allclose(t.energy(x).numpy(), ref, rtol=1e-11, atol=1e-11)
    # analytic gradient = autograd of the energy
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(t.energy(xr).sum(), xr)
    torch.testing.assert_close(t.grad_energy(x), g, rtol=1e-10, atol=1e-10)
    # A^{±1/2} (the preconditioner) compose to A and A^{-1}
    lam, U = np.linalg.eigh(A)
    half = (U * np.sqrt(lam)) @ U.T
    np.testing.assert_allclose(t.apply_coupling_power(x, 0.5).reshape(6, -1).numpy(), xf @ half, rtol=1e-10, atol=1e-10)
    back = t.apply_coupling_power(t.apply_coupling_power(x, 0.5), -0.5)
    torch.testing.assert_close(back, x, rtol=1e-10, atol=1e-10)
    # dtype follows the input
    assert t.energy(x.float()).dtype == torch.float32
    assert t.apply_coupling_power(x.float(), -1.0).dtype == torch.float32


@pytest.mark.parametrize("name", ["pm_j_L3", "gauss_L4", "pm_j_L2", "afm_L3", "aniso_L3", "aniso_L4"])
def test_hs_identity_log_z_against_enumeration(name):
    """target.log_z = ln Z_Ising (enumeration) + Nc/2 + (N/2) ln 2π + ½ ln det A − N ln 2 (dense)."""
    t = TARGETS[name]()
    A, c = dense_reference(t)
    bf = brute_force_solution(t.Jx, t.Jy, beta=t.K)       # e = ⟨H⟩/N with H = −Σ J_b s s
    assert bf["log_z"] == pytest.approx(brute_force_solution(*t.couplings())["log_z"], rel=1e-13)
    N = t.n_sites
    ref = bf["log_z"] + N * c / 2 + N / 2 * math.log(2 * math.pi) + 0.5 * np.linalg.slogdet(A)[1] - N * math.log(2)
    assert t.log_z == pytest.approx(ref, rel=1e-11)
    ex = t.exact()
    assert ex["continuous_log_z"] == pytest.approx(ref, rel=1e-11)
    assert t.log_z_ising == pytest.approx(bf["log_z"], rel=1e-11)
    for k in ("energy_per_site", "specific_heat_per_site", "m2", "m4"):
        assert ex[k] == pytest.approx(bf[k], rel=1e-9, abs=1e-12), k


@pytest.mark.parametrize("disorder,seed", [("pm_j", 5), ("gaussian", 11)])
def test_hs_identity_by_quadrature_at_l2(disorder, seed):
    """ln ∫ e^{−E(x)} dx by Gauss–Hermite quadrature of the target's own energy (x = C y, A = C Cᵀ)."""
    t = IsingTarget(2, 0.7, 0.2, disorder=disorder, seed=seed)
    A, _ = dense_reference(t)
    C = np.linalg.cholesky(A)
    nodes, weights = np.polynomial.hermite_e.hermegauss(24)      # weight e^{−y²/2}
    Y = np.array(list(itertools.product(nodes, repeat=4)))
    W = np.prod(np.array(list(itertools.product(weights, repeat=4))), axis=1)
    x = torch.from_numpy(Y @ C.T).reshape(-1, 2, 2)
    # e^{−E(x)} = e^{−½|y|²} e^{E_gauss − E}: the quadrature weight carries e^{−½|y|²}
    f = np.exp(-t.energy(x).numpy() + 0.5 * (Y**2).sum(1))
    log_zx = math.log((W * f).sum()) + math.log(abs(np.linalg.det(C)))
    assert log_zx == pytest.approx(t.log_z, rel=1e-9)


# ----------------------------------------------------------------------------- identity / spec
def test_same_seed_same_bonds_and_spec_round_trip():
    a, b = IsingTarget(6, 1.0, disorder="pm_j", seed=3), IsingTarget(6, 1.0, disorder="pm_j", seed=3)
    c = IsingTarget(6, 1.0, disorder="pm_j", seed=4)
    assert np.array_equal(a.Jx, b.Jx) and np.array_equal(a.Jy, b.Jy)
    assert not (np.array_equal(a.Jx, c.Jx) and np.array_equal(a.Jy, c.Jy))
    assert np.array_equal(a.Jx, random_bonds(6, 3, "pm_j")[0])
    assert set(np.unique(a.Jx)) <= {-1.0, 1.0}
    assert a.spec()["kwargs"] == {"L": 6, "K": 1.0, "shift": 0.1, "disorder": "pm_j", "seed": 3}
    r = target_from_spec(json.loads(json.dumps(a.spec())))
    assert np.array_equal(r.Jx, a.Jx) and r.energy(torch.ones(1, 6, 6, dtype=F64)) == a.energy(torch.ones(1, 6, 6, dtype=F64))
    assert same_spec(a.spec(), b.spec()) and not same_spec(a.spec(), c.spec())
    g = IsingTarget(6, 1.0, disorder="gaussian", seed=3)
    assert not np.array_equal(np.abs(g.Jx), np.ones((6, 6)))


def test_uniform_spec_unchanged_and_aniso_normalised():
    assert IsingTarget(8, K_C).spec()["kwargs"] == {"L": 8, "K": K_C, "shift": 0.1}
    assert IsingTarget(8, 0.4, K_y=0.4).spec()["kwargs"] == {"L": 8, "K": 0.4, "shift": 0.1}
    assert IsingTarget(8, 0.4, K_y=0.2).spec()["kwargs"] == {"L": 8, "K": 0.4, "shift": 0.1, "K_y": 0.2}
    # the uniform code path is untouched: Kaufman's numbers, bit for bit
    t = IsingTarget(8, K_C)
    assert t.exact() == exact_solution(8, K_C, 0.1) and t.is_uniform and t.bond_kind == "uniform"


def test_bond_file_records_its_bonds(tmp_path):
    Jx, Jy = random_bonds(4, 9, "gaussian")
    np.savez(tmp_path / "b.npz", Kx=Jx, Ky=Jy)
    np.save(tmp_path / "b.npy", np.stack([Jx, Jy]))
    a = IsingTarget(4, 0.5, bond_file=str(tmp_path / "b.npz"))
    b = IsingTarget(4, 0.5, bond_file=tmp_path / "b.npy")
    assert np.array_equal(a.Jx, Jx) and np.array_equal(b.Jy, Jy)
    kw = a.spec()["kwargs"]
    assert kw["bonds"] == {"Kx": Jx.tolist(), "Ky": Jy.tolist()} and "bond_file" not in kw
    r = target_from_spec(json.loads(json.dumps(a.spec())))
    assert np.array_equal(r.Jx, Jx) and r.log_z == pytest.approx(a.log_z, rel=1e-14)
    assert a.bond_kind == "bonds" and "sha1" in a.describe() and len(a.describe()) < 120
    np.testing.assert_allclose(a.couplings()[0], 0.5 * Jx)


def test_checkpoint_records_bonds_and_refuses_others(tmp_path):
    torch.manual_seed(0)
    t = IsingTarget(4, 0.8, disorder="pm_j", seed=3)
    flow = build_mera(t, n_couplings=2, hidden=8, precondition=True).to(F64)
    path = save_checkpoint(flow, tmp_path / "glass.ckpt")
    back = load_flow(path, expect={"disorder": "pm_j", "seed": 3})
    assert np.array_equal(back.target.Jx, t.Jx) and back.target.spec() == t.spec()
    x = torch.randn(3, 4, 4, dtype=F64)
    torch.testing.assert_close(back.target.energy(x), t.energy(x))
    with pytest.raises(ValueError, match="seed"):
        load_flow(path, expect={"seed": 4})
    with pytest.raises(ValueError, match="disorder"):
        load_flow(path, expect={"disorder": "gaussian"})
    other = IsingTarget(4, 0.8, bonds={"Kx": -t.Jx, "Ky": t.Jy})
    f2 = build_mera(other, n_couplings=2, hidden=8).to(F64)
    p2 = save_checkpoint(f2, tmp_path / "bonds.ckpt")
    assert load_flow(p2, expect={"bonds": other.spec()["kwargs"]["bonds"]}).target.bond_kind == "bonds"
    with pytest.raises(ValueError, match="bonds"):
        load_flow(p2, expect={"bonds": {"Kx": t.Jx.tolist(), "Ky": t.Jy.tolist()}})


@pytest.mark.parametrize("kwargs,word", [
    (dict(disorder="uniform_j", seed=1), "disorder"),
    (dict(disorder="pm_j"), "seed"),
    (dict(disorder="pm_j", seed=-1), "seed"),
    (dict(seed=3), "seed"),
    (dict(K_y=float("inf")), "K_y"),
    (dict(K_y=0.3, disorder="pm_j", seed=1), "at most one"),
    (dict(bonds={"Kx": np.ones((3, 3)), "Ky": np.ones((4, 4))}), "Kx"),
    (dict(bonds={"Kx": np.ones((4, 4)), "Ky": np.full((4, 4), np.nan)}), "finite"),
    (dict(bonds={"Kx": np.ones((4, 4))}), "Ky"),
    (dict(shift=0.0), "shift"),
    (dict(shift=-1.0, disorder="pm_j", seed=0), "shift"),
])
def test_bad_input_names_the_parameter(kwargs, word):
    kw = {"L": 4, "K": 0.5, **kwargs}
    with pytest.raises(ValueError, match=word):
        IsingTarget(**kw)


def test_bad_bond_files(tmp_path):
    np.savez(tmp_path / "small.npz", Kx=np.ones((3, 3)), Ky=np.ones((3, 3)))
    np.savez(tmp_path / "nokey.npz", Jx=np.ones((4, 4)))
    np.save(tmp_path / "flat.npy", np.ones((4, 4)))
    bad = np.ones((2, 4, 4)); bad[1, 2, 3] = np.inf
    np.save(tmp_path / "inf.npy", bad)
    (tmp_path / "b.txt").write_text("1 2")
    for name, word in (("small.npz", r"\(4, 4\)"), ("nokey.npz", "Kx"), ("flat.npy", r"\(2, 4, 4\)"),
                       ("inf.npy", "finite"), ("missing.npz", "does not exist"), ("b.txt", ".npz")):
        with pytest.raises(ValueError, match="bond_file") as exc:
            IsingTarget(4, 0.5, bond_file=str(tmp_path / name))
        assert exc.match(word), (name, str(exc.value))


def test_large_disordered_lattice_has_no_exact_reference():
    t = IsingTarget(16, 1.0, disorder="pm_j", seed=0)
    assert t.exact() == {} and t.log_z is None and t.log_z_ising is None
    with pytest.raises(ValueError, match="L <= 64"):
        IsingTarget(66, 1.0, disorder="pm_j", seed=0)


# ----------------------------------------------------------------------------- exact references
def test_afm_odd_l_and_anisotropic_against_transfer_matrix():
    # odd-L antiferromagnet: the shift follows λ_min of the actual Kmat
    t = IsingTarget(5, -0.35)
    A, _ = dense_reference(t)
    assert np.linalg.eigvalsh(A).min() == pytest.approx(0.1, abs=1e-12)
    ex, tm = t.exact(), transfer_matrix_solution(np.ones((5, 5)), np.ones((5, 5)), beta=-0.35)
    for k in ("log_z", "energy_per_site", "specific_heat_per_site", "m2", "m4"):
        assert ex[k] == pytest.approx(tm[k], rel=1e-12), k
    assert ex["energy_per_site"] > 0  # J = +1, K < 0: the ordered AFM has H = +2N
    with pytest.raises(ValueError, match="odd L"):
        exact_solution(5, -0.35)
    # even L antiferromagnet still uses Kaufman, consistent with the transfer matrix
    e4 = IsingTarget(4, -0.35).exact()
    assert e4["energy_per_site"] == pytest.approx(
        transfer_matrix_solution(np.ones((4, 4)), np.ones((4, 4)), beta=-0.35)["energy_per_site"], rel=1e-10)
    # anisotropic: transfer matrix with Kx = K, Ky = K_y; K_y → K is Kaufman's model
    a = IsingTarget(6, 0.5, K_y=0.2)
    tm = transfer_matrix_solution(np.full((6, 6), 0.5), np.full((6, 6), 0.2))
    ex = a.exact()
    assert ex["log_z"] == pytest.approx(tm["log_z"], rel=1e-12)
    assert ex["energy_per_site"] * 0.5 == pytest.approx(tm["energy_per_site"], rel=1e-10)  # e = ⟨H⟩/N, H = −Σ J s s
    assert ex["specific_heat_per_site"] == pytest.approx(tm["specific_heat_per_site"], rel=1e-9)
    near = IsingTarget(6, 0.5, K_y=0.5 + 1e-7).exact()
    assert near["log_z"] == pytest.approx(exact_solution(6, 0.5)["log_z"], rel=1e-6)


def test_cli_accepts_the_coupling_spec(capsys):
    assert exact_main(["4", "0.5", "--disorder", "pm_j", "--seed", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    ref = IsingTarget(4, 0.5, disorder="pm_j", seed=3).exact()
    assert out["log_z"] == ref["log_z"] and out["q2"] == ref["q2"] and out["seed"] == 3
    assert exact_main(["4", "0.5", "--Ky", "0.2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["log_z"] == pytest.approx(transfer_matrix_solution(np.full((4, 4), 0.5), np.full((4, 4), 0.2))["log_z"])
    assert exact_main(["5", "-0.3", "--transfer-matrix"]) == 0
    assert json.loads(capsys.readouterr().out)["log_z"] == pytest.approx(IsingTarget(5, -0.3).log_z_ising)
    with pytest.raises(SystemExit) as exc:
        exact_main(["4", "0.5", "--disorder", "bimodal", "--seed", "1"])
    assert exc.value.code == 2 and "disorder" in capsys.readouterr().err


# ----------------------------------------------------------------------------- improved estimators
def _all_spins(L: int) -> np.ndarray:
    N = L * L
    idx = np.arange(1 << N)
    return (1.0 - 2.0 * ((idx[:, None] >> np.arange(N)[None, :]) & 1)).reshape(-1, L, L)


@pytest.mark.parametrize("name", ["pm_j_L3", "pm_j_L2", "aniso_L3", "afm_L3"])
def test_conditional_moments_with_bonds_against_enumeration(name):
    """E[H|x], E[H²|x], m², m⁴ against the direct sum over s with P(s|x) ∝ e^{s·x}."""
    t = TARGETS[name]()
    L, N = t.L, t.n_sites
    x = 1.2 * torch.randn(3, L, L, generator=gen(4), dtype=F64)
    obs = t.observables(x, generator=gen(0))
    S = _all_spins(L)
    H = -(t.Jx * S * np.roll(S, -1, 2) + t.Jy * S * np.roll(S, -1, 1)).sum((1, 2))
    # same H from spin_moments with the patterns
    torch.testing.assert_close(spin_moments(torch.from_numpy(S), torch.from_numpy(t.Jx), torch.from_numpy(t.Jy))["energy"],
                               torch.from_numpy(H / N))
    m = S.sum((1, 2)) / N
    for b in range(3):
        logw = (S * x[b].numpy()).sum((1, 2))
        p = np.exp(logw - logw.max()); p /= p.sum()
        assert float(obs["energy"][b]) == pytest.approx(p @ (H / N), rel=1e-10, abs=1e-12)
        assert float(obs["energy2"][b]) == pytest.approx(p @ (H / N) ** 2, rel=1e-10, abs=1e-12)
        assert float(obs["m2"][b]) == pytest.approx(p @ m**2, rel=1e-10)
        assert float(obs["m4"][b]) == pytest.approx(p @ m**4, rel=1e-10)
    if t.is_uniform:  # the J = 1 path is the old one
        torch.testing.assert_close(obs["energy2"], conditional_moments(x)["energy2"])


def test_pair_overlap_moments_against_enumeration():
    L = 2
    N = L * L
    x = 1.3 * torch.randn(4, L, L, generator=gen(8), dtype=F64)
    q = pair_overlap_moments(x)
    S = _all_spins(L).reshape(-1, N)
    for i in range(2):
        pa = [np.exp(S @ x[2 * i + r].reshape(-1).numpy()) for r in (0, 1)]
        pa = [p / p.sum() for p in pa]
        qq = (S @ S.T) / N                               # q(s^a, s^b)
        w = np.outer(pa[0], pa[1])
        assert float(q["q2"][2 * i]) == pytest.approx((w * qq**2).sum(), rel=1e-12)
        assert float(q["q4"][2 * i + 1]) == pytest.approx((w * qq**4).sum(), rel=1e-12)
    assert "q2" not in IsingTarget(4, 0.5, disorder="pm_j", seed=0).observables(torch.zeros(3, 4, 4, dtype=F64))
    with pytest.raises(ValueError, match="even"):
        summarize_overlap(torch.ones(3, 10), torch.ones(3, 10), 16)


# ----------------------------------------------------------------------------- samplers
def test_wolff_refuses_frustrated_couplings():
    glass = IsingTarget(4, 0.8, disorder="pm_j", seed=0)
    reason = unsupported_reason("wolff", glass)
    assert reason is not None and "translation-invariant couplings" in reason and glass.bond_kind in reason
    with pytest.raises(ValueError, match="does not apply"):
        run_sampler("wolff", None, glass, resolve_settings("wolff"))
    for odd in (IsingTarget(5, -0.5), IsingTarget(5, 0.5, K_y=-0.3)):  # an AFM direction on odd L: frustrated
        assert "odd L = 5 torus is frustrated" in unsupported_reason("wolff", odd)
    assert unsupported_reason("wolff", IsingTarget(4, 0.5)) is None
    assert unsupported_reason("parallel_tempering", glass) is None


@pytest.mark.parametrize("target", [IsingTarget(4, -0.5), IsingTarget(4, 0.6, K_y=0.25), IsingTarget(4, -0.6, K_y=0.3),
                                    IsingTarget(6, 0.2, K_y=-0.5)],
                         ids=["afm_L4", "aniso_L4", "afm_x_ferro_y_L4", "ferro_x_afm_y_L6"])
def test_wolff_is_exact_for_unfrustrated_couplings(target):
    """Anisotropic bonds (two bond probabilities) and antiferromagnetic directions on even L (the
    sublattice gauge s = g·σ) against the transfer matrix: energy, m² and the specific heat."""
    assert unsupported_reason("wolff", target) is None
    run = run_sampler("wolff", None, target, resolve_settings("wolff", {"n_chains": 32, "n_warmup": 20,
                                                                        "n_samples": 300}), gen(4))
    summ = summarize_run(run, target)
    ex = {**target.exact(), "m2": transfer_matrix_solution(*target.couplings())["m2"]}
    keys = ["energy_per_site", "m2", "specific_heat_per_site"]
    if target.order_gauge is not None:  # the AFM's order parameter: ⟨m_s²⟩ from the gauged ferromagnet
        kx, ky = target.couplings()
        assert ex["ms2"] == pytest.approx(transfer_matrix_solution(np.abs(kx), np.abs(ky))["m2"])
        assert ex["ms2"] > 2 * ex["m2"]
        keys.append("ms2")
        ms2_x = target.observables(run.x.to(F64))["ms2"]  # improved estimator on exact HS samples
        assert abs(float(ms2_x.mean()) - ex["ms2"]) < N_SIGMA * 3 * float(ms2_x.std()) / math.sqrt(ms2_x.numel())
    for key in keys:
        within(summ, key, ex[key])
    # τ and ESS/s of the order parameter: the staggered m² where there is an order gauge
    order = "ms2" if target.order_gauge is not None else "m2"
    assert summ["order_parameter"] == order and set(summ["tau_int"]) == {"m2", "energy", order}
    C, T = run.observables["m2"].shape
    assert summ["ess_m2"] == pytest.approx(C * T / (2 * summ["tau_int"][order]["trajectories"]), rel=1e-12)
    # kept x are exact HS samples of the (gauged) spins: the continuous energy estimator agrees too
    e = target.observables(run.x.to(F64))["energy"]
    assert abs(float(e.mean()) - ex["energy_per_site"]) < N_SIGMA * float(e.std()) / math.sqrt(e.numel()) * 3


def within(summary: dict, key: str, exact: float) -> float:
    obs = summary["observables"][key]
    assert 0 < obs["err"] < 0.1 * max(abs(exact), 0.05), (key, obs)
    dev = (obs["mean"] - exact) / obs["err"]
    assert abs(dev) < N_SIGMA, (key, obs, exact)
    return dev


GLASS = IsingTarget(4, 0.8, disorder="pm_j", seed=3)


def test_parallel_tempering_on_a_glass_is_exact():
    ex = GLASS.exact()
    s = resolve_settings("parallel_tempering", {"n_chains": 32, "n_warmup": 150, "n_samples": 400},
                         {"n_temperatures": 4, "t_max": 3.0, "n_leapfrog": 8, "step_size": 0.2})
    run = run_sampler("parallel_tempering", None, GLASS, s, gen(0))
    assert get_sampler("parallel_tempering").needs_flow is False
    assert run.x.dtype == torch.get_default_dtype() and run.z is None and run.log_q is None
    summ = summarize_run(run, GLASS)
    for key in ("energy_per_site", "m2", "q2", "specific_heat_per_site"):
        within(summ, key, ex[key])
    assert summ["observables"]["chi_sg"]["mean"] == pytest.approx(16 * summ["observables"]["q2"]["mean"])
    assert 0.0 < summ["observables"]["binder_q"]["mean"] <= 1.0
    st = run.settings
    assert st["temperatures"] == pytest.approx(temperature_ladder(4, 3.0)) and st["temperatures"][0] == 1.0
    assert len(st["swap_accept"]) == 3 and all(0.05 < a <= 1.0 for a in st["swap_accept"])
    assert len(st["step_size"]) == 4 and all(0.3 < a <= 1.0 for a in st["hmc_accept"])


def test_physical_hmc_on_a_glass_is_exact():
    torch.manual_seed(0)
    flow = build_mera(GLASS, n_couplings=2, hidden=8, precondition=True).to(F64).eval()
    run = run_physical_hmc(flow, GLASS, n_chains=32, n_warmup=150, n_samples=500, n_leapfrog=8, step_size=0.2,
                           generator=gen(1))
    summ = summarize_run(run, GLASS)
    ex = GLASS.exact()
    for key in ("energy_per_site", "m2"):
        within(summ, key, ex[key])
    assert "q2" in summ["observables"]


@pytest.mark.parametrize("target", [IsingTarget(5, -0.35), IsingTarget(4, 0.6, K_y=0.25)], ids=["afm_L5", "aniso_L4"])
def test_parallel_tempering_on_afm_and_anisotropic_models(target):
    run = run_parallel_tempering(None, target, n_chains=16, n_warmup=100, n_samples=300, n_temperatures=3,
                                 t_max=2.0, n_leapfrog=8, step_size=0.2, generator=gen(2), dtype=F64)
    summ = summarize_run(run, target)
    ex = target.exact()
    for key in ("energy_per_site", "m2"):
        within(summ, key, ex[key])
    assert "q2" not in summ["observables"]


@pytest.mark.parametrize("bad,word", [({"n_temperatures": 0}, "n_temperatures"), ({"t_max": 1.0}, "t_max"),
                                      ({"t_max": float("nan")}, "t_max"), ({"n_temperatures": 2.5}, "n_temperatures")])
def test_parallel_tempering_settings_are_checked(bad, word):
    with pytest.raises(ValueError, match=word):
        resolve_settings("parallel_tempering", {}, bad)


def test_parallel_tempering_from_a_flow_and_with_a_time_budget():
    torch.manual_seed(0)
    flow = build_mera(GLASS, n_couplings=2, hidden=8).to(F64).eval()
    s = resolve_settings("parallel_tempering", {"n_chains": 4, "n_warmup": 5, "n_samples": 10})
    run = run_sampler("parallel_tempering", flow, GLASS, s, gen(0))
    assert run.x.dtype == F64 and run.z.shape == run.x.shape and run.log_q.shape == (run.x.shape[0],)
    assert not run.partial and run.observables["energy"].shape == (4, 10) and "q2" in run.observables
    cut = run_sampler("parallel_tempering", flow, GLASS, s, gen(0), max_time=0.0)
    assert cut.partial and cut.observables["energy"].shape == (4, 2)


def test_exact_data_for_the_antiferromagnet_is_exact():
    """loss.name=data on an even-L antiferromagnet: Wolff through the gauge, x | s ~ N(A s, A)."""
    from neuralrg.training.chains import TrainingData

    target = IsingTarget(4, -0.5)
    data = TrainingData(target, 4096, n_chains=64, sweep_spacing=2, warmup_sweeps=20, seed=1)
    assert data.source == "wolff"
    e = target.observables(data.x)["energy"]
    exact = target.exact()["energy_per_site"]
    assert exact > 0  # antiferromagnetic order at K = −0.5: H/N = −Σ s s/N > 0
    assert abs(float(e.mean()) - exact) < N_SIGMA * float(e.std()) / math.sqrt(e.numel()) * 2


@pytest.mark.parametrize("L, kx, ky", [(6, 0.6, 0.25), (8, 0.2, 0.5), (8, -0.4, 0.3), (7, 0.3, 0.5), (4, -0.5, -0.2)])
def test_anisotropic_kaufman_matches_the_transfer_matrix(L, kx, ky):
    from neuralrg.physics.exact import anisotropic_solution

    a = anisotropic_solution(L, kx, ky)
    tm = transfer_matrix_solution(np.ones((L, L)), np.full((L, L), ky / kx), beta=kx)
    assert a["log_z"] == pytest.approx(tm["log_z"], abs=1e-11)
    assert a["energy_per_site"] == pytest.approx(tm["energy_per_site"], abs=1e-10)
    assert a["specific_heat_per_site"] == pytest.approx(tm["specific_heat_per_site"], abs=5e-8)


def test_anisotropic_kaufman_beyond_the_transfer_matrix():
    """L = 16, 32: Kx = Ky reproduces the analytic isotropic solution; an anisotropic target at L = 16
    has exact ln Z_x, e and C (the HS identity on top), and odd L with an AFM direction has none."""
    from neuralrg.physics.exact import anisotropic_solution

    for L in (16, 32):
        a, e = anisotropic_solution(L, K_C, K_C), exact_solution(L, K_C)
        assert a["log_z"] == pytest.approx(e["log_z"], abs=1e-10)
        assert a["energy_per_site"] == pytest.approx(e["energy_per_site"], abs=1e-10)
        assert a["specific_heat_per_site"] == pytest.approx(e["specific_heat_per_site"], abs=1e-7)
    t = IsingTarget(16, 0.6, K_y=0.3108324425992326)
    ex = t.exact()
    assert ex["log_z"] == pytest.approx(anisotropic_solution(16, 0.6, 0.3108324425992326)["log_z"])
    assert t.log_z == pytest.approx(ex["continuous_log_z"]) and t.log_z_ising == pytest.approx(ex["log_z"])
    # swapping the directions of a square torus leaves ln Z unchanged
    assert anisotropic_solution(16, 0.3108324425992326, 0.6)["log_z"] == pytest.approx(ex["log_z"], abs=1e-10)
    assert IsingTarget(13, 0.5, K_y=-0.3).exact() == {} and IsingTarget(13, 0.5, K_y=-0.3).log_z is None
    with pytest.raises(ValueError, match="Ky must be a finite real number != 0"):
        anisotropic_solution(8, 0.5, 0.0)
    with pytest.raises(ValueError, match="Kx = -0.5 < 0 .* odd L = 7 is frustrated"):
        anisotropic_solution(7, -0.5, 0.3)


def test_flow_metropolis_pairs_replicas_at_the_same_step():
    """The overlap pairs chain 2i with chain 2i+1 at the same step (not two steps of one chain,
    which a rejected move makes identical and so q² ≈ 1): both chains of a pair carry the same q2 at
    every step (the old pairing fails this), and ⟨e⟩ and ⟨q²⟩ agree with the exact ones (enumeration)."""
    glass = IsingTarget(4, 0.3, disorder="pm_j", seed=3)  # warm enough for a tiny flow to accept ~20 %
    torch.manual_seed(0)
    flow = build_mera(glass, n_couplings=2, hidden=8, precondition=True).to(F64)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
    for _ in range(150):  # a briefly trained flow: acceptance well inside (0, 1)
        opt.zero_grad()
        flow.reverse_kld(128).backward()
        opt.step()
    flow.eval()
    run = run_sampler("flow_metropolis", flow, glass,
                      resolve_settings("flow_metropolis", {"n_chains": 32, "n_warmup": 50, "n_samples": 600},
                                       {"batch_size": 1000}), gen(2))
    assert 0.05 < run.accept < 0.95
    q2 = run.observables["q2"]
    assert q2.shape == (32, 600) and torch.equal(q2[0::2], q2[1::2])
    summ = summarize_run(run, glass)
    ex = glass.exact()
    for key in ("energy_per_site", "q2"):
        within(summ, key, ex[key])
