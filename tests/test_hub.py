"""The Hub is reached the way huggingface_hub reaches it: a local HTTP server on 127.0.0.1 stands in for the
Hub, a mirror (``HF_ENDPOINT``) and a proxy (``HTTP_PROXY``); ``HF_HUB_OFFLINE`` fails fast with one line."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

CONFIG = json.dumps({"model_type": "detr", "architectures": ["DetrForObjectDetection"], "d_model": 24}).encode()
LOAD = "from interprune.hf.models import load_config; print('d_model', load_config('someone/tiny').d_model)"
SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture
def fake_hub():
    """An HTTP server that answers like the Hub for ``someone/tiny``'s config.json (404 for anything else)
    and records every request line it gets: (method, path as sent, Host header)."""
    seen: list[tuple[str, str, str]] = []

    class Hub(http.server.BaseHTTPRequestHandler):
        def _answer(self, body: bool) -> None:
            seen.append((self.command, self.path, self.headers.get("Host", "")))
            found = self.path.endswith("/someone/tiny/resolve/main/config.json")
            self.send_response(200 if found else 404)
            self.send_header("Content-Length", str(len(CONFIG) if found else 0))
            if found:
                self.send_header("ETag", '"c0ffee"')
                self.send_header("X-Repo-Commit", "0" * 40)
            self.end_headers()
            if body and found:
                self.wfile.write(CONFIG)

        def do_HEAD(self) -> None:
            self._answer(False)

        def do_GET(self) -> None:
            self._answer(True)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def _run(tmp_path: Path, code: list[str], **env: str) -> subprocess.CompletedProcess:
    """A fresh interpreter (huggingface_hub reads these variables when imported) with only ``env`` set of
    the Hub and proxy variables, and an empty cache."""
    clean = {k: v for k, v in os.environ.items()
             if "proxy" not in k.lower() and not k.startswith(("HF_", "TRANSFORMERS_"))}
    clean.update(HF_HOME=str(tmp_path / "hf-home"), PYTHONPATH=SRC, OMP_NUM_THREADS="1", **env)
    return subprocess.run([sys.executable, *code], env=clean, capture_output=True, text=True, timeout=120)


def test_a_mirror_set_by_hf_endpoint_is_used(fake_hub, tmp_path):
    url, seen = fake_hub
    done = _run(tmp_path, ["-c", LOAD], HF_ENDPOINT=url)
    assert done.returncode == 0, done.stderr
    assert "d_model 24" in done.stdout  # the config the mirror served
    assert ("HEAD", "/", url.split("//")[1]) in seen  # the reachability check itself asked the mirror
    assert ("GET", "/someone/tiny/resolve/main/config.json", url.split("//")[1]) in seen


def test_a_proxy_set_by_http_proxy_is_used(fake_hub, tmp_path):
    url, seen = fake_hub
    # hub.invalid cannot be resolved (RFC 2606): only a client that goes through the proxy reaches it
    done = _run(tmp_path, ["-c", LOAD], HF_ENDPOINT="http://hub.invalid", HTTP_PROXY=url)
    assert done.returncode == 0, done.stderr
    assert "d_model 24" in done.stdout
    assert ("HEAD", "http://hub.invalid/", "hub.invalid") in seen  # absolute-form request: a proxy's
    assert ("GET", "http://hub.invalid/someone/tiny/resolve/main/config.json", "hub.invalid") in seen


def test_offline_fails_fast_with_one_line_and_asks_nothing(fake_hub, tmp_path):
    url, seen = fake_hub
    started = time.monotonic()
    done = _run(tmp_path, ["-m", "interprune", "plan", "someone/tiny"], HF_ENDPOINT=url, HF_HUB_OFFLINE="1")
    assert done.returncode == 2 and seen == []
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "HF_HUB_OFFLINE is set" in lines[0] and "'someone/tiny'" in lines[0]
    assert time.monotonic() - started < 60  # the import is most of it; no 30 s of retries


def test_an_endpoint_nobody_answers_is_unreachable_at_once(monkeypatch):
    import socket

    from huggingface_hub import constants

    from interprune.hf.models import _hub_reachable, _hub_where

    with socket.socket() as closed:  # a port that was just free: nothing listens there
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HTTPS_PROXY", "http://user:secret@proxy.example:3128")
    started = time.monotonic()
    assert _hub_reachable(timeout=2) is False and time.monotonic() - started < 5
    where = _hub_where()
    assert f"127.0.0.1:{port}" in where and "proxy.example:3128" in where and "secret" not in where
