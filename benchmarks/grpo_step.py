#!/usr/bin/env python
"""Seconds per GRPO step: our GRPOModule with sampler=hf and sampler=vllm against TRL's GRPOTrainer.

    python benchmarks/grpo_step.py                                     # tiny + small, 5 timed steps after 1 warm-up
    python benchmarks/grpo_step.py --models tiny --steps 2             # smoke run (a few minutes; writes no RESULTS.md)

Every system gets the same model directory, the same 8 prompts × 4 completions per step (prompts of exactly
48 tokens, so there is no prompt padding anywhere), completions forced to the full length (eos masked until
`max_tokens`: `sampler.generate_kwargs.min_new_tokens` for sampler=hf, `sampler.sampling_kwargs.min_tokens`
for sampler=vllm, TRL `generation_kwargs={"min_new_tokens": ...}`), the same reward set (ours,
`rewards=cyber`), β = 0.02 with a separate frozen reference model, one optimizer step per rollout batch
(μ = 1), sample-level loss (our `sample_mean`, TRL `loss_type="grpo"`), AdamW with grad clipping at 1.0, and
one forward/backward over all 32 completions (our `micro_batch_size=32`, TRL `per_device_train_batch_size=32`).

Ours runs through `secreason.run.train(cfg)` — the body of `train.py` — with the Hydra config composed from
`conf/` (`+experiment=grpo model=<tiny|small> sampler=<hf|vllm> ...`); the phases come from Lightning's
profiler, given through the config (`trainer.profiler` = grpo_bench.profiler.PhaseProfiler), which records
the phases GRPOModule and the sampler callbacks name: grpo/generate, grpo/reward, grpo/ref, grpo/fwd_bwd,
grpo/optimizer, grpo/sync (`trainer.profiler=simple` prints the same names in any run). TRL (optional: its
rows are skipped when `import trl` fails) runs `GRPOTrainer.train()` with its methods timed under the same
phase names. Each system × configuration runs in its own subprocess. The parts are in grpo_bench/.

Levers: each lever is measured inside ONE run of ours that switches a public setting from one step to the
next (A B A B ...), so both settings see the same machine load; the table gives each setting's median step
and the median of the paired differences.

Phases: generate | reward | ref/old logprobs (no-grad forwards) | fwd+bwd (the policy's forward, loss,
backward) | optim (grad clip + optimizer step) | sync (vLLM weight push + probe check) | other (everything
else in the step: rollout metrics, logging, data loading, Lightning / Trainer overhead). "total" is the wall
time between the starts of consecutive steps. Figures are per step after `--warmup` steps: mean and median.

`speedup_vs_trl=<x>` per model = TRL's best median step (fp32 or bf16) / our best median step (any of our
configurations that generates the same tokens); the lines also give the ratios against TRL in fp32 and
against TRL in the same precision. A full run (every model, ≥ 5 steps) writes benchmarks/RESULTS.md (the
machine, the table, the lines); a smoke run writes only to an --out given; --no-write writes nothing; raw
per-step numbers go to a JSON file (--json).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from grpo_bench import report
from grpo_bench.driver import run_variant, worker
from grpo_bench.spec import AB_LEVERS, MAIN_VARIANTS, MODELS, PROMPTS_PER_STEP, ROOT, machine_info, select_prompts, \
    selected


DEFAULT_OUT = str(ROOT / "benchmarks" / "RESULTS.md")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="tiny,small")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per run (per setting in a lever run)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per run (per setting in a lever run)")
    ap.add_argument("--rounds", type=int, default=1, help="runs per system, the order reversed every other round")
    ap.add_argument("--skip-trl", action="store_true")
    ap.add_argument("--levers", default="small", help="models to run the lever A/B runs on (comma list, or none)")
    ap.add_argument("--only", default=None,
                    help="comma-separated substrings (or =exact names): run only matching systems / levers")
    ap.add_argument("--quiet-idle", type=float, default=0.0,
                    help="before each run, wait until other processes leave this share of the CPUs idle (0 = off)")
    ap.add_argument("--quiet-wait", type=float, default=600.0, help="longest such wait, seconds")
    ap.add_argument("--no-write", action="store_true", help="do not write the results file (--out)")
    ap.add_argument("--out", default=DEFAULT_OUT, help="the results file (a smoke run writes only where given)")
    ap.add_argument("--json", default=None, help="where to write the raw per-step numbers (default: the work dir)")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per run")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def run_model(model: str, args, work: Path, keys: list[str] | None, trl_missing: str | None) -> dict:
    """The main systems (rounds) and, if asked for this model, the levers: {"results", "levers"}."""
    from secreason.tiny import ensure_tiny

    mcfg = MODELS[model]
    model_path = str(ensure_tiny(Path(os.environ.get("SECREASON_CACHE", ROOT / ".cache")), size=mcfg["size"]))
    prompts_dir = work / f"prompts-{model}"
    prompts_dir.mkdir()
    rows = select_prompts(model_path, PROMPTS_PER_STEP * (args.warmup + args.steps))
    with open(prompts_dir / "rl_train.jsonl", "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    base = {"size": mcfg["size"], "model_path": model_path, "max_tokens": mcfg["max_tokens"],
            "warmup": args.warmup, "steps": args.steps, "prompts_dir": str(prompts_dir)}

    def run(tag: str, spec: dict) -> dict:
        spec = {**base, **spec, "out_dir": str(work / tag), "result": str(work / f"{tag}.json")}
        t0 = time.perf_counter()
        r = run_variant(__file__, spec, work / f"{tag}.log", args.timeout, args.quiet_idle, args.quiet_wait)
        if "error" in r:
            print(f"    FAILED; log: {r['log']}\n    {r['error']}", flush=True)
        r["wall"] = time.perf_counter() - t0
        return r

    variants = [v for v in MAIN_VARIANTS if selected(v[0], keys) and not (args.skip_trl and v[1] == "trl")]
    skipped = {v[0]: {"skipped": trl_missing} for v in variants if v[1] == "trl" and trl_missing}
    runs: dict[str, list[dict]] = {v[0]: [] for v in variants}
    errors: dict[str, dict] = {}
    for rnd in range(args.rounds):
        for name, system, precision, extra in (variants if rnd % 2 == 0 else variants[::-1]):
            if name in skipped:
                continue
            print(f"[{model} round {rnd + 1}/{args.rounds}] {name} ...", flush=True)
            tag = f"{model}-{MAIN_VARIANTS.index((name, system, precision, extra))}-r{rnd}"
            r = run(tag, {"system": system, "precision": precision, **extra})
            if "error" in r:
                errors[name] = r
                continue
            runs[name].append(r)
            print(f"    {report.brief(report.summarize([r], args.warmup))}; run {r['wall']:.0f} s", flush=True)
    results = [(n, {"summary": report.summarize(runs[n], args.warmup), "runs": runs[n]} if runs[n]
                else skipped.get(n) or errors.get(n, {"error": "not run"})) for n, *_ in variants]

    levers = []
    if model in {m.strip() for m in args.levers.split(",")}:
        for i, (name, system, precision, lever, options) in enumerate(AB_LEVERS):
            if not selected(name, keys):
                continue
            print(f"[{model} lever] {name}: {' | '.join(options)} ...", flush=True)
            r = run(f"{model}-lever{i}", {"system": system, "precision": precision, "lever": lever,
                                          "options": options})
            if "error" not in r:
                r["per_option"] = report.summarize_lever(r, args.warmup, options)
                for o in options:
                    print(f"    {o}: {report.brief(r['per_option'][o])}", flush=True)
                print(f"    run {r['wall']:.0f} s", flush=True)
            levers.append((name, options, r))
    return {"results": results, "levers": levers}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return
    from grpo_bench.trl_run import unavailable

    info = machine_info()
    print(f"machine: {info['cpu']}, {info['cores']} cores, avx512_bf16={info['avx512_bf16']}, "
          f"load {info['loadavg']}, {info['versions']}", flush=True)
    trl_missing = None if args.skip_trl else unavailable()
    if trl_missing:
        print(f"TRL rows skipped: import trl failed ({trl_missing})", flush=True)
    work = Path(tempfile.mkdtemp(prefix="grpo-step-bench-"))
    keys = [k.strip() for k in args.only.split(",")] if args.only else None
    t_start = time.perf_counter()
    all_results = {m.strip(): run_model(m.strip(), args, work, keys, trl_missing)
                   for m in args.models.split(",") if m.strip()}

    lines_out = []
    for model, res in all_results.items():
        print(f"\n## {model}: seconds per step ({args.rounds} run(s) per system, {args.steps} timed steps each after "
              f"{args.warmup} warm-up)")
        if res["results"]:
            print("\n".join(report.table(res["results"])))
        if res["levers"]:
            print("\n".join(["", "levers (one A/B run each; settings alternate step by step):"]
                            + report.lever_table(res["levers"])))
        for line in report.speedup_lines(model, res["results"]):
            print(line)
            lines_out.append(line)
    info["loadavg_end"] = os.getloadavg()
    info["bench_wall_s"] = time.perf_counter() - t_start
    raw_path = Path(args.json) if args.json else work / "results.json"
    raw_path.write_text(json.dumps({"machine": info, "args": vars(args), "results": all_results}, indent=1,
                                   default=str))
    print(f"\nraw per-step numbers: {raw_path}")
    # A smoke run (fewer steps or models than the full one) never replaces the recorded results.
    smoke = args.steps < 5 or set(all_results) != set(MODELS)
    if args.no_write or (smoke and args.out == DEFAULT_OUT):
        print(f"not written: {'--no-write' if args.no_write else 'a smoke run'} (give --out to write one)")
    else:
        report.write_results(Path(args.out), report.measured_block(info, vars(args), all_results, lines_out))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # vLLM engines are built in the workers only
    main()
