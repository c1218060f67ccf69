"""Autoscaling through the real app: a session fills the ingress replica, the autoscaler adds one within a bounded
time, admission's capacity follows the RUNNING replicas (1013 before, admitted after), and closing the sessions
scales back down.

serve_config.yaml with one machine's numbers made small: one session per ingress replica (the CPU profile's measured
figure), two replicas at most, short delays, and Serve's autoscaling metrics pushed every half second (its default,
10 s, is part of the reaction time docs/scaling.md states). ``max_replicas_per_node`` is dropped: this test has one
node (tests/integration/test_multinode.py runs several).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets
import yaml

from actors.launch import launched
from mirage_ray.protocol import CloseCode
from tests.conftest import REPO_ROOT, START_TIMEOUT_S, TEST_JWT_SECRET, ServeApp
from tests.integration.client import Client, ray_snippet

pytestmark = pytest.mark.integration
UPSCALE_WITHIN_S = 120.0  # metrics push + upscale delay + a replica's start, on 2 busy cores
DOWNSCALE_WITHIN_S = 120.0
INGRESS_AUTOSCALING = {
    "min_replicas": 1,
    "max_replicas": 2,
    "target_ongoing_requests": 0.9,  # 0.9 x sessions_per_replica, as in the shipped profiles
    "upscale_delay_s": 0,
    "downscale_delay_s": 5,
    "look_back_period_s": 2,
}
METRICS_ENV = {
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
}


def scaling_config(out: Path) -> Path:
    config = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    (app,) = config["applications"]
    app["args"].update(sessions_per_replica=1, max_sessions=2, admission_live_load=False)
    for deployment in app["deployments"]:
        if deployment["name"] == "Ingress":
            deployment.pop("max_replicas_per_node", None)
            deployment["autoscaling_config"] = INGRESS_AUTOSCALING
            deployment["graceful_shutdown_timeout_s"] = 5
    path = out / "serve_config.scaling.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def scaling_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeApp]:
    config = scaling_config(tmp_path_factory.mktemp("scaling"))
    env = {"MIRAGE_JWT_SECRET": TEST_JWT_SECRET, **METRICS_ENV}
    # logical CPUs: a second ingress replica (1 CPU) beside the first and the model replicas
    with launched(config, num_cpus=4, num_gpus=1, env=env, timeout_s=START_TIMEOUT_S) as ready:
        yield ServeApp.from_ready(ready)


async def admission(app: ServeApp) -> dict:
    async with httpx.AsyncClient(timeout=10) as http:
        return (await http.get(app.url + "v1/stats")).json()["admission"]


async def wait_admission(app: ServeApp, replicas: int, capacity: int, timeout_s: float) -> float:
    """Seconds until the controller counts ``replicas`` RUNNING ingress replicas and admits ``capacity`` sessions."""
    started = time.monotonic()
    seen: dict = {}
    while time.monotonic() - started < timeout_s:
        seen = await admission(app)
        if (seen.get("ingress_replicas"), seen["capacity"]) == (replicas, capacity):
            return time.monotonic() - started
        await asyncio.sleep(1.0)
    raise AssertionError(f"no {replicas} ingress replica(s) / capacity {capacity} within {timeout_s} s: {seen}")


def running_ingress_replicas(app: ServeApp) -> int:
    code = (
        "status = serve.status().applications['mirage'].deployments['Ingress']\n"
        "print(sum(n for s, n in status.replica_states.items() if str(getattr(s, 'value', s)) == 'RUNNING'))\n"
    )
    return int(ray_snippet(app, code).splitlines()[-1])


async def refused_code(app: ServeApp) -> tuple[int, str]:
    """The close code and reason a new session gets (1000, "admitted" when it gets its hello)."""
    socket = await websockets.connect(app.ws_url, subprotocols=["mirage.v1", f"bearer.{app.token()}"])
    try:
        while True:
            message = await asyncio.wait_for(socket.recv(), 10)
            if isinstance(message, str) and '"hello"' in message:
                await socket.close()
                return 1000, "admitted"
    except websockets.ConnectionClosed as closed:
        return closed.rcvd.code, closed.rcvd.reason


async def test_sessions_add_an_ingress_replica_admission_follows_and_it_scales_back(scaling_app: ServeApp) -> None:
    await wait_admission(scaling_app, replicas=1, capacity=1, timeout_s=30)
    first = await Client.open(scaling_app, scaling_app.token())
    await first.next_json("hello")
    # the one running replica is full: the next session is refused until the autoscaler's replica runs
    if (await admission(scaling_app))["ingress_replicas"] == 1:
        code, reason = await refused_code(scaling_app)
        # refused by the full replica itself, or by the controller's count ("server full (1/1 sessions)")
        assert code == CloseCode.TRY_AGAIN and "server full" in reason, reason
    upscale_s = await wait_admission(scaling_app, replicas=2, capacity=2, timeout_s=UPSCALE_WITHIN_S)
    assert running_ingress_replicas(scaling_app) == 2
    second = await Client.open(scaling_app, scaling_app.token())
    assert (await second.next_json("hello", 20))["type"] == "hello"  # admitted now that a replica has room
    await first.close()
    await second.close()
    downscale_s = await wait_admission(scaling_app, replicas=1, capacity=1, timeout_s=DOWNSCALE_WITHIN_S)
    assert running_ingress_replicas(scaling_app) == 1
    print(f"upscale observed after {upscale_s:.1f} s, downscale after {downscale_s:.1f} s")
