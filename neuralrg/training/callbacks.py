"""Lightning callbacks: figures of physical and latent samples at epoch end."""
from __future__ import annotations

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
