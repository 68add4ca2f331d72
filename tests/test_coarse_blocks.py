"""model.coarse: other block arguments for the coarse RG levels of a per-level MERA."""
import pytest
import torch

from neuralrg.flows import build_flow, build_mera
from neuralrg.flows.transfer import plan_warm_start
from neuralrg.physics.ising import IsingTarget
from helpers import assert_mera_exact_in_float64, compose_train
from test_flows import randomise

DT = torch.float64
CONTEXT = "neuralrg.flows.context.ContextPlaquetteBijector"
CONTEXT_SPLINE = "neuralrg.flows.context.ContextSplinePlaquetteBijector"


def _flow(L=8, coarse=None, **kw):
    args = dict(block=CONTEXT_SPLINE, n_couplings=2, hidden=[8, 8], activation="silu", precondition=True,
                skeleton="haar", decimator_block=CONTEXT)
    args.update(kw)
    return build_mera(IsingTarget(L, 0.44), coarse=coarse, **args)


def _widths(flow):
    """{layer kind: first hidden width of its block's first coupling network}."""
    out = {}
    for layer in flow.flows:
        if hasattr(layer, "kind"):
            linear = [m for m in layer.block.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
            out[layer.kind] = linear[0].out_channels if isinstance(linear[0], torch.nn.Conv2d) else linear[0].out_features
    return out


def test_coarse_levels_get_their_own_widths_and_the_fine_levels_keep_theirs():
    f = _flow(8, {"from_level": 1, "hidden": [16, 16, 16]})
    w = _widths(f)
    assert w["disentangler0.0"] == w["decimator0"] == 8
    assert w["disentangler1.0"] == w["decimator1"] == w["disentangler2.0"] == w["decimator2"] == 16
    n_lin = sum(isinstance(m, torch.nn.Linear) for m in dict(f.named_modules())["flows.0"].modules())
    n_lin0 = sum(isinstance(m, torch.nn.Linear) for m in dict(_flow(8).named_modules())["flows.0"].modules())
    assert n_lin > n_lin0  # three hidden layers on the coarse levels, not two
    plain = sum(p.numel() for p in _flow(8).parameters())
    assert sum(p.numel() for p in f.parameters()) > plain
    # the decimators keep their own class and couplings, the disentanglers theirs
    kinds = {layer.kind: layer.block for layer in f.flows if hasattr(layer, "kind")}
    assert type(kinds["decimator2"]).__name__ == "HaarDecimator"
    assert type(kinds["decimator2"].block).__name__ == "ContextPlaquetteBijector"
    assert type(kinds["disentangler2.0"]).__name__ == "ContextSplinePlaquetteBijector"
    assert f.config["coarse"] == {"from_level": 1, "hidden": [16, 16, 16]}
    assert "coarse" not in _flow(8).config  # unset: older configs rebuild unchanged


def test_coarse_couplings_alone_keep_the_block_widths():
    f = _flow(8, {"from_level": 2, "n_couplings": 3})
    dec = [m for m in f.modules() if type(m).__name__ == "ContextPlaquetteBijector"]
    assert sorted(len(m.couplings) for m in dec) == [2, 2, 3]
    assert set(_widths(f).values()) == {8}
    g = _flow(8, {"from_level": 2, "n_hidden_layers": 3})
    assert _widths(g)["decimator2"] == 8


@pytest.mark.parametrize("L", [4, 8])
def test_mera_with_coarse_blocks_is_exact_in_float64(L):
    f = randomise(_flow(L, {"from_level": 1, "hidden": [12, 12, 12], "n_couplings": 3}).to(DT), 0.1, 3)
    assert_mera_exact_in_float64(f, L)


def test_coarse_flow_rebuilds_from_its_config():
    torch.manual_seed(0)
    f = randomise(_flow(8, {"from_level": 2, "hidden": [16, 16]}), 0.05, 1)
    g = build_flow(f.target, **f.config)
    g.load_state_dict(f.state_dict())
    z = torch.randn(3, 8, 8)
    assert torch.equal(g.forward_and_log_det(z)[0], f.forward_and_log_det(z)[0])


@pytest.mark.parametrize("coarse,match", [
    ({"from_level": 3, "hidden": [16]}, r"coarse.from_level must be a level of the hierarchy, 0 to 2"),
    ({"hidden": [16]}, "coarse needs from_level"),
    ({"from_level": 1}, "coarse sets none of"),
    ({"from_level": 1, "width": 16}, r"unknown keys \['width'\]"),
    ({"from_level": -1, "hidden": [16]}, "coarse.from_level must be an integer >= 0"),
    ({"from_level": 1, "hidden": [0]}, "hidden must be an integer >= 1"),
    ([1, 2], "coarse must be null or a mapping"),
])
def test_bad_coarse_settings_are_refused_clearly(coarse, match):
    with pytest.raises(ValueError, match=match):
        _flow(8, coarse)


def test_coarse_blocks_refuse_shared_levels():
    with pytest.raises(ValueError, match="coarse blocks .* need one set of blocks per level"):
        _flow(8, {"from_level": 1, "hidden": [16]}, share_levels=True)


def test_warm_start_between_other_coarse_settings_is_refused_by_name():
    a, b = _flow(8, {"from_level": 2, "hidden": [16, 16]}), _flow(8, {"from_level": 1, "hidden": [16, 16]})
    with pytest.raises(ValueError, match=r"tensors whose shapes differ: decimator1\.block"):
        plan_warm_start(a, b)
    c = _flow(8, {"from_level": 2, "n_couplings": 3})
    with pytest.raises(ValueError, match="another layout \\(coarse"):
        plan_warm_start(_flow(8), c)
    assert not plan_warm_start(a, _flow(8, {"from_level": 2, "hidden": [16, 16]})).new


def test_coarse_from_the_command_line():
    cfg = compose_train("experiment=ising16_critical", "model.coarse={from_level:2,hidden:[16,16]}")
    assert cfg.model.coarse.from_level == 2 and list(cfg.model.coarse.hidden) == [16, 16]
    assert compose_train("experiment=ising16_critical").model.coarse is None
