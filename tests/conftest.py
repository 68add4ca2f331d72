"""Test-wide settings: one thread, no W&B traffic or files outside temp dirs, fixed seeds."""
import os
import tempfile

import pytest
import torch

os.environ["WANDB_MODE"] = "disabled"
_wandb_tmp = tempfile.mkdtemp(prefix="neuralrg-wandb-")
for var in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR", "WANDB_DIR"):
    os.environ.setdefault(var, _wandb_tmp)
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
    yield


@pytest.fixture(scope="module")
def flow():
    """The tiny trained L = 4 test flow (``helpers.tiny_trained_flow``); modules may override it."""
    from helpers import tiny_trained_flow

    return tiny_trained_flow()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, flow):
    """A training-run-like directory holding checkpoints/last.ckpt of ``flow``."""
    from helpers import save_checkpoint

    d = tmp_path_factory.mktemp("run")
    save_checkpoint(flow, d / "checkpoints" / "last.ckpt")
    return d
