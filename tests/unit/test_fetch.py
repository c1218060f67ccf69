"""fetch(): real HTTP against a loopback server (Range support, cut-off transfers, a gate to hold a response)."""

from __future__ import annotations

import hashlib
import logging
import random
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mirage_ray import fetch as fetch_mod
from mirage_ray.fetch import FetchError, fetch, lock_path, part_path, sha256_file, verify

PAYLOAD = random.Random(20240601).randbytes(300_000)
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
RANGE_RE = re.compile(r"bytes=(\d+)-$")
GATE_TIMEOUT_S = 20.0


@dataclass
class ServerState:
    """What the handler serves and what it saw."""

    payload: bytes = PAYLOAD
    honour_range: bool = True
    cut_after: list[int] = field(default_factory=list)  # per request, in order: bytes sent before closing
    gate: threading.Event | None = None  # when set, each response body waits for it
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    got_request: threading.Event = field(default_factory=threading.Event)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        state = self.server.state
        state.requests.append((self.path, self.headers.get("Range")))
        state.got_request.set()
        if self.path != "/model.bin":
            self.send_error(404, "Not Found")
            return
        start, status = 0, 200
        match = RANGE_RE.match(self.headers.get("Range") or "")
        if match and state.honour_range:
            start, status = int(match.group(1)), 206
            if start >= len(state.payload):
                self.send_error(416, "Range Not Satisfiable")
                return
        body = state.payload[start:]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(state.payload) - 1}/{len(state.payload)}")
        self.end_headers()
        if state.gate is not None:
            state.gate.wait(GATE_TIMEOUT_S)
        limit = state.cut_after.pop(0) if state.cut_after else len(body)
        self.wfile.write(body[:limit])

    def log_message(self, format: str, *args: object) -> None:
        return


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: ServerState


@pytest.fixture(scope="module")
def server() -> Iterator[_Server]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.state = ServerState()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def state(server: _Server) -> ServerState:
    server.state = ServerState()
    return server.state


@pytest.fixture()
def url(server: _Server) -> str:
    return f"http://127.0.0.1:{server.server_port}/model.bin"


def test_fetch_places_file_with_right_hash(tmp_path: Path, state: ServerState, url: str) -> None:
    dest = tmp_path / "sub" / "model.bin"
    digest = fetch(url, dest, sha256=PAYLOAD_SHA.upper(), size=len(PAYLOAD), progress=False)
    assert digest == PAYLOAD_SHA
    assert dest.read_bytes() == PAYLOAD
    assert not part_path(dest).exists()
    assert state.requests == [("/model.bin", None)]
    assert verify(dest, PAYLOAD_SHA)


def test_progress_bar_goes_to_stderr(tmp_path: Path, state: ServerState, url: str, capsys) -> None:
    fetch(url, tmp_path / "model.bin", sha256=PAYLOAD_SHA, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "model.bin" in captured.err


def test_interrupted_download_resumes_with_range(tmp_path: Path, state: ServerState, url: str) -> None:
    dest = tmp_path / "model.bin"
    state.cut_after = [100_000]
    with pytest.raises(FetchError, match=r"cut short.*run the same command again"):
        fetch(url, dest, sha256=PAYLOAD_SHA, progress=False, retries=0)
    assert not dest.exists()
    assert part_path(dest).read_bytes() == PAYLOAD[:100_000]

    assert fetch(url, dest, sha256=PAYLOAD_SHA, progress=False, retries=0) == PAYLOAD_SHA
    assert dest.read_bytes() == PAYLOAD
    assert state.requests[1] == ("/model.bin", "bytes=100000-")
    assert not part_path(dest).exists()


def test_cut_transfers_are_resumed_automatically(
    tmp_path: Path, state: ServerState, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fetch_mod, "RETRY_DELAY_S", 0.0)
    state.cut_after = [50_000, 120_000]
    dest = tmp_path / "model.bin"
    assert fetch(url, dest, sha256=PAYLOAD_SHA, progress=False, retries=3) == PAYLOAD_SHA
    assert dest.read_bytes() == PAYLOAD
    assert [r for _, r in state.requests] == [None, "bytes=50000-", "bytes=170000-"]


def test_server_ignoring_range_restarts_cleanly(tmp_path: Path, state: ServerState, url: str) -> None:
    dest = tmp_path / "model.bin"
    part_path(dest).write_bytes(b"stale bytes from another file")
    state.honour_range = False
    assert fetch(url, dest, sha256=PAYLOAD_SHA, progress=False) == PAYLOAD_SHA
    assert dest.read_bytes() == PAYLOAD
    assert state.requests[0][1] == f"bytes={len(b'stale bytes from another file')}-"


def test_complete_part_answered_416_is_finished(tmp_path: Path, state: ServerState, url: str) -> None:
    dest = tmp_path / "model.bin"
    part_path(dest).write_bytes(PAYLOAD)
    assert fetch(url, dest, sha256=PAYLOAD_SHA, size=len(PAYLOAD), progress=False) == PAYLOAD_SHA
    assert dest.read_bytes() == PAYLOAD


def test_wrong_hash_leaves_no_file(tmp_path: Path, state: ServerState, url: str) -> None:
    dest = tmp_path / "model.bin"
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(FetchError, match=rf"sha256 mismatch.*expected {wrong}, got {PAYLOAD_SHA}"):
        fetch(url, dest, sha256=wrong, progress=False)
    assert not dest.exists()
    assert not part_path(dest).exists()


def test_wrong_size_leaves_no_file(tmp_path: Path, state: ServerState, url: str) -> None:
    dest = tmp_path / "model.bin"
    with pytest.raises(FetchError, match=f"gave {len(PAYLOAD)} bytes, expected 123"):
        fetch(url, dest, size=123, progress=False)
    assert not dest.exists()
    assert not part_path(dest).exists()


def test_unreachable_url_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dest = tmp_path / "model.bin"
    with pytest.raises(FetchError, match=rf"cannot reach http://127\.0\.0\.1:{port}/model\.bin: .*refused"):
        fetch(f"http://127.0.0.1:{port}/model.bin", dest, progress=False, timeout_s=5.0)
    assert not dest.exists()


def test_http_error_is_a_clear_error(tmp_path: Path, state: ServerState, server: _Server) -> None:
    dest = tmp_path / "model.bin"
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch(f"http://127.0.0.1:{server.server_port}/nope.bin", dest, progress=False)
    assert not dest.exists()


def test_unsupported_scheme_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="only file, http, https"):
        fetch("ftp://example.invalid/model.bin", tmp_path / "model.bin", progress=False)


def test_present_matching_file_is_not_downloaded(tmp_path: Path, state: ServerState, url: str) -> None:
    dest = tmp_path / "model.bin"
    dest.write_bytes(PAYLOAD)
    assert fetch(url, dest, sha256=PAYLOAD_SHA, progress=False) == PAYLOAD_SHA
    assert state.requests == []


def test_present_corrupt_file_is_replaced(tmp_path: Path, state: ServerState, url: str) -> None:
    dest = tmp_path / "model.bin"
    dest.write_bytes(PAYLOAD[:-1] + b"\x00")
    assert fetch(url, dest, sha256=PAYLOAD_SHA, progress=False) == PAYLOAD_SHA
    assert dest.read_bytes() == PAYLOAD
    assert len(state.requests) == 1


def test_file_url_is_supported(tmp_path: Path) -> None:
    source = tmp_path / "mirror" / "model.bin"
    source.parent.mkdir()
    source.write_bytes(PAYLOAD)
    dest = tmp_path / "cache" / "model.bin"
    assert fetch(source.as_uri(), dest, sha256=PAYLOAD_SHA, progress=False) == PAYLOAD_SHA
    assert sha256_file(dest) == PAYLOAD_SHA


class _EventOnMessage(logging.Handler):
    def __init__(self, needle: str) -> None:
        super().__init__()
        self.needle = needle
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.needle in record.getMessage():
            self.seen.set()


def test_concurrent_fetches_download_once(
    tmp_path: Path, state: ServerState, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The second fetcher blocks on the lock while the first holds its response, then finds the file done."""
    caplog.set_level(logging.INFO, logger=fetch_mod.__name__)
    state.gate = threading.Event()
    dest = tmp_path / "model.bin"
    waiting = _EventOnMessage("waiting for another fetch of model.bin")
    logging.getLogger(fetch_mod.__name__).addHandler(waiting)
    results: dict[str, str | BaseException] = {}

    def run(key: str) -> None:
        try:
            results[key] = fetch(url, dest, sha256=PAYLOAD_SHA, progress=False)
        except BaseException as exc:
            results[key] = exc

    first = threading.Thread(target=run, args=("first",))
    second = threading.Thread(target=run, args=("second",))
    try:
        first.start()
        assert state.got_request.wait(GATE_TIMEOUT_S), "first fetch never reached the server"
        second.start()
        assert waiting.seen.wait(GATE_TIMEOUT_S), "second fetch did not wait on the lock"
        state.gate.set()
        first.join(GATE_TIMEOUT_S)
        second.join(GATE_TIMEOUT_S)
    finally:
        state.gate.set()
        logging.getLogger(fetch_mod.__name__).removeHandler(waiting)
    assert results == {"first": PAYLOAD_SHA, "second": PAYLOAD_SHA}
    assert len(state.requests) == 1
    assert dest.read_bytes() == PAYLOAD
    assert lock_path(dest).exists()
