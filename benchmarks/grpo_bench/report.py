"""Summaries, the tables, the speedup lines and RESULTS.md's measured block (pure, but for write_results).

A run is {"steps": [per-step dicts: each of PHASES, "total", and optionally tokens, len_min, len_max,
logprob_diff_mean/max, others_cpu, option]}. A result of one system is {"summary": summarize(runs)},
or {"error": why it failed} / {"skipped": why it did not run}.
"""
from __future__ import annotations

import statistics
from pathlib import Path

from .phases import PHASES
from .spec import MODELS

MARK_START, MARK_END = "<!-- measured", "<!-- /measured -->"
STEP_FIELDS = ("tokens", "len_min", "len_max", "logprob_diff_mean", "logprob_diff_max", "others_cpu")


def stats(steps: list[dict]) -> dict:
    """Mean and median of each phase and the total; the mean of each recorded field."""
    out: dict = {"n_steps": len(steps)}
    for key in (*PHASES, "total"):
        vals = [st[key] for st in steps]
        out[key] = {"mean": statistics.fmean(vals), "median": statistics.median(vals)} if vals else None
    for key in STEP_FIELDS:
        vals = [st[key] for st in steps if key in st]
        if vals:
            out[key] = statistics.fmean(vals)
    return out


def summarize(runs: list[dict], warmup: int) -> dict:
    """Stats over the timed steps of all runs (rounds) of one system, and each run's median step;
    `best_run` is the lowest of those (the run least slowed by other jobs)."""
    out = stats([st for r in runs for st in r["steps"][warmup:]])
    out["run_medians"] = [statistics.median([st["total"] for st in r["steps"][warmup:]]) for r in runs
                          if r["steps"][warmup:]]
    out["best_run"] = min(out["run_medians"]) if out["run_medians"] else None
    # what a run spends outside its timed steps: imports, model load, engine start, warm-up (compiles: model.compile)
    fixed = [r["wall"] - sum(st["total"] for st in r["steps"][warmup:]) for r in runs if "wall" in r]
    out["fixed_s"] = statistics.median(fixed) if fixed else None
    peaks = [r["meta"]["peak_rss_bytes"] for r in runs if "peak_rss_bytes" in r.get("meta", {})]
    out["peak_rss_gib"] = max(peaks) / 2 ** 30 if peaks else None  # the worst run's peak
    return out


def summarize_lever(run: dict, warmup: int, options: list[str]) -> dict:
    """Per option: its timed steps' stats, and the median over cycles (one step of each option in a row)
    of its step time minus the first option's in the same cycle (and of their ratio)."""
    k = len(options)
    timed = run["steps"][warmup * k:]
    per = {o: stats([st for st in timed if st.get("option") == o]) for o in options}
    cycles = [timed[i:i + k] for i in range(0, len(timed) - k + 1, k)]
    for j, o in enumerate(options):
        per[o]["paired_diff"] = statistics.median([c[j]["total"] - c[0]["total"] for c in cycles]) if cycles else None
        per[o]["paired_ratio"] = statistics.median([c[j]["total"] / c[0]["total"] for c in cycles]) if cycles else None
    return per


def fmt(x: dict | None, key: str = "median") -> str:
    return "—" if x is None else f"{x[key]:.2f}"


def _phase_cells(s: dict) -> str:
    return " | ".join(fmt(s[p]) for p in PHASES)


def _others(s: dict) -> str:
    return f"{100 * s['others_cpu']:.0f}%" if "others_cpu" in s else "—"


def _not_run(name: str, r: dict, empty_cells: int) -> str:
    why = f"skipped: {r['skipped']}" if "skipped" in r else f"failed: {r.get('error', '?')}"
    return f"| {name} | {why[:160]} |" + " |" * empty_cells


def table(results: list[tuple[str, dict]]) -> list[str]:
    """One row per system: its median step, best run, mean, the phases' medians, and the step fields."""
    lines = ["| system | step: median (s) | best run's median | mean | generate | reward | ref/old logprobs "
             "| fwd+bwd | optim | sync | other | per-run medians | tokens/step | others' CPU | logprob diff "
             "| peak RSS (GiB) | start-up + warm-up (s) |",
             "|" + "---|" * 17]
    for name, r in results:
        if "summary" not in r:
            lines.append(_not_run(name, r, 15))
            continue
        s = r["summary"]
        diff = f"{s['logprob_diff_mean']:.1e}" if "logprob_diff_mean" in s else "—"
        runs = " / ".join(f"{x:.2f}" for x in s["run_medians"])
        rss = "—" if s.get("peak_rss_gib") is None else f"{s['peak_rss_gib']:.2f}"
        fixed = "—" if s.get("fixed_s") is None else f"{s['fixed_s']:.0f}"
        lines.append(f"| {name} | **{fmt(s['total'])}** | {s['best_run']:.2f} | {fmt(s['total'], 'mean')} | "
                     f"{_phase_cells(s)} | {runs} | {s.get('tokens', 0):.0f} | {_others(s)} | {diff} | {rss} "
                     f"| {fixed} |")
    return lines


def lever_table(levers: list[tuple[str, list[str], dict]]) -> list[str]:
    """Per lever, one row per setting; settings after the first with the paired difference to it."""
    lines = ["| lever | setting | step: median (s) | vs first setting (paired median) | generate | reward "
             "| ref/old logprobs | fwd+bwd | optim | sync | other | steps | tokens/step | others' CPU |",
             "|" + "---|" * 14]
    for name, options, r in levers:
        if "per_option" not in r:
            lines.append(_not_run(name, r, 12))
            continue
        for j, o in enumerate(options):
            s = r["per_option"][o]
            if not s["n_steps"]:
                continue
            rel = "—" if j == 0 or s["paired_diff"] is None else \
                f"{s['paired_diff']:+.2f} s (×{s['paired_ratio']:.2f})"
            lines.append(f"| {name if j == 0 else ''} | {o} | **{fmt(s['total'])}** | {rel} | {_phase_cells(s)} "
                         f"| {s['n_steps']} | {s.get('tokens', 0):.0f} | {_others(s)} |")
    return lines


def speedup_lines(model: str, results: list[tuple[str, dict]]) -> list[str]:
    """TRL's best / ours best, each system's figure being its best run's median step."""
    ok = {n: r["summary"]["best_run"] for n, r in results if "summary" in r and r["summary"]["best_run"]}
    trl = {n: v for n, v in ok.items() if n.startswith("trl")}
    ours = {n: v for n, v in ok.items() if not n.startswith("trl")}
    if not ours:
        return [f"speedup_vs_trl=nan model={model} (no successful run of ours)"]
    best_ours = min(ours, key=ours.get)
    if not trl:
        return [f"speedup_vs_trl=nan model={model} (TRL did not run) ours_best='{best_ours}' {ours[best_ours]:.2f}s"]
    best_trl = min(trl, key=trl.get)
    same = "trl fp32" if "fp32" in best_ours else "trl bf16"
    parts = [f"speedup_vs_trl={trl[best_trl] / ours[best_ours]:.2f}", f"model={model}",
             f"ours_best='{best_ours}' {ours[best_ours]:.2f}s", f"trl_best='{best_trl}' {trl[best_trl]:.2f}s"]
    if "trl fp32" in trl:
        parts.append(f"vs_trl_fp32={trl['trl fp32'] / ours[best_ours]:.2f}")
    if same in trl:
        parts.append(f"vs_trl_same_precision={trl[same] / ours[best_ours]:.2f}")
    return [" ".join(parts)]


def brief(s: dict) -> str:
    """One line of a run's summary, printed as the benchmark goes."""
    others = f"; others' CPU {_others(s)}" if "others_cpu" in s else ""
    return (f"median {s['total']['median']:.2f} s/step (mean {s['total']['mean']:.2f}, {s['n_steps']} steps); "
            + ", ".join(f"{p} {s[p]['median']:.2f}" for p in PHASES) + others)


def command_line(args: dict) -> str:
    """The command that reproduces a run (args: the CLI's options as a dict)."""
    flags = "".join(f" --{k.replace('_', '-')} {args[k]}" for k in ("quiet_idle", "only") if args.get(k))
    return (f"python benchmarks/grpo_step.py --models {args['models']} --steps {args['steps']} "
            f"--warmup {args['warmup']} --rounds {args['rounds']} --levers {args['levers']}"
            f"{' --skip-trl' if args.get('skip_trl') else ''}{flags}")


def measured_block(info: dict, args: dict, all_results: dict, lines: list[str]) -> list[str]:
    """RESULTS.md's part between the markers: the command, the machine, per model the tables and lines."""
    v = info["versions"]
    block = [
        f"{MARK_START}: written by benchmarks/grpo_step.py -->",
        f"Command: `{command_line(args)}` ({info['bench_wall_s'] / 60:.0f} min)",
        "",
        f"- CPU: {info['cpu']}, {info['cores']} cores, shared with other jobs; avx512_bf16: {info['avx512_bf16']}",
        f"- Python {info['python']}; " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- load average (1/5/15 min) at start {tuple(round(x, 2) for x in info['loadavg'])}, at end "
        f"{tuple(round(x, 2) for x in info['loadavg_end'])}; \"others' CPU\" = share of the cores used by other "
        "processes during the timed steps",
        f"- per step: 8 prompts × 4 completions, prompts 48 tokens, completions forced to max_tokens "
        f"(tiny: {MODELS['tiny']['max_tokens']}, small: {MODELS['small']['max_tokens']}); seconds per step, the "
        "phases from Lightning's profiler. \"step: median\" pools the timed steps of all runs of a system; the "
        "phases are medians over the same steps; \"best run's median\" is the lowest per-run median (the least "
        "disturbed run), which the speedup lines use",
        "",
    ]
    for model, res in all_results.items():
        block += [f"### {model}", ""] + table(res["results"]) + [""]
        if res["levers"]:
            block += ["Levers (each one run of `ours`, its settings alternating step by step):", ""]
            block += lever_table(res["levers"]) + [""]
        block += ["```"] + [ln for ln in lines if f" model={model} " in ln] + ["```", ""]
    block.append(MARK_END)
    return block


def replace_measured(text: str, block: list[str]) -> str:
    """text with its measured part replaced by block (the discussion around it kept), or a new file."""
    start, end = text.find(MARK_START), text.find(MARK_END)
    if start >= 0 and end >= 0:
        return text[:start] + "\n".join(block) + text[end + len(MARK_END):]
    return "# GRPO step benchmark\n\n" + "\n".join(block) + "\n"


def write_results(path: Path, block: list[str]) -> None:
    path.write_text(replace_measured(path.read_text() if path.exists() else "", block))
