"""Detection and tracking costs on one 512x512 frame with one face (scikit-image's astronaut).

Prints ms per call for RetinaFace-MobileNet0.25 at det_size 512 / 320 / 256, and for the tracker's propagate
(pyramidal LK on the 5 keypoints, forward-backward), with the 512 detection as the baseline ratio.

    python -m bench.bench_detect [--threads 2] [--repeats 50]   (from the repository root)
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import cv2
import numpy as np
from skimage import data

from mirage_ray.vision.detect_retinaface import RetinaFaceDetector
from mirage_ray.vision.tracker import FaceTracker

DET_SIZES_PX = (512, 320, 256)
WARMUP_CALLS = 3


def per_call_ms(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median and minimum milliseconds per call."""
    for _ in range(WARMUP_CALLS):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(times)), float(np.min(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()

    frame = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)  # 512x512, one face
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    rows = []
    for det_size in DET_SIZES_PX:
        detector = RetinaFaceDetector(det_size=det_size, threads=args.threads)
        faces = detector.detect(frame)
        median, best = per_call_ms(lambda d=detector: d.detect(frame), args.repeats)
        rows.append((f"retinaface det_size={det_size} ({len(faces)} face)", median, best))

    detector = RetinaFaceDetector(det_size=512, threads=args.threads)
    tracker = FaceTracker()
    tracker.update(detector.detect(frame), gray)
    shifted = np.roll(gray, 2, axis=1)
    frames = [gray, shifted]
    counter = iter(range(10**9))
    median, best = per_call_ms(lambda: tracker.propagate(frames[next(counter) % 2]), args.repeats * 4)
    rows.append(("tracker propagate (1 face, 512x512)", median, best))

    baseline = rows[0][1]
    print(f"threads={args.threads} repeats={args.repeats}")
    print(f"{'stage':44s} {'median ms':>10s} {'min ms':>8s} {'x det512':>9s}")
    for name, median, best in rows:
        print(f"{name:44s} {median:10.2f} {best:8.2f} {median / baseline:9.2f}")


if __name__ == "__main__":
    main()
