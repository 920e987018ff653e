"""benchmarks/grpo_bench: profiler events → per-step phases, and the report (table rows, speedup lines,
RESULTS.md's measured block), on hand-made inputs whose expected figures are worked out by hand."""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from grpo_bench import report  # noqa: E402
from grpo_bench.phases import PHASES, phase_seconds, step_windows, steps_from_events  # noqa: E402

HF_START, HF_END = "[Callback]HFSampler.on_train_batch_start", "[Callback]HFSampler.on_train_batch_end"
REC_START = "[Callback]StepRecorder.on_train_batch_start"
MODULE_START = "[LightningModule]GRPOModule.on_train_batch_start"
FETCH = "[_TrainingEpochLoop].train_dataloader_next"

# Two Lightning steps as PhaseProfiler records them: (action, start, end).
EVENTS = [
    (FETCH, 0.0, 0.1),
    (REC_START, 0.1, 0.1), (HF_START, 0.1, 2.1), ("grpo/generate", 0.2, 2.0), (MODULE_START, 2.1, 2.1),
    ("run_training_batch", 2.1, 4.0), ("grpo/reward", 2.1, 2.2), ("grpo/ref", 2.2, 2.7),
    ("grpo/fwd_bwd", 2.7, 3.7), ("grpo/optimizer", 3.7, 3.8),
    (HF_END, 4.0, 4.5), ("grpo/sync", 4.1, 4.4),
    (FETCH, 4.6, 5.0),  # the next batch's fetch: before its opening hook, so in step 1's "other"
    (REC_START, 5.0, 5.0), (HF_START, 5.0, 6.0), ("grpo/generate", 5.0, 6.0), (MODULE_START, 6.0, 6.0),
    ("run_training_batch", 6.0, 8.0), ("grpo/reward", 6.0, 6.5),
    ("grpo/fwd_bwd", 6.5, 7.0), ("grpo/fwd_bwd", 7.0, 7.5), ("grpo/optimizer", 7.5, 7.75),  # two updates (μ = 2)
    (HF_END, 8.0, 8.25), ("grpo/sync", 8.0, 8.25),
    ("[Callback]HFSampler.on_train_end", 8.5, 9.0),  # after the last step: not in it
]


def test_lightning_steps_open_at_the_first_batch_start_hook_and_close_at_the_last_batch_end():
    shuffled = EVENTS[:]
    random.Random(0).shuffle(shuffled)
    assert step_windows(shuffled) == [(0.1, 5.0), (5.0, 8.25)]


def test_events_become_seconds_per_phase_per_step():
    steps = steps_from_events([list(e) for e in EVENTS])  # as read back from JSON
    # step 1: 0.1 → 5.0; named phases 1.8 + 0.1 + 0.5 + 1.0 + 0.1 + 0.3 = 3.8, so other = 4.9 − 3.8
    # step 2: 5.0 → 8.25; 1.0 + 0.5 + 0 + (0.5 + 0.5) + 0.25 + 0.25 = 3.0, so other = 0.25
    expected = [
        {"generate": 1.8, "reward": 0.1, "ref_old": 0.5, "fwd_bwd": 1.0, "optim": 0.1, "sync": 0.3,
         "total": 4.9, "other": 1.1},
        {"generate": 1.0, "reward": 0.5, "ref_old": 0.0, "fwd_bwd": 1.0, "optim": 0.25, "sync": 0.25,
         "total": 3.25, "other": 0.25},
    ]
    assert len(steps) == 2
    for got, want in zip(steps, expected):
        assert set(got) == set(PHASES) | {"total"}
        assert got == pytest.approx(want)


def test_explicit_windows_count_an_event_where_it_starts():
    """TRL's steps are its callback's windows; an event starting on a boundary belongs to the later step."""
    events = [("grpo/generate", 0.0, 1.0), ("grpo/fwd_bwd", 1.5, 2.5), ("grpo/generate", 2.0, 2.5),
              ("unrelated", 0.0, 3.0)]
    steps = phase_seconds(events, [(0.0, 2.0), (2.0, 3.0)])
    assert steps[0] == pytest.approx({"generate": 1.0, "reward": 0, "ref_old": 0, "fwd_bwd": 1.0, "optim": 0,
                                      "sync": 0, "total": 2.0, "other": 0.0})
    assert steps[1] == pytest.approx({"generate": 0.5, "reward": 0, "ref_old": 0, "fwd_bwd": 0, "optim": 0,
                                      "sync": 0, "total": 1.0, "other": 0.5})


def step(total: float, **fields) -> dict:
    """A step whose generate is half its time and fwd+bwd a quarter; the rest is "other"."""
    s = {p: 0.0 for p in PHASES}
    s.update(generate=total / 2, fwd_bwd=total / 4, other=total / 4, total=total)
    return {**s, **fields}


def best_run_result(best: float) -> dict:
    return {"summary": report.summarize([{"steps": [step(100.0), step(best)]}], warmup=1)}


def test_summary_pools_the_timed_steps_and_keeps_each_runs_median():
    extra = [{"tokens": 2048, "others_cpu": c, "logprob_diff_mean": d} for c, d in ((0.1, 1e-3), (0.2, 2e-3),
                                                                                    (0.3, 3e-3))]
    runs = [{"steps": [step(100.0), step(2.0, **extra[0]), step(4.0, **extra[1])],  # warm-up step dropped
             "meta": {"peak_rss_bytes": 3 * 2 ** 29}, "wall": 150.0},
            {"steps": [step(100.0), step(5.0, **extra[2])], "meta": {"peak_rss_bytes": 2 ** 30}, "wall": 125.0}]
    s = report.summarize(runs, warmup=1)
    # timed totals 2, 4, 5: median 4, mean 11/3; run medians 3 and 5, the best 3
    assert s["n_steps"] == 3 and s["total"] == pytest.approx({"mean": 11 / 3, "median": 4.0})
    assert s["run_medians"] == [3.0, 5.0] and s["best_run"] == 3.0
    assert s["generate"]["median"] == 2.0 and s["fwd_bwd"]["median"] == 1.0
    assert s["others_cpu"] == pytest.approx(0.2) and s["tokens"] == 2048
    # outside the timed steps: 150 − (2 + 4) = 144 and 125 − 5 = 120, median 132
    assert s["fixed_s"] == pytest.approx(132.0)

    rows = report.table([("ours vllm bf16", {"summary": s}), ("trl fp32", {"error": "exit 1: boom"}),
                         ("trl bf16", {"skipped": "ModuleNotFoundError: No module named 'trl'"})])
    assert rows[0].startswith("| system | step: median (s) | best run's median | mean | generate |")
    assert rows[0].endswith("| logprob diff | peak RSS (GiB) | start-up + warm-up (s) |")
    assert rows[1] == "|" + "---|" * 17
    # peak RSS: the larger of the runs' peaks, 1.5 GiB and 1 GiB
    assert rows[2] == ("| ours vllm bf16 | **4.00** | 3.00 | 3.67 | 2.00 | 0.00 | 0.00 | 1.00 | 0.00 | 0.00 "
                       "| 1.00 | 3.00 / 5.00 | 2048 | 20% | 2.0e-03 | 1.50 | 132 |")
    assert rows[3] == "| trl fp32 | failed: exit 1: boom |" + " |" * 15
    assert rows[4] == "| trl bf16 | skipped: ModuleNotFoundError: No module named 'trl' |" + " |" * 15
    assert all(r.count("|") == 18 for r in rows), "every row has the header's 17 cells"
    no_meta = report.table([("x", {"summary": report.summarize([{"steps": [step(1.0), step(2.0)]}], warmup=1)})])
    assert no_meta[2].endswith("| — | — |")  # runs from before peak RSS and the run's wall were recorded


def test_a_worker_records_its_peak_rss():
    from grpo_bench.driver import peak_rss_bytes

    before = peak_rss_bytes()
    block = bytearray(64 * 2 ** 20)  # 64 MiB touched
    block[::4096] = b"x" * len(block[::4096])
    assert peak_rss_bytes() >= before and peak_rss_bytes() > 64 * 2 ** 20


def test_speedup_lines_compare_the_best_runs():
    results = [("trl fp32", best_run_result(6.0)), ("trl bf16", best_run_result(4.5)),
               ("ours hf fp32", best_run_result(3.0)), ("ours vllm bf16", best_run_result(1.5)),
               ("ours vllm fp32", {"error": "exit 1"})]
    # best TRL 4.5 (bf16) / best ours 1.5 = 3; TRL fp32 6 / 1.5 = 4; ours' best is bf16, so same precision = 3
    assert report.speedup_lines("tiny", results) == [
        "speedup_vs_trl=3.00 model=tiny ours_best='ours vllm bf16' 1.50s trl_best='trl bf16' 4.50s "
        "vs_trl_fp32=4.00 vs_trl_same_precision=3.00"]
    # ours' best in fp32, TRL fp32 only: 6 / 3 = 2 for all three
    only_fp32 = [("trl fp32", best_run_result(6.0)), ("ours hf fp32", best_run_result(3.0))]
    assert report.speedup_lines("small", only_fp32) == [
        "speedup_vs_trl=2.00 model=small ours_best='ours hf fp32' 3.00s trl_best='trl fp32' 6.00s "
        "vs_trl_fp32=2.00 vs_trl_same_precision=2.00"]


def test_speedup_lines_without_trl_or_without_ours():
    skipped = {"skipped": "No module named 'trl'"}
    assert report.speedup_lines("tiny", [("trl fp32", skipped), ("ours hf bf16", best_run_result(0.27))]) == [
        "speedup_vs_trl=nan model=tiny (TRL did not run) ours_best='ours hf bf16' 0.27s"]
    assert report.speedup_lines("tiny", [("trl fp32", best_run_result(1.0)), ("ours hf bf16", {"error": "x"})]) == [
        "speedup_vs_trl=nan model=tiny (no successful run of ours)"]


def test_lever_rows_give_the_paired_difference_to_the_first_setting():
    # warm-up: one step per setting; then cycles (a 2, b 3) and (a 4, b 6): b − a = 1 and 2 → median 1.5;
    # b / a = 1.5 both times
    steps = [step(9.0, option="a"), step(9.0, option="b"), step(2.0, option="a"), step(3.0, option="b"),
             step(4.0, option="a"), step(6.0, option="b")]
    per = report.summarize_lever({"steps": steps}, warmup=1, options=["a", "b"])
    assert per["b"]["paired_diff"] == 1.5 and per["b"]["paired_ratio"] == 1.5
    rows = report.lever_table([("lever x", ["a", "b"], {"per_option": per}), ("lever y", ["c"], {"error": "oom"})])
    assert rows[2] == ("| lever x | a | **3.00** | — | 1.50 | 0.00 | 0.00 | 0.75 | 0.00 | 0.00 | 0.75 | 2 | 0 "
                       "| — |")
    assert rows[3] == ("|  | b | **4.50** | +1.50 s (×1.50) | 2.25 | 0.00 | 0.00 | 1.12 | 0.00 | 0.00 | 1.12 "
                       "| 2 | 0 | — |")
    assert rows[4] == "| lever y | failed: oom |" + " |" * 12


def test_the_measured_block_replaces_only_the_part_between_the_markers():
    info = {"versions": {"torch": "2"}, "bench_wall_s": 120.0, "cpu": "cpu", "cores": 2, "avx512_bf16": True,
            "python": "3.11", "loadavg": (1.0, 1.0, 1.0), "loadavg_end": (2.0, 2.0, 2.0)}
    args = {"models": "tiny", "steps": 2, "warmup": 1, "rounds": 1, "levers": "none", "skip_trl": False,
            "quiet_idle": 0.0, "only": None}
    line = "speedup_vs_trl=nan model=tiny (TRL did not run) ours_best='ours hf fp32' 1.50s"
    block = report.measured_block(info, args, {"tiny": {"results": [("ours hf fp32", best_run_result(1.5))],
                                                       "levers": []}}, [line])
    assert block[0].startswith("<!-- measured") and block[-1] == "<!-- /measured -->"
    assert ("Command: `python benchmarks/grpo_step.py --models tiny --steps 2 --warmup 1 --rounds 1 --levers none`"
            " (2 min)") in block
    assert block[block.index("```") + 1] == line
    text = "# head\n\nreading above\n<!-- measured: old -->\nold table\n<!-- /measured -->\nreading below\n"
    new = report.replace_measured(text, block)
    assert new == "# head\n\nreading above\n" + "\n".join(block) + "\nreading below\n"
    assert new.count("<!-- /measured -->") == 1 and "old table" not in new


def test_the_overrides_compose_and_the_profiler_records_events(tmp_path):
    """The run's config names the PhaseProfiler and the full-length knobs; the profiler's events parse."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from grpo_bench import ours
    from grpo_bench.profiler import PhaseProfiler

    spec = {"size": "tiny", "system": "hf", "max_tokens": 64, "warmup": 1, "steps": 2, "precision": "bf16",
            "prompts_dir": str(tmp_path / "prompts dir"), "out_dir": str(tmp_path / "out")}
    events_path = tmp_path / "events.json"
    for system, knob in (("hf", ("generate_kwargs", "min_new_tokens")), ("vllm", ("sampling_kwargs", "min_tokens"))):
        ov = ours.overrides({**spec, "system": system}, events_path, tmp_path / "records.json")
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose(config_name="train", overrides=ov)
        assert cfg.sampler[knob[0]][knob[1]] == 64 and cfg.trainer.max_steps == 3
        assert cfg.trainer.precision == "bf16-mixed" and cfg.data.path == spec["prompts_dir"]
        assert cfg.callbacks.bench_recorder._target_ == "grpo_bench.ours.StepRecorder"
    profiler = instantiate(cfg.trainer.profiler)
    assert isinstance(profiler, PhaseProfiler)
    for name in (REC_START, "grpo/generate", "run_training_batch", HF_END):
        with profiler.profile(name):
            pass
    profiler.describe()  # what the trainer calls at the end: writes the events
    events = json.loads(events_path.read_text())
    assert [e[0] for e in events] == [REC_START, "grpo/generate", "run_training_batch", HF_END]
    assert len(steps_from_events(events)) == 1


def test_variant_and_lever_settings_become_their_public_keys(tmp_path):
    """A variant's extra keys (spec.MAIN_VARIANTS) and a lever's needs (ours.LEVER_SETTINGS) reach the config."""
    from hydra import compose, initialize_config_dir

    from grpo_bench import ours
    from grpo_bench.spec import MAIN_VARIANTS

    spec = {"size": "tiny", "system": "vllm", "max_tokens": 64, "warmup": 1, "steps": 2, "precision": "bf16",
            "prompts_dir": str(tmp_path), "out_dir": str(tmp_path / "out")}
    extra = {name: x for name, _, _, x in MAIN_VARIANTS}["ours vllm bf16, compiled, async"]

    def composed(**more):
        ov = ours.overrides({**spec, **more}, tmp_path / "events.json", tmp_path / "records.json")
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            return compose(config_name="train", overrides=ov)

    cfg = composed(**extra)
    assert cfg.model.compile is True and cfg.sampler.enforce_eager is False and cfg.sampler.engine_threads is None
    assert cfg.algorithm.async_rollouts == 1 and cfg.algorithm.is_cap == 2.0
    assert cfg.algorithm.micro_batch_size == 32  # one micro-batch: the step's 8 prompts × 4 completions
    small_micro = {name: x for name, _, _, x in MAIN_VARIANTS}["ours vllm bf16, compiled, async, micro-batches of 8"]
    assert composed(**small_micro).algorithm.micro_batch_size == 8
    plain = composed()
    assert plain.model.compile is False and plain.sampler.enforce_eager is True and plain.sampler.engine_threads == 1
    assert composed(lever="compile", options=["eager (default)", "compiled"]).model.compile is True


def test_the_compile_lever_switches_both_compiled_forwards():
    import torch

    from grpo_bench import ours

    class Module:
        def __init__(self):
            self.model, self._ref = torch.nn.Linear(2, 2), [torch.nn.Linear(2, 2)]
            for m in (self.model, *self._ref):
                m.compile()

    pl = Module()
    compiled = {m: m._compiled_call_impl for m in (pl.model, *pl._ref)}
    ours.apply_lever("compile", 0, pl, None, 2)
    assert all(m._compiled_call_impl is None for m in compiled)  # the default: eager
    ours.apply_lever("compile", 1, pl, None, 2)
    assert all(m._compiled_call_impl is c for m, c in compiled.items())
    with pytest.raises(RuntimeError, match="model.compile=true"):
        ours.apply_lever("compile", 0, type("Eager", (), {"model": torch.nn.Linear(2, 2), "_ref": []})(), None, 2)
