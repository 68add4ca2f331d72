"""LightningModule for reverse-KL (variational free energy) training of a NeuralRG flow.

By default every step draws a batch from the flow (no dataset) and minimises
loss = mean[ln q(x) + E(x)] = F_q (total; logged per site). ``loss`` (the ``loss:`` node of
conf/train.yaml, ``neuralrg.training.losses.LossConfig``) selects another objective:
``flow_mcmc`` mixes in the forward KL on persistent chains on p (``training.chains``), ``data``
pre-trains by maximum likelihood on exact samples (Ising); ``loss.sign_fold`` takes the reverse KL
against the sign-folded target (``losses.SignFold``, trained with the flow). Manual optimisation keeps the
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
from ..physics.fold import order_gauge_tensor
from .chains import FlowMCMCChains, TrainingData, resolve_data_source
from .losses import LossConfig, SignFold, forward_gap, forward_kl, latent_fisher, mixed_loss
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
FIT_DATA_TIME_KEY = "fit/data_generation_s"  # only with loss.name=data


def _batch_parts(x: torch.Tensor, log_q: torch.Tensor, energy: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample values of a flow batch that the NaN report counts non-finite entries of."""
    return {"x": x.flatten(1).sum(1), "ln q(x)": log_q, "E(x)": energy}


class FlowModule(pl.LightningModule):
    """Wires a ``NeuralRGFlow`` into Lightning.

    optimizer: a callable params → torch optimizer (hydra ``_partial_``); scheduler: kwargs of
    ``build_scheduler`` (name, warmup_steps, min_factor, …); total_steps: for the schedule.
    path_gradient: use the "sticking the landing" estimator (one extra inverse pass).
    eval_every / eval_samples: how often / on how many samples to run ``evaluate_flow``.
    loss: the ``loss:`` config (``LossConfig`` keys; None = reverse KL).
    """

    def __init__(self, flow: NeuralRGFlow, optimizer: Callable[..., torch.optim.Optimizer],
                 scheduler: dict[str, Any] | None = None, *, total_steps: int, batch_size: int = 256,
                 grad_clip: float | None = 10.0, path_gradient: bool = False, eval_every: int = 100,
                 eval_samples: int = 2048, eval_batch_size: int = 1024, seed: int = 0,
                 config: dict[str, Any] | None = None, loss: dict[str, Any] | None = None) -> None:
        super().__init__()
        if int(batch_size) < 2:
            raise ValueError(f"batch_size must be >= 2, got {batch_size}")
        if int(total_steps) < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.flow = flow
        flow.target.log_z  # exact ln Z (cached by the target) now, not inside the first timed step: a TM takes seconds
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
        self.loss_cfg = LossConfig.from_dict(loss)
        if self.loss_cfg.latent_fisher > 0 and self.loss_cfg.latent_fisher_min_level >= flow.n_levels:
            raise ValueError(f"loss.latent_fisher_min_level = {self.loss_cfg.latent_fisher_min_level}: this flow's "
                             f"latents have RG levels 0 to {flow.n_levels - 1}")
        if self.loss_cfg.name == "data":
            resolve_data_source(flow.target, self.loss_cfg.data_source, self.loss_cfg.data_settings)
        self.sign_fold: SignFold | None = None
        if self.loss_cfg.sign_fold is not None:
            if not flow.target.z2_symmetric:
                raise ValueError(f"loss.sign_fold needs a Z2-symmetric target; {type(flow.target).__name__} is not")
            if flow.z2:
                raise ValueError("loss.sign_fold with model.z2=true: the symmetrised q is even already, "
                                 "there is no sign to fold (use one of them)")
            self.sign_fold = SignFold(self.loss_cfg.sign_fold, flow.L, dtype=flow.dtype, device=flow.device,
                                      gauge=order_gauge_tensor(flow.target))
        self.forward_weight = self.loss_cfg.weight_schedule()
        self.temper = self.loss_cfg.temper_schedule()
        c = self.loss_cfg
        # a plain object, not a module buffer: DDP must not broadcast rank 0's chains
        self.chains = (FlowMCMCChains(c.n_chains, local_steps=c.local_steps, n_leapfrog=c.n_leapfrog,
                                      step_size=c.step_size, target_accept=c.target_accept,
                                      adapt_steps=c.adapt_steps, burn_in=c.burn_in)
                       if c.uses_chains else None)
        self.data: TrainingData | None = None
        self.data_generation_s: float | None = None
        self._data_time_logged = False
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
        if self.loss_cfg.objective(self.global_step, self.batch_size) == "data":
            self._ensure_data()

    def _ensure_data(self) -> TrainingData:
        """Generate the data set (once, before the first data step; each rank its own seed),
        record its wall time, and warn when its chains' diagnostics doubt it."""
        if self.data is None:
            c = self.loss_cfg
            self.data = TrainingData(self.flow.target, c.data_samples, source=c.data_source,
                                     n_chains=c.data_chains, sweep_spacing=c.data_sweep_spacing,
                                     warmup_sweeps=c.data_warmup_sweeps, seed=[self.seed, self.global_rank, 7],
                                     settings=c.data_settings)
            self.data_generation_s = self.data.generation_s
            if self.data.warning is not None:
                warnings.warn(self.data.warning, stacklevel=2)
        return self.data

    def _reseed(self) -> None:
        """Seed from (seed, rank, step): each rank draws its own samples (the same seed on
        every rank would waste devices)."""
        state = np.random.SeedSequence([self.seed, self.global_rank, self.global_step]).generate_state(2)
        torch.manual_seed(int(state[0]) << 32 | int(state[1]))

    def configure_optimizers(self):
        opt = self.optimizer_factory(self.trained_parameters())
        sched = build_scheduler(opt, total_steps=lambda: self.total_steps, **self.scheduler_cfg)  # a budget re-plan may change it
        return [opt], [{"scheduler": sched, "interval": "step"}]

    def trained_parameters(self) -> list[torch.nn.Parameter]:
        """The flow's parameters, then the sign fold's (if any)."""
        params = list(self.flow.parameters())
        return params + (list(self.sign_fold.parameters()) if self.sign_fold is not None else [])

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
        if self.data_generation_s is not None:
            trainer.callback_metrics[FIT_DATA_TIME_KEY] = torch.tensor(self.data_generation_s)

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

    def step_loss(self, step: int, fisher: bool | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, dict, dict]:
        """The loss of global step ``step`` under the configured objective, as ``training_step``
        computes it (budget probes time it too): (loss, per-sample ln q + E of the flow batch or
        None, x for the fingerprint, {name: per-sample values} for the NaN report, {name: value}
        logged under train/). A ``flow_mcmc`` step advances the chains. ``fisher``: add the latent
        smoothness term (True) or not (False) whatever the step (the budget probe's timings); None:
        as ``loss.latent_fisher*`` configure it for this step."""
        objective = self.loss_cfg.objective(step, self.batch_size)
        if objective != "reverse_kl":
            return self._forward_kl_step(objective, step)
        log_q, energy, x = self.free_energy_terms(self.batch_size)
        f = log_q + energy  # against p: logged, and the loss unless tempered
        s = self.temper(step, self.total_steps)
        loss_f = f if s == 1.0 else log_q + s * energy  # reverse KL against p^s
        extra = {} if self.loss_cfg.temper is None else {"temper": s}
        parts = _batch_parts(x, log_q, energy)
        if self.sign_fold is None:
            loss = loss_f.mean()
        else:
            folded = loss_f - self.sign_fold.log_weight(x)  # ln q − ln p_φ up to ln Z
            extra["fold_weight_norm"] = self.sign_fold.weight.detach().norm()
            if self.flow.target.log_z is not None and s == 1.0:  # the bound on the Z2 gap, per site
                extra["fold_bound"] = (folded.detach().mean() + self.flow.target.log_z) / self.flow.n_sites
            loss = folded.mean()
        cfg = self.loss_cfg
        on = cfg.fisher_on(step, self.total_steps) if fisher is None else (fisher and cfg.latent_fisher > 0)
        if on:  # the latent smoothness term (losses.latent_fisher), k·λ on every k-th step
            term = latent_fisher(self.flow, cfg.latent_fisher_batch,
                                 None if self.sign_fold is None else self.sign_fold.field(), cfg.latent_fisher_min_level)
            parts["|grad r|^2"] = term
            extra["latent_fisher"] = term.detach().mean() / self.flow.n_sites
            loss = loss + cfg.latent_fisher * cfg.latent_fisher_every * term.mean()
        return loss, f, x, parts, extra

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        sched = self.lr_schedulers()
        step = self.global_step
        objective = self.loss_cfg.objective(step, self.batch_size)
        loss, f, x, parts, extra = self.step_loss(step)
        if self.sample_fingerprint is None:
            self.sample_fingerprint = float(x.detach()[0].sum())
        if not self._all_ranks_finite(loss):
            detail = ", ".join(f"{k} {int((~torch.isfinite(v.detach())).sum())}/{v.numel()}"
                               for k, v in parts.items())
            what = "variational free energy" if objective == "reverse_kl" else f"{objective} loss"
            raise NonFiniteLossError(
                f"non-finite {what} (loss = {loss.item()}) at step {step}, after "
                f"{step} completed optimizer steps; non-finite samples on rank {self.global_rank}: "
                f"{detail}. Parameters were left unchanged; the last checkpoint holds the last good state")
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        # one pass gives the norm (before clipping) and clips; a non-finite norm raises below,
        # before the optimizer touches the parameters
        max_norm = float(self.grad_clip) if self.grad_clip else float("inf")
        gnorm = torch.nn.utils.clip_grad_norm_(self.trained_parameters(), max_norm)
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
        log_z = self.flow.target.log_z
        if f is not None:
            fd = f.detach()
            self.log("train/free_energy", fd.mean() / n, prog_bar=True, sync_dist=True)
            self.log("train/free_energy_err", fd.std() / math.sqrt(fd.numel()) / n, sync_dist=True)
            self.log("train/reverse_kl", fd.mean() / n, sync_dist=True)
            if log_z is not None:
                self.log("train/gap", fd.mean() / n + log_z / n, prog_bar=True, sync_dist=True)
        for k, v in extra.items():
            self.log(f"train/{k}", v, sync_dist=True)
        self.log("train/grad_norm", gnorm, sync_dist=True)
        self.log("train/lr", sched.get_last_lr()[0])
        if math.isfinite(rate):
            self.log("train/samples_per_s", rate)
        if self.eval_every > 0 and (step + 1) % self.eval_every == 0:
            self.run_evaluation()
        return loss.detach()

    def _forward_kl_step(self, objective: str, step: int):
        """Loss (1 − w)·reverse KL + w·forward KL of a ``flow_mcmc`` or ``data`` step (w = loss.data_weight).

        Returns (loss, per-sample ln q + E of the flow batch or None, x for the fingerprint,
        {name: per-sample values} for the NaN report, {name: value} logged under train/).
        ``flow_mcmc``: the forward KL is taken on the chain states as they enter the step; then
        the chains advance (flow-MH with this step's flow samples as proposals, then HMC).
        """
        flow, n = self.flow, self.flow.n_sites
        log_z = flow.target.log_z
        extra: dict[str, float | torch.Tensor] = {}
        proposals = None
        if objective == "data":
            data = self._ensure_data()
            w, f, reverse, parts = self.loss_cfg.data_weight, None, None, {}
            x = x_fwd = data.batch(self.loss_cfg.data_batch(self.batch_size), flow.device, flow.dtype)
            if w < 1.0:
                log_q, energy, x = self.free_energy_terms(self.batch_size)
                f = log_q + energy
                reverse = f.mean()
                parts = _batch_parts(x, log_q, energy)
            with torch.no_grad():
                e_fwd = flow.target.energy(x_fwd)
            extra["data_epoch"] = float(data.epoch)
            if not self._data_time_logged:
                extra["data_generation_s"] = float(self.data_generation_s)
                if "effective_samples" in data.info:  # chain data: how correlated they were
                    extra["data_effective_samples"] = data.info["effective_samples"]
                self._data_time_logged = True
        else:
            chains = self.chains
            if not chains.initialized:
                chains.init_from_flow(flow)
            chains.follow(flow.device, flow.dtype)
            w = self.forward_weight(step)
            if w < 1.0:
                log_q, energy, x = self.free_energy_terms(self.batch_size)
                f = log_q + energy
                reverse = f.mean()
                if x.shape[0] >= chains.n_chains:
                    proposals = (x, log_q, energy)
            else:  # no reverse term: draw the proposals alone, without a graph
                with torch.no_grad():
                    x, log_q = flow.sample(chains.n_chains)
                    energy = flow.target.energy(x)
                f, reverse, proposals = log_q + energy, None, (x, log_q, energy)
            parts = _batch_parts(x, log_q, energy)
            x_fwd, e_fwd = chains.x, chains.energy
        log_q_fwd = flow.log_prob(x_fwd)
        forward = forward_kl(log_q_fwd)
        parts["ln q(x_fwd)"] = log_q_fwd
        if objective == "flow_mcmc":
            st = self.chains.step(flow, log_q_current=log_q_fwd.detach(), proposals=proposals)
            extra["chain_mh_acceptance"] = st["mh_acceptance"]
            if math.isfinite(st["hmc_acceptance"]):
                extra["chain_hmc_acceptance"] = st["hmc_acceptance"]
                extra["chain_step_size"] = st["step_size"]
        loss = mixed_loss(reverse, forward, w)
        extra["forward_weight"] = w
        extra["forward_kl"] = forward.detach() / n
        if log_z is not None:
            extra["forward_gap"] = forward_gap(log_q_fwd.detach(), e_fwd, log_z) / n
        return loss, f, x, parts, extra

    def run_evaluation(self) -> dict[str, float]:
        """``evaluate_flow`` on ``eval_samples`` fresh samples; logged under eval/."""
        was_training = self.flow.training
        self.flow.eval()
        res = evaluate_flow(self.flow, self.eval_samples, self.eval_batch_size)
        self.flow.train(was_training)
        self.last_eval = res
        for k, v in res.items():  # every number the evaluation computes (flags as 0/1)
            if isinstance(v, (int, float)) and v is not None:
                self.log(f"eval/{k}", float(v), sync_dist=True)
        self._t_last = None  # don't count evaluation time in samples/s
        return res
