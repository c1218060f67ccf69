"""Ray-driver side of tests/integration/test_handles.py: runs in a child process attached to the app's cluster
(tests/integration/client.py ``ray_snippet``), calls the deployments through their handles, returns plain numbers."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from ray import serve

from actors.launch import deploy
from mirage_ray.stage_api import BatchReport, DetectRequest, IdentityRequest, SwapRequest
from mirage_ray.vision.faces import largest_faces
from tests.media import astronaut, insightface_image

APP = "mirage"
SHIFT_PX = 8  # caller i's frame is the astronaut moved right by i x SHIFT_PX: its face box is its marker
BAND_ROWS = 16  # and its bottom rows carry a colour of its own, far from the face (the swapper must not touch them)
POLL_S = 0.5
REPORT_CALLS = 30  # batching() calls to reach every replica (4 at most: each one missed with p < 0.001)


def handle(name: str) -> Any:
    return serve.get_deployment_handle(name, app_name=APP)


def batching(name: str) -> dict[str, BatchReport]:
    """Every replica's report, by replica id (the deployments autoscale: asked often enough, each one answers)."""
    reports = [handle(name).batching.remote() for _ in range(REPORT_CALLS)]
    return {report.replica: report for report in (r.result() for r in reports)}


def caller_frame(i: int) -> np.ndarray:
    frame = np.roll(astronaut(), SHIFT_PX * i, axis=1)
    frame[-BAND_ROWS:] = (40 * i % 256, 255 - 30 * i % 256, 100 + 17 * i % 156)
    return np.ascontiguousarray(frame)


def size_delta(before: dict[str, BatchReport], after: dict[str, BatchReport]) -> dict[int, int]:
    """The batches of each size the deployment's replicas ran between two reports."""
    delta: Counter[int] = Counter()
    for replica, report in after.items():
        delta.update(report.sizes)
        if replica in before:
            delta.subtract(before[replica].sizes)
    return {size: n for size, n in sorted(delta.items()) if n > 0}


def concurrent_callers(callers: int, rounds: int) -> dict[str, Any]:
    """``callers`` frames at once through Detector then Swapper, ``rounds`` times: each reply checked against its
    own caller's marker; the batch sizes each deployment ran meanwhile."""
    detector, swapper = handle("Detector"), handle("Swapper")
    reference = insightface_image("Tom_Hanks_54745.png")
    ref_face = detector.detect.remote(DetectRequest(reference)).result().faces[0]
    identity = swapper.identity.remote(IdentityRequest(reference, ref_face)).result().identity
    frames = [caller_frame(i) for i in range(callers)]
    before = {name: batching(name) for name in ("Detector", "Swapper")}
    checks = []
    for _ in range(rounds):
        detections = [detector.detect.remote(DetectRequest(frame)) for frame in frames]
        faces = [largest_faces(list(d.result().faces), 1) for d in detections]
        swaps = [
            swapper.swap.remote(SwapRequest(frame, tuple(found), identity))
            for frame, found in zip(frames, faces, strict=True)
        ]
        for i, (frame, found, swap) in enumerate(zip(frames, faces, swaps, strict=True)):
            out = swap.result().image
            x1, y1, x2, y2 = (int(v) for v in found[0].bbox)
            checks.append(
                {
                    "caller": i,
                    "face_x1": float(found[0].bbox[0]),
                    "band_is_own": bool(np.array_equal(out[-BAND_ROWS:], frame[-BAND_ROWS:])),
                    "face_changed": float(np.abs(out[y1:y2, x1:x2].astype(int) - frame[y1:y2, x1:x2]).mean()),
                }
            )
    after = {name: batching(name) for name in ("Detector", "Swapper")}
    return {"checks": checks, "sizes": {name: size_delta(before[name], after[name]) for name in before}}


def _wait_batching(name: str, max_batch_size: int, timeout_s: float) -> dict[str, BatchReport]:
    """Every replica's report once all of them batch up to ``max_batch_size``."""
    deadline = time.monotonic() + timeout_s
    while True:
        reports = batching(name)
        if {r.max_batch_size for r in reports.values()} == {max_batch_size}:
            return reports
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} replicas do not all batch up to {max_batch_size}: {reports}")
        time.sleep(POLL_S)


def _as_dicts(reports: dict[str, BatchReport]) -> dict[str, dict[str, Any]]:
    return {replica: dataclasses.asdict(report) for replica, report in reports.items()}


def reconfigured_detector(
    config: Path, address: str, user_config: dict[str, Any], callers: int, timeout_s: float
) -> dict[str, Any]:
    """Redeploy the live ``config`` with the Detector's ``user_config`` changed (a lightweight update), run
    ``callers`` concurrent detections under it, then deploy ``config`` again; every replica's reports before,
    during, after."""
    before = batching("Detector")
    (default_size,) = {r.max_batch_size for r in before.values()}
    changed = yaml.safe_load(config.read_text())
    (app,) = changed["applications"]
    (detector,) = (d for d in app["deployments"] if d["name"] == "Detector")
    detector["user_config"] = user_config
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "serve_config.yaml"
        path.write_text(yaml.safe_dump(changed, sort_keys=False))
        try:
            deploy(path, address)
            during = _wait_batching("Detector", user_config["max_batch_size"], timeout_s)
            frames = [caller_frame(i) for i in range(callers)]
            for _ in range(3):
                for call in [handle("Detector").detect.remote(DetectRequest(frame)) for frame in frames]:
                    call.result()
            ran = batching("Detector")
        finally:
            deploy(config, address)
    restored = _wait_batching("Detector", default_size, timeout_s)
    return {
        "before": _as_dicts(before),
        "during": _as_dicts(during),
        "sizes": size_delta(during, ran),
        "restored": _as_dicts(restored),
    }
