"""Issue 18, "no silent wrong training": GRPO rows no reward routes, gold answers no reward can use,
undecodable lines and fewer rows than a batch are errors naming file:line (or the file and the
counts), or, with `data.on_bad_row=skip`, skips that are counted and logged as metrics. Also: rows
without a `domain` under the report mix (data=jsonl) and a text file named .parquet.
Fast: in-process datamodules on the tiny tokenizer, plus two short train.py runs."""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest

from secreason.data.jsonl import iter_jsonl
from secreason.data.prompts import PromptDataModule
from secreason.data.rows import check_rl_prompt, load_rows, log_counts
from secreason.data.sft import SFTDataModule, apply_mix
from secreason.errors import DataError

REWARD_TASKS = frozenset({"mcqa", "cwe", "cvss", "attack", "math"})  # conf/rewards/cyber.yaml's


def rl_row(i: int = 0, **over) -> dict:
    return {"task": "math", "prompt": f"What is {i}+1?", "answer": str(i + 1), "domain": "math", **over}


def write_jsonl(path: Path, rows: list, raw: dict[int, bytes] | None = None) -> Path:
    """rows as JSONL; `raw` replaces line i (0-based) by those bytes."""
    lines = [json.dumps(r).encode() for r in rows]
    for i, data in (raw or {}).items():
        lines[i] = data
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def prompts(tokenizer, path, reward_tasks=REWARD_TASKS, **kw) -> PromptDataModule:
    kw.setdefault("batch_size", 2)
    return PromptDataModule(tokenizer, path=str(path), split="train", reward_tasks=reward_tasks, **kw)


# --- a task no reward routes -----------------------------------------------------------------------

def test_unknown_task_is_an_error_naming_file_line(tokenizer, tmp_path):
    f = write_jsonl(tmp_path / "rl.jsonl", [rl_row(0), rl_row(1), rl_row(2, task="nosuch")])
    with pytest.raises(DataError) as e:
        prompts(tokenizer, f).setup()
    msg = str(e.value)
    assert msg.startswith(f"{f}:3: task 'nosuch' has no reward in the reward set"), msg
    assert "attack, cvss, cwe, math, mcqa" in msg


def test_unknown_task_skipped_and_counted(tokenizer, tmp_path, caplog):
    rows = [rl_row(i) for i in range(4)] + [rl_row(9, task="nosuch")]
    dm = prompts(tokenizer, write_jsonl(tmp_path / "rl.jsonl", rows), on_bad_row="skip")
    with caplog.at_level(logging.WARNING):
        dm.setup()
    assert len(dm.train_items) == 4 and dm.stats["rows_skipped"] == 1 and dm.stats["rows_read"] == 5
    assert "task 'nosuch' has no reward" in caplog.text and "skipped 1 bad rows" in caplog.text


def test_every_row_unknown_is_an_error_even_when_skipping(tokenizer, tmp_path):
    f = write_jsonl(tmp_path / "rl.jsonl", [rl_row(i, task="nosuch") for i in range(6)])
    with pytest.raises(DataError, match=r"no valid rows .*\(6 bad rows skipped\)"):
        prompts(tokenizer, f, on_bad_row="skip").setup()


def test_tasks_filter_first_then_routing(tokenizer, tmp_path):
    """data.tasks keeps only some tasks: rows it drops are not held to the reward set's tasks."""
    rows = [rl_row(i) for i in range(3)] + [rl_row(7, task="other_task")]
    dm = prompts(tokenizer, write_jsonl(tmp_path / "rl.jsonl", rows), tasks=["math"])
    dm.setup()
    assert len(dm.train_items) == 3 and dm.stats["rows_other_tasks"] == 1 and dm.stats["rows_skipped"] == 0


def test_without_reward_tasks_the_task_is_not_checked(tokenizer, tmp_path):
    rows = [rl_row(i, task="free_form") for i in range(3)]
    dm = prompts(tokenizer, write_jsonl(tmp_path / "rl.jsonl", rows), reward_tasks=None)
    dm.setup()
    assert len(dm.train_items) == 3


# --- a gold answer no reward can use -------------------------------------------------------------

@pytest.mark.parametrize("answer,why", [(["14"], "'answer' is a list"), ({"x": 1}, "'answer' is a dict"),
                                        (None, "'answer' is null"), (True, "boolean"), ("  ", "empty"),
                                        (float("nan"), "not a finite number")],
                         ids=["list", "dict", "null", "bool", "blank", "nan"])
def test_bad_answer_type_is_an_error_naming_file_line(tokenizer, tmp_path, answer, why):
    rows = [rl_row(0), rl_row(1, answer=answer), rl_row(2)]
    f = tmp_path / "rl.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")  # NaN: json writes it, json reads it back
    with pytest.raises(DataError, match=rf"^{f}:2: .*{why}"):
        prompts(tokenizer, f).setup()


def test_bad_answers_skipped_and_logged_as_metric(tokenizer, tmp_path):
    rows = [rl_row(i) for i in range(4)] + [rl_row(5, answer=None), rl_row(6, answer=["6"]), rl_row(7, answer={})]
    dm = prompts(tokenizer, write_jsonl(tmp_path / "rl.jsonl", rows), on_bad_row="skip")

    class Logger:
        logged: list = []

        def log_metrics(self, metrics, step):
            self.logged.append((step, metrics))

    class Trainer:
        loggers = [Logger()]

    dm.trainer = Trainer()
    dm.setup()
    assert len(dm.train_items) == 4
    (step, metrics), = Logger.logged
    assert step == 0 and metrics["data/rows_skipped"] == 3.0 and metrics["data/rows_used"] == 4.0


def test_usable_answers():
    """Strings, finite numbers, and id lists for the ATT&CK task pass."""
    for answer, task in [("B", "mcqa"), (12, "math"), (0.5, "math"), (["T1059", "T1566"], "attack"),
                         ("T1059, T1566", "attack")]:
        assert check_rl_prompt(rl_row(task=task, answer=answer), REWARD_TASKS) is None, answer
    assert "list" in check_rl_prompt(rl_row(task="attack", answer=[]), REWARD_TASKS)
    assert "list" in check_rl_prompt(rl_row(task="attack", answer=["T1059", 3]), REWARD_TASKS)


# --- fewer usable rows than one batch ------------------------------------------------------------

def test_fewer_rows_than_a_batch_names_file_and_counts(tokenizer, tmp_path):
    rows = [rl_row(i) for i in range(3)] + [rl_row(8, answer=None)]
    f = write_jsonl(tmp_path / "rl.jsonl", rows)
    with pytest.raises(DataError) as e:
        prompts(tokenizer, f, batch_size=8, on_bad_row="skip").setup()
    msg = str(e.value)
    assert msg.startswith(f"data.path={f}: 3 usable rows (4 read: 1 bad"), msg
    assert "fewer than one batch (data.batch_size=8)" in msg


def test_exactly_one_batch_is_fine(tokenizer, tmp_path):
    dm = prompts(tokenizer, write_jsonl(tmp_path / "rl.jsonl", [rl_row(i) for i in range(4)]), batch_size=4)
    dm.setup()
    assert len(dm.train_dataloader()) == 1


# --- bytes that are not UTF-8, per line ----------------------------------------------------------

def test_non_utf8_line_names_file_line_and_can_be_skipped(tokenizer, tmp_path):
    rows = [rl_row(i) for i in range(4)]
    f = write_jsonl(tmp_path / "rl.jsonl", rows, raw={2: json.dumps(rl_row(2)).encode().replace(b"What", b"Wh\xffat")})
    with pytest.raises(DataError, match=rf"^{f}:3: not UTF-8 \(byte 0xff at column \d+"):
        prompts(tokenizer, f).setup()
    dm = prompts(tokenizer, f, on_bad_row="skip")
    dm.setup()
    assert len(dm.train_items) == 3 and dm.stats["rows_skipped"] == 1


def test_iter_jsonl_decodes_line_by_line(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_bytes(b'\xef\xbb\xbf{"a": 1}\n{"b": "\xe9"}\r\n\n{"c": "\xc3\xa9"}\n')
    out = list(iter_jsonl(f))
    assert out[0] == (1, {"a": 1})  # a byte-order mark on line 1 is dropped
    assert out[1][0] == 2 and out[1][1].startswith("not UTF-8 (byte 0xe9 at column 8")
    assert out[2] == (4, {"c": "é"})  # the blank line 3 is skipped, numbering goes on


def test_sft_non_utf8_line_is_skipped(tokenizer, tmp_path):
    row = {"messages": [{"role": "user", "content": "What is 2+2?"},
                        {"role": "assistant", "content": "<think>2+2=4</think>Answer: 4"}]}
    f = write_jsonl(tmp_path / "sft.jsonl", [row] * 3, raw={1: b'{"messages": "\xff"}'})
    with pytest.raises(DataError, match=rf"^{f}:2: not UTF-8"):
        SFTDataModule(tokenizer, path=str(f), val_fraction=0.0, batch_size=2).setup()
    dm = SFTDataModule(tokenizer, path=str(f), val_fraction=0.0, batch_size=2, on_bad_row="skip")
    dm.setup()
    assert dm.stats["train_rows"] == 2 and dm.stats["rows_skipped"] == 1


# --- a text file named .parquet ------------------------------------------------------------------

def test_text_file_named_parquet_names_the_file(tmp_path):
    f = tmp_path / "rows.parquet"
    f.write_text("this is not parquet\n")
    with pytest.raises(DataError, match=rf"^{f}: not a readable Parquet file"):
        load_rows(str(f), check_rl_prompt)


def test_real_parquet_still_reads(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist([rl_row(0), rl_row(1)]), f)
    stats: dict = {}
    rows = load_rows(str(f), check_rl_prompt, stats=stats)
    assert rows == [rl_row(0), rl_row(1)] and stats == {"rows_read": 2, "rows_skipped": 0}


# --- rows without a domain under a mix -----------------------------------------------------------

REPORT_MIX = {"security": 0.268, "math": 0.209, "code": 0.149}


def test_no_domain_anywhere_keeps_the_rows_as_they_are(caplog):
    rows = [{"i": i} for i in range(10)]
    with caplog.at_level(logging.WARNING):
        assert apply_mix(rows, REPORT_MIX, seed=0) is rows
    assert "data.mix not applied: no row has a 'domain'" in caplog.text


def test_rows_without_domain_are_kept_outside_the_mix():
    rows = [{"domain": "security", "i": i} for i in range(6)] + [{"domain": "math", "i": i} for i in range(2)] \
        + [{"i": 100 + i} for i in range(3)] + [{"domain": None, "i": 200}]
    out = apply_mix(rows, {"security": 0.5, "math": 0.5}, seed=0)
    assert sorted(r["i"] for r in out if not r.get("domain")) == [100, 101, 102, 200]  # each once
    assert sum(r.get("domain") == "security" for r in out) == 4 and sum(r.get("domain") == "math" for r in out) == 4


def test_a_mix_naming_other_takes_them_in():
    rows = [{"domain": "security"}] * 5 + [{}] * 5
    out = apply_mix(rows, {"security": 0.8, "other": 0.2}, seed=0)
    assert len(out) == 10 and sum(1 for r in out if not r) == 2


def test_log_counts_without_a_trainer_does_nothing():
    log_counts(None, {"rows_skipped": 1})


# --- end to end: the run hands the reward set's tasks to the datamodule ---------------------------

@pytest.fixture
def warm(tiny_model_dir, synth_dir):
    """Build the tiny model in-process once, not in the subprocess."""


def grpo_args(path: Path, *extra: str) -> list[str]:
    return ["+experiment=grpo", f"data.path={path}", "logger=csv", "trainer.enable_progress_bar=false",
            "num_threads=1", "data.batch_size=2", "algorithm.num_generations=2", "algorithm.micro_batch_size=4",
            "sampler.max_tokens=4", "trainer.max_steps=1", *extra]


def test_train_py_unknown_task_is_one_line(run_train, tmp_path, warm):
    f = write_jsonl(tmp_path / "rl.jsonl", [rl_row(i, task="nosuch") for i in range(4)])
    proc = run_train(*grpo_args(f), timeout=180)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert lines == [f"error: {f}:1: task 'nosuch' has no reward in the reward set, which routes attack, cvss, "
                     "cwe, math, mcqa (fix the row's task, or add a reward for it: conf/rewards)"], proc.stderr
    assert "Traceback" not in proc.stderr and not (proc.run_dir / "hf_model").exists()


def test_train_py_skip_logs_the_count_as_a_metric(run_train, tmp_path, warm):
    rows = [rl_row(i) for i in range(4)] + [rl_row(5, task="nosuch"), rl_row(6, answer=None)]
    proc = run_train(*grpo_args(write_jsonl(tmp_path / "rl.jsonl", rows), "data.on_bad_row=skip",
                                "callbacks.hf_export=null"), timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = list(csv.DictReader(open(proc.run_dir / "csv" / "metrics.csv")))
    counted = [r for r in metrics if r.get("data/rows_skipped")]
    assert [float(r["data/rows_skipped"]) for r in counted] == [2.0]
    assert float(counted[0]["data/rows_used"]) == 4.0
