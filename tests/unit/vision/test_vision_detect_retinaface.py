"""RetinaFace-MobileNet0.25 (embedded default) on real photos: insightface's t1.jpg and scikit-image's astronaut."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from skimage import data

from mirage_ray.vision.base import Detector
from mirage_ray.vision.detect_retinaface import RetinaFaceDetector, embedded_model_bytes, nms, prior_boxes

T1_FACES = 6
NMS_IOU = 0.4


def _insightface_image(name: str) -> np.ndarray:
    spec = importlib.util.find_spec("insightface")
    assert spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "images" / name
    image = cv2.imread(str(path))
    assert image is not None, path
    return image


@pytest.fixture(scope="module")
def detector() -> RetinaFaceDetector:
    return RetinaFaceDetector(threads=2)


@pytest.fixture(scope="module")
def t1() -> np.ndarray:
    return _insightface_image("t1.jpg")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _assert_plausible_kps(face, image_shape) -> None:
    x1, y1, x2, y2 = face.bbox
    left_eye, right_eye, nose, left_mouth, right_mouth = face.kps
    assert left_eye[0] < right_eye[0] and left_mouth[0] < right_mouth[0]
    eyes_y, mouth_y = (left_eye[1] + right_eye[1]) / 2, (left_mouth[1] + right_mouth[1]) / 2
    assert eyes_y < nose[1] < mouth_y
    assert np.all((face.kps[:, 0] > x1) & (face.kps[:, 0] < x2) & (face.kps[:, 1] > y1) & (face.kps[:, 1] < y2))
    eye_distance = np.linalg.norm(right_eye - left_eye)
    assert 0.2 * (x2 - x1) < eye_distance < 0.7 * (x2 - x1)
    assert 0 <= x1 < x2 <= image_shape[1] and 0 <= y1 < y2 <= image_shape[0]


def test_is_a_detector_named_for_its_model(detector):
    assert isinstance(detector, Detector)
    assert detector.name == "retinaface-mnet025"


def test_group_photo_gives_six_separate_plausible_faces(detector, t1):
    faces = detector.detect(t1)
    assert len(faces) == T1_FACES
    scores = [f.score for f in faces]
    assert scores == sorted(scores, reverse=True) and min(scores) > 0.9
    for face in faces:
        assert face.bbox.dtype == np.float32 and face.kps.shape == (5, 2) and face.kps.dtype == np.float32
        _assert_plausible_kps(face, t1.shape)
    for i, a in enumerate(faces):
        for b in faces[i + 1 :]:
            assert _iou(a.bbox, b.bbox) < NMS_IOU


def test_astronaut_gives_one_face_with_keypoints_in_place(detector, astronaut):
    faces = detector.detect(astronaut)
    assert len(faces) == 1
    face = faces[0]
    assert face.score > 0.95
    _assert_plausible_kps(face, astronaut.shape)
    # Eileen Collins' face is in the upper middle of the 512x512 picture, about 100 px wide.
    cx, cy = (face.bbox[0] + face.bbox[2]) / 2, (face.bbox[1] + face.bbox[3]) / 2
    assert 150 < cx < 300 and 60 < cy < 180
    assert 70 < face.bbox[2] - face.bbox[0] < 140


def test_mirrored_image_mirrors_box_and_swaps_left_right_keypoints(detector, astronaut):
    width = astronaut.shape[1]
    face = detector.detect(astronaut)[0]
    mirrored = detector.detect(np.ascontiguousarray(astronaut[:, ::-1]))
    assert len(mirrored) == 1
    expected_box = np.array([width - face.bbox[2], face.bbox[1], width - face.bbox[0], face.bbox[3]])
    np.testing.assert_allclose(mirrored[0].bbox, expected_box, atol=6.0)
    # insightface order is "as seen in the image": the mirror's left eye is the original's right eye
    expected_kps = face.kps[[1, 0, 2, 4, 3]] * [-1, 1] + [width, 0]
    np.testing.assert_allclose(mirrored[0].kps, expected_kps, atol=6.0)


@pytest.mark.parametrize("name", ["coffee", "noise"])
def test_images_without_faces_give_none(detector, name):
    if name == "coffee":
        image = cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR)
    else:
        image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    assert detector.detect(image) == []


def test_results_are_in_frame_coordinates_whatever_the_det_size(astronaut):
    small = RetinaFaceDetector(det_size=320, threads=1).detect(astronaut)
    big_frame = cv2.resize(astronaut, (1024, 1024), interpolation=cv2.INTER_LINEAR)
    big = RetinaFaceDetector(det_size=512, threads=1).detect(big_frame)
    reference = RetinaFaceDetector(det_size=512, threads=1).detect(astronaut)[0]
    assert len(small) == 1 and len(big) == 1
    np.testing.assert_allclose(small[0].bbox, reference.bbox, atol=8.0)
    np.testing.assert_allclose(big[0].bbox / 2, reference.bbox, atol=2.0)
    np.testing.assert_allclose(big[0].kps / 2, reference.kps, atol=2.0)


def test_batch_equals_one_by_one_for_mixed_sizes(detector, astronaut, t1):
    flipped = np.ascontiguousarray(astronaut[::-1])
    batch = detector.detect_batch([astronaut, t1, flipped])
    for image, faces in zip([astronaut, t1, flipped], batch, strict=True):
        single = detector.detect(image)
        assert len(faces) == len(single)
        for a, b in zip(faces, single, strict=True):
            np.testing.assert_allclose(a.bbox, b.bbox, atol=1e-3)
            np.testing.assert_allclose(a.kps, b.kps, atol=1e-3)


def test_score_threshold_filters(t1):
    strict = RetinaFaceDetector(score_threshold=0.999, threads=1)
    assert strict.detect(t1) == []


def test_accepts_bytes_path_or_session(tmp_path, astronaut, detector):
    reference = detector.detect(astronaut)[0]
    model = embedded_model_bytes()
    path = tmp_path / "retinaface.onnx"
    path.write_bytes(model)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    for source in (model, path, str(path), session):
        faces = RetinaFaceDetector(source).detect(astronaut)
        np.testing.assert_allclose(faces[0].bbox, reference.bbox, atol=1e-3)


def test_missing_model_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.onnx"):
        RetinaFaceDetector(tmp_path / "nowhere.onnx")


def test_rejects_non_bgr_images(detector):
    with pytest.raises(ValueError, match="BGR uint8"):
        detector.detect(np.zeros((64, 64), np.uint8))
    with pytest.raises(ValueError, match="BGR uint8"):
        detector.detect(np.zeros((64, 64, 3), np.float32))


def test_prior_boxes_match_the_network_layout():
    height, width = 100, 77
    priors = prior_boxes(height, width)
    expected = sum(math.ceil(height / s) * math.ceil(width / s) * 2 for s in (8, 16, 32))
    assert priors.shape == (expected, 4)
    # first cell of stride 8: centre (4, 4) px, then its two sizes 16 and 32 px
    np.testing.assert_allclose(priors[0] * [width, height, width, height], [4, 4, 16, 16], atol=1e-4)
    np.testing.assert_allclose(priors[1] * [width, height, width, height], [4, 4, 32, 32], atol=1e-4)


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], np.float32)
    scores = np.array([0.6, 0.9, 0.7], np.float32)
    assert nms(boxes, scores, 0.4).tolist() == [1, 2]
