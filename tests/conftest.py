"""Shared fixtures: one real Ray + Serve application per test session (integration tests only)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest

from actors.launch import stop_processes

REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_JWT_SECRET = "mirage-integration-tests-secret-0123456789"
START_TIMEOUT_S = 420


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class ServeApp:
    """A running Mirage application started by ``python -m actors.launch`` (the path ``make run`` takes)."""

    url: str
    ws_url: str
    ray_address: str
    metrics_port: int
    deployments: dict[str, str]

    def token(self, sub: str = "tester", ttl_s: float = 600, **claims: object) -> str:
        now = int(time.time())
        body = {"sub": sub, "aud": "mirage", "iat": now, "nbf": now, "exp": now + int(ttl_s), **claims}
        return jwt.encode(body, TEST_JWT_SECRET, algorithm="HS256")


@pytest.fixture(scope="session")
def serve_app() -> Iterator[ServeApp]:
    """Local Ray head with a declared logical GPU + serve_config.yaml (A10G profile), torn down at the end."""
    port, metrics_port = free_port(), free_port()
    ready_file = Path(tempfile.mkdtemp(prefix="mirage-test-")) / "ready.json"
    log_path = ready_file.parent / "launch.log"
    env = dict(os.environ, MIRAGE_JWT_SECRET=TEST_JWT_SECRET, PYTHONUNBUFFERED="1")
    command = [
        sys.executable, "-m", "actors.launch", "run", "--config", str(REPO_ROOT / "serve_config.yaml"),
        "--port", str(port), "--num-gpus", "1", "--num-cpus", "2", "--metrics-port", str(metrics_port),
        "--ready-file", str(ready_file), "--timeout", str(START_TIMEOUT_S - 20),
        "--set", "test_hooks=true",
        # the CPU runs the models here: budgets the controller never calls saturated, so the slowed-stage test sees
        # the session's own ladder (the controller's global rules are unit-tested in test_controller_policy.py)
        "--set", 'stage_budget_ms={"video.detect": 100000, "video.swap": 100000, "video.enhance": 100000}',
    ]  # fmt: skip
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready_file.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Serve app did not start (exit {process.returncode}):\n{log_path.read_text()[-4000:]}")
            time.sleep(0.5)
        ready = json.loads(ready_file.read_text())
        yield ServeApp(
            url=ready["url"],
            ws_url=ready["url"].replace("http://", "ws://") + "ws",
            ray_address=ready["ray_address"],
            metrics_port=ready["metrics_port"],
            deployments=ready["deployments"],
        )
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            if ready_file.exists():  # end this run's cluster only (other Ray instances may share the machine)
                stop_processes(Path(json.loads(ready_file.read_text())["temp_dir"]))
