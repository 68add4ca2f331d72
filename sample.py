"""Sample a trained NeuralRG flow:  python sample.py run=<run dir> [sampler=NAME] [mode=compare] [key=value ...]

Bad input (missing or corrupt checkpoint, mismatched target, bad settings) prints one
``error: ...`` line and exits with status 1, before anything is written. ``settings.max_time=10m``
bounds the sampling time, ``threads=N`` torch's threads, ``quiet=true`` the progress display,
``log_to=none`` W&B.
"""
import hydra
from omegaconf import DictConfig, OmegaConf


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    from neuralrg.pipelines.cli import exit_on_user_error, set_threads
    from neuralrg.pipelines.progress import make_progress
    from neuralrg.pipelines.sample import format_importance, format_table, run_sampling

    with exit_on_user_error():
        c = OmegaConf.to_container(cfg, resolve=True)
        set_threads(c.get("threads"))
        if c["mode"] not in ("single", "compare"):
            raise ValueError(f"mode must be 'single' or 'compare', got {c['mode']!r}")
        name = c["sampler"]["name"]
        samplers = list(c["compare"]) if c["mode"] == "compare" else [name]
        per_sampler = dict(c["per_sampler"] or {})
        per_sampler[name] = {**(c["sampler"].get("settings") or {}), **(per_sampler.get(name) or {})}
        summary = run_sampling(run=c["run"], samplers=samplers, out_dir=c["out_dir"], L=c["L"], K=c["K"],
                               expect=c["expect"], at_L=c.get("at_L"), seed=c["seed"], device=c["device"],
                               importance_samples=c["importance_samples"], settings=c["settings"],
                               figures=c["figures"], symmetrize=c["symmetrize"],
                               per_sampler={k: v for k, v in per_sampler.items() if k in samplers},
                               progress=make_progress(bool(c.get("quiet"))), log_to=c.get("log_to", "none"),
                               wandb=c.get("wandb"), memory_limit=c.get("memory_limit"),
                               annealed=c.get("annealed_importance"))
        print(format_table(summary))
        print(format_importance(summary))
        print(f"outputs: {summary['out_dir']}")


if __name__ == "__main__":
    main()
