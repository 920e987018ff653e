"""Figures of runs, read from their `csv/metrics.csv` (Lightning's CSVLogger). matplotlib (a
dependency) is imported only when a figure is drawn, so reading metrics costs no plotting import."""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

# (metric, panel title) of the demo's figure
DEMO_PANELS = (("train/reward/correctness", "sampled reward (training batches)"),
               ("rollout/think_len_mean", "think length (tokens)"),
               ("train/kl", "KL to the SFT model"))


def read_metric(metrics_csv: Path, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric: the rows where it is logged and finite."""
    steps: list[int] = []
    values: list[float] = []
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            raw, step = row.get(key), row.get("step")
            if raw in (None, "") or step in (None, ""):
                continue
            value = float(raw)
            if math.isfinite(value):
                steps.append(int(float(step)))
                values.append(value)
    return steps, values


def rolling_mean(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over up to `window` values (the first points average fewer)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def demo_curves(runs: Mapping[str, Path], png: Path, panels=DEMO_PANELS, window: int = 20) -> Path:
    """One panel per metric, one line per run (raw values faint, a `window`-step trailing mean on
    top), saved as `png`. Returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), constrained_layout=True)
    for ax, (key, title) in zip(axes, panels):
        for i, (name, metrics_csv) in enumerate(runs.items()):
            steps, values = read_metric(Path(metrics_csv), key)
            if not steps:
                continue
            color = f"C{i}"
            ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(steps, rolling_mean(values, window), color=color, linewidth=2, label=name)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend()
    return save_png(fig, png)


def save_png(fig, png: Path) -> Path:
    """Save `fig` as `png` atomically (temp file + os.replace: a killed run never leaves half a
    PNG) and close it. Returns the path."""
    import matplotlib.pyplot as plt

    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_name(f".{png.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    os.replace(tmp, png)
    return png
