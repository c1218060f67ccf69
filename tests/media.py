"""Real test media: faces bundled with insightface and scikit-image, JPEG frames of a moving face."""

from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np

from mirage_ray.codec import encode_jpeg


def insightface_image(name: str) -> np.ndarray:
    """A BGR image from insightface's bundled data/images (``t1.jpg``, ``Tom_Hanks_54745.png``)."""
    import insightface

    path = Path(insightface.__file__).parent / "data" / "images" / name
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"insightface test image not found: {path}")
    return image


@functools.cache
def astronaut() -> np.ndarray:
    """scikit-image's astronaut (Eileen Collins) as BGR, 512x512."""
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


def moving_face_frames(count: int, size: int = 512, step_px: int = 3, quality: int = 85) -> list[bytes]:
    """JPEG frames of the astronaut's face panning ``step_px`` per frame (a head moving in front of a webcam)."""
    source = astronaut()
    padded = cv2.copyMakeBorder(source, 64, 64, 64, 64, cv2.BORDER_REFLECT)
    frames = []
    for i in range(count):
        dx = 64 + int(round(step_px * i)) % 64
        crop = padded[64 : 64 + size, dx : dx + size]
        frames.append(encode_jpeg(np.ascontiguousarray(crop), quality))
    return frames
