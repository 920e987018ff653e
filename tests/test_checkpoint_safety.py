"""`ckpt_path`: only a local checkpoint that loads with `weights_only=True`; a payload never runs.

The hostile checkpoints here carry a `__reduce__` that creates a marker directory when unpickled
(`os.mkdir`, no shell): the marker appearing is the proof that code ran. A genuine resume is
tests/test_train_cli.py::test_resume_from_checkpoint_gives_the_same_weights.
"""
from __future__ import annotations

import http.server
import os
import threading
from pathlib import Path

import pytest
import torch

from secreason.checkpoints import resume_path
from secreason.errors import ConfigError, MissingPathError

TRAIN = ("+experiment=sft", "trainer.max_steps=1", "logger=csv", "trainer.enable_progress_bar=false")


class Payload:
    """Unpickling this calls os.mkdir(marker)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def write_hostile_checkpoint(path: Path, marker: Path) -> Path:
    """A Lightning-shaped checkpoint (it has a state_dict) with the payload beside it."""
    torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 0, "global_step": 1, "hooks": Payload(marker)}, path)
    return path


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "payload-ran"
    yield path
    assert not path.exists(), "the checkpoint's payload ran"


@pytest.fixture
def hostile_server(tmp_path, marker):
    """An HTTP server on 127.0.0.1 serving a hostile checkpoint at /x.ckpt; yields (url, requests)."""
    body = write_hostile_checkpoint(tmp_path / "served.ckpt", marker).read_bytes()
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            requests.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_HEAD = do_GET  # noqa: N815

        def log_message(self, *args):  # keep the test output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/x.ckpt", requests
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def refused_in_one_line(proc, *fragments: str) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, f"exit {proc.returncode}\n{out[-4000:]}"
    assert "Traceback" not in out and "weights_only=False" not in out, out[-4000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: ckpt_path="), proc.stderr[-4000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


# ---- train.py, as an attacker would serve it --------------------------------------------------------
def test_train_refuses_a_checkpoint_url_before_fetching_it(run_train, hostile_server, marker):
    url, requests = hostile_server
    proc = run_train(*TRAIN, f"ckpt_path={url}", timeout=180)
    refused_in_one_line(proc, url, "URL")
    assert requests == [], "the checkpoint was fetched"


def test_train_refuses_a_local_checkpoint_with_a_payload(run_train, tmp_path, marker):
    ckpt = write_hostile_checkpoint(tmp_path / "hostile.ckpt", marker)
    proc = run_train(*TRAIN, f"ckpt_path={ckpt}", timeout=180)
    refused_in_one_line(proc, str(ckpt), "posix.mkdir", "could run code")
    assert not (proc.run_dir / "checkpoints").exists()  # refused before training started


# ---- resume_path: each refusal names ckpt_path and the reason ---------------------------------------
@pytest.mark.parametrize("url", ["http://127.0.0.1:1/x.ckpt", "https://example.org/x.ckpt", "s3://bucket/x.ckpt",
                                 "file:///tmp/x.ckpt", "simplecache::https://example.org/x.ckpt"])
def test_urls_and_remote_paths_are_refused(url):
    with pytest.raises(ConfigError, match=rf"^ckpt_path={url}: a URL or remote path"):
        resume_path(url)


@pytest.mark.parametrize("keyword", ["last", "best", "hpc", "registry", "registry:my-model"])
def test_lightning_keywords_are_refused(keyword):
    with pytest.raises(ConfigError, match=rf"^ckpt_path={keyword}: give the checkpoint file itself"):
        resume_path(keyword)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(MissingPathError, match=rf"^ckpt_path={tmp_path / 'nope.ckpt'}: no such file$"):
        resume_path(tmp_path / "nope.ckpt")
    with pytest.raises(ConfigError, match=r": not a file$"):
        resume_path(tmp_path)


def test_hostile_local_checkpoint_is_refused_without_running(tmp_path, marker):
    ckpt = write_hostile_checkpoint(tmp_path / "hostile.ckpt", marker)
    with pytest.raises(ConfigError, match=r": refused: it names posix\.mkdir, and unpickling it could run code$"):
        resume_path(ckpt)


def test_random_truncated_and_foreign_files_are_refused(tmp_path):
    (tmp_path / "random.ckpt").write_bytes(os.urandom(4096))
    with pytest.raises(ConfigError, match=r"random\.ckpt: not a checkpoint \(not the zip archive"):
        resume_path(tmp_path / "random.ckpt")
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, tmp_path / "whole.ckpt")
    whole = (tmp_path / "whole.ckpt").read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(whole[: len(whole) - 200])  # the zip's central directory is lost
    with pytest.raises(ConfigError, match=r"truncated\.ckpt: (not a checkpoint|not a readable checkpoint)"):
        resume_path(tmp_path / "truncated.ckpt")
    torch.save([torch.zeros(2)], tmp_path / "tensors.pt")
    with pytest.raises(ConfigError, match=r"tensors\.pt: not a Lightning checkpoint \(no state_dict\)$"):
        resume_path(tmp_path / "tensors.pt")


def test_a_plain_checkpoint_passes(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 0, "global_step": 3}, tmp_path / "ok.ckpt")
    assert resume_path(tmp_path / "ok.ckpt") == str(tmp_path / "ok.ckpt")
    assert resume_path(None) is None
