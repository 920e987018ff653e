"""python eval.py benchmark=<name> [protocol=report|ctibench] [model.path=DIR | responses=FILE response_column=COL]

Scores a model, or an existing response file, on the security benchmarks; see src/secreason/eval
and conf/eval.yaml. The last stdout line is one JSON object with the scores. Bad input ends in one
`error: ...` line on stderr and exit code 2 (in a sweep, that arm alone fails; see secreason.cli).
"""
import json
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("WANDB_MODE", "offline")  # no account, no network unless the user says so
os.environ.setdefault("WANDB_SILENT", "true")

CONF = Path(__file__).resolve().parent / "conf"
# Hydra reports an unknown group option as a multi-line message; these are checked first instead.
CHECKED_GROUPS = ("benchmark", "protocol", "judge", "guard")


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    from secreason.cli import run_or_exit
    from secreason.eval.runner import run

    summary = run_or_exit(run, cfg)
    if summary is not None:  # None: a sweep arm that failed on bad input (its line is printed)
        print(json.dumps(summary, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    from secreason.cli import exit_on_unknown_choice, hydra_errors, sweep_summary

    exit_on_unknown_choice(sys.argv[1:], CONF, CHECKED_GROUPS)
    # Hydra's own config errors (algorithm.nope=1, a bad override): one line, exit 2. -m: a bad arm fails
    # alone; the failed arms are listed at the end, exit 2.
    with hydra_errors(), sweep_summary():
        main()
