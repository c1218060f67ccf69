"""Fail-closed masking: hide the faces of a frame that could not be swapped (the real face never leaves)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from mirage_ray.vision.faces import Face, face_region

MASK_MARGIN = 0.35  # face boxes grown by this fraction of their size on each side (hair line, jaw, ears)
MASK_CELLS = 6  # the masked region keeps this many cells across: identity is gone, the layout stays


def pixelate(region: np.ndarray, cells: int = MASK_CELLS) -> np.ndarray:
    """``region`` reduced to about ``cells`` blocks across its longer side (area mean, nearest upscale)."""
    height, width = region.shape[:2]
    scale = cells / max(height, width, 1)
    small = cv2.resize(
        region, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA
    )
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST)


def mask_faces(image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
    """A copy of ``image`` with every face region pixelated; with no known face, the whole frame is."""
    if not faces:
        return pixelate(image, cells=4 * MASK_CELLS)
    height, width = image.shape[:2]
    out = image.copy()
    for face in faces:
        x1, y1, x2, y2 = face_region([face], width, height, MASK_MARGIN)
        if x2 > x1 and y2 > y1:
            out[y1:y2, x1:x2] = pixelate(out[y1:y2, x1:x2])
    return out
