"""LightningModule for reverse-KL (variational free energy) training of a NeuralRG flow.

Every step draws a batch from the flow (no dataset) and minimises
loss = mean[ln q(x) + E(x)] = F_q (total; logged per site). Manual optimisation keeps the
loop explicit: a non-finite loss or gradient stops training (``NonFiniteLossError``, on every
DDP rank at once) *before* any parameter changes, so the last checkpoint on disk stays the last
good state. Steps are counted like ``global_step``: step k is the (k+1)-th optimizer step.
"""
from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from ..errors import NonFiniteLossError
from ..checkpoint import META_KEY, flow_metadata
from ..sampling.importance import evaluate_flow
from ..flows.model import NeuralRGFlow
from .schedule import build_scheduler

# Lightning's advice for manual optimisation does not apply: a checkpoint at step k holds the
# parameters *after* k optimizer steps, which is what resuming and load_flow want. A resumed run
# writes into its own, non-empty checkpoint directory. The rest are deprecation notices from
# inside Lightning.
KNOWN_WARNINGS = (
    r".*ModelCheckpoint with manual optimization.*",
    r"Checkpoint directory .* exists and is not empty.*",
    r".*isinstance\(treespec, LeafSpec\).*",
    r".*distributed.nn.functional.all_gather is deprecated.*",
)


def ignore_known_warnings() -> None:
    """Silence the Lightning warnings that do not apply to this module."""
    for pattern in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


ignore_known_warnings()  # also in ddp_spawn workers, which import this module to unpickle it

# set in trainer.callback_metrics at the end of fit (these reach the main process under ddp_spawn)
FIT_STEP_KEY = "fit/global_step"
FIT_FINGERPRINTS_KEY = "fit/rank_sample_fingerprints"


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
        self._reseed()

    def on_train_start(self) -> None:
        # after a resume the step counter is restored: reseed so a resumed run does not replay
        # the random stream of the run's first steps
        self._reseed()

    def _reseed(self) -> None:
        """Seed from (seed, rank, step): each rank draws its own samples (the same seed on
        every rank would waste devices)."""
        state = np.random.SeedSequence([self.seed, self.global_rank, self.global_step]).generate_state(2)
        torch.manual_seed(int(state[0]) << 32 | int(state[1]))

    def configure_optimizers(self):
        opt = self.optimizer_factory(self.flow.parameters())
        sched = build_scheduler(opt, total_steps=self.total_steps, **self.scheduler_cfg)
        return [opt], [{"scheduler": sched, "interval": "step"}]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[META_KEY] = flow_metadata(self.flow)

    def on_train_end(self) -> None:
        trainer = self.trainer
        # last.ckpt must hold the final parameters even when `steps` is not a multiple of the
        # checkpoint interval (Lightning only saves on the interval)
        cb = trainer.checkpoint_callback
        if (isinstance(cb, ModelCheckpoint) and cb.save_last and cb.dirpath
                and getattr(cb, "_last_global_step_saved", None) != trainer.global_step):
            trainer.save_checkpoint(str(Path(cb.dirpath) / f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}"),
                                    weights_only=False)
        # one number per rank from its first batch: shows that ranks draw different samples
        fp = torch.tensor([self.sample_fingerprint or 0.0], dtype=torch.float64, device=self.device)
        self.rank_fingerprints = [float(v) for v in self.all_gather(fp).flatten()]
        # callback_metrics travel back to the main process under ddp_spawn; module attributes don't
        trainer.callback_metrics[FIT_STEP_KEY] = torch.tensor(float(trainer.global_step))
        trainer.callback_metrics[FIT_FINGERPRINTS_KEY] = torch.tensor(self.rank_fingerprints)

    # -- training --------------------------------------------------------------------
    def free_energy_terms(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample ln q(x) and E(x) (totals, (n,) each) and the samples x (n, L, L)."""
        _, x, log_q = self.flow.sample_with_latent(n)
        if self.path_gradient:
            with self.flow.frozen():
                log_q = self.flow.log_prob(x)
        return log_q, self.flow.target.energy(x), x

    def free_energy_samples(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample ln q(x) + E(x) (total, (n,)) and the samples x."""
        log_q, energy, x = self.free_energy_terms(n)
        return log_q + energy, x

    def _all_ranks_finite(self, value: torch.Tensor) -> bool:
        """True if ``value`` is finite on every rank (a lone rank raising would hang DDP)."""
        return bool(self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(value)), all=True))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        sched = self.lr_schedulers()
        step = self.global_step
        log_q, energy, x = self.free_energy_terms(self.batch_size)
        f = log_q + energy
        if self.sample_fingerprint is None:
            self.sample_fingerprint = float(x.detach()[0].sum())
        loss = f.mean()
        if not self._all_ranks_finite(loss):
            bad = {name: int((~torch.isfinite(v.detach())).sum())
                   for name, v in (("x", x.flatten(1).sum(1)), ("ln q(x)", log_q), ("E(x)", energy))}
            detail = ", ".join(f"{k} {v}/{f.numel()}" for k, v in bad.items())
            raise NonFiniteLossError(
                f"non-finite variational free energy (loss = {loss.item()}) at step {step}, after "
                f"{step} completed optimizer steps; non-finite samples on rank {self.global_rank}: "
                f"{detail}. Parameters were left unchanged; the last checkpoint holds the last good state")
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        # one pass gives the norm (before clipping) and clips; a non-finite norm raises below,
        # before the optimizer touches the parameters
        max_norm = float(self.grad_clip) if self.grad_clip else float("inf")
        gnorm = torch.nn.utils.clip_grad_norm_(self.flow.parameters(), max_norm)
        if not self._all_ranks_finite(gnorm):
            raise NonFiniteLossError(
                f"non-finite gradient norm ({gnorm.item()}) at step {step}, after {step} completed "
                f"optimizer steps (loss = {loss.item()}). Parameters were left unchanged; the last "
                "checkpoint holds the last good state")
        opt.step()
        sched.step()

        n = self.flow.n_sites
        now = time.perf_counter()
        rate = self.batch_size / (now - self._t_last) if self._t_last else float("nan")
        self._t_last = now
        fd = f.detach()
        self.log("train/free_energy", fd.mean() / n, prog_bar=True, sync_dist=True)
        self.log("train/free_energy_err", fd.std() / math.sqrt(fd.numel()) / n, sync_dist=True)
        log_z = self.flow.target.log_z
        if log_z is not None:
            self.log("train/gap", fd.mean() / n + log_z / n, prog_bar=True, sync_dist=True)
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
        for k, v in res.items():  # every number the evaluation computes
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self.log(f"eval/{k}", float(v), sync_dist=True)
        self._t_last = None  # don't count evaluation time in samples/s
        return res
