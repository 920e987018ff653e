"""The parts of benchmarks/grpo_step.py (the CLI): seconds per GRPO step, ours against TRL.

spec.py       what is compared: models, prompts, the variants and levers, the machine
profiler.py   PhaseProfiler: Lightning's SimpleProfiler keeping each action's start and end
phases.py     profiler events → per-step phase seconds (pure, tested)
ours.py       one run of ours through secreason.run.train, timed by PhaseProfiler
full_length.py  a vLLM logits processor that forces completions to max_tokens (a public engine knob)
trl_run.py    one run of TRL's GRPOTrainer (optional: skipped when trl is not installed)
report.py     summaries, the tables, the speedup lines and RESULTS.md's measured block (pure, tested)
"""
