"""What each RG scale learned:  python analyze.py run=<run dir> [sampler=flow_metropolis] [key=value ...]"""
import hydra
from omegaconf import DictConfig, OmegaConf


@hydra.main(version_base="1.3", config_path="conf", config_name="analyze")
def main(cfg: DictConfig) -> None:
    from neuralrg.pipelines.analyze import format_report, run_analysis
    from neuralrg.pipelines.cli import exit_on_user_error, set_threads
    from neuralrg.pipelines.progress import make_progress

    with exit_on_user_error():
        c = OmegaConf.to_container(cfg, resolve=True)
        set_threads(c.get("threads"))
        settings = {**c["settings"], **(c["sampler"].get("settings") or {})}
        result = run_analysis(run=c["run"], out_dir=c["out_dir"], sampler=c["sampler"]["name"], settings=settings,
                              samples=c["samples"], L=c["L"], K=c["K"], at_L=c.get("at_L"), seed=c["seed"], device=c["device"],
                              dtype=c["dtype"], mi=c["mi"], response=c["response"], landscape=c["landscape"],
                              figures=c["figures"], logger=c["log_to"], wandb=c["wandb"],
                              progress=make_progress(bool(c.get("quiet"))))
        print(format_report(result))
        print(f"outputs: {result['out_dir']}")


if __name__ == "__main__":
    main()
