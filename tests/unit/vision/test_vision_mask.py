"""Fail-closed masking on a real face: the face region loses its identity, the rest of the frame stays."""

from __future__ import annotations

import numpy as np

from mirage_ray.vision.detect_retinaface import RetinaFaceDetector
from mirage_ray.vision.mask import mask_faces
from tests.media import astronaut


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return 10.0 * np.log10(255.0**2 / max(mse, 1e-9))


def test_the_face_region_is_pixelated_and_the_background_kept() -> None:
    image = astronaut()
    faces = RetinaFaceDetector().detect(image)
    assert faces
    masked = mask_faces(image, faces)
    x1, y1, x2, y2 = faces[0].bbox.astype(int)
    assert psnr(masked[y1:y2, x1:x2], image[y1:y2, x1:x2]) < 22.0
    assert np.array_equal(masked[:, :40], image[:, :40])  # far from the face: untouched
    assert np.array_equal(mask_faces(image, faces), masked)  # deterministic; the input is not modified


def test_no_known_face_masks_the_whole_frame() -> None:
    image = astronaut()
    masked = mask_faces(image, [])
    assert psnr(masked, image) < 20.0 and masked.shape == image.shape
