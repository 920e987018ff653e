"""Evaluation: benchmarks × protocols, as pure functions plus one runner.

- `benchmarks`  reads each benchmark's rows from `data_dir` (or a response file) into `Item`s.
- `prompts`     the user/system messages each protocol sends.
- `scoring_report`, `scoring_ctibench`  per-item scores and their aggregates, one module per protocol
  (shared/data/PROTOCOLS.md and shared/data/ctibench/SCORING.md).
- `taa`         the CTIBench threat-actor alias graph, used by both protocols.
- `harmbench`   judges, the input/output guard and pass rates.
- `generate`    turns messages into completions through the training samplers.
- `runner`      ties it together: items → responses → scores → items.jsonl, summary.json, wandb.

Every bad input is raised as `EvalError`, a `secreason.errors.UserError`: `eval.py` prints it as
one `error: ...` line and exits 2 (secreason.cli). It is a ValueError too, as it always was.
"""
from secreason.errors import UserError


class EvalError(UserError, ValueError):
    """A user-facing evaluation error: bad config, missing data or a malformed response file."""
