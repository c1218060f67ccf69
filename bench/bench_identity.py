"""Embedded (classical) swap identity on held-out moving faces, against an earlier version; prints, asserts nothing.

Sets (``tests/media.py``): ``IDENTITY_HELD_OUT_CASES`` (what the goals are judged on: no constant was tuned on it)
and ``IDENTITY_TUNING_CASES`` (what the constants were chosen on). Each frame's face region is swapped as the
session sends it, and dlib's 128-d face descriptor measures the result:
- distance from each swapped face to the reference (goal: median <= 0.45),
- the fraction of face-frames at least 0.10 closer to the reference than to the input (goal: >= 90 %),
- flicker in the face: mean |grey change| between consecutive frames, swapped / input (goal: <= 1.5), as shown
  (raw) and after undoing the known camera motion (stabilised);
- the same flicker on slow sequences (a 2 s head path at 20 fps) with and without the session's One-Euro smoothing
  of the keypoints (``mirage_ray.vision.smooth.FaceSmoother``, as ``FaceTracker`` applies it);
- ms of CPU per swap call on the region around astronaut()'s face in a 512x512 frame (as it is, and zoomed so that
  the region is ~190x230 px), one OpenCV thread, interleaved with the baseline so both see the same load.

The baseline is the classical swapper of a git revision (default ``HEAD``: the code before uncommitted changes),
extracted with ``git archive`` into a temporary package and measured in the same process.

    python -m bench.bench_identity [--frames-scale 1.0] [--repeats 100] [--baseline HEAD|none] [--sets held-out tuning]
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import importlib
import io
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from mirage_ray.stages import swap_margin
from mirage_ray.vision.detect_retinaface import RetinaFaceDetector
from mirage_ray.vision.faces import Face, SourceIdentity, face_region, translate
from mirage_ray.vision.landmarks_dlib import DlibLandmarks
from mirage_ray.vision.smooth import FaceSmoother
from mirage_ray.vision.swap_classical import ClassicalSwapper
from tests.media import (
    IDENTITY_HELD_OUT_CASES,
    IDENTITY_TUNING_CASES,
    FacesFilter,
    IdentityFigures,
    IdentityProbe,
    IdentitySequence,
    IdentitySwapper,
    identity_sequences,
    measure_identity,
    moving_sequence,
    photo,
    photo_faces,
)

CLOSER_MARGIN = 0.10
ZOOM_FOR_TIMING = 1.35
BASELINE_PACKAGE = "mirage_ray_baseline"
SLOW_FRAMES = 40  # slow sequences for the smoothing figures: one 2 s head path at 20 fps
SETS = {"held-out": IDENTITY_HELD_OUT_CASES, "tuning": IDENTITY_TUNING_CASES}


def load_baseline(revision: str) -> Callable[[DlibLandmarks], IdentitySwapper]:
    """The ``ClassicalSwapper`` class of ``revision``, imported from a temporary copy of its ``mirage_ray``."""
    archive = subprocess.run(["git", "archive", revision, "mirage_ray"], capture_output=True, check=True).stdout
    root = Path(tempfile.mkdtemp(prefix="mirage-baseline-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(root, filter="data")
    package = root / BASELINE_PACKAGE
    (root / "mirage_ray").rename(package)
    for path in package.rglob("*.py"):
        path.write_text(re.sub(r"\bmirage_ray\b", BASELINE_PACKAGE, path.read_text()))
    sys.path.insert(0, str(root))
    module = importlib.import_module(f"{BASELINE_PACKAGE}.vision.swap_classical")
    landmarks_module = importlib.import_module(f"{BASELINE_PACKAGE}.vision.landmarks_dlib")
    return lambda _landmarks: module.ClassicalSwapper(landmarks_module.DlibLandmarks())


def timing_frames() -> dict[str, np.ndarray]:
    """512x512 frames with one face: astronaut() as it is, and zoomed so that the face region is ~190x230 px."""
    astronaut = photo("astronaut")
    zoom = cv2.getRotationMatrix2D((256.0, 150.0), 0.0, ZOOM_FOR_TIMING)
    zoom[:, 2] += np.array([0.0, 256.0 - 150.0])
    zoomed = cv2.warpAffine(astronaut, zoom, (512, 512), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    return {"astronaut()": astronaut, f"astronaut() zoomed x{ZOOM_FOR_TIMING}": zoomed}


def swap_cpu_ms(
    swappers: dict[str, IdentitySwapper], identities: dict[str, SourceIdentity], frame: np.ndarray, repeats: int
) -> tuple[dict[str, float], tuple[int, int]]:
    """Median CPU ms (this thread's) of one swap call per swapper, interleaved call by call, on the region around
    ``frame``'s RetinaFace face grown by the session's margin."""
    face = max(RetinaFaceDetector(threads=1).detect(frame), key=lambda f: f.area)
    margin = swap_margin(next(iter(swappers.values())))
    x1, y1, x2, y2 = face_region([face], frame.shape[1], frame.shape[0], margin)
    region = np.ascontiguousarray(frame[y1:y2, x1:x2])
    local = translate(face, -x1, -y1)
    times: dict[str, list[float]] = {name: [] for name in swappers}
    for index in range(repeats + 5):
        for name, swapper in swappers.items():
            start = time.thread_time()
            swapper.swap(region, [local], identities[name])
            if index >= 5:
                times[name].append((time.thread_time() - start) * 1000.0)
    return {name: statistics.median(values) for name, values in times.items()}, (x2 - x1, y2 - y1)


def _row(label: str, figures: IdentityFigures) -> str:
    return (
        f"{label:42s} {len(figures.to_reference):5d} {np.median(figures.input_to_reference):8.3f} "
        f"{figures.median_distance:8.3f} {np.median(figures.to_input):8.3f} "
        f"{100 * figures.fraction_closer(CLOSER_MARGIN):7.1f} {figures.flicker_ratio:7.2f} "
        f"{figures.raw_flicker_ratio:7.2f}"
    )


def identity_table(
    name: str, sequences: list[IdentitySequence], swappers: dict[str, IdentitySwapper], probe: IdentityProbe
) -> None:
    print(f"\n{name} set")
    print(
        f"{'sequence / swapper':42s} {'faces':>5s} {'in->ref':>8s} {'out->ref':>8s} {'out->in':>8s} "
        f"{'%closer':>7s} {'flicker':>7s} {'raw':>7s}"
    )
    totals = {label: IdentityFigures() for label in swappers}
    for sequence in sequences:
        for label, swapper in swappers.items():
            identity = sequence.source(swapper)
            figures = measure_identity(
                lambda image, faces, s=swapper, i=identity: s.swap(image, faces, i),
                sequence.reference,
                sequence.frames,
                probe,
                swap_margin(swapper),
            )
            print(_row(f"{sequence.case.label} / {label}"[:42], figures))
            totals[label].extend(figures)
    for label, figures in totals.items():
        print(_row(f"all / {label}", figures))


def _smooth_keypoints() -> FacesFilter:
    """What the session does: its tracker's One-Euro smoothing of the keypoints."""
    smoother = FaceSmoother()
    return lambda _image, faces, t_s: smoother(faces, t_s)


def _smooth_landmarks(landmarks: DlibLandmarks) -> FacesFilter:
    """Not in the session (yet): the 68 landmarks predicted per frame before the swap, then smoothed with the
    keypoints; the swapper uses a face's own landmarks."""
    smoother = FaceSmoother()

    def smooth(image: np.ndarray, faces: list[Face], t_s: float) -> list[Face]:
        marked = [dataclasses.replace(face, landmarks=landmarks.from_kps(image, face.kps)) for face in faces]
        return smoother(marked, t_s)

    return smooth


def smoothing_table(sequences: list[IdentitySequence], swapper: ClassicalSwapper, landmarks: DlibLandmarks) -> None:
    """Flicker on slow versions of the sequences: as they come, with the session's keypoint smoothing, and with
    smoothed 68 landmarks."""
    print(f"\nflicker on slow paths ({SLOW_FRAMES} frames at 20 fps), held-out pairings, current swapper: swapped /")
    print("input, stabilised and raw; unsmoothed | keypoints smoothed (the session) | 68 landmarks smoothed")
    print(f"{'sequence':42s} {'stab':>6s} {'raw':>6s} | {'stab':>6s} {'raw':>6s} | {'stab':>6s} {'raw':>6s}")
    totals = [IdentityFigures() for _ in range(3)]
    for sequence in sequences:
        case = sequence.case
        targets = [photo_faces(case.target, landmarks)[i] for i in case.target_faces]
        frames = moving_sequence(
            photo(case.target), targets, SLOW_FRAMES, case.view, case.zoom, case.motion, seed=case.seed
        )
        identity = sequence.source(swapper)
        swap = lambda image, faces, i=identity: swapper.swap(image, faces, i)  # noqa: E731
        rows = [
            measure_identity(swap, None, frames, None, swap_margin(swapper), smooth=smooth)
            for smooth in (None, _smooth_keypoints(), _smooth_landmarks(landmarks))
        ]
        print(_flicker_row(case.label[:42], rows))
        for total, row in zip(totals, rows, strict=True):
            total.extend(row)
    print(_flicker_row("all", totals))


def _flicker_row(label: str, rows: list[IdentityFigures]) -> str:
    return f"{label:42s} " + " | ".join(f"{r.flicker_ratio:6.2f} {r.raw_flicker_ratio:6.2f}" for r in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames-scale", type=float, default=1.0, help="multiply each sequence's frame count")
    parser.add_argument("--repeats", type=int, default=100, help="swap calls timed per swapper and frame")
    parser.add_argument("--baseline", default="HEAD", help="git revision to compare with, or 'none'")
    parser.add_argument("--sets", nargs="+", choices=sorted(SETS), default=["held-out", "tuning"])
    parser.add_argument("--no-smoothing", action="store_true", help="skip the slow-path smoothing table")
    args = parser.parse_args()
    cv2.setNumThreads(1)

    landmarks = DlibLandmarks()
    swappers: dict[str, IdentitySwapper] = {"current": ClassicalSwapper(landmarks)}
    if args.baseline != "none":
        swappers[f"baseline {args.baseline}"] = load_baseline(args.baseline)(landmarks)
    probe = IdentityProbe(landmarks)
    hanks_face = photo_faces("hanks", landmarks)[0].as_face()
    identities = {name: swapper.identity(photo("hanks"), hanks_face) for name, swapper in swappers.items()}
    for label, frame in timing_frames().items():
        cpu_ms, (width, height) = swap_cpu_ms(swappers, identities, frame, args.repeats)
        figures = ", ".join(f"{name} {ms:.2f} ms" for name, ms in cpu_ms.items())
        ratio = ""
        if len(cpu_ms) == 2:
            current, baseline = cpu_ms.values()
            ratio = f" -> current / baseline x{current / baseline:.2f}"
        region = f"{width}x{height} region, 1 cv2 thread, medians of {args.repeats}"
        print(f"swap call CPU, {label} ({region}): {figures}{ratio}")

    started = time.perf_counter()
    for name in args.sets:
        sequences = identity_sequences(SETS[name], landmarks, probe, frames_scale=args.frames_scale)
        identity_table(name, sequences, swappers, probe)
        if name == "held-out" and not args.no_smoothing:
            smoothing_table(sequences, swappers["current"], landmarks)
    print(
        f"\ngoals (held-out set): median out->ref <= 0.45, >= 90 % closer by {CLOSER_MARGIN}, flicker <= 1.5x; "
        f"{time.perf_counter() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
