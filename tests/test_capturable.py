"""Potentials that a CUDA graph can capture, checked on the CPU.

``hmc.cuda_graphed`` captures the HMC potential and its gradient once and replays it. Capture fails
on any host-to-device copy, e.g. a Python list used as an index (``y[..., [0, 3]]`` builds a host
tensor on every call). These tests run a potential once (filling its caches), then again under a
dispatch mode that flags every tensor entering an op that is neither a module tensor, the input, nor
the output of an earlier op: host data created afresh per call, which on a GPU is a copy.
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from neuralrg import IsingTarget, build_mera
from neuralrg.flows.context import neighbourhood_index
from neuralrg.physics.lattice import K_C
from neuralrg.physics.phi4 import Phi4Target
from neuralrg.sampling.hmc import make_potential_and_grad
from neuralrg.sampling.latent import latent_potential, physical_potential_and_grad

torch.set_num_threads(1)
BLOCKS = [None, "neuralrg.flows.OddPlaquetteBijector", "neuralrg.flows.context.ContextPlaquetteBijector",
          "neuralrg.flows.site.SitePlaquetteBijector", "neuralrg.flows.spline.SplinePlaquetteBijector",
          "neuralrg.flows.context.ContextSplinePlaquetteBijector", "neuralrg.flows.site.SiteSplinePlaquetteBijector"]


class FreshHostData(TorchDispatchMode):
    """Records (op, shape) of op inputs whose storage no earlier op produced and ``known`` lacks."""

    def __init__(self, known: set[int], check: bool) -> None:
        super().__init__()
        self.known, self.check, self.fresh = known, check, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.check:
            self.fresh += [(func.__name__, tuple(a.shape)) for a in tree_leaves((args, kwargs))
                           if isinstance(a, torch.Tensor) and a.numel() > 0
                           and a.untyped_storage().data_ptr() not in self.known]
        out = func(*args, **kwargs)
        self.known.update(o.untyped_storage().data_ptr() for o in tree_leaves(out) if isinstance(o, torch.Tensor))
        return out


def fresh_host_data(pg, x: torch.Tensor, module_tensors) -> list:
    neighbourhood_index.cache_clear()  # a cache filled by an earlier test would look like fresh data
    known = {t.untyped_storage().data_ptr() for t in [*module_tensors, x]}
    with FreshHostData(known, check=False):
        pg(x)
    mode = FreshHostData(known, check=True)
    with mode:
        pg(x)
    return mode.fresh


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("z2", [False, True])
def test_latent_potential_is_capturable(block, z2):
    torch.manual_seed(0)
    flow = build_mera(IsingTarget(8, K_C), block=block, precondition=True, skeleton="haar", z2=z2,
                      n_couplings=2, hidden=[8])
    with flow.frozen():
        pg = make_potential_and_grad(latent_potential(flow))
        assert fresh_host_data(pg, torch.randn(4, 8, 8), [*flow.parameters(), *flow.buffers()]) == []


@pytest.mark.parametrize("target", [IsingTarget(8, K_C), IsingTarget(8, 0.5, disorder="pm_j", seed=1),
                                    Phi4Target(8, 0.2, 0.5)], ids=["ising", "glass", "phi4"])
def test_physical_potential_is_capturable(target):
    pg = physical_potential_and_grad(target)
    assert fresh_host_data(pg, torch.randn(4, 8, 8), [*target.buffers()]) == []


def test_the_check_sees_a_list_index():
    """The detector itself: a list index is host data made afresh on every call."""
    w = torch.randn(3, 4)

    def pg(x):
        return x[..., [0, 3]].sum(-1), x

    assert fresh_host_data(pg, torch.randn(5, 4), [w]) != []
    assert fresh_host_data(lambda x: (x[..., 0] + x[..., 3], x), torch.randn(5, 4), [w]) == []
