"""FaceTracker: the seed's detection schedule and stability rules, max_faces, and optical-flow propagation."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from mirage_ray.vision.detect_retinaface import RetinaFaceDetector
from mirage_ray.vision.faces import Face
from mirage_ray.vision.tracker import FaceTracker

KPS_TOLERANCE_PX = 1.5


def _face(score: float, x: float = 100.0, y: float = 80.0, size: float = 80.0) -> Face:
    """A face whose keypoints sit inside its box (on the texture below, so they can be tracked)."""
    bbox = np.array([x, y, x + size, y + size], np.float32)
    rel = np.array([[0.3, 0.35], [0.7, 0.35], [0.5, 0.55], [0.35, 0.75], [0.65, 0.75]], np.float32)
    return Face(bbox=bbox, kps=(bbox[:2] + rel * size).astype(np.float32), score=score)


@pytest.fixture(scope="module")
def texture() -> np.ndarray:
    noise = np.random.default_rng(1).integers(0, 256, (240, 320), dtype=np.uint8)
    return cv2.GaussianBlur(noise, (5, 5), 0)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


@pytest.fixture(scope="module")
def astronaut_face(astronaut) -> Face:
    return RetinaFaceDetector(threads=1).detect(astronaut)[0]


def _run(tracker: FaceTracker, scores: list[float], frames: int, gray: np.ndarray) -> list[int]:
    """Feeds ``frames`` static frames; the k-th detector call returns one face with ``scores[k]``."""
    detected_at = []
    for index in range(frames):
        if tracker.needs_detection():
            score = scores[len(detected_at)]
            detected_at.append(index)
            tracker.update([_face(score)], gray)
        else:
            assert len(tracker.propagate(gray)) == 1
    return detected_at


def test_detects_every_fifth_frame_and_the_frame_after_a_low_confidence(texture):
    tracker = FaceTracker(detect_every=5)
    detected_at = _run(tracker, [0.9, 0.6, 0.9, 0.9, 0.65, 0.9], 21, texture)
    assert detected_at == [0, 5, 6, 11, 16, 17]
    assert tracker.intervals == (5, 1, 5, 5, 1)
    assert tracker.frames == 21 and tracker.detections == 6


def test_detect_every_is_configurable(texture):
    assert _run(FaceTracker(detect_every=3), [0.9] * 10, 10, texture) == [0, 3, 6, 9]
    assert _run(FaceTracker(detect_every=1), [0.9] * 4, 4, texture) == [0, 1, 2, 3]


def test_no_face_found_detects_again_next_frame(texture):
    tracker = FaceTracker()
    assert tracker.update([], texture) == []
    assert tracker.needs_detection()
    assert tracker.last_score == 0.0


def test_stable_after_exactly_three_confident_detections_and_reset_by_a_low_one(texture):
    tracker = FaceTracker(detect_every=2)
    history = []
    for score in [0.9, 0.9, 0.9, 0.8, 0.95, 0.86, 0.85, 0.6, 0.9]:
        tracker.update([_face(score)], texture)
        tracker.propagate(texture)  # propagation does not change stability
        history.append(tracker.stable)
    assert history == [False, False, True, False, False, False, True, False, False]


def test_reset_forgets_the_track_but_keeps_counters(texture):
    tracker = FaceTracker()
    for _ in range(3):
        tracker.update([_face(0.9)], texture)
    assert tracker.stable and not tracker.needs_detection()
    tracker.reset()
    assert not tracker.stable and tracker.needs_detection() and tracker.faces == []
    assert tracker.detections == 3


def test_keeps_the_largest_faces_and_max_faces_changes_at_run_time(texture):
    small, large, medium = _face(0.9, 10, 10, 50), _face(0.8, 150, 20, 120), _face(0.95, 60, 130, 80)
    tracker = FaceTracker(max_faces=1)
    assert tracker.update([small, large, medium], texture) == [large]
    tracker.max_faces = 2
    assert tracker.needs_detection()  # more faces wanted: detect on the next frame
    assert tracker.update([small, large, medium], texture) == [large, medium]
    tracker.max_faces = 1
    assert tracker.faces == [large]
    assert [f.bbox.tolist() for f in tracker.propagate(texture)] == [pytest.approx(large.bbox.tolist(), abs=0.1)]


def test_best_confidence_is_that_of_the_kept_faces(texture):
    tracker = FaceTracker(max_faces=1)
    tracker.update([_face(0.6, size=120), _face(0.99, x=10, y=10, size=40)], texture)
    assert tracker.last_score == pytest.approx(0.6) and tracker.needs_detection()


def test_propagated_keypoints_follow_a_real_face(astronaut, astronaut_face):
    gray = cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY)
    tracker = FaceTracker(detect_every=10)
    tracker.update([astronaut_face], gray)
    for step in range(1, 6):
        dx, dy = 2.5 * step, -1.5 * step
        shift = np.float32([[1, 0, dx], [0, 1, dy]])
        moved = cv2.warpAffine(gray, shift, gray.shape[::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        faces = tracker.propagate(moved)
        assert len(faces) == 1 and not tracker.needs_detection()
        np.testing.assert_allclose(faces[0].kps, astronaut_face.kps + np.float32([dx, dy]), atol=KPS_TOLERANCE_PX)
        np.testing.assert_allclose(
            faces[0].bbox, astronaut_face.bbox + np.float32([dx, dy, dx, dy]), atol=KPS_TOLERANCE_PX
        )
        assert faces[0].score == astronaut_face.score


def test_box_follows_the_keypoints_similarity_when_the_face_grows(astronaut, astronaut_face):
    gray = cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY)
    zoom = 1.06
    center = tuple(float(v) for v in astronaut_face.kps[2])  # zoom about the nose
    matrix = cv2.getRotationMatrix2D(center, 0.0, zoom)
    tracker = FaceTracker()
    tracker.update([astronaut_face], gray)
    face = tracker.propagate(cv2.warpAffine(gray, matrix, gray.shape[::-1], borderMode=cv2.BORDER_REFLECT))[0]
    expected_kps = astronaut_face.kps @ matrix[:, :2].T + matrix[:, 2]
    np.testing.assert_allclose(face.kps, expected_kps, atol=KPS_TOLERANCE_PX)
    width, old_width = face.bbox[2] - face.bbox[0], astronaut_face.bbox[2] - astronaut_face.bbox[0]
    assert width / old_width == pytest.approx(zoom, abs=0.015)


def test_lost_points_hold_the_face_and_request_a_detection(astronaut, astronaut_face):
    gray = cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY)
    tracker = FaceTracker()
    for _ in range(3):
        tracker.update([astronaut_face], gray)
    assert tracker.stable
    faces = tracker.propagate(np.full_like(gray, 128))  # the picture is gone: nothing to follow
    assert tracker.needs_detection() and tracker.lost_tracks == 1 and not tracker.stable
    np.testing.assert_array_equal(faces[0].kps, astronaut_face.kps)


def test_a_resized_frame_rescales_faces_and_requests_a_detection(texture):
    tracker = FaceTracker()
    face = _face(0.9)
    tracker.update([face], texture)
    half = cv2.resize(texture, (160, 120))
    faces = tracker.propagate(half)
    np.testing.assert_allclose(faces[0].bbox, face.bbox / 2, atol=1e-4)
    np.testing.assert_allclose(faces[0].kps, face.kps / 2, atol=1e-4)
    assert tracker.needs_detection()


def test_keeps_its_own_copy_of_the_previous_frame(astronaut, astronaut_face):
    gray = cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY)
    buffer = gray.copy()
    tracker = FaceTracker()
    tracker.update([astronaut_face], buffer)
    buffer[:] = np.roll(gray, 4, axis=1)  # the caller reuses its buffer for the next frame
    faces = tracker.propagate(buffer)
    np.testing.assert_allclose(faces[0].kps, astronaut_face.kps + np.float32([4, 0]), atol=KPS_TOLERANCE_PX)


def test_propagate_before_any_detection_gives_nothing(texture):
    tracker = FaceTracker()
    assert tracker.propagate(texture) == [] and tracker.needs_detection()


def test_refuses_bad_arguments(texture):
    with pytest.raises(ValueError, match="detect_every"):
        FaceTracker(detect_every=0)
    with pytest.raises(ValueError, match="max_faces"):
        FaceTracker(max_faces=0)
    with pytest.raises(ValueError, match="grayscale"):
        FaceTracker().update([], np.zeros((10, 10, 3), np.uint8))
