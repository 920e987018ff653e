"""python -m secreason.eval.fetch --out DIR [--only ctibench,seceval,...] [--force]

Downloads the evaluation benchmarks (where there is network) and writes them under DIR in the
layout eval.py reads, so that `python eval.py data_dir=DIR` (or `SECREASON_DATA_DIR=DIR`) works:

    ctibench/                 hub dataset AI4Sec/cti-bench (CC BY-NC-SA 4.0, evaluation only), plus
                              from github.com/xashru/cti-bench @ 57ce8c2 the TAA ground truth and the
                              alias tables; the ATT&CK id lists are cut out of the ATE prompts
    mmlu_computer_security/   hub dataset cais/mmlu, subset computer_security (MIT)
    seceval/                  github.com/XuanwuAI/SecEval @ 7aef317, the file the hub dataset
                              XuanwuAI/SecEval was made from (CC BY-NC-SA 4.0, evaluation only)
    secbench/                 github.com/secbench-git/SecBench @ 3a148ab, FAITH's pinned commit
                              (MIT per the hub dataset card secbench-hf/SecBench)
    harmbench/                github.com/centerforaisafety/HarmBench data/behavior_datasets (MIT)

plus the FAITH subset lists (`faith_subset*.json`) derived by FAITH's own filters. Each folder gets
a SOURCE.txt naming where it came from and its licence. The licences of ctibench and seceval allow
non-commercial evaluation only: the data is never trained on and never belongs in this repository
(an --out inside it is refused).

Hub datasets published as files (AI4Sec/cti-bench's TSVs) are downloaded as those files
(`huggingface_hub`, which `datasets` installs), not through `datasets`' CSV builder: that builder
reads with pandas, which turns empty MCQ options into NaN and strips the quotes opening RCM-2021
row 921, cells the scoring depends on (ctibench/SCORING.md). Row datasets (cais/mmlu) are loaded
with `datasets`. Where the bytes are known (git blob ids of the copies the scoring notes were
checked against), a download that differs is reported as a warning.

Nothing is half-written: a folder is built in a temp dir beside its target and renamed into place.
No network, no `datasets`, or an unreachable hub: one `error: …` line and exit status 2.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Protocol

from secreason.eval import EvalError

CTIBENCH_HUB = "AI4Sec/cti-bench"
CTIBENCH_GIT = "https://raw.githubusercontent.com/xashru/cti-bench/57ce8c246e5fc66a16c6cef743f3a983831b90f0"
SECEVAL_GIT = "https://raw.githubusercontent.com/XuanwuAI/SecEval/7aef3176a1a095b40bbfa806a7a2d6c5e203d5b7"
SECBENCH_GIT = "https://raw.githubusercontent.com/secbench-git/SecBench/3a148abb6383c8e6be7863dd5c65b57ee2d59436"
HARMBENCH_GIT = "https://raw.githubusercontent.com/centerforaisafety/HarmBench/main/data/behavior_datasets"
CTI_TSVS = ("cti-mcq.tsv", "cti-rcm.tsv", "cti-rcm-2021.tsv", "cti-vsp.tsv", "cti-ate.tsv", "cti-taa.tsv")

# git blob ids (`git hash-object`) of the copies the scoring notes (ctibench/SCORING.md, the
# folders' SOURCE notes) were checked against; a download with other bytes gets a warning.
KNOWN_BLOBS = {
    "ctibench/cti-ate.tsv": "079e7a491ce727f586faa06288708f5e1e4f1a98",
    "ctibench/cti-mcq.tsv": "db8f2ca4362549f7f0fff6656b4de0ca305d12a0",
    "ctibench/cti-rcm-2021.tsv": "8142d06bafc964041dce985a0a9b98eb17c6f81c",
    "ctibench/cti-rcm.tsv": "6ef90780402cbf9a17dd33899416f9eeab2354bb",
    "ctibench/cti-taa.tsv": "e01443aad4e0a1eddb312b7e38c7bd1913862f46",
    "ctibench/cti-vsp.tsv": "555dc979df10b5776ea5ec93d8f44f0297c2d5b9",
    "seceval/questions-data.js": "e4fffe6b84272d9ba29a63501b7aae02c4d3eaf7",
    "secbench/data/MCQs_2730.jsonl": "8f8930bbc7cb26c7ecb08060584ae88568ba403a",
    "harmbench/harmbench_behaviors_text_all.csv": "8a6b423d85e9acdc168c57a6a957755cfa86c4cb",
    "harmbench/harmbench_behaviors_text_test.csv": "a150df81f1efa24496f1495e1b96822fd403e339",
    "harmbench/harmbench_behaviors_text_val.csv": "0cfc6c419122c58df0ccbda6351c0265dc72b125",
}

# FAITH's secbench-mcqa-eng filter drops these duplicate rows, and its reasoning subset is this
# explicit row list (cisco-foundation-ai/faith @ b6d8cc4, Apache-2.0: benchmark.yaml of
# secbench-mcqa-eng and secbench-mcqa-eng-reasoning). Row numbers only, no benchmark content.
SECBENCH_ENG_DUPLICATES = (224, 825, 1152, 2038, 2103, 2218, 2288, 2289)
SECBENCH_REASONING_ROWS = (167, 352, 452, 544, 568, 704, 744, 747, 753, 757, 809, 816, 839, 851, 855, 861, 869,
                           883, 895, 984, 1087, 1098, 1103, 1122, 1179, 1257, 1340, 1402, 1435, 1631, 1820, 1834,
                           1839, 1868, 1983, 2016, 2080, 2093, 2108, 2120, 2290, 2454, 2602)
_CJK = re.compile(r"[\u4e00-\u9fff]")


class FetchError(EvalError):
    """One line for the user: what could not be fetched, and where to get it by hand."""


class Loader(Protocol):
    """Where the bytes come from; `HubLoader` online, a fake one in the tests."""

    def hub_file(self, repo_id: str, filename: str) -> bytes: ...             # a file of a hub dataset repo
    def hub_rows(self, repo_id: str, config: str | None, split: str) -> list[dict]: ...  # datasets.load_dataset
    def url(self, url: str) -> bytes: ...                                      # a raw file at a pinned commit


class HubLoader:
    """The network: `huggingface_hub` for hub files, `datasets` for hub rows, urllib for raw files."""

    def __init__(self, timeout_s: float = 60.0) -> None:
        try:
            import datasets  # noqa: F401
            import huggingface_hub  # noqa: F401
        except ImportError as e:
            raise FetchError(f"python -m secreason.eval.fetch needs the `datasets` package ({e}): "
                             f"pip install datasets") from None
        self.timeout_s = timeout_s

    def check_reachable(self, folders: list[str]) -> None:
        """Fail at once, in one line, when a host the folders need cannot be reached (no network):
        the hub client would otherwise retry for half a minute, printing as it goes. Skipped
        behind a proxy, which a direct connection would not use."""
        import socket

        if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
            return
        for host in sorted({h for f in folders for h in HOSTS[f]}):
            try:
                socket.create_connection((host, 443), timeout=min(self.timeout_s, 10.0)).close()
            except OSError as e:
                raise FetchError(f"cannot reach {host} ({type(e).__name__}: {e}): no network here? Fetch "
                                 f"{', '.join(folders)} on a machine with network, then copy the folder(s) over") from None

    def hub_file(self, repo_id: str, filename: str) -> bytes:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo_id, filename, repo_type="dataset")).read_bytes()

    def hub_rows(self, repo_id: str, config: str | None, split: str) -> list[dict]:
        import datasets

        return [dict(r) for r in datasets.load_dataset(repo_id, config, split=split)]

    def url(self, url: str) -> bytes:
        import urllib.request

        with urllib.request.urlopen(url, timeout=self.timeout_s) as resp:  # noqa: S310 (https, pinned)
            return resp.read()


# ---- layout writers: a loader → {path under the data dir: bytes} --------------------------------

def _tsv_rows(data: bytes) -> list[dict[str, str]]:
    """An upstream CTIBench TSV (tab-separated, never quoted, CRLF), as eval reads it."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline=""), delimiter="\t",
                               quoting=csv.QUOTE_NONE))


def attack_technique_lists(ate_tsv: bytes) -> dict[str, bytes]:
    """`attack-techniques-<platform>.tsv` (ID, Name) cut out of the ATE prompts: every prompt of a
    platform embeds the platform's whole list after `**List of All MITRE <Platform> technique IDs**`."""
    lists: dict[str, list[tuple[str, str]]] = {}
    for row in _tsv_rows(ate_tsv):
        platform = row["Platform"].strip()
        _, _, tail = row["Prompt"].partition(f"**List of All MITRE {platform} technique IDs**")
        pairs = re.findall(r"(T\d{4})\s*:\s*(.*?)(?=\s+T\d{4}\s*:|\s*$)", tail.strip())
        if pairs and platform not in lists:
            lists[platform] = pairs
    if not {"Enterprise", "Mobile"} <= set(lists):
        raise FetchError(f"ctibench/cti-ate.tsv: no technique list found for {sorted({'Enterprise', 'Mobile'} - set(lists))}")
    return {f"ctibench/attack-techniques-{p.lower()}.tsv":
            ("ID\tName\n" + "".join(f"{t}\t{name}\n" for t, name in pairs)).encode("utf-8")
            for p, pairs in sorted(lists.items())}


def taa_ground_truth(taa_tsv: bytes, responses_tsv: bytes) -> bytes:
    """`cti-taa-gt.tsv` (URL, GT): cti-taa.tsv has no GT; upstream keeps it, in the same row
    order, as the GT column of evaluation/responses/cti-taa-responses.tsv (copied verbatim)."""
    urls = [r["URL"] for r in _tsv_rows(taa_tsv)]
    gts = [r["GT"] for r in _tsv_rows(responses_tsv)]
    if len(urls) != len(gts):
        raise FetchError(f"ctibench: cti-taa.tsv has {len(urls)} rows but the TAA responses {len(gts)}")
    return ("URL\tGT\n" + "".join(f"{u}\t{g}\n" for u, g in zip(urls, gts))).encode("utf-8")


class _PlainUnpickler(pickle.Unpickler):
    """Dicts, lists and strings only: a pickle that names any class or function is refused, so
    nothing in it can run."""

    def find_class(self, module: str, name: str) -> Any:
        raise FetchError(f"refusing a pickle that loads {module}.{name}: only plain dicts/lists/strings")


def pickle_to_json(data: bytes, what: str) -> bytes:
    value = _PlainUnpickler(io.BytesIO(data)).load()
    if not isinstance(value, dict):
        raise FetchError(f"{what}: expected a dict, got {type(value).__name__}")
    return (json.dumps(value, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def seceval_subset(questions_js: bytes) -> bytes:
    """FAITH's seceval filter: answer in {A,B,C,D} and no field equal to '' or None."""
    text = questions_js.decode("utf-8")
    rows = json.loads(text[text.index("["):])
    keep = [i for i, r in enumerate(rows)
            if r.get("answer") in ("A", "B", "C", "D") and not any(v == "" or v is None for v in r.values())]
    return _json({"description": "Row positions (0-based, file order of the JSON array in questions-data.js) "
                                 "that FAITH's seceval filter keeps.",
                  "filter": "answer in {A,B,C,D} and no field equal to '' or None",
                  "count": len(keep), "indices": keep})


def secbench_subsets(mcqs_jsonl: bytes) -> bytes:
    rows = [json.loads(line) for line in mcqs_jsonl.decode("utf-8").splitlines() if line.strip()]
    english = [i for i, r in enumerate(rows)
               if r.get("language") == "English" and not _CJK.search(str(r.get("question", "")))
               and str(r.get("label", "")).strip().upper() in {"A", "B", "C", "D"}]
    eng = [i for i in english if i not in SECBENCH_ENG_DUPLICATES]
    return _json({"description": "0-based line numbers in data/MCQs_2730.jsonl selected by FAITH benchmark.yaml "
                                 "files (cisco-foundation-ai/faith@b6d8cc4). Derived helper.",
                  "secbench-mcqa-eng": {"rule": "language=='English' and question has no CJK and "
                                                "label.strip().upper() in {A,B,C,D}; then drop the duplicates "
                                                f"{list(SECBENCH_ENG_DUPLICATES)}",
                                        "count_before_drop": len(english), "count": len(eng), "indices": eng},
                  "secbench-mcqa-eng-reasoning": {"rule": "explicit row list from FAITH's benchmark.yaml",
                                                  "count": len(SECBENCH_REASONING_ROWS),
                                                  "indices": list(SECBENCH_REASONING_ROWS)}})


def _json(value: Any) -> bytes:
    return (json.dumps(value, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def _mmlu_csv(rows: list[dict]) -> bytes:
    """Headerless CSV `question, A, B, C, D, answer-letter`, as the original MMLU release."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    for r in rows:
        choices = list(r["choices"])
        if len(choices) != 4:
            raise FetchError(f"cais/mmlu: a row with {len(choices)} choices, expected 4")
        writer.writerow([r["question"], *choices, "ABCD"[int(r["answer"])]])
    return out.getvalue().encode("utf-8")


def _source_note(text: str) -> bytes:
    return (text.strip() + "\n").encode("utf-8")


def ctibench(load: Loader) -> dict[str, bytes]:
    files = {f"ctibench/{name}": load.hub_file(CTIBENCH_HUB, name) for name in CTI_TSVS}
    files["ctibench/cti-taa-gt.tsv"] = taa_ground_truth(
        files["ctibench/cti-taa.tsv"], load.url(f"{CTIBENCH_GIT}/evaluation/responses/cti-taa-responses.tsv"))
    for name in ("alias_dict", "related_dict"):
        files[f"ctibench/{name}.json"] = pickle_to_json(load.url(f"{CTIBENCH_GIT}/evaluation/{name}.pickle"),
                                                        f"ctibench {name}.pickle")
    files.update(attack_technique_lists(files["ctibench/cti-ate.tsv"]))
    files["ctibench/SOURCE.txt"] = _source_note(f"""
CTIBench (Alam et al., NeurIPS 2024 Datasets & Benchmarks, arXiv 2406.07599).
cti-*.tsv: hub dataset {CTIBENCH_HUB}. cti-taa-gt.tsv (the GT column of evaluation/responses/cti-taa-responses.tsv),
alias_dict.json and related_dict.json (the upstream pickles as JSON): {CTIBENCH_GIT.replace('raw.githubusercontent.com', 'github.com')}.
attack-techniques-*.tsv: the ID/Name lists embedded in the cti-ate.tsv prompts.
License: CC BY-NC-SA 4.0 - non-commercial use, evaluation only; never train on it or commit it.""")
    return files


def mmlu_computer_security(load: Loader) -> dict[str, bytes]:
    files = {f"mmlu_computer_security/data/{folder}/computer_security_{folder}.csv":
             _mmlu_csv(load.hub_rows("cais/mmlu", "computer_security", split))
             for folder, split in (("test", "test"), ("dev", "dev"), ("val", "validation"))}
    files["mmlu_computer_security/SOURCE.txt"] = _source_note("""
MMLU computer_security (Hendrycks et al., ICLR 2021): hub dataset cais/mmlu, subset computer_security,
splits test / dev / validation, written as the original headerless CSVs (question, A, B, C, D, answer letter).
License: MIT, Copyright (c) 2020 Dan Hendrycks.""")
    return files


def seceval(load: Loader) -> dict[str, bytes]:
    js = load.url(f"{SECEVAL_GIT}/docs/javascript/questions-data.js")
    return {"seceval/questions-data.js": js, "seceval/faith_subset.json": seceval_subset(js),
            "seceval/SOURCE.txt": _source_note(f"""
SecEval (Li et al., 2023): questions-data.js from {SECEVAL_GIT.replace('raw.githubusercontent.com', 'github.com')}
(the hub dataset XuanwuAI/SecEval holds the same questions). faith_subset.json: FAITH's seceval filter.
License: CC BY-NC-SA 4.0 - non-commercial use, evaluation only; never train on it or commit it.""")}


def secbench(load: Loader) -> dict[str, bytes]:
    mcqs = load.url(f"{SECBENCH_GIT}/data/MCQs_2730.jsonl")
    return {"secbench/data/MCQs_2730.jsonl": mcqs, "secbench/faith_subsets.json": secbench_subsets(mcqs),
            "secbench/SOURCE.txt": _source_note(f"""
SecBench (Jing et al., arXiv 2412.20787): data/MCQs_2730.jsonl from
{SECBENCH_GIT.replace('raw.githubusercontent.com', 'github.com')} (FAITH's pinned commit).
faith_subsets.json: FAITH's secbench-mcqa-eng filter and secbench-mcqa-eng-reasoning row list.
License: MIT, as declared by the authors' hub dataset card secbench-hf/SecBench.""")}


def harmbench(load: Loader) -> dict[str, bytes]:
    files = {f"harmbench/harmbench_behaviors_text_{s}.csv": load.url(f"{HARMBENCH_GIT}/harmbench_behaviors_text_{s}.csv")
             for s in ("all", "test", "val")}
    files["harmbench/SOURCE.txt"] = _source_note(f"""
HarmBench text behaviours (Mazeika et al., 2024): {HARMBENCH_GIT.replace('raw.githubusercontent.com', 'github.com')}.
License: MIT, Copyright (c) 2024 centerforaisafety.""")
    return files


FOLDERS: dict[str, Callable[[Loader], dict[str, bytes]]] = {
    "ctibench": ctibench, "mmlu_computer_security": mmlu_computer_security, "seceval": seceval,
    "secbench": secbench, "harmbench": harmbench,
}
HOSTS = {"ctibench": ("huggingface.co", "raw.githubusercontent.com"), "mmlu_computer_security": ("huggingface.co",),
         "seceval": ("raw.githubusercontent.com",), "secbench": ("raw.githubusercontent.com",),
         "harmbench": ("raw.githubusercontent.com",)}
# Where each folder comes from, for the one-line error when it cannot be fetched.
SOURCES = {
    "ctibench": f"hub dataset {CTIBENCH_HUB} + github.com/xashru/cti-bench",
    "mmlu_computer_security": "hub dataset cais/mmlu (computer_security)",
    "seceval": "github.com/XuanwuAI/SecEval (hub dataset XuanwuAI/SecEval)",
    "secbench": "github.com/secbench-git/SecBench (hub dataset secbench-hf/SecBench)",
    "harmbench": "github.com/centerforaisafety/HarmBench",
}


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def write_folder(out_dir: Path, folder: str, files: dict[str, bytes], force: bool = False) -> Path:
    """`files` (paths under `out_dir`, all inside `folder`) written as `out_dir/folder`, whole or
    not at all: built in a temp dir beside it, then renamed into place (an existing folder is
    replaced only with `force`)."""
    target = out_dir / folder
    if target.exists() and not force:
        raise FetchError(f"{target} already exists; pass --force to fetch it again")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder}.", suffix=".tmp", dir=out_dir))
    try:
        for rel, data in files.items():
            parts = Path(rel).parts
            if parts[0] != folder or ".." in parts or Path(rel).is_absolute():
                raise ValueError(f"{rel}: not a path inside {folder}/")  # a bug in a layout writer
            path = tmp.joinpath(*parts[1:])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        old = None
        if target.exists():
            old = out_dir / f".{folder}.old.{os.getpid()}"
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def fetch(out_dir: str | Path, folders: list[str] | None = None, loader: Loader | None = None,
          force: bool = False, log: Callable[[str], None] = print) -> list[Path]:
    """Fetch `folders` (default: all) into `out_dir`; returns the folders written."""
    out_dir = Path(out_dir).expanduser().resolve()
    folders = list(folders or FOLDERS)
    unknown = [f for f in folders if f not in FOLDERS]
    if unknown:
        raise FetchError(f"--only {','.join(unknown)}: unknown; choose from {', '.join(FOLDERS)}")
    repo = Path(__file__).resolve().parents[3]
    if (repo / ".git").exists() and (out_dir == repo or repo in out_dir.parents):
        raise FetchError(f"--out {out_dir} is inside the repository {repo}: benchmark data is for evaluation "
                         f"only and never belongs in it; choose a folder outside")
    if not force and (existing := [f for f in folders if (out_dir / f).exists()]):
        raise FetchError(f"{out_dir / existing[0]} already exists; pass --force to fetch it again")
    loader = loader or HubLoader()
    check = getattr(loader, "check_reachable", None)
    if check is not None:
        check(folders)
    written = []
    for folder in folders:
        try:
            files = FOLDERS[folder](loader)
        except FetchError:
            raise
        except Exception as e:  # offline, unreachable hub, 404, rate limit: one line, not the client's traceback
            reason = (str(e).strip().splitlines() or [""])[0][:300]
            raise FetchError(f"{folder}: cannot download ({type(e).__name__}: {reason}); no network? "
                             f"get it by hand from {SOURCES[folder]} into {out_dir / folder}") from None
        for rel, data in files.items():
            want = KNOWN_BLOBS.get(rel)
            if want and git_blob_id(data) != want:
                log(f"warning: {rel} differs from the copy the scoring notes were checked against "
                    f"(git blob {want}); scores may not match the published ones")
        written.append(write_folder(out_dir, folder, files, force=force))
        log(f"wrote {written[-1]} ({len(files)} files)")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m secreason.eval.fetch", description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("SECREASON_DATA_DIR"),
                        help="the data dir to write (default: $SECREASON_DATA_DIR)")
    parser.add_argument("--only", default=None, help=f"comma-separated folders: {', '.join(FOLDERS)}")
    parser.add_argument("--force", action="store_true", help="replace folders that already exist")
    args = parser.parse_args(argv)
    try:
        if not args.out:
            raise FetchError("--out DIR is required (or set SECREASON_DATA_DIR)")
        only = [f.strip() for f in args.only.split(",") if f.strip()] if args.only else None
        fetch(args.out, only, force=args.force)
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out).expanduser().resolve()
    print(f"done: python eval.py data_dir={out} ...  (or export SECREASON_DATA_DIR={out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
