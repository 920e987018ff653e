"""A GRPO step's logged numbers as over the global batch, so N ranks log what one rank would.

Each rank computes its batch's metrics; `rank_entries` says how each combines (a mean over
completions, a mean over its own count, a sum, a max), every rank gathers every rank's entries
and `combine_ranks` gives the same numbers on all of them. A rank may lack a key another has
(no row routed to a reward, no closed think); the rule for the key says what that means.
"""
from __future__ import annotations

# Per-token means of a step (Σ over loss tokens / tokens), logged as train/* and rollout/*.
TOKEN_STATS = ("train/kl", "train/clip_frac", "train/is_weight_mean", "rollout/logprob_diff_mean", "train/entropy")
SAME_ON_EVERY_RANK = ("train/lr", "train/grad_norm")  # the gradient is all-reduced before its norm


def reduction(key: str) -> str:
    """How a batch metric combines over ranks (without its own count: see `rank_entries`).

    rows  a mean over the rank's completions (a rank lacking the key counts as 0 over its rows)
    sum   counts, and train/loss (each rank's share is already over the global normaliser)
    max   *_max
    same  the same value on every rank
    """
    if key.endswith("_max"):
        return "max"
    if key == "train/loss" or key.startswith("train/reward_stats/"):
        return "sum"
    return "same" if key in SAME_ON_EVERY_RANK else "rows"


def rank_entries(metrics: dict[str, float], counts: dict[str, float], num_rows: int) -> dict:
    """One rank's metrics for `combine_ranks`: {"rows": num_rows, "values": {key: (how, value, weight)}}.
    A key in `counts` is a mean over that many items ("mean"; a rank without the key has none)."""
    values = {}
    for key, value in metrics.items():
        how = "mean" if key in counts else reduction(key)
        values[key] = (how, float(value), float(counts.get(key, num_rows if how == "rows" else 1)))
    return {"rows": num_rows, "values": values}


def combine_ranks(per_rank: list[dict]) -> dict[str, float]:
    """The global batch's metrics from every rank's `rank_entries` (the same list on every rank)."""
    total_rows = sum(e["rows"] for e in per_rank)
    out: dict[str, float] = {}
    for key in sorted({k for e in per_rank for k in e["values"]}):
        entries = [e["values"][key] for e in per_rank if key in e["values"]]
        how = entries[0][0]
        vals = [v for _, v, _ in entries]
        if how == "sum":
            out[key] = sum(vals)
        elif how == "max":
            out[key] = max(vals)
        elif how == "rows":
            out[key] = sum(v * w for _, v, w in entries) / max(total_rows, 1)
        else:  # mean, same
            weight = sum(w for _, _, w in entries)
            out[key] = sum(v * w for _, v, w in entries) / weight if weight else 0.0
    return out
