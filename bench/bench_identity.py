"""Embedded (classical) swap identity on held-out moving faces; prints numbers, asserts nothing.

For every sequence of ``tests.media.IDENTITY_CASES`` (insightface's t1.jpg and Tom Hanks, scikit-image's astronaut,
moved by shifts, rolls and scales, with sensor noise, JPEG and keypoint jitter), each face region is swapped as the
session sends it, and dlib's 128-d face descriptor measures the result:
- distance from each swapped face to the reference (goal: median <= 0.45),
- the fraction of face-frames at least 0.10 closer to the reference than to the input (goal: >= 90 %),
- flicker in the face: mean |grey change| between consecutive frames, swapped / input (goal: <= 1.5), after undoing
  the known camera motion (stabilised) and as shown (raw),
- ms per swap call on the region around astronaut()'s face in a 512x512 frame (as it is, and zoomed so that the
  region is ~190x230 px), one OpenCV thread.

    python -m bench.bench_identity [--frames-scale 1.0] [--repeats 200]     (from the repository root)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import cv2
import numpy as np

from mirage_ray.stages import swap_margin
from mirage_ray.vision.detect_retinaface import RetinaFaceDetector
from mirage_ray.vision.faces import SourceIdentity, face_region, translate
from mirage_ray.vision.landmarks_dlib import DlibLandmarks
from mirage_ray.vision.swap_classical import ClassicalSwapper
from tests.media import (
    IDENTITY_CASES,
    IdentityFigures,
    IdentityProbe,
    measure_identity,
    moving_sequence,
    photo,
    photo_faces,
)

CLOSER_MARGIN = 0.10
ZOOM_FOR_TIMING = 1.35


def _row(label: str, figures: IdentityFigures) -> str:
    return (
        f"{label:30s} {len(figures.to_reference):5d} {np.median(figures.input_to_reference):8.3f} "
        f"{figures.median_distance:8.3f} {np.median(figures.to_input):8.3f} "
        f"{100 * figures.fraction_closer(CLOSER_MARGIN):7.1f} {figures.flicker_ratio:7.2f} "
        f"{figures.raw_flicker_ratio:7.2f}"
    )


def swap_ms(
    swapper: ClassicalSwapper, frame: np.ndarray, identity: SourceIdentity, repeats: int
) -> tuple[float, float, tuple[int, int]]:
    """Median wall and CPU ms of one swap call on the region around ``frame``'s face, as the session sends it.

    The face comes from the embedded detector (RetinaFace), whose box sets the region (the swapper's margin).
    CPU time is this thread's: it is what the swap costs even when other jobs share the cores.
    """
    face = max(RetinaFaceDetector(threads=1).detect(frame), key=lambda f: f.area)
    x1, y1, x2, y2 = face_region([face], frame.shape[1], frame.shape[0], swap_margin(swapper))
    region = np.ascontiguousarray(frame[y1:y2, x1:x2])
    local = translate(face, -x1, -y1)
    for _ in range(5):
        swapper.swap(region, [local], identity)
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.thread_time()
        swapper.swap(region, [local], identity)
        wall.append((time.perf_counter() - start) * 1000.0)
        cpu.append((time.thread_time() - start_cpu) * 1000.0)
    return statistics.median(wall), statistics.median(cpu), (x2 - x1, y2 - y1)


def timing_frames() -> dict[str, np.ndarray]:
    """512x512 frames with one face: astronaut() as it is, and zoomed so that the face region is ~190x230 px."""
    astronaut = photo("astronaut")
    zoom = cv2.getRotationMatrix2D((256.0, 150.0), 0.0, ZOOM_FOR_TIMING)
    zoom[:, 2] += np.array([0.0, 256.0 - 150.0])
    zoomed = cv2.warpAffine(astronaut, zoom, (512, 512), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    return {"astronaut()": astronaut, f"astronaut() zoomed x{ZOOM_FOR_TIMING}": zoomed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames-scale", type=float, default=1.0, help="multiply each sequence's frame count")
    parser.add_argument("--repeats", type=int, default=200, help="swap calls timed")
    args = parser.parse_args()
    cv2.setNumThreads(1)

    landmarks = DlibLandmarks()
    swapper = ClassicalSwapper(landmarks)
    probe = IdentityProbe(landmarks)
    hanks = swapper.identity(photo("hanks"), photo_faces("hanks", landmarks)[0].as_face())
    for label, frame in timing_frames().items():
        wall_ms, cpu_ms, (width, height) = swap_ms(swapper, frame, hanks, args.repeats)
        print(
            f"swap call, {label}: {width}x{height} face region, 1 cv2 thread: "
            f"{wall_ms:.2f} ms wall, {cpu_ms:.2f} ms CPU (medians of {args.repeats})"
        )

    print(
        f"{'sequence':30s} {'faces':>5s} {'in->ref':>8s} {'out->ref':>8s} {'out->in':>8s} "
        f"{'%closer':>7s} {'flicker':>7s} {'raw':>7s}"
    )
    margin = swap_margin(swapper)
    total = IdentityFigures()
    started = time.perf_counter()
    for case in IDENTITY_CASES:
        reference_face = photo_faces(case.reference, landmarks)[case.reference_face]
        identity = swapper.identity(photo(case.reference), reference_face.as_face())
        reference = probe.descriptor(photo(case.reference), reference_face.landmarks)
        targets = [photo_faces(case.target, landmarks)[i] for i in case.target_faces]
        count = max(2, round(case.frames * args.frames_scale))
        frames = moving_sequence(photo(case.target), targets, count, case.view, case.zoom, seed=case.seed)
        figures = measure_identity(
            lambda image, faces, i=identity: swapper.swap(image, faces, i), reference, frames, probe, margin
        )
        print(_row(case.label, figures))
        total.extend(figures)
    print(_row("all", total))
    print(
        f"goals: median out->ref <= 0.45, >= 90 % closer by {CLOSER_MARGIN}, flicker <= 1.5x; "
        f"{time.perf_counter() - started:.0f} s for {len(total.to_reference)} face-frames"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
