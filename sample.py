"""Sample a trained NeuralRG flow:  python sample.py run=<run dir> [mode=compare] [key=value ...]

Bad input (missing or corrupt checkpoint, mismatched L/K, bad settings) prints one
``error: ...`` line and exits with status 1, before anything is written.
"""
import hydra
from omegaconf import DictConfig, OmegaConf

from neuralrg.cli import exit_on_user_error


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    from neuralrg.sampling.pipeline import COMPARE, format_table, run_sampling

    with exit_on_user_error():
        if cfg.mode not in ("single", "compare"):
            raise ValueError(f"mode must be 'single' or 'compare', got {cfg.mode!r}")
        samplers = list(COMPARE) if cfg.mode == "compare" else [cfg.sampler]
        summary = run_sampling(run=cfg.run, samplers=samplers, out_dir=cfg.out_dir, L=cfg.L, K=cfg.K,
                               seed=cfg.seed, device=cfg.device, importance_samples=cfg.importance_samples,
                               settings=OmegaConf.to_container(cfg.settings, resolve=True), figures=cfg.figures,
                               symmetrize=cfg.symmetrize,
                               per_sampler=OmegaConf.to_container(cfg.per_sampler, resolve=True))
        print(format_table(summary))
        for key, label in (("importance_sampling", "flow"), ("importance_sampling_z2", "Z2-symmetrised flow")):
            if key in summary:
                s = summary[key]
                print(f"{label} importance sampling: ln Z_x/N = {s['is_log_z_per_site']:.6f} ± "
                      f"{s['is_log_z_per_site_err']:.6f} (exact {-s['exact_free_energy_per_site']:.6f}), "
                      f"ESS/M = {s['ess_fraction']:.4f}")
        print(f"outputs: {summary['out_dir']}")


if __name__ == "__main__":
    main()
