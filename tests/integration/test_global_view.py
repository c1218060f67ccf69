"""The controller's global view through the running app: the model deployments report their queue and GPU memory,
/v1/stats shows them (GPU memory null without a GPU), and a saturated shared stage degrades the costliest session
first, then restores it when the stage clears.

The saturation is injected the way a deployment replica reports it (``report_stage`` on the controller actor, from a
child process), because two sessions on this machine cannot fill a batch queue; the sessions, their pushes, the
controller's ticks and the directives they receive are the real ones.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import cv2
import httpx
import pytest

from mirage_ray.controller_policy import QUEUE_SATURATED, RESTORE_STABLE_S
from mirage_ray.protocol import Kind
from tests.conftest import ServeApp
from tests.integration.client import Client
from tests.media import insightface_image, moving_face_frames

pytestmark = pytest.mark.integration
COSTLY_FPS, CHEAP_FPS = 20.0, 3.0
REPORTS_WITHIN_S = 60.0  # the deployments report every 2 s while they work
DEGRADE_WITHIN_S = 40.0
RESTORE_WITHIN_S = RESTORE_STABLE_S + 60.0  # + the real replicas' reports ageing out (10 s)

# the controller side, run as a Ray driver in a child: saturate the Swapper's queue until a session holds a floor,
# then report it clear until every floor is released; prints one JSON line per phase
CONTROLLER_SIDE = """
import json, sys, time
h = ray.get_actor('mirage_controller', namespace='mirage')
def report(queue):
    ray.get(h.report_stage.remote({'deployment': 'Swapper', 'replica': 'injected', 'queue': queue}))
deadline = time.monotonic() + %(degrade)f
while True:
    report(%(saturated)d)
    snap = ray.get(h.snapshot.remote())
    held = {sid: f for sid, f in snap['floors'].items() if f > 0}
    if held or time.monotonic() > deadline:
        break
    time.sleep(0.5)
floors = snap['floors']
report(%(saturated)d)
time.sleep(2.0)  # a round of the sessions' pushes: the controller judges the pressure again at each
snap = ray.get(h.snapshot.remote())
print(json.dumps({'floors': floors, 'why': snap['why'], 'started_at': snap['started_at']}), flush=True)
deadline = time.monotonic() + %(restore)f
while True:
    report(0)
    snap = ray.get(h.snapshot.remote())
    if not any(snap['floors'].values()) or time.monotonic() > deadline:
        break
    time.sleep(0.5)
last = {k: snap[k] for k in ('floors', 'why', 'started_at')}
print(json.dumps({**last, 'stages': snap['admission']['stages']}), flush=True)
"""


async def stream(client: Client, fps: float, stop: asyncio.Event) -> None:
    frames = moving_face_frames(20, step_px=2)
    seq = 0
    while not stop.is_set():
        await client.send(Kind.VIDEO, seq, int(time.monotonic() * 1e6), frames[seq % len(frames)])
        seq += 1
        await asyncio.sleep(1.0 / fps)


async def open_with_reference(app: ServeApp) -> tuple[Client, str]:
    client = await Client.open(app, app.token())
    session_id = (await client.next_json("hello"))["session_id"]
    _, png = cv2.imencode(".png", insightface_image("Tom_Hanks_54745.png"))
    await client.send(Kind.REFERENCE, 0, 0, png.tobytes())
    assert (await client.next_json("reference", 60))["ok"] is True
    return client, session_id


async def wait_stats(app: ServeApp, predicate, timeout_s: float, what: str) -> dict:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=10) as http:
        while True:
            admission = (await http.get(app.url + "v1/stats")).json()["admission"]
            if predicate(admission):
                return admission
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up after {timeout_s} s waiting for {what}: {admission}")
            await asyncio.sleep(1.0)


async def test_saturated_stage_degrades_the_costliest_session_then_restores(serve_app: ServeApp) -> None:
    costly, costly_id = await open_with_reference(serve_app)
    cheap, cheap_id = await open_with_reference(serve_app)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(stream(costly, COSTLY_FPS, stop)), asyncio.create_task(stream(cheap, CHEAP_FPS, stop))]
    prelude = (
        "import ray\n"
        f"ray.init(address={serve_app.ray_address!r}, log_to_driver=False, logging_level='ERROR', namespace='mirage')\n"
    )
    script = CONTROLLER_SIDE % {"degrade": DEGRADE_WITHIN_S, "restore": RESTORE_WITHIN_S, "saturated": 20}
    try:
        # the real deployments report to the controller: their queues, and no GPU memory figure on this machine
        admission = await wait_stats(
            serve_app,
            lambda a: {"Detector", "Swapper"} <= set(a.get("stages", {})) and a.get("sessions", 0) >= 2,
            REPORTS_WITHIN_S,
            "stage reports from the Detector and Swapper and both sessions",
        )
        assert "gpu_mem_fraction" in admission and admission["gpu_mem_fraction"] is None
        assert admission["stages"]["Swapper"]["gpu_mem_fraction"] is None
        assert isinstance(admission["stages"]["Swapper"]["queue"], int)
        await asyncio.sleep(3.0)  # both sessions' costs over a few pushes
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", prelude + script, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        lines = []
        for _ in range(2):
            line = await asyncio.wait_for(child.stdout.readline(), DEGRADE_WITHIN_S + RESTORE_WITHIN_S)
            lines.append(line)
            # the load goes away: frames stop (the sessions stay, pushing their summaries every second), so the
            # real replicas' queues empty and their reports age out; only the stage's "clear" report remains
            stop.set()
        _, err = await asyncio.wait_for(child.communicate(), 60)
        assert child.returncode == 0, err.decode()[-3000:]
        degraded, restored = (json.loads(line) for line in lines)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    # the costliest session first, the cheap one untouched, for the reason the deployment's report gave
    assert degraded["floors"].get(costly_id, 0) >= 1, degraded
    assert degraded["floors"].get(cheap_id, 0) == 0, degraded
    assert any(d["reason"] == "controller" for d in costly.json["directive"]), costly.json["directive"]
    assert degraded["why"] == f"Swapper queue 20 > {QUEUE_SATURATED}", degraded
    # the stage cleared: the floor is released after the calm period
    assert restored["floors"].get(costly_id, 0) == 0, restored
    await costly.close()
    await cheap.close()
