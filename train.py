"""Train a NeuralRG flow by reverse KL:  python train.py [experiment=ising16_critical] [budget=10m] [threads=N] [key=value ...]

With ``ladder.rungs`` set (``experiment=ising_ladder``) it trains a ladder of lattice sizes, each
rung warm-started from the last (``neuralrg.pipelines.ladder``)."""
import sys

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    # imported here so that config errors and a refused run directory are reported at once,
    # before Lightning's import time
    from neuralrg.pipelines.cli import exit_on_user_error, set_threads
    from neuralrg.pipelines.ladder import format_ladder, is_ladder, run_ladder
    from neuralrg.pipelines.train import format_summary, run_training

    with exit_on_user_error():
        set_threads(cfg.get("threads"))
        if is_ladder(cfg):
            print(format_ladder(run_ladder(cfg)))
            return
        summary = run_training(cfg)
        if summary:
            print(format_summary(summary))


if __name__ == "__main__":
    sys.exit(main())
