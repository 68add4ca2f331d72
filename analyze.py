"""What each RG scale learned:  python analyze.py run=<run dir> [sampler=flow_metropolis] [key=value ...]"""
import sys

import hydra
from omegaconf import DictConfig, OmegaConf


@hydra.main(version_base="1.3", config_path="conf", config_name="analyze")
def main(cfg: DictConfig) -> None:
    import torch

    from neuralrg.analysis import format_report, run_analysis

    c = OmegaConf.to_container(cfg, resolve=True)
    try:
        threads = c.get("threads")
        if threads is not None:
            if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
                raise ValueError(f"threads must be null or an integer >= 1, got {threads!r}")
            torch.set_num_threads(threads)
        result = run_analysis(run=c["run"], out_dir=c["out_dir"], sampler=c["sampler"], settings=c["settings"],
                              samples=c["samples"], L=c["L"], K=c["K"], seed=c["seed"], device=c["device"],
                              dtype=c["dtype"], mi=c["mi"], response=c["response"], landscape=c["landscape"],
                              figures=c["figures"], logger=c["log_to"], wandb=c["wandb"])
    except ValueError as exc:  # bad input or mismatched checkpoint: one line, exit status 1
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    print(format_report(result))
    print(f"outputs: {result['out_dir']}")


if __name__ == "__main__":
    main()
