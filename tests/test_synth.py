"""The synthetic task generator: deterministic, contract-conforming, held-out test items, CLI."""
from __future__ import annotations

import csv
import fnmatch
import hashlib
import importlib.resources
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from secreason.data import synth

REPO = Path(__file__).resolve().parents[1]
CATALOG_TEXT = importlib.resources.files("secreason.data").joinpath(synth.ATTACK_CATALOG).read_text(encoding="utf-8")
# sha256 of tokenizer_corpus(): the tiny tokenizer and model are trained on it, and ensure_tiny's cache
# key is tiny.FORMAT_VERSION only. If this changes on purpose, bump FORMAT_VERSION and update it.
TOKENIZER_CORPUS_SHA256 = "3626dbda5880de0d0193d4e7015dde2bd086e331dbbcd5b84a62bbdf60075b8a"

# Answer formats from docs/CONTRACTS.md, written out here independently of synth.py.
ANSWER_TEXT = {
    "math": re.compile(r"Answer: (\d+)"),
    "mcqa": re.compile(r"Answer: ([ABCD])"),
    "cwe": re.compile(r"(?:.*\n)?(CWE-\d+)"),
    "cvss": re.compile(r"(CVSS:3\.1/AV:[NALP]/AC:[LH]/PR:[NLH]/UI:[NR]/S:[UC]/C:[HLN]/I:[HLN]/A:[HLN])"),
    "attack": re.compile(r"Answer: (T\d{4}(?:, T\d{4})*)"),
}
GOLD = {"math": r"\d{1,2}", "mcqa": r"[ABCD]", "cwe": r"CWE-\d+", "cvss": ANSWER_TEXT["cvss"].pattern[1:-1],
        "attack": r"T\d{4}(?:, T\d{4})?"}
SIZES = dict(n_sft=400, n_rl=200, n_test=100)


@pytest.fixture(scope="module")
def splits():
    return synth.generate(seed=0, **SIZES)


def _assistant(row):
    return row["messages"][-1]["content"]


def test_same_seed_same_rows_other_seed_differs(splits):
    assert synth.generate(seed=0, **SIZES) == splits
    assert synth.generate(seed=1, **SIZES)["sft"] != splits["sft"]


def test_counts_and_even_task_mix(splits):
    assert {k: len(v) for k, v in splits.items()} == {"sft": 400, "rl_train": 200, "rl_test": 100}
    for rows in splits.values():
        per_task = {t: sum(r["task"] == t for r in rows) for t in synth.TASKS}
        assert max(per_task.values()) - min(per_task.values()) <= 1


def test_task_weights_shift_the_mix():
    rows = synth.generate(tasks=("math", "cwe"), n_sft=100, n_rl=0, n_test=0,
                          task_weights={"math": 3, "cwe": 1})["sft"]
    assert sum(r["task"] == "math" for r in rows) == 75


def test_sft_rows_follow_the_contract(splits):
    for row in splits["sft"]:
        user, assistant = row["messages"]
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        assert user["content"].strip() and len(user["content"].split()) <= 40
        m = re.fullmatch(r"<think>(.*)</think>(.*)", assistant["content"], re.S)
        assert m, assistant["content"]
        reasoning, answer_text = m.groups()
        assert reasoning.strip() and len(reasoning.split()) <= 25
        assert ANSWER_TEXT[row["task"]].fullmatch(answer_text).group(1) == row["answer"]
        assert row["domain"] == ("math" if row["task"] == "math" else "security")


def test_rl_rows_follow_the_contract(splits):
    for row in splits["rl_train"] + splits["rl_test"]:
        assert row["prompt"].strip() and row["domain"] in ("math", "security")
        assert re.fullmatch(GOLD[row["task"]], row["answer"]), row


def test_math_gold_is_the_sum(splits):
    for row in splits["rl_train"]:
        if row["task"] == "math":
            a, b, c = map(int, re.fullmatch(r"What is (\d)\+(\d)\+(\d)\?", row["prompt"]).groups())
            assert row["answer"] == str(a + b + c)


def test_mcqa_gold_letter_points_at_the_asked_cwe(splits):
    names = dict(synth.cwe_catalog())
    for row in splits["rl_train"]:
        if row["task"] == "mcqa":
            asked = int(re.match(r"Which option is CWE-(\d+)\?", row["prompt"]).group(1))
            assert len(row["choices"]) == 4 and len(set(row["choices"])) == 4
            assert row["choices"]["ABCD".index(row["answer"])] == names[asked]


def test_rl_test_prompts_are_held_out(splits):
    seen = {r["messages"][0]["content"] for r in splits["sft"]} | {r["prompt"] for r in splits["rl_train"]}
    big = synth.generate(seed=3, n_sft=2000, n_rl=1000, n_test=0)
    seen |= {r["messages"][0]["content"] for r in big["sft"]} | {r["prompt"] for r in big["rl_train"]}
    test_prompts = {r["prompt"] for r in splits["rl_test"]}
    assert test_prompts and not test_prompts & seen
    math_test = {r["prompt"] for r in synth.generate(tasks=("math",), n_sft=0, n_rl=0, n_test=150)["rl_test"]}
    assert len(math_test) == 150  # held-out triples are drawn without repeats while any are left


def test_cvss_gold_parses_and_base_score_matches(splits):
    from cvss import CVSS3

    for row in splits["rl_train"] + splits["rl_test"]:
        if row["task"] == "cvss":
            parsed = CVSS3(row["answer"])
            assert parsed.clean_vector() == row["answer"]
            assert float(parsed.base_score) == row["base_score"]


def test_attack_ids_and_names_come_from_the_catalog(splits):
    rows = [line for line in CATALOG_TEXT.splitlines() if not line.startswith("#")]
    catalog = {r["ID"]: r["Name"] for r in csv.DictReader(rows, delimiter="\t")}
    for row in splits["rl_train"] + splits["rl_test"]:
        if row["task"] == "attack":
            ids = row["answer"].split(", ")
            names = re.fullmatch(r"Which ATT&CK techniques?: (.*)\?", row["prompt"]).group(1).split("; ")
            assert len(ids) == len(names) in (1, 2)
            for tid, name in zip(ids, names):  # gold lists the ids in the prompt's order
                assert catalog[tid].startswith(name)


def test_empty_think_fraction():
    rows = synth.generate(n_sft=500, n_rl=0, n_test=0, empty_think_frac=0.1)["sft"]
    empty = [r for r in rows if _assistant(r).startswith("<think></think>")]
    assert len(empty) == 50
    assert all(ANSWER_TEXT[r["task"]].fullmatch(_assistant(r)[len("<think></think>"):]) for r in empty)


def test_custom_think_tags():
    rows = synth.generate(n_sft=20, n_rl=0, n_test=0, think_tags=("<r>", "</r>"))["sft"]
    assert all(re.fullmatch(r"<r>.+</r>.+", _assistant(r), re.S) for r in rows)


@pytest.mark.parametrize("kwargs", [dict(tasks=("nope",)), dict(n_sft=-1), dict(empty_think_frac=1.5),
                                    dict(task_weights={"math": 1, "other": 1})])
def test_bad_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        synth.generate(**kwargs)


def test_shipped_catalog_is_mitres_ids_and_names_with_its_notice():
    notice = "\n".join(line for line in CATALOG_TEXT.splitlines() if line.startswith("#"))
    assert "© 2024 The MITRE Corporation" in notice
    assert "reproduced and distributed with the permission of\n# The MITRE Corporation" in notice
    assert "reproduce MITRE's copyright designation and this\n# license in any such copy" in notice
    table = [line.split("\t") for line in CATALOG_TEXT.splitlines() if not line.startswith("#")]
    assert table[0] == ["ID", "Name"] and all(len(row) == 2 for row in table)  # nothing but id and name
    ids = [tid for tid, _ in table[1:]]
    assert len(ids) == len(set(ids)) == 202 and all(re.fullmatch(r"T\d{4}", tid) for tid in ids)
    assert [tid for tid, _ in synth.attack_catalog()] == ids  # every row is used, in file order


def test_catalog_is_package_data():
    """A wheel (not only an editable install) must carry the catalog."""
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert any(fnmatch.fnmatch(synth.ATTACK_CATALOG, pattern) for pattern in package_data.get("secreason.data", []))


def test_bad_catalog_names_its_source():
    with pytest.raises(ValueError, match=r"cat\.tsv: expected columns ID and Name"):
        synth.parse_attack_catalog("# notice\nId\tTitle\nT1059\tShell\n", "cat.tsv")
    with pytest.raises(ValueError, match=r"cat\.tsv: fewer than 2 main techniques"):
        synth.parse_attack_catalog("ID\tName\nT1059\tShell\nT1059.001\tPowerShell\n", "cat.tsv")


def test_tokenizer_corpus_is_unchanged():
    digest = hashlib.sha256("\n".join(synth.tokenizer_corpus()).encode()).hexdigest()
    assert digest == TOKENIZER_CORPUS_SHA256, "the tiny tokenizer's corpus changed: bump tiny.FORMAT_VERSION"


def test_tokenizer_corpus_covers_the_tasks():
    corpus = synth.tokenizer_corpus()
    assert 0 < len(corpus) < 5000
    text = "\n".join(corpus)
    assert "<think>" in text and "</think>" in text
    for needle in ("Answer:", "CWE-79", "CVSS:3.1/", "T1059", "What is"):
        assert needle in text


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    return subprocess.run([sys.executable, "-m", "secreason.data.synth", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_cli_writes_the_four_files(tmp_path):
    out = tmp_path / "data"
    proc = _cli("--out", str(out), "--seed", "2", "--n-sft", "50", "--n-rl", "20", "--n-test", "10",
                "--tasks", "math,cvss")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "rl_test.jsonl", "rl_train.jsonl", "sft.jsonl"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 2 and manifest["tasks"] == ["math", "cvss"]
    assert manifest["counts"]["rl_test"] == {"total": 10, "cvss": 5, "math": 5}
    assert set(manifest["sources"]) >= {"cwe2", "cvss"}
    rows = [json.loads(line) for line in (out / "sft.jsonl").read_text().splitlines()]
    assert rows == synth.generate(seed=2, tasks=("math", "cvss"), n_sft=50, n_rl=20, n_test=10)["sft"]


def test_cli_bad_tasks_is_one_line_error(tmp_path):
    proc = _cli("--out", str(tmp_path / "data"), "--n-sft", "5", "--tasks", "math,nope")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "'nope'" in lines[0]
    assert not (tmp_path / "data").exists()
