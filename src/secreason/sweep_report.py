"""A GRPO sweep's table and figure, read from its runs' logs: did the think collapse, per arm?

    python -m secreason.sweep_report DIR [--md PATH] [--png PATH]

DIR holds Hydra runs (a multirun's `<job>/`, or several multiruns below it, as
benchmarks/open_question_2.sh writes): every `.../csv/metrics.csv` with a `rollout/think_near_empty_frac`
column and a sibling `.hydra/overrides.yaml` is one run; others (the SFT stage) are skipped. A run's
*arm* is its overrides less those that do not change the recipe (IGNORED: seed, model.path, ...),
so the seeds of one arm group together. Writes DIR/sweep_report.md (one row per arm) and
DIR/sweep_report.png (one panel per metric, one colour per arm, one line per seed).

Per run, on the training rollouts (T=1, every step): `end` is the mean of the last END_WINDOW steps;
the run *collapsed* when near-empty thinks end above COLLAPSE_LEVEL (0.5); the collapse *began* at the
first step whose trailing END_WINDOW-step mean of near-empty thinks is above that level (one noisy
step does not count). Per arm the table gives the collapse rate over seeds and each seed's numbers, so
where seeds disagree the table shows it.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from secreason.errors import MissingPathError
from secreason.plots import read_metric, rolling_mean, save_png

METRICS = {"near_empty": "rollout/think_near_empty_frac", "think_len": "rollout/think_len_mean",
           "correctness": "train/reward/correctness"}
# (metric, panel title) of the figure
PANELS = (("near_empty", "near-empty thinks (share of rollouts)"), ("think_len", "think length (tokens)"),
          ("correctness", "answer correctness (training rollouts)"))
COLLAPSE_LEVEL = 0.5
END_WINDOW = 5
# Overrides that do not make an arm: which seed, which start checkpoint, how many threads / steps.
IGNORED = ("seed", "model.path", "num_threads", "trainer.max_steps", "+experiment", "hydra.", "logger",
           "trainer.enable_progress_bar")


@dataclass
class Run:
    arm: str
    seed: str
    path: Path
    steps: list[int]
    curves: dict[str, list[float]]

    def end(self, key: str, window: int = END_WINDOW) -> float:
        tail = self.curves[key][-window:]
        return sum(tail) / len(tail)

    @property
    def collapsed(self) -> bool:
        return self.end("near_empty") > COLLAPSE_LEVEL

    def collapse_step(self, window: int = END_WINDOW) -> int | None:
        """The first step whose trailing `window`-step mean of near-empty thinks is above the level."""
        smooth = rolling_mean(self.curves["near_empty"], window)
        return next((s for s, v in zip(self.steps, smooth) if v > COLLAPSE_LEVEL), None)


@dataclass
class Arm:
    name: str
    runs: list[Run] = field(default_factory=list)

    @property
    def collapse_rate(self) -> float:
        return sum(r.collapsed for r in self.runs) / len(self.runs)


def arm_name(overrides: list[str]) -> str:
    kept = [o for o in overrides if not o.split("=", 1)[0].startswith(IGNORED)]
    return " ".join(sorted(kept)) or "(defaults)"


def _seed(overrides: list[str]) -> str:
    return next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == "seed"), "?")


def load_run(metrics_csv: Path) -> Run | None:
    """One run, or None when it is not a GRPO run with rollout metrics (e.g. the SFT stage)."""
    overrides_file = metrics_csv.parent.parent / ".hydra" / "overrides.yaml"
    if not overrides_file.is_file():
        return None
    overrides = [str(o) for o in yaml.safe_load(overrides_file.read_text()) or []]
    steps, first = read_metric(metrics_csv, METRICS["near_empty"])
    if not steps:
        return None
    curves = {"near_empty": first}
    for key, column in METRICS.items():
        if key != "near_empty":
            at = dict(zip(*read_metric(metrics_csv, column)))
            curves[key] = [at.get(s, float("nan")) for s in steps]
    return Run(arm_name(overrides), _seed(overrides), metrics_csv.parent.parent, steps, curves)


def collect(sweep_dir: Path | str) -> list[Arm]:
    """The sweep's arms in the order their first run was found (paths sorted), seeds sorted."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise MissingPathError(f"{sweep_dir}: no such sweep directory")
    arms: dict[str, Arm] = {}
    for csv_path in sorted(sweep_dir.rglob("csv/metrics.csv"), key=lambda p: _natural(p, sweep_dir)):
        run = load_run(csv_path)
        if run is not None:
            arms.setdefault(run.arm, Arm(run.arm)).runs.append(run)
    if not arms:
        raise MissingPathError(f"{sweep_dir}: no run with {METRICS['near_empty']} in */csv/metrics.csv "
                               f"beside a .hydra/overrides.yaml (is it a GRPO sweep's directory?)")
    for arm in arms.values():
        arm.runs.sort(key=lambda r: (len(r.seed), r.seed))
    return list(arms.values())


def _natural(path: Path, root: Path) -> list:
    """Sort key: multirun job dirs 2 before 10."""
    return [int(p) if p.isdigit() else p for p in path.relative_to(root).parts]


def _per_seed(values, fmt: str) -> str:
    return " / ".join("–" if v is None else format(v, fmt) for v in values)


def table(arms: list[Arm]) -> str:
    """Markdown, one row per arm; per-seed values are listed in seed order (`a / b / c`)."""
    head = ("| arm | seeds | collapsed | near-empty end | correctness end | think tokens start → end | "
            "collapse began at step |\n|---|---|---|---|---|---|---|")
    rows = [head]
    for arm in arms:
        rs = arm.runs
        mean = {k: statistics.mean(r.end(k) for r in rs) for k in METRICS}
        start = statistics.mean(r.curves["think_len"][0] for r in rs)
        rows.append(
            f"| `{arm.name}` | {_per_seed([r.seed for r in rs], 's')} "
            f"| {sum(r.collapsed for r in rs)}/{len(rs)} ({arm.collapse_rate:.0%}) "
            f"| {mean['near_empty']:.2f} ({_per_seed([r.end('near_empty') for r in rs], '.2f')}) "
            f"| {mean['correctness']:.2f} ({_per_seed([r.end('correctness') for r in rs], '.2f')}) "
            f"| {start:.1f} → {mean['think_len']:.1f} ({_per_seed([r.end('think_len') for r in rs], '.1f')}) "
            f"| {_per_seed([r.collapse_step() for r in rs], 'd')} |")
    return "\n".join(rows)


def figure(arms: list[Arm], png: Path, window: int = END_WINDOW) -> Path:
    """One panel per metric; one colour per arm, one line per seed (a `window`-step trailing mean),
    the collapse level dashed. Saved atomically as `png`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(5.2 * len(PANELS), 4.2), constrained_layout=True)
    for ax, (key, title) in zip(axes, PANELS):
        for i, arm in enumerate(arms):
            for j, run in enumerate(arm.runs):
                ax.plot(run.steps, rolling_mean(run.curves[key], window), color=f"C{i % 10}", linewidth=1.4,
                        alpha=0.8, label=arm.name if j == 0 else None)
        if key == "near_empty":
            ax.axhline(COLLAPSE_LEVEL, color="grey", linestyle="--", linewidth=1)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=min(3, len(arms)),
               fontsize=8)
    return save_png(fig, png)


def write_table(md: Path, text: str) -> Path:
    """Write `text` to `md` atomically (temp file + os.replace)."""
    import os

    md.parent.mkdir(parents=True, exist_ok=True)
    tmp = md.with_name(f".{md.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, md)
    return md


def report(sweep_dir: Path | str, md: Path | None = None, png: Path | None = None) -> tuple[Path, Path, str]:
    """Read the sweep, write the table (markdown) and the figure; returns (md, png, table)."""
    sweep_dir = Path(sweep_dir)
    arms = collect(sweep_dir)
    text = table(arms)
    md = write_table(md or sweep_dir / "sweep_report.md", text + "\n")
    png = figure(arms, png or sweep_dir / "sweep_report.png")
    return md, png, text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m secreason.sweep_report", description=__doc__.split("\n")[0])
    p.add_argument("sweep_dir", type=Path)
    p.add_argument("--md", type=Path, default=None, help="default DIR/sweep_report.md")
    p.add_argument("--png", type=Path, default=None, help="default DIR/sweep_report.png")
    args = p.parse_args(argv)
    try:
        md, png, text = report(args.sweep_dir, args.md, args.png)
    except MissingPathError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(text)
    print(f"[sweep_report] table: {md}\n[sweep_report] figure: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
