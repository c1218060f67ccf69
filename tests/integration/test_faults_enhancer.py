"""Faults through Ray (issue 10): the Enhancer replica killed mid-session.

Its own application (tests/integration/enhancer_app.py: the CPU profile with a stand-in restorer that brightens the
face crops, because no CodeFormer can run here): a session with a reference and ``enhance`` on streams a moving face
and speech; the Enhancer replica is killed with ``ray.kill``. Meanwhile frames must keep coming, swapped (the
enhancement is optional: a failed one keeps the swapped frame, never the raw face), and once Serve has replaced
the replica the faces are enhanced (brightened) again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from actors.launch import launched
from mirage_ray.protocol import Kind
from tests.conftest import REPO_ROOT, START_TIMEOUT_S, TEST_JWT_SECRET, ServeApp
from tests.integration.client import Client
from tests.integration.enhancer_app import IMPORT_PATH
from tests.integration.faults_common import (
    RECOVERY_TIMEOUT_S,
    WORKING_TIMEOUT_S,
    Arrival,
    FaultStreamer,
    assert_survived,
    kill_replica,
    set_reference,
    still_served,
    wait_until,
)
from tests.integration.test_capacity import RAW_FACE_PSNR_DB, face_box, face_psnr

pytestmark = pytest.mark.integration
ENHANCED_GAIN = 25.0  # mean gain inside the face box of an enhanced frame (the stand-in adds 80 under a soft mask)


@pytest.fixture(scope="module")
def enhancer_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeApp]:
    """serve_config.cpu.yaml (the Enhancer is its own deployment there) built by enhancer_app.py."""
    config = yaml.safe_load((REPO_ROOT / "serve_config.cpu.yaml").read_text())
    for app in config["applications"]:
        app["import_path"] = IMPORT_PATH
    path = Path(tmp_path_factory.mktemp("enhancer-config")) / "serve_config.cpu.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    sets = ["admission_live_load=false", 'stage_budget_ms={"video.detect": 100000, "video.swap": 100000}']
    env = {"MIRAGE_JWT_SECRET": TEST_JWT_SECRET}
    with launched(path, sets=sets, num_cpus=2, env=env, timeout_s=START_TIMEOUT_S) as ready:
        yield ServeApp.from_ready(ready)


def brightening(arrival: Arrival, streamer: FaultStreamer, box: tuple[int, int, int, int]) -> float:
    """Mean gain inside the face box of a reply over the frame that was sent (the same size is compared)."""
    out = cv2.imdecode(np.frombuffer(arrival.media.payload, np.uint8), 1).astype(np.float64)
    sent = cv2.imdecode(np.frombuffer(streamer.sent_video[arrival.media.seq], np.uint8), 1).astype(np.float64)
    if out.shape != sent.shape:
        sent = cv2.resize(sent, (out.shape[1], out.shape[0]), interpolation=cv2.INTER_AREA)
        box = tuple(int(v * out.shape[1] / 512) for v in box)  # type: ignore[assignment]
    x1, y1, x2, y2 = box
    return float((out[y1:y2, x1:x2] - sent[y1:y2, x1:x2]).mean())


def enhance_failures(client: Client) -> int:
    stats = client.json["stats"]
    return int(stats[-1].get("stage_failures", {}).get("enhance", 0)) if stats else 0


async def test_enhancer_replica_killed_mid_session_keeps_the_face_swapped_then_enhances_again(
    enhancer_app: ServeApp,
) -> None:
    client = await Client.open(enhancer_app, enhancer_app.token())
    hello = await client.next_json("hello")
    assert hello["backends"]["enhancer"]["name"] == "stand-in-brighten"
    await client.socket.send(json.dumps({"type": "settings", "enhance": True}))
    await set_reference(client)
    streamer = FaultStreamer(client)
    box = face_box()
    video = lambda since=0.0: streamer.replies(Kind.VIDEO, since)  # noqa: E731

    def enhanced(arrivals: list[Arrival]) -> list[Arrival]:
        return [a for a in arrivals if brightening(a, streamer, box) > ENHANCED_GAIN]

    try:
        await wait_until(lambda: len(enhanced(video())) >= 5, WORKING_TIMEOUT_S, "enhanced frames before the kill")
        failures_before = enhance_failures(client)
        killed, killed_at = await kill_replica(enhancer_app, "Enhancer")
        # a loaded machine times out an enhancement now and then: the outage is frames that stay unenhanced
        failing_at = await wait_until(
            lambda: (
                enhance_failures(client) > failures_before
                and len(video(killed_at)) - len(enhanced(video(killed_at))) >= 3
            ),
            RECOVERY_TIMEOUT_S,
            "unenhanced frames after the kill",
        )
        back_at = await wait_until(
            lambda: len(enhanced(video(failing_at + 1.0))) >= 5, RECOVERY_TIMEOUT_S, "enhanced frames again"
        )
        await still_served(client)
    finally:
        await streamer.stop()
        await client.close()
    outage = [a for a in video(killed_at) if a.at <= back_at]
    plain = [a for a in outage if brightening(a, streamer, box) <= ENHANCED_GAIN]
    scores = [face_psnr(a.media.payload, streamer.sent_video[a.media.seq], box) for a in video(killed_at)]
    assert_survived(
        streamer,
        killed_at,
        back_at,
        f"\nEnhancer {killed} killed; first failed enhancement {failing_at - killed_at:.1f} s after, enhanced again"
        f" after {back_at - killed_at:.1f} s; {len(plain)} of {len(outage)} frames unenhanced in between; failed"
        f" enhancements {failures_before} -> {enhance_failures(client)}; face PSNR max {max(scores):.1f} dB",
    )
    assert plain, "no frame went out unenhanced while the Enhancer was dead"
    assert max(scores) < RAW_FACE_PSNR_DB, scores  # swapped throughout: a failed enhancement keeps the swap
