"""LightningModule for reverse-KL (variational free energy) training of a NeuralRG flow.

Every step draws a batch from the flow (no dataset) and minimises
loss = mean[ln q(x) + E(x)] = F_q (total; logged per site). Manual optimisation keeps the
loop explicit: a non-finite loss or gradient stops training *before* any parameter changes,
so the last checkpoint on disk stays the last good state.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable

import pytorch_lightning as pl
import torch

from ..checkpoint import META_KEY, flow_metadata
from ..evaluation import evaluate_flow
from ..flows.model import NeuralRGFlow
from .schedule import build_scheduler


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss or gradient; the message names step and quantity."""


class FlowModule(pl.LightningModule):
    """Wires a ``NeuralRGFlow`` into Lightning.

    optimizer: a callable params → torch optimizer (hydra ``_partial_``); scheduler: kwargs of
    ``build_scheduler`` (name, warmup_steps, min_factor, …); total_steps: for the schedule.
    path_gradient: use the "sticking the landing" estimator (one extra inverse pass).
    eval_every / eval_samples: how often / on how many samples to run ``evaluate_flow``.
    """

    def __init__(self, flow: NeuralRGFlow, optimizer: Callable[..., torch.optim.Optimizer],
                 scheduler: dict[str, Any] | None = None, *, total_steps: int, batch_size: int = 256,
                 grad_clip: float | None = 10.0, path_gradient: bool = False, eval_every: int = 100,
                 eval_samples: int = 2048, eval_batch_size: int = 1024, seed: int = 0,
                 config: dict[str, Any] | None = None) -> None:
        super().__init__()
        if int(batch_size) < 2:
            raise ValueError(f"batch_size must be >= 2, got {batch_size}")
        if int(total_steps) < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.flow = flow
        self.optimizer_factory = optimizer
        self.scheduler_cfg = dict(scheduler or {"name": "constant"})
        self.total_steps = int(total_steps)
        self.batch_size = int(batch_size)
        self.grad_clip = grad_clip
        self.path_gradient = bool(path_gradient)
        self.eval_every = int(eval_every)
        self.eval_samples = int(eval_samples)
        self.eval_batch_size = int(eval_batch_size)
        self.seed = int(seed)
        self.automatic_optimization = False
        # plain containers only: checkpoints then load with weights_only=True
        self.save_hyperparameters({"config": config or {}, "model": flow.config,
                                   "target": flow_metadata(flow)["target"]})
        self.last_eval: dict[str, float] = {}
        self.sample_fingerprint: float | None = None
        self.rank_fingerprints: list[float] = []
        self._t_last: float | None = None

    # -- set-up ----------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        # each rank draws its own samples (same seed on every rank would waste GPUs)
        torch.manual_seed(self.seed + 1000 * self.global_rank)

    def configure_optimizers(self):
        opt = self.optimizer_factory(self.flow.parameters())
        sched = build_scheduler(opt, total_steps=self.total_steps, **self.scheduler_cfg)
        return [opt], [{"scheduler": sched, "interval": "step"}]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[META_KEY] = flow_metadata(self.flow)

    def on_train_end(self) -> None:
        # one number per rank from its first batch: shows that ranks draw different samples
        fp = torch.tensor([self.sample_fingerprint or 0.0], dtype=torch.float64, device=self.device)
        self.rank_fingerprints = [float(v) for v in self.all_gather(fp).flatten()]

    # -- training --------------------------------------------------------------------
    def free_energy_samples(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample ln q(x) + E(x) (total, (n,)) and the samples x."""
        _, x, log_q = self.flow.sample_with_latent(n)
        if self.path_gradient:
            params = [p for p in self.flow.parameters() if p.requires_grad]
            for p in params:
                p.requires_grad_(False)
            try:
                log_q = self.flow.log_prob(x)
            finally:
                for p in params:
                    p.requires_grad_(True)
        return log_q + self.flow.target.energy(x), x

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        sched = self.lr_schedulers()
        step = self.global_step
        f, x = self.free_energy_samples(self.batch_size)
        if self.sample_fingerprint is None:
            self.sample_fingerprint = float(x.detach()[0].sum())
        loss = f.mean()
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite variational free energy (loss = {loss.item()}) at step {step}; "
                "parameters were left unchanged and the last checkpoint is the last good state")
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        grads = [p.grad for p in self.flow.parameters() if p.grad is not None]
        gnorm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        if not torch.isfinite(gnorm):
            raise NonFiniteLossError(
                f"non-finite gradient norm ({gnorm.item()}) at step {step}; "
                "parameters were left unchanged and the last checkpoint is the last good state")
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.flow.parameters(), float(self.grad_clip))
        opt.step()
        sched.step()

        n = self.flow.n_sites
        now = time.perf_counter()
        rate = self.batch_size / (now - self._t_last) if self._t_last else float("nan")
        self._t_last = now
        fd = f.detach()
        self.log("train/free_energy", fd.mean() / n, prog_bar=True, sync_dist=True)
        self.log("train/free_energy_err", fd.std() / math.sqrt(fd.numel()) / n, sync_dist=True)
        self.log("train/gap", fd.mean() / n + self.flow.target.log_z / n, prog_bar=True, sync_dist=True)
        self.log("train/grad_norm", gnorm, sync_dist=True)
        self.log("train/lr", sched.get_last_lr()[0])
        if math.isfinite(rate):
            self.log("train/samples_per_s", rate)
        if self.eval_every > 0 and (step + 1) % self.eval_every == 0:
            self.run_evaluation()
        return loss.detach()

    def run_evaluation(self) -> dict[str, float]:
        """``evaluate_flow`` on ``eval_samples`` fresh samples; logged under eval/."""
        was_training = self.flow.training
        self.flow.eval()
        res = evaluate_flow(self.flow, self.eval_samples, self.eval_batch_size)
        self.flow.train(was_training)
        self.last_eval = res
        keys = ("free_energy_per_site", "free_energy_per_site_err", "gap_per_site", "relative_error",
                "is_log_z_per_site", "is_log_z_per_site_err", "ess_fraction", "metropolis_acceptance")
        for k in keys:
            if k in res:
                self.log(f"eval/{k}", float(res[k]), sync_dist=True)
        self._t_last = None  # don't count evaluation time in samples/s
        return res
