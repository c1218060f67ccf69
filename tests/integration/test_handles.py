"""The model deployments through their handles API (docs/handles.md), against the running app: concurrent callers
batch and each gets its own reply; batching changes on live replicas through ``user_config``; the offline video
example swaps a video file."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from tests.conftest import REPO_ROOT, ServeApp
from tests.integration.client import ray_snippet
from tests.integration.handles_driver import SHIFT_PX
from tests.integration.test_capacity import RAW_FACE_PSNR_DB, face_box, face_psnr
from tests.media import insightface_image, moving_face_frames

pytestmark = pytest.mark.integration
CALLERS = 8
ROUNDS = 3
FACE_BOX_TOLERANCE_PX = 3.0  # the detector's box follows a shifted frame to within this
SWAPPED_FACE_MEAN_DIFF = 5.0  # a swapped face differs from its input by more than this (0..255 mean)
# a redeploy that meets an autoscaling step on a loaded machine: Serve rolls the replicas it is starting first
# (one clean-clone CI run saw a replica keep the old batch size for over 120 s while two new ones started)
RECONFIGURE_TIMEOUT_S = 240.0
EXAMPLE_FRAMES = 12
EXAMPLE_TIMEOUT_S = 300.0


def driver(app: ServeApp, call: str, timeout_s: float = 300.0) -> dict:
    code = f"import json\nfrom tests.integration import handles_driver as d\nprint(json.dumps(d.{call}))"
    return json.loads(ray_snippet(app, code, timeout_s).splitlines()[-1])


def test_concurrent_callers_share_batches_and_each_reply_goes_to_its_caller(serve_app: ServeApp) -> None:
    result = driver(serve_app, f"concurrent_callers({CALLERS}, {ROUNDS})")
    checks = result["checks"]
    assert len(checks) == CALLERS * ROUNDS
    x0 = next(c["face_x1"] for c in checks if c["caller"] == 0)
    for check in checks:
        # the faces found are the caller's own frame's (its face sits SHIFT_PX x caller further right)
        assert abs(check["face_x1"] - x0 - SHIFT_PX * check["caller"]) <= FACE_BOX_TOLERANCE_PX, check
        # the swapped frame is the caller's own (its colour band), and its face was swapped
        assert check["band_is_own"], check
        assert check["face_changed"] > SWAPPED_FACE_MEAN_DIFF, check
    for deployment, sizes in result["sizes"].items():
        sizes = {int(size): n for size, n in sizes.items()}
        assert sum(size * n for size, n in sizes.items()) >= CALLERS * ROUNDS, (deployment, sizes)
        assert max(sizes) > 1, f"{deployment} ran every request alone: {sizes}"


def test_user_config_changes_the_batch_size_of_the_live_replica(serve_app: ServeApp) -> None:
    user_config = {"max_batch_size": 2, "batch_wait_timeout_s": 0.05}
    call = (
        f"reconfigured_detector(__import__('pathlib').Path({str(serve_app.config)!r}), {serve_app.ray_address!r},"
        f" {user_config!r}, {CALLERS}, {RECONFIGURE_TIMEOUT_S})"
    )
    result = driver(serve_app, call, timeout_s=4 * RECONFIGURE_TIMEOUT_S)
    before, during, restored = result["before"], result["during"], result["restored"]
    assert {(r["max_batch_size"], r["batch_wait_timeout_s"]) for r in during.values()} == {(2, 0.05)}
    sizes = {int(size): n for size, n in result["sizes"].items()}
    assert max(sizes) == 2, sizes  # the live queues batch up to the new size, not beyond
    defaults = {(r["max_batch_size"], r["batch_wait_timeout_s"]) for r in before.values()}
    assert {(r["max_batch_size"], r["batch_wait_timeout_s"]) for r in restored.values()} == defaults
    assert set(before) <= set(during) and set(before) <= set(restored)  # the same replicas: none was restarted


def test_swap_video_example_swaps_every_frame_of_a_video_file(serve_app: ServeApp, tmp_path) -> None:
    reference = tmp_path / "reference.png"
    cv2.imwrite(str(reference), insightface_image("Tom_Hanks_54745.png"))
    clip = moving_face_frames(EXAMPLE_FRAMES, step_px=2)
    sent = [cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR) for jpeg in clip]
    source, target = tmp_path / "in.avi", tmp_path / "out.avi"
    writer = cv2.VideoWriter(str(source), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (512, 512))
    for frame in sent:
        writer.write(frame)
    writer.release()
    command = [
        sys.executable, str(REPO_ROOT / "examples" / "swap_video.py"), "--address", serve_app.ray_address,
        "--reference", str(reference), "--input", str(source), "--output", str(target), "--in-flight", "4",
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=EXAMPLE_TIMEOUT_S, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    capture = cv2.VideoCapture(str(target))
    out = []
    while (frame := capture.read())[0]:
        out.append(frame[1])
    assert len(out) == EXAMPLE_FRAMES
    box = face_box()
    for got, frame in zip(out, sent, strict=True):
        payload = cv2.imencode(".png", got)[1].tobytes()
        original = cv2.imencode(".png", frame)[1].tobytes()
        assert face_psnr(payload, original, box) < RAW_FACE_PSNR_DB  # the face is not the input's
        background = cv2.PSNR(got[-100:], frame[-100:])  # below the face: the frame itself, through two MJPG passes
        assert background > RAW_FACE_PSNR_DB, background
