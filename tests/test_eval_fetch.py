"""`python -m secreason.eval.fetch`: the layout it writes (with a fake loader: no network here) is the
one eval reads, it fails in one line without `datasets` or network, refuses an --out inside the
repository, and never unpickles code. Fast; no benchmark data is needed (the fake loader makes a
few rows of each file), and the derivations are checked against the real data when it is there."""
from __future__ import annotations

import builtins
import csv
import io
import json
import pickle
from pathlib import Path

import pytest

from secreason.eval import benchmarks, fetch
from secreason.eval.fetch import FetchError

ROOT = Path(__file__).resolve().parents[1]
TECHNIQUES = {"Enterprise": [("T1548", "Abuse Elevation Control Mechanism"), ("T1071", "Application Layer Protocol")],
              "Mobile": [("T1404", "Exploitation for Privilege Escalation")]}


def tsv(header: list[str], rows: list[list[str]]) -> bytes:
    return ("\t".join(header) + "\r\n" + "".join("\t".join(r) + "\r\n" for r in rows)).encode()


def ate_prompt(platform: str) -> str:
    listing = " ".join(f"{t} : {n}" for t, n in TECHNIQUES[platform])
    return (f"Extract all MITRE {platform} attack patterns ... **Text:** made up.  "
            f"**List of All MITRE {platform} technique IDs** ID    : Name {listing}     ")


class FakeLoader:
    """A few made-up rows per file, in each source's own format; records what was asked for."""

    def __init__(self) -> None:
        self.asked: list[tuple] = []

    def hub_file(self, repo_id: str, filename: str) -> bytes:
        self.asked.append(("hub_file", repo_id, filename))
        assert repo_id == "AI4Sec/cti-bench"
        if filename == "cti-mcq.tsv":
            return tsv(["URL", "Question", "Option A", "Option B", "Option C", "Option D", "Prompt", "GT"],
                       [["u0", "Which?", "a", "b", "", "d", "p", "B"]])
        if filename in ("cti-rcm.tsv", "cti-rcm-2021.tsv"):
            return tsv(["URL", "Description", "Prompt", "GT"], [["u0", '"Quoted" start', "p", "CWE-79"]])
        if filename == "cti-vsp.tsv":
            return tsv(["URL", "Description", "Prompt", "GT"], [["u0", "d", "p", "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"]])
        if filename == "cti-ate.tsv":
            return tsv(["URL", "Platform", "Description", "Prompt", "GT"],
                       [["u0", "Enterprise", "d", ate_prompt("Enterprise"), "T1071"],
                        ["u1", "Mobile", "d", ate_prompt("Mobile"), "T1404"]])
        if filename == "cti-taa.tsv":
            return tsv(["URL", "Text", "Prompt"], [["https://a", "t", "p"], ["https://b", "t", "p"]])
        raise AssertionError(filename)

    def hub_rows(self, repo_id: str, config: str | None, split: str) -> list[dict]:
        self.asked.append(("hub_rows", repo_id, config, split))
        assert (repo_id, config) == ("cais/mmlu", "computer_security")
        return [{"question": f"Q, with a comma ({split})?", "subject": "computer_security",
                 "choices": ["w", "x", 'y "q"', "z"], "answer": 2}]

    def url(self, url: str) -> bytes:
        self.asked.append(("url", url))
        name = url.rsplit("/", 1)[-1]
        if name == "cti-taa-responses.tsv":
            return tsv(["GT", "ChatGPT-4"], [["APT28  ", "X"], ["Turla", "Turla"]])
        if name in ("alias_dict.pickle", "related_dict.pickle"):
            return pickle.dumps({"apt28": ["fancy bear"], "turla": ["snake"]})
        if name == "questions-data.js":
            rows = [{"id": "a", "question": "q1", "choices": ["A: x", "B: y", "C: z", "D: w"], "answer": "B"},
                    {"id": "b", "question": "q2", "choices": ["A: x", "B: y", "C: z", "D: w"], "answer": "AB"}]
            return ("problem_data = " + json.dumps(rows, indent=4)).encode()
        if name == "MCQs_2730.jsonl":
            rows = [{"question": "English q", "answers": ["a", "b", "c", "d"], "label": "C", "language": "English"},
                    {"question": "中文", "answers": ["a", "b", "c", "d"], "label": "A", "language": "Chinese"}]
            return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
        if name.startswith("harmbench_behaviors_text_"):
            out = io.StringIO()
            w = csv.writer(out)
            w.writerow(["Behavior", "FunctionalCategory", "SemanticCategory", "Tags", "ContextString", "BehaviorID"])
            w.writerow(["Do a bad thing", "standard", "misinformation", "", "", "b0"])
            return out.getvalue().encode()
        raise AssertionError(url)


def test_layout_is_what_eval_reads(tmp_path):
    loader = FakeLoader()
    logged: list[str] = []
    written = fetch.fetch(tmp_path / "data", loader=loader, log=logged.append)
    data = tmp_path / "data"
    assert [p.name for p in written] == list(fetch.FOLDERS)
    for name, bench in benchmarks.BENCHMARKS.items():  # every file every benchmark needs is there, and reads
        bench.check_files(data)
        if name == "secbench_eng_reasoning":  # FAITH's explicit row list points past the 2 made-up rows
            with pytest.raises(benchmarks.EvalError, match="rows, but its FAITH subset names row 167"):
                benchmarks.load_items(bench, data)
            continue
        assert benchmarks.load_items(bench, data), name
    mcq = benchmarks.load_items(benchmarks.get("ctibench_mcq"), data)[0]
    assert mcq.gold == "B" and mcq.fields["choices"] == ["a", "b", "None", "d"]  # the empty option kept
    rcm = benchmarks.load_items(benchmarks.get("ctibench_rcm_2021"), data)[0]
    assert rcm.row["Description"] == '"Quoted" start'  # the file's bytes, not a pandas re-write
    mmlu = benchmarks.load_items(benchmarks.get("mmlu_security"), data)[0]
    assert mmlu.gold == "C" and mmlu.fields["choices"] == ["w", "x", 'y "q"', "z"]
    assert len(benchmarks.mmlu_dev(data)) == 1
    assert [i.index for i in benchmarks.load_items(benchmarks.get("seceval"), data)] == [0]  # FAITH's filter
    assert [i.index for i in benchmarks.load_items(benchmarks.get("secbench_eng"), data)] == [0]
    assert (data / "ctibench/attack-techniques-mobile.tsv").read_text() == "ID\tName\nT1404\tExploitation for Privilege Escalation\n"
    assert (data / "ctibench/cti-taa-gt.tsv").read_text() == "URL\tGT\nhttps://a\tAPT28  \nhttps://b\tTurla\n"
    assert json.loads((data / "ctibench/alias_dict.json").read_text()) == {"apt28": ["fancy bear"], "turla": ["snake"]}
    assert "CC BY-NC-SA 4.0" in (data / "ctibench/SOURCE.txt").read_text()
    assert all(not p.name.startswith(".") for p in data.iterdir())  # no temp dirs left
    # every pinned download is at a commit; made-up bytes differ from the known copies: a warning each
    assert all("/main/" not in a[1] or "HarmBench" in a[1] for a in loader.asked if a[0] == "url")
    assert any(line.startswith("warning: ctibench/cti-mcq.tsv differs") for line in logged)


def test_existing_folder_needs_force_and_is_replaced_whole(tmp_path):
    fetch.fetch(tmp_path, ["seceval"], loader=FakeLoader(), log=lambda _: None)
    (tmp_path / "seceval" / "stale.txt").write_text("x")
    with pytest.raises(FetchError, match="already exists; pass --force"):
        fetch.fetch(tmp_path, ["seceval"], loader=FakeLoader(), log=lambda _: None)
    fetch.fetch(tmp_path, ["seceval"], loader=FakeLoader(), force=True, log=lambda _: None)
    assert not (tmp_path / "seceval" / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seceval"]


def test_a_failed_download_writes_nothing_and_is_one_line(tmp_path):
    class Offline(FakeLoader):
        def url(self, url):
            raise OSError("[Errno -2] Name or service not known")

    with pytest.raises(FetchError) as e:
        fetch.fetch(tmp_path, ["secbench"], loader=Offline())
    assert str(e.value).startswith("secbench: cannot download (OSError: [Errno -2] Name or service not known)")
    assert "github.com/secbench-git/SecBench" in str(e.value) and "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_main_without_datasets_is_one_line(tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets" or name.startswith("datasets."):
            raise ImportError("No module named 'datasets'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    assert fetch.main(["--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: python -m secreason.eval.fetch needs the `datasets` package") and err.count("\n") == 1


def test_main_unreachable_hub_is_one_line(tmp_path, monkeypatch, capsys):
    import socket

    def refuse(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(socket, "create_connection", refuse)
    assert fetch.main(["--out", str(tmp_path / "d"), "--only", "ctibench"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach huggingface.co") and err.count("\n") == 1
    assert not (tmp_path / "d").exists()


def test_refuses_an_out_inside_the_repository(capsys):
    assert fetch.main(["--out", str(ROOT / "benchmark_data"), "--only", "seceval"]) == 2
    assert "inside the repository" in capsys.readouterr().err
    assert not (ROOT / "benchmark_data").exists()


def test_pickles_with_code_are_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    with pytest.raises(FetchError, match="refusing a pickle"):
        fetch.pickle_to_json(pickle.dumps({"a": Payload()}), "alias_dict.pickle")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.usefixtures("benchmark_data_dir")
def test_derivations_match_the_real_data(benchmark_data_dir):
    """On the real files (when $SECREASON_DATA_DIR has them): what fetch derives equals the folder's copies."""
    d = benchmark_data_dir
    for rel, data in fetch.attack_technique_lists((d / "ctibench/cti-ate.tsv").read_bytes()).items():
        assert data == (d / rel).read_bytes(), rel
    subset = json.loads(fetch.seceval_subset((d / "seceval/questions-data.js").read_bytes()))
    assert subset["indices"] == json.loads((d / "seceval/faith_subset.json").read_text())["indices"]
    ours = json.loads(fetch.secbench_subsets((d / "secbench/data/MCQs_2730.jsonl").read_bytes()))
    theirs = json.loads((d / "secbench/faith_subsets.json").read_text())
    for key in ("secbench-mcqa-eng", "secbench-mcqa-eng-reasoning"):
        assert ours[key]["indices"] == theirs[key]["indices"], key
    for rel, blob in fetch.KNOWN_BLOBS.items():
        if (d / rel).is_file():
            assert fetch.git_blob_id((d / rel).read_bytes()) == blob, rel
