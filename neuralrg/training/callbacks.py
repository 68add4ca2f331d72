"""Lightning callbacks: figures of physical and latent samples at epoch end; safety checkpoints."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from ..plotting import plot_configurations, plot_latent_levels, save_figure


class SampleFigures(pl.Callback):
    """At the end of every ``every_n_epochs``-th epoch: a figure of physical samples x and one of
    a latent configuration z split by RG level. Logged as images to W&B when that logger is in
    use, and always written as PNG under ``<run_dir>/figures/``.
    """

    def __init__(self, every_n_epochs: int = 1, n_samples: int = 8, dirpath: str | None = None) -> None:
        self.every_n_epochs = max(1, int(every_n_epochs))
        self.n_samples = int(n_samples)
        self.dirpath = dirpath

    @torch.no_grad()
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch % self.every_n_epochs or not trainer.is_global_zero:
            return
        flow = pl_module.flow
        was = flow.training
        flow.eval()
        z, x, _ = flow.sample_with_latent(self.n_samples)
        flow.train(was)
        step = trainer.global_step
        figs = {
            "figures/samples": plot_configurations(x, title=f"flow samples x, step {step}"),
            "figures/latents": plot_latent_levels(z[0], flow.latent_levels,
                                                  title=f"latent z by RG level, step {step}"),
        }
        out_dir = Path(self.dirpath or trainer.default_root_dir) / "figures"
        paths = {k: save_figure(f, out_dir / f"{k.split('/')[-1]}_step{step:06d}.png") for k, f in figs.items()}
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                for k, p in paths.items():
                    logger.log_image(key=k, images=[str(p)], step=step)


class SafetyCheckpoint(pl.Callback):
    """Bounded loss: ``<dirpath>/last.ckpt`` right after start-up (a fresh run's step 0), then at
    least every ``every_minutes`` of wall time, and a final one when the run is interrupted
    (Ctrl-C / SIGINT, or SIGTERM from a scheduler). So a SIGKILL at any time loses at most
    ``every_minutes`` of work, and ``train.py resume=<run dir>`` always finds a checkpoint.

    Files are written under a temporary name and renamed, so a kill during a write never leaves
    a truncated last.ckpt. Under DDP every rank calls ``save_checkpoint`` (Lightning requires it)
    and rank 0 decides when, so the ranks stay in step.
    """

    def __init__(self, dirpath: str, every_minutes: float = 3.0, at_start: bool = True) -> None:
        if not isinstance(every_minutes, (int, float)) or isinstance(every_minutes, bool) or every_minutes <= 0:
            raise ValueError(f"every_minutes must be a number > 0, got {every_minutes!r}")
        self.dirpath = Path(dirpath)
        self.every_s = 60.0 * float(every_minutes)
        self.at_start = bool(at_start)
        self._last = time.monotonic()

    def save(self, trainer: pl.Trainer) -> None:
        path = self.dirpath / "last.ckpt"
        tmp = self.dirpath / ".last.ckpt.tmp"
        if trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(str(tmp), weights_only=False)
        if trainer.is_global_zero:
            os.replace(tmp, path)
        self._last = time.monotonic()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last = time.monotonic()
        if self.at_start and trainer.global_step == 0:
            self.save(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        due = time.monotonic() - self._last >= self.every_s
        if trainer.strategy.broadcast(due, src=0):
            self.save(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        from pytorch_lightning.utilities.exceptions import SIGTERMException

        if isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            self.save(trainer)
