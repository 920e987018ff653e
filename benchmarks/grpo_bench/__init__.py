"""The parts of benchmarks/grpo_step.py (the CLI): seconds per GRPO step, ours against TRL.

spec.py       what is compared: models, prompts, the variants and levers, the machine
profiler.py   PhaseProfiler: Lightning's SimpleProfiler keeping each action's start and end
phases.py     profiler events → per-step phase seconds (pure, tested)
ours.py       one run of ours through secreason.run.train, timed by PhaseProfiler (given as trainer.profiler)
trl_run.py    one run of TRL's GRPOTrainer (optional: skipped when `import trl` fails)
driver.py     each run in its own subprocess; the worker side
report.py     summaries, the tables, the speedup lines and RESULTS.md's measured block (pure, tested)

No module here imports vLLM (tests/test_layering.py): completions are forced to the full length through
the samplers' public knobs, sampler.generate_kwargs (HF) and sampler.sampling_kwargs (vLLM).
"""
