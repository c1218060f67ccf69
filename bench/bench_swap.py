"""Classical swapper cost per 512x512 frame with one face (total and landmarks); prints numbers, asserts nothing.

    python -m bench.bench_swap [--repeats 200] [--threads 1]     (from the repository root)

Two frames: scikit-image's astronaut() (face ~90 px) and a zoomed crop of it (face ~250 px, the worst case at 512).
The source identity is Tom Hanks from insightface's bundled test images. Detection (dlib HOG) is not timed.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import cv2
import dlib
import numpy as np
from skimage import data

from mirage_ray.vision.faces import Face, SourceIdentity
from mirage_ray.vision.landmarks_dlib import DlibLandmarks, kps_from_landmarks
from mirage_ray.vision.swap_classical import ClassicalSwapper

FRAME_PX = 512


def _first_face(image: np.ndarray, landmarks: DlibLandmarks) -> Face:
    rects = dlib.get_frontal_face_detector()(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), 1)
    rect = max(rects, key=lambda r: r.area())
    box = (rect.left(), rect.top(), rect.right(), rect.bottom())
    kps = kps_from_landmarks(landmarks.predict(image, box))
    return Face(bbox=np.array(box, np.float32), kps=kps, score=1.0)


def _frames() -> dict[str, np.ndarray]:
    astronaut = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    zoomed = cv2.resize(astronaut[20:220, 120:320], (FRAME_PX, FRAME_PX), interpolation=cv2.INTER_CUBIC)
    return {"astronaut (face ~90 px)": astronaut, "zoomed (face ~250 px)": zoomed}


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def _breakdown(swapper: ClassicalSwapper, frame: np.ndarray, face: Face, identity: SourceIdentity, repeats: int) -> str:
    """One line: total and landmark median ms for one face (the shape/colour/blend steps are inside the total)."""
    swapper.swap(frame, [face], identity)  # warm-up
    total = _median_ms(lambda: swapper.swap(frame, [face], identity), repeats)
    t_landmarks = _median_ms(lambda: swapper.target_landmarks(frame, face), repeats)
    x1, y1, x2, y2 = (int(v) for v in face.bbox)
    return f"total {total:.2f} | landmarks {t_landmarks:.2f} | face box {x2 - x1}x{y2 - y1} px"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="OpenCV threads (1 = one core)")
    args = parser.parse_args()
    cv2.setNumThreads(args.threads)

    images = Path(next(iter(importlib.util.find_spec("insightface").submodule_search_locations))) / "data" / "images"
    landmarks = DlibLandmarks()
    swapper = ClassicalSwapper(landmarks)
    reference = cv2.imread(str(images / "Tom_Hanks_54745.png"))
    identity = swapper.identity(reference, _first_face(reference, landmarks))
    print(f"classical swap, cv2 threads={args.threads}, median of {args.repeats} runs, ms per 512x512 frame, one face")
    for label, frame in _frames().items():
        print(f"  {label}: {_breakdown(swapper, frame, _first_face(frame, landmarks), identity, args.repeats)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
