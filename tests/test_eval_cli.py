"""`python eval.py` as a user runs it: bad input, scoring only, and (slow) generation end to end."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures" / "eval"
needs_data = pytest.mark.usefixtures("benchmark_data_dir")  # conftest.py: skips when $SECREASON_DATA_DIR has none


def eval_py(tmp_path: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, str(ROOT / "eval.py"), f"hydra.run.dir={tmp_path}", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def last_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


# ---- bad input: one clear line, exit 2 ----------------------------------------------------------
def test_responses_file_missing_its_column(tmp_path):
    proc = eval_py(tmp_path, "benchmark=ctibench_mcq", f"responses={FIX / 'mcq.jsonl'}", "response_column=output")
    assert_one_line_error(proc, "no column 'output'", "columns are ['GT', 'URL', 'response']")


def test_unknown_benchmark(tmp_path):
    assert_one_line_error(eval_py(tmp_path, "benchmark=ctibench_xyz"), "benchmark='ctibench_xyz' unknown",
                          "ctibench_mcq")


def test_ctibench_protocol_outside_ctibench(tmp_path):
    proc = eval_py(tmp_path, "benchmark=mmlu_security", "protocol=ctibench")
    assert_one_line_error(proc, "protocol=ctibench applies only to the ctibench_* benchmarks")


def test_data_dir_without_the_files(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = eval_py(tmp_path / "run", "benchmark=cyber", f"data_dir={empty}")
    assert_one_line_error(proc, f"data_dir={empty} has no ctibench/cti-mcq.tsv")


def test_suite_with_a_response_file_and_bad_group_choice(tmp_path):
    proc = eval_py(tmp_path, "benchmark=cyber", f"responses={FIX / 'mcq.jsonl'}", "response_column=response")
    assert_one_line_error(proc, "cyber is a suite")
    assert_one_line_error(eval_py(tmp_path, "benchmark=harmbench", "judge=gpt4"), "judge='gpt4' unknown")


# ---- scoring only -------------------------------------------------------------------------------
def test_scoring_only_prints_json_and_writes_outputs(tmp_path):
    proc = eval_py(tmp_path, "benchmark=ctibench_rcm", "protocol=report", f"responses={FIX / 'rcm.tsv'}",
                   "response_column=response", f"data_dir={FIX}", "report_table=true")
    out = last_json(proc)
    assert (out["benchmark"], out["protocol"], out["n"], out["invalid"]) == ("ctibench_rcm", "report", 12, 3)
    assert out["accuracy"] == pytest.approx(5 / 12, abs=1e-6)          # as in test_eval_scoring
    assert "FS-8B-Reasoning" in proc.stdout and "0.417" in proc.stdout  # our row beside the report's
    assert json.loads((tmp_path / "summary.json").read_text()) == out
    assert len((tmp_path / "items.jsonl").read_text().splitlines()) == 12
    assert list((tmp_path / "wandb").glob("offline-run-*"))             # offline wandb run
    tables = list((tmp_path / "wandb").glob("offline-run-*/files/media/table/eval/items_*.table.json"))
    assert len(tables) == 1, "the per-item wandb Table is missing"
    table = json.loads(tables[0].read_text())
    assert len(table["data"]) == 12 and {"benchmark", "response", "answer"} <= set(table["columns"])


# ---- generation end to end on the tiny model (CPU; `tiny_model_dir` is conftest.py's) -------------
GEN = ("backend=hf", "sampler.max_tokens=32", "wandb.enabled=false")


@pytest.mark.slow
@needs_data
def test_e2e_ctibench_mcq_two_seeds(tmp_path, tiny_model_dir):
    out = last_json(eval_py(tmp_path, "benchmark=ctibench_mcq", f"model.path={tiny_model_dir}", "limit=20", "seeds=2", *GEN))
    assert (out["n"], out["seeds"]) == (20, 2)
    assert {"accuracy", "lenient_accuracy", "accuracy_std", "lenient_accuracy_std", "invalid"} <= set(out)
    records = [json.loads(x) for x in (tmp_path / "items.jsonl").read_text().splitlines()]
    assert len(records) == 40 and {r["seed"] for r in records} == {0, 1}
    assert not any("<|end|>" in r["response"] for r in records)   # eos text is not scored


@pytest.mark.slow
@needs_data
def test_e2e_mmlu_security(tmp_path, tiny_model_dir):
    out = last_json(eval_py(tmp_path, "benchmark=mmlu_security", f"model.path={tiny_model_dir}", "limit=10", "seeds=2",
                            "benchmark.num_shots=2", *GEN))
    assert out["benchmark"] == "mmlu_security" and out["n"] == 10 and "accuracy_std" in out


@pytest.mark.slow
@needs_data
def test_e2e_harmbench_refusal_judge(tmp_path, tiny_model_dir):
    out = last_json(eval_py(tmp_path, "benchmark=harmbench", "judge=refusal", f"model.path={tiny_model_dir}", "limit=10",
                            "seeds=1", *GEN))
    assert out["n"] == 10 and 0.0 <= out["pass_rate"] <= 1.0
    assert any(k.startswith("pass_rate/semantic/") for k in out)


@pytest.mark.slow
@pytest.mark.vllm
@needs_data
def test_e2e_default_backend_uses_vllm_when_installed(tmp_path, tiny_model_dir):
    pytest.importorskip("vllm")
    proc = eval_py(tmp_path, "benchmark=ctibench_mcq", f"model.path={tiny_model_dir}", "limit=20", "seeds=2",
                   "sampler.max_tokens=32", "wandb.enabled=false")
    out = last_json(proc)
    assert (out["n"], out["seeds"]) == (20, 2) and "accuracy_std" in out
    assert "generating with vllm" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_llm_judges_and_guard_plumbing_with_a_stand_in_model(tmp_path, tiny_model_dir):
    """The tiny model stands in for Llama Guard 3 and the HarmBench classifier: it answers neither
    verdict, so every LLM verdict is `invalid` (a failure) and nothing is blocked by the guard."""
    fake = (f"judge.model_path={tiny_model_dir}", "judge.dtype=float32", f"guard.model_path={tiny_model_dir}",
            "guard.dtype=float32")
    common = ("benchmark=harmbench", f"responses={FIX / 'harmbench.jsonl'}", "response_column=response",
              "wandb.enabled=false")
    out = last_json(eval_py(tmp_path / "lg", *common, "judge=llama_guard3", "guard=llama_guard3", *fake))
    # 10 rows: all judged invalid → pass rate 0; the guard saw 10 prompts and 10 responses, blocked none
    assert (out["pass_rate"], out["judge_invalid"], out["guard_blocked_input"]) == (0.0, 10, 0)
    out = last_json(eval_py(tmp_path / "hb", *common, "judge=harmbench", f"judge.prompt_file={FIX / 'harmbench_cls_prompt.json'}",
                            *fake[:2]))
    # rows 3 and 7 are copyright: refusal matcher (3 ✗, 7 ✓); the other 8 are invalid → 1/10
    assert (out["pass_rate"], out["judge_invalid"], out["copyright_refusal_fallback"]) == (0.1, 8, 2)
    proc = eval_py(tmp_path / "np", *common, "judge=harmbench", *fake[:2])
    assert_one_line_error(proc, "judge=harmbench needs judge.prompt_file")
