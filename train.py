"""python train.py +experiment=sft | +experiment=grpo [overrides]. See README.md and conf/."""
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("WANDB_SILENT", "true")

CONF = Path(__file__).resolve().parent / "conf"


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from secreason.cli import run_or_exit
    from secreason.run import train_for_sweep

    # optimized_metric's value, what a Hydra sweeper optimises; None: a sweep arm that failed on bad
    # input (its line is printed)
    return run_or_exit(train_for_sweep, cfg)


if __name__ == "__main__":
    from secreason.cli import config_groups, exit_on_unknown_choice, hydra_errors, sweep_summary

    # Hydra reports an unknown group option (loss_agg=nope) in many lines: one line here instead.
    exit_on_unknown_choice(sys.argv[1:], CONF, config_groups(CONF, "train", extra=("experiment",)))
    # Hydra's own config errors (algorithm.nope=1, a bad override): one line, exit 2. -m: a bad arm fails
    # alone; the failed arms are listed at the end, exit 2.
    with hydra_errors(), sweep_summary():
        main()
