"""One-Euro smoothing of face keypoints: a jittered still face gets steadier, a real motion is followed with a
bounded lag, faces keep their own tracks, and the tracker hands out smoothed faces while it tracks the raw ones."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from mirage_ray.vision.faces import Face
from mirage_ray.vision.smooth import MAX_GAP_S, FaceSmoother, OneEuroFilter, OneEuroParams
from mirage_ray.vision.tracker import FaceTracker

FPS = 20.0
FACE_PX = 100.0
JITTER_PX = 0.6  # detector-like keypoint jitter (tests/media.py's sequences use the same)
REL_KPS = np.array([[0.3, 0.35], [0.7, 0.35], [0.5, 0.55], [0.35, 0.75], [0.65, 0.75]], np.float32)


def _face(x: float, y: float, size: float = FACE_PX, jitter: np.ndarray | None = None) -> Face:
    bbox = np.array([x, y, x + size, y + size], np.float32)
    kps = bbox[:2] + REL_KPS * size
    if jitter is not None:
        kps = kps + jitter
    return Face(bbox=bbox, kps=kps.astype(np.float32), score=0.9)


def _truth(x: float, y: float) -> np.ndarray:
    return (np.array([x, y], np.float32) + REL_KPS * FACE_PX).astype(np.float32)


def test_a_jittered_still_face_gets_steadier() -> None:
    rng = np.random.default_rng(0)
    smoother = FaceSmoother()
    raw_errors, smooth_errors, steps_raw, steps_smooth = [], [], [], []
    last_raw = last_smooth = None
    for index in range(200):
        jitter = rng.normal(0, JITTER_PX, (5, 2)).astype(np.float32)
        face = _face(200.0, 150.0, jitter=jitter)
        out = smoother([face], index / FPS)[0]
        if index >= 20:  # after the filter has settled
            raw_errors.append(np.abs(face.kps - _truth(200.0, 150.0)).mean())
            smooth_errors.append(np.abs(out.kps - _truth(200.0, 150.0)).mean())
            steps_raw.append(np.abs(face.kps - last_raw).mean())
            steps_smooth.append(np.abs(out.kps - last_smooth).mean())
        last_raw, last_smooth = face.kps, out.kps
    assert np.mean(smooth_errors) <= 0.6 * np.mean(raw_errors), (np.mean(smooth_errors), np.mean(raw_errors))
    # what flickers on screen is the frame-to-frame step
    assert np.mean(steps_smooth) <= 0.4 * np.mean(steps_raw), (np.mean(steps_smooth), np.mean(steps_raw))


@pytest.mark.parametrize("speed_sizes_per_s", [0.5, 1.0, 3.0])
def test_a_moving_face_is_followed_with_a_bounded_lag(speed_sizes_per_s: float) -> None:
    """A head panning at webcam speeds (half a face to three faces per second): after 0.25 s the smoothed keypoints
    trail the true ones by at most 4 % of the face size (and much less at slow speeds)."""
    rng = np.random.default_rng(1)
    smoother = FaceSmoother()
    step_px = speed_sizes_per_s * FACE_PX / FPS
    lags = []
    for index in range(40):
        x = 100.0 + step_px * index
        out = smoother([_face(x, 120.0, jitter=rng.normal(0, JITTER_PX, (5, 2)))], index / FPS)[0]
        if index >= 5:
            lags.append(float(np.mean(_truth(x, 120.0)[:, 0] - out.kps[:, 0])))
    lag = float(np.mean(lags))
    assert lag <= 0.04 * FACE_PX, lag
    assert lag <= 0.02 * FACE_PX * max(speed_sizes_per_s, 1.0), lag


def test_a_face_that_starts_to_move_is_followed_at_once() -> None:
    """The velocity estimate starts at 0: the first frames of a motion must not trail far behind either."""
    smoother = FaceSmoother()
    errors = []
    for index in range(16):
        x = 100.0 + 3.0 * index  # tests/media.py's moving_face_frames: 3 px per frame on a ~100 px face
        errors.append(np.abs(smoother([_face(x, 100.0)], index / FPS)[0].kps - _truth(x, 100.0)).max())
    assert max(errors) <= 1.5, np.round(errors, 2)


def test_a_jump_is_reached_within_a_quarter_second() -> None:
    smoother = FaceSmoother()
    for index in range(10):
        smoother([_face(100.0, 100.0)], index / FPS)
    for index in range(10, 15):
        out = smoother([_face(130.0, 100.0)], index / FPS)[0]
    np.testing.assert_allclose(out.kps, _truth(130.0, 100.0), atol=0.03 * FACE_PX)


def test_faces_keep_their_own_tracks_and_new_faces_pass_unchanged() -> None:
    smoother = FaceSmoother()
    left, right = _face(50.0, 50.0), _face(400.0, 60.0)
    smoother([left, right], 0.0)
    moved_left = _face(52.0, 50.0)
    newcomer = _face(250.0, 300.0)
    out = smoother([newcomer, right, moved_left], 1 / FPS)  # another order, one face new
    np.testing.assert_array_equal(out[0].kps, newcomer.kps)
    np.testing.assert_allclose(out[1].kps, right.kps, atol=1e-4)
    assert 50.0 < out[2].kps[0, 0] - REL_KPS[0, 0] * FACE_PX < 52.0  # between the old and the new place
    assert out[2].bbox[0] == pytest.approx(out[2].kps[:, 0].mean() - (moved_left.kps[:, 0].mean() - 52.0), abs=1e-3)


def test_landmarks_are_smoothed_with_the_keypoints_and_a_gap_restarts() -> None:
    smoother = FaceSmoother()
    landmarks = np.tile(np.array([[120.0, 130.0]], np.float32), (68, 1))
    face = Face(bbox=_face(100, 100).bbox, kps=_face(100, 100).kps, score=0.9, landmarks=landmarks)
    smoother([face], 0.0)
    shifted = Face(bbox=face.bbox + 4, kps=face.kps + 4, score=0.9, landmarks=landmarks + 4)
    out = smoother([shifted], 1 / FPS)[0]
    assert 0.0 < out.landmarks[0, 0] - 120.0 < 4.0 and 0.0 < out.kps[0, 0] - face.kps[0, 0] < 4.0
    after_gap = smoother([face], 1 / FPS + MAX_GAP_S + 0.1)[0]
    np.testing.assert_array_equal(after_gap.kps, face.kps)


def test_one_euro_filter_needs_no_time_step_guarantees() -> None:
    smoothing = OneEuroFilter(OneEuroParams())
    first = smoothing(np.array([1.0, 2.0]), 5.0)
    np.testing.assert_array_equal(first, [1.0, 2.0])
    same_time = smoothing(np.array([3.0, 2.0]), 5.0)  # a repeated timestamp is a tiny step, not a division by 0
    assert np.all(np.isfinite(same_time)) and 1.0 <= same_time[0] < 3.0
    with pytest.raises(ValueError):
        OneEuroParams(min_cutoff_hz=0.0)


def test_the_tracker_hands_out_smoothed_faces_but_tracks_the_raw_ones() -> None:
    noise = np.random.default_rng(2).integers(0, 256, (240, 320), dtype=np.uint8)
    texture = cv2.GaussianBlur(noise, (5, 5), 0)
    tracker = FaceTracker(detect_every=1, smoother=FaceSmoother())
    rng = np.random.default_rng(3)
    handed, raw = [], []
    for index in range(30):
        detection = _face(100.0, 80.0, size=80.0, jitter=rng.normal(0, 1.0, (5, 2)))
        handed.append(tracker.update([detection], texture, index / FPS)[0].kps)
        raw.append(tracker.faces[0].kps)
        np.testing.assert_array_equal(tracker.faces[0].kps, detection.kps)  # the track is the detection itself
    steps = [np.abs(np.diff(np.array(v[10:]), axis=0)).mean() for v in (handed, raw)]
    assert steps[0] <= 0.5 * steps[1], steps
    tracker.reset()
    fresh = _face(10.0, 10.0, size=80.0)
    np.testing.assert_array_equal(tracker.update([fresh], texture, 10.0)[0].kps, fresh.kps)


def test_a_new_frame_size_restarts_the_smoothing() -> None:
    """The degrade ladder rescales frames (512 -> 384): the faces jump to other coordinates, which is no motion."""
    big = cv2.GaussianBlur(np.random.default_rng(4).integers(0, 256, (480, 640), dtype=np.uint8), (5, 5), 0)
    small = cv2.resize(big, (480, 360))
    tracker = FaceTracker(detect_every=1, smoother=FaceSmoother())
    for index in range(5):
        tracker.update([_face(40.0, 40.0, size=120.0)], big, index / FPS)
    rescaled = _face(30.0, 30.0, size=90.0)  # close enough to continue the track, were it not for the new size
    np.testing.assert_array_equal(tracker.update([rescaled], small, 5 / FPS)[0].kps, rescaled.kps)
