"""The pieces under the protocols: file reading, benchmark loading, prompts, alias graph, metrics."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from secreason.eval import EvalError, benchmarks, metrics, prompts, report_table
from secreason.eval.benchmarks import Item
from secreason.eval.files import read_response_file, read_upstream_tsv
from secreason.eval.harmbench import is_refusal
from secreason.eval.taa import ActorGraph

ROOT = Path(__file__).resolve().parents[1]
needs_data = pytest.mark.usefixtures("benchmark_data_dir")  # conftest.py: skips when $SECREASON_DATA_DIR has none


# ---- files ---------------------------------------------------------------------------------
def test_upstream_tsv_keeps_quotes_and_empty_cells(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_bytes(b'URL\tDescription\tGT\r\nu1\t"Clear History" did not clear\tCWE-20\r\nu2\t\tCWE-79\r\n')
    rows = read_upstream_tsv(path)
    assert rows == [{"URL": "u1", "Description": '"Clear History" did not clear', "GT": "CWE-20"},
                    {"URL": "u2", "Description": "", "GT": "CWE-79"}]


def test_response_file_errors_are_one_clear_line(tmp_path):
    with pytest.raises(EvalError, match="no such file"):
        read_response_file(tmp_path / "missing.jsonl")
    (tmp_path / "r.parquet").write_text("")
    with pytest.raises(EvalError, match="unknown file type"):
        read_response_file(tmp_path / "r.parquet")
    (tmp_path / "bad.jsonl").write_text('{"GT": "A"}\n{not json\n')
    with pytest.raises(EvalError, match=r"bad.jsonl:2: invalid JSON"):
        read_response_file(tmp_path / "bad.jsonl")


def test_jsonl_nulls_become_empty_cells(tmp_path):
    (tmp_path / "r.jsonl").write_text('{"GT": "A", "response": null}\n\n')
    assert read_response_file(tmp_path / "r.jsonl") == [{"GT": "A", "response": ""}]


# ---- benchmarks on the real data: sizes and documented quirks -------------------------------
@needs_data
@pytest.mark.parametrize("name,n", [("ctibench_mcq", 2500), ("ctibench_rcm", 1000), ("ctibench_rcm_2021", 1000),
                                    ("ctibench_vsp", 1000), ("ctibench_ate", 60), ("ctibench_taa", 50),
                                    ("mmlu_security", 100), ("seceval", 1255), ("secbench_eng", 587),
                                    ("secbench_eng_reasoning", 43), ("harmbench", 400)])
def test_benchmark_sizes(name, n, benchmark_data_dir):
    assert len(benchmarks.load_items(benchmarks.get(name), benchmark_data_dir)) == n


@needs_data
def test_documented_quirks_are_found_and_counted(benchmark_data_dir):
    mcq = benchmarks.load_items(benchmarks.get("ctibench_mcq"), benchmark_data_dir)
    empty = [it.index for it in mcq if "empty_option" in it.quirks]
    assert empty == [56, 1030, 1309, 1407, 2235]         # SCORING.md's 1-based rows 57, 1031, ...
    assert mcq[56].fields["choices"][3] == "None"        # shown as FAITH's HF load shows it
    assert [it.index for it in mcq if "lowercase_gold" in it.quirks] == [108] and mcq[108].gold == "B"
    rcm21 = benchmarks.load_items(benchmarks.get("ctibench_rcm_2021"), benchmark_data_dir)
    assert rcm21[920].row["Description"].startswith('"Clear History and Website Data"')
    ate = benchmarks.load_items(benchmarks.get("ctibench_ate"), benchmark_data_dir)
    assert [it.index for it in ate if "gold_outside_platform_list" in it.quirks] == [8]   # row 9, Agent Smith
    taa = benchmarks.load_items(benchmarks.get("ctibench_taa"), benchmark_data_dir)
    assert sum("gold_whitespace" in it.quirks for it in taa) == 16
    seceval = benchmarks.load_items(benchmarks.get("seceval"), benchmark_data_dir)
    assert sum("choice_truncated_after_last_colon" in it.quirks for it in seceval) == 55
    rcm = benchmarks.load_items(benchmarks.get("ctibench_rcm"), benchmark_data_dir)
    assert "stray_spaces_row" in rcm[391].quirks


def test_missing_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(EvalError, match=r"has no ctibench/cti-rcm.tsv .*data_dir"):
        benchmarks.load_items(benchmarks.get("ctibench_rcm"), tmp_path)
    with pytest.raises(EvalError, match="unknown benchmark 'cti_mcq'"):
        benchmarks.get("cti_mcq")


# ---- prompts ---------------------------------------------------------------------------------
def _item(**fields) -> Item:
    return Item(index=0, row={}, gold="B", fields=fields)


def test_report_mcq_layout_and_few_shot():
    item = _item(question="Which port does HTTPS use?", choices=["21", "443", "80", "22"])
    shot = Item(index=0, row={}, gold="A", fields={"question": "Q0?", "choices": ["w", "x", "y", "z"]})
    text = prompts.report_user_message("mcq", item, shots=[shot])
    assert text == (prompts.MCQ_INSTRUCTION + "\n\nQ0?\n\nA. w\nB. x\nC. y\nD. z\nAnswer: A"
                    "\n\nWhich port does HTTPS use?\n\nA. 21\nB. 443\nC. 80\nD. 22")
    assert prompts.MCQ_INSTRUCTION.endswith("where $LETTER is one of A, B, C, or D.")


def test_rcm_description_paragraphs_except_stray_row():
    desc = " First sentence.  Second  paragraph.  "
    assert prompts.rcm_description(desc, stray_spaces=False) == "First sentence.\n\nSecond\n\nparagraph."
    assert prompts.rcm_description("when      handling  it", stray_spaces=True) == "when handling it"
    stray = Item(index=391, row={}, gold="CWE-120", fields={"description": "a      b"}, quirks=["stray_spaces_row"])
    assert prompts.report_user_message("rcm", stray) == prompts.RCM_INSTRUCTION + "\n\nCVE Description: a b"


def test_ate_prompt_names_the_platform_and_lists_its_ids():
    item = _item(description="Malware text.", platform="Mobile", techniques=[("T1404", "Exploitation")])
    text = prompts.report_user_message("ate", item)
    assert "MITRE Mobile attack pattern" in text and "- T1404 : Exploitation" in text
    assert text.endswith("**Text**\n\nMalware text.")


def test_ctibench_protocol_uses_prompt_column_and_system_prompt():
    item = Item(index=0, row={"Prompt": "Upstream prompt text. "}, gold="A")
    msgs = prompts.messages("ctibench", "mcq", item, prompts.CTIBENCH_SYSTEM_PROMPT)
    assert msgs == [{"role": "system", "content": prompts.CTIBENCH_SYSTEM_PROMPT},
                    {"role": "user", "content": "Upstream prompt text. "}]


def test_harmbench_contextual_layout():
    item = Item(index=0, row={}, gold=None, fields={"behavior": "Do X", "context": "Ctx", "functional": "contextual",
                                                     "semantic": "illegal"})
    assert prompts.harmbench_user_message(item) == "Ctx\n\n---\n\nDo X"


# ---- TAA alias graph (upstream semantics) ------------------------------------------------------
def test_actor_graph_upstream_and_fixed_rules():
    alias = {"a": ["b"], "b": ["c"], "lonely": [], "x": ["nan"], "y": ["nan"]}
    related = {"c": ["d"]}
    up = ActorGraph(alias, related, keep_nan=True)
    assert up.label("A ", "c") == "C"           # chains of any length, case and spaces ignored
    assert up.label("a", "d") == "P"
    assert up.label("lonely", "lonely") == "I"  # upstream: a name without edges is not linked to itself
    assert up.label("x", "y") == "C"            # the spurious "nan" node
    fixed = ActorGraph(alias, related, keep_nan=False)
    assert fixed.label("x", "y") == "I" and fixed.label("lonely", "Lonely") == "C"


# ---- metrics, refusal matcher, report table -----------------------------------------------------
def test_f1_and_seed_aggregation():
    assert metrics.f1(0, 0, 0) == 0.0 and metrics.f1(1, 1, 0) == pytest.approx(2 / 3)
    assert metrics.micro_f1([(1, 0, 1), (0, 1, 0)]) == pytest.approx(0.5)   # TP 1, FP 1, FN 1 → 2/4
    out = metrics.over_seeds([{"accuracy": 0.5, "invalid": 2}, {"accuracy": 0.7, "invalid": 4}], ["accuracy"])
    assert out == pytest.approx({"accuracy": 0.6, "invalid": 3, "accuracy_std": 0.2 / 2 ** 0.5})
    assert metrics.base_score("CVSS:3.1/AV:N/AC:L") is None


def test_refusal_matcher_reads_the_opening_only():
    assert is_refusal("I’m sorry, but no.")
    assert not is_refusal("Sure. " + "x" * 400 + " I cannot")
    assert not is_refusal("Here is how to do it.")


def test_report_table_csv_matches_report_details():
    _, rows = report_table.load()
    assert len(rows) == 17 and rows[0]["model"] == "FS-8B-Reasoning" and rows[0]["ctibench_rcm"] == "0.753"
    details = ROOT.parent / "shared" / "paper" / "report-details.md"
    if details.is_file():  # every row of the markdown table, in order
        table = re.findall(r"^\| \**([^|*]+?)\** \| ([.\d ]+) \|$", details.read_text(), re.M)[:17]
        assert [(m, [f"0{v}" for v in s.split()]) for m, s in table] == \
               [(r["model"], [r[c] for c in list(r)[1:]]) for r in rows]


def test_report_table_prints_our_row_first():
    res = {"ctibench_rcm": {"accuracy": 0.5}, "seceval": {"accuracy": 0.25}}
    lines = report_table.format_table(res).splitlines()
    assert lines[0].split() == ["model", "ctibench_rcm", "seceval"]
    assert lines[1].split() == ["this", "run", "0.500", "0.250"]
    assert lines[3].split() == ["FS-8B-Reasoning", "0.753", "0.848"]


def test_complete_caps_completions_to_the_model_context(tokenizer):
    """A protocol's 10,000 new tokens cannot fit a 1,024-position model: capped per call, restored after."""
    from secreason.eval.generate import complete, prompt_ids
    from secreason.rollout import Rollout

    seen = []

    class FakeSampler:
        max_tokens = 10_000

        def generate(self, ids, n):
            seen.append(self.max_tokens)
            rows = len(ids) * n
            z = torch.zeros((rows, 1), dtype=torch.long)
            return Rollout(z, z, z, z, z.float(), torch.arange(rows), torch.zeros(rows, dtype=torch.bool),
                           ["Answer: A"] * rows)

    conv = [{"role": "user", "content": "Which option? A) x B) y"}]
    longest = len(prompt_ids(tokenizer, conv))
    out = complete(FakeSampler(), tokenizer, [conv, conv], 2, context=1024)
    assert seen == [1024 - longest]          # room left after the longest prompt
    assert out == [["Answer: A"] * 2] * 2
    sampler = FakeSampler()
    complete(sampler, tokenizer, [conv], 1, context=0)
    assert seen[-1] == 10_000 and sampler.max_tokens == 10_000   # no context: untouched
