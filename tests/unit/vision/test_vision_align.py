"""align.py: warps onto templates, crop footprints, and the FFHQ face mask checked on real faces."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from insightface.utils import face_align

from mirage_ray.vision.align import (
    ARCFACE_TEMPLATE_112,
    FFHQ_TEMPLATE_512,
    crop_footprint,
    face_mask,
    ffhq_face_outline,
    paste_back,
    similarity_matrix,
    warp_face,
)
from mirage_ray.vision.detect_retinaface import RetinaFaceDetector
from mirage_ray.vision.landmarks_dlib import DlibLandmarks, transform_points
from tests.media import astronaut, insightface_image

CROP = 512
INNER_FACE = slice(17, 68)  # dlib 68: brows, nose, eyes, mouth
JAW, BROWS = slice(0, 17), slice(17, 27)
FRONTAL_NOSE_OFFSET_PX = 10.0  # nose keypoint off the template's by less than this: a near-frontal face


@pytest.fixture(scope="module")
def aligned_faces() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(FFHQ-aligned 512 crop, its 68 dlib landmarks, its 5 keypoints) in crop coordinates, for 8 real faces."""
    detector, landmarks = RetinaFaceDetector(), DlibLandmarks()
    faces = []
    for image in (insightface_image("t1.jpg"), insightface_image("Tom_Hanks_54745.png"), astronaut()):
        for face in detector.detect(image):
            crop, matrix = warp_face(image, face.kps, FFHQ_TEMPLATE_512, CROP)
            points = transform_points(landmarks.from_kps(image, face.kps), matrix)
            faces.append((crop, points, transform_points(face.kps, matrix)))
    assert len(faces) == 8
    return faces


def _values_at(mask: np.ndarray, points: np.ndarray) -> np.ndarray:
    xy = np.clip(np.round(points).astype(int), 0, mask.shape[0] - 1)
    return mask[xy[:, 1], xy[:, 0]]


def test_face_mask_is_a_soft_face_shape_in_0_1() -> None:
    mask = face_mask(CROP)
    assert mask.shape == (CROP, CROP) and mask.dtype == np.float32
    assert mask.min() == 0.0 and mask.max() == pytest.approx(1.0, abs=1e-6)
    assert not mask.flags.writeable and face_mask(CROP) is mask  # cached, shared read-only
    assert mask[[0, -1]].max() == 0.0 and mask[:, [0, -1]].max() == 0.0
    corners = np.concatenate([mask[:96, :96], mask[:96, -96:], mask[-32:, :96], mask[-32:, -96:]], axis=None)
    assert corners.max() < 1e-3  # background, hair and shoulders are left alone
    assert 0.25 < mask.mean() < 0.45  # a face, not the square crop
    values = np.unique(np.round(mask, 2))
    assert len(values) > 50  # a soft edge, not a binary cut
    assert np.abs(mask[:, 1:] - mask[:, ::-1][:, :-1]).max() < 0.05  # symmetric about the template's centre line


def test_face_mask_covers_real_faces_and_leaves_their_surroundings(aligned_faces) -> None:
    mask = face_mask(CROP)
    frontal = 0
    for _, points, kps in aligned_faces:
        inner = _values_at(mask, points[INNER_FACE])
        assert np.percentile(inner, 5) > 0.95 and inner.min() > 0.7  # eyes, brows, nose, mouth restored
        if abs(kps[2, 0] - FFHQ_TEMPLATE_512[2, 0]) >= FRONTAL_NOSE_OFFSET_PX:
            continue  # a turned face's outline moves off the mean one; its inner face is still covered
        frontal += 1
        assert np.median(_values_at(mask, points[JAW])) > 0.75  # the jaw is covered
        # nothing far from the face is blended in: below the brows, the landmarks' hull; above them, a forehead
        outline = cv2.convexHull(points.astype(np.float32))
        ys, xs = np.nonzero(mask > 0.05)
        brows_y = points[BROWS, 1].min()
        below = np.stack([xs, ys], axis=1)[ys > brows_y][::23]
        distances = [cv2.pointPolygonTest(outline, (float(x), float(y)), True) for x, y in below]
        assert min(distances) > -0.15 * CROP
        assert brows_y - ys.min() < 0.25 * CROP
    assert frontal >= 4


def test_face_mask_scales_with_the_crop() -> None:
    small = face_mask(256)
    resized = cv2.resize(face_mask(CROP), (256, 256), interpolation=cv2.INTER_AREA)
    assert np.abs(small - resized).max() < 0.1
    assert np.allclose(ffhq_face_outline(256), ffhq_face_outline(CROP) / 2)
    with pytest.raises(ValueError, match="at least 16"):
        face_mask(8)


def test_face_mask_pastes_a_restored_crop_without_a_square_edge() -> None:
    image = astronaut()
    face = max(RetinaFaceDetector().detect(image), key=lambda f: f.area)
    crop, matrix = warp_face(image, face.kps, FFHQ_TEMPLATE_512, CROP)
    restored = np.full_like(crop, 255)
    pasted = paste_back(image, restored, matrix, face_mask(CROP)).astype(int)
    changed = np.abs(pasted - image).max(axis=2) > 2
    x1, y1, x2, y2 = crop_footprint(matrix, CROP)
    assert changed[int(face.kps[2, 1]), int(face.kps[2, 0])]  # the nose
    ys, xs = np.nonzero(changed)
    # the changed area is the face, well inside the square crop's footprint on every side
    inset = 0.1 * (x2 - x1)
    assert xs.min() > x1 + inset and xs.max() < x2 - inset and ys.min() > y1 + inset and ys.max() < y2


@pytest.mark.filterwarnings("ignore::FutureWarning")  # insightface's estimate_norm uses a deprecated skimage call
def test_zero_border_warp_is_insightfaces_norm_crop() -> None:
    image = insightface_image("Tom_Hanks_54745.png")  # a tight crop: the 112 warp leaves the image
    face = RetinaFaceDetector().detect(image)[0]
    crop, matrix = warp_face(image, face.kps, ARCFACE_TEMPLATE_112, 112, border=cv2.BORDER_CONSTANT)
    expected = face_align.norm_crop(image, face.kps, 112)
    assert np.abs(crop.astype(int) - expected).max() <= 1
    replicated, _ = warp_face(image, face.kps, ARCFACE_TEMPLATE_112, 112)  # the default replicates the edge
    assert (replicated == 0).all(axis=2).sum() < (crop == 0).all(axis=2).sum()
    assert np.allclose(matrix, face_align.estimate_norm(face.kps, 112), atol=1e-3)


def test_crop_footprint_is_where_the_crop_corners_land() -> None:
    kps = ARCFACE_TEMPLATE_112 * 2.0 + np.array([100.0, 50.0], np.float32)  # twice the template, shifted
    matrix = similarity_matrix(kps, ARCFACE_TEMPLATE_112)
    np.testing.assert_allclose(crop_footprint(matrix, 112), [100.0, 50.0, 324.0, 274.0], atol=1e-3)
