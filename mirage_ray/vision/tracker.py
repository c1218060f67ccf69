"""Face tracking between detections: when to run the detector, and carrying faces forward with optical flow.

The seed's rules: detect every ``detect_every`` frames (5); detect on the next frame when the last detection's best
confidence was below ``REDETECT_BELOW``; a track is stable after ``STABLE_COUNT`` consecutive detections with
confidence >= ``STABLE_SCORE``. Between detections the 5 keypoints of each face follow pyramidal Lucas-Kanade flow
(forward-backward checked); the box follows the keypoints' least-squares similarity motion. A face whose points are
lost is held in place for that frame and a detection is requested for the next. With a ``smoother`` (a
:class:`~mirage_ray.vision.smooth.FaceSmoother`), the faces handed out are smoothed over time (One-Euro on the
keypoints); the track itself (what the optical flow follows, :attr:`FaceTracker.faces`) stays unsmoothed.

Per frame::

    if tracker.needs_detection():
        faces = tracker.update(detector.detect(frame), gray, t_s)
    else:
        faces = tracker.propagate(gray, t_s)

Pure state machine plus OpenCV on arrays the caller passes: no I/O, no clock (``t_s``, the frame's capture time in
seconds, is the caller's; without it frames count as :data:`NOMINAL_FPS` apart).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from collections.abc import Sequence

import cv2
import numpy as np

from mirage_ray.vision.align import similarity_matrix
from mirage_ray.vision.faces import Face, largest_faces
from mirage_ray.vision.smooth import FaceSmoother

logger = logging.getLogger(__name__)

DETECT_EVERY_FRAMES = 5
REDETECT_BELOW = 0.70
STABLE_SCORE = 0.85
STABLE_COUNT = 3
LK_WINDOW_PX = 21
LK_PYRAMID_LEVELS = 3
LK_MAX_ITERATIONS = 30
LK_EPSILON_PX = 0.01
FORWARD_BACKWARD_MAX_PX = 1.0  # a point whose backward track misses its start by more than this is lost
MIN_TRACKED_KPS = 3  # a face with fewer good keypoints than this is lost
INTERVAL_HISTORY = 600  # detector-invocation intervals kept for metrics
NOMINAL_FPS = 20.0  # frame spacing for the smoother when the caller gives no capture time

_LK_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, LK_MAX_ITERATIONS, LK_EPSILON_PX)
_LK_WINDOW = (LK_WINDOW_PX, LK_WINDOW_PX)


class FaceTracker:
    """Decides when to detect and propagates the top ``max_faces`` largest faces between detections."""

    def __init__(
        self,
        detect_every: int = DETECT_EVERY_FRAMES,
        max_faces: int = 1,
        *,
        redetect_below: float = REDETECT_BELOW,
        stable_score: float = STABLE_SCORE,
        stable_count: int = STABLE_COUNT,
        smoother: FaceSmoother | None = None,
    ) -> None:
        if detect_every < 1:
            raise ValueError(f"detect_every must be >= 1 frame, got {detect_every}")
        if stable_count < 1:
            raise ValueError(f"stable_count must be >= 1, got {stable_count}")
        self.detect_every = int(detect_every)
        self.redetect_below = float(redetect_below)
        self.stable_score = float(stable_score)
        self.stable_count = int(stable_count)
        self._max_faces = _check_max_faces(max_faces)
        self._smoother = smoother
        self.frames = 0  # frames seen (update + propagate), cumulative across reset()
        self.detections = 0  # update() calls, cumulative
        self.lost_tracks = 0  # faces whose keypoints were lost during propagation, cumulative
        self.last_score = 0.0  # best confidence of the last detection (0 when it found no face)
        self._intervals: deque[int] = deque(maxlen=INTERVAL_HISTORY)
        self.reset()

    def reset(self) -> None:
        """Forget the track (faces, previous frame, stability); the next frame is detected. Counters are kept."""
        self._faces: list[Face] = []
        self._previous: np.ndarray | None = None
        self._last_detection_frame: int | None = None
        self._force = True
        self._streak = 0
        if self._smoother is not None:
            self._smoother.reset()

    @property
    def max_faces(self) -> int:
        return self._max_faces

    @max_faces.setter
    def max_faces(self, value: int) -> None:
        """Fewer faces apply at once; more faces request a detection on the next frame."""
        value = _check_max_faces(value)
        if value > self._max_faces:
            self._force = True
        self._faces = largest_faces(self._faces, value)
        self._max_faces = value

    @property
    def faces(self) -> list[Face]:
        """The faces of the last frame, as tracked (not smoothed)."""
        return list(self._faces)

    @property
    def stable(self) -> bool:
        """True after ``stable_count`` consecutive detections with best confidence >= ``stable_score``."""
        return self._streak >= self.stable_count

    @property
    def intervals(self) -> tuple[int, ...]:
        """Frames between consecutive detector invocations (most recent last, up to ``INTERVAL_HISTORY``)."""
        return tuple(self._intervals)

    def needs_detection(self) -> bool:
        """Whether the detector should run on the next frame."""
        if self._force or self._last_detection_frame is None:
            return True
        return self.frames - self._last_detection_frame >= self.detect_every

    def update(self, faces: Sequence[Face], gray: np.ndarray, t_s: float | None = None) -> list[Face]:
        """Take a detection for the frame whose grayscale image is ``gray`` (captured at ``t_s`` seconds); returns
        the kept (largest) faces, smoothed when the tracker has a smoother."""
        gray = _check_gray(gray)
        self.frames += 1
        if self._smoother is not None and self._previous is not None and gray.shape != self._previous.shape:
            self._smoother.reset()  # another frame size: other coordinates, start the smoothing afresh
        return self._handed_out(self._take_detection(faces, gray), t_s)

    def correct(self, faces: Sequence[Face], gray: np.ndarray) -> list[Face]:
        """Take a detection for the frame the last :meth:`propagate` carried the faces onto (the detector ran beside
        the swap of that frame, which used the propagated faces); returns the kept faces for the next frames."""
        return self._take_detection(faces, _check_gray(gray))

    def _take_detection(self, faces: Sequence[Face], gray: np.ndarray) -> list[Face]:
        frame = self.frames - 1
        if self._last_detection_frame is not None:
            self._intervals.append(frame - self._last_detection_frame)
        self._last_detection_frame = frame
        self.detections += 1
        kept = largest_faces(list(faces), self._max_faces)
        self.last_score = max((f.score for f in kept), default=0.0)
        self._force = self.last_score < self.redetect_below
        self._streak = self._streak + 1 if self.last_score >= self.stable_score else 0
        self._faces = kept
        self._remember(gray)
        return list(kept)

    def propagate(self, gray: np.ndarray, t_s: float | None = None) -> list[Face]:
        """Carry the last faces onto the frame ``gray`` (captured at ``t_s`` seconds) without the detector.

        A face whose keypoints are lost is held (not moved) and a detection is requested for the next frame; a frame
        of another size rescales the faces and requests a detection. The faces are smoothed when the tracker has a
        smoother.
        """
        gray = _check_gray(gray)
        self.frames += 1
        previous = self._previous
        if previous is None:
            self._force = True
            self._remember(gray)
            return []
        if gray.shape != previous.shape:
            sx, sy = gray.shape[1] / previous.shape[1], gray.shape[0] / previous.shape[0]
            self._faces = [_scaled(f, sx, sy) for f in self._faces]
            self._force = True
            self._remember(gray)
            if self._smoother is not None:
                self._smoother.reset()  # other coordinates: start the smoothing afresh
            return self._handed_out(self._faces, t_s)
        if not self._faces:
            self._remember(gray)
            return []
        points = np.concatenate([f.kps for f in self._faces]).astype(np.float32).reshape(-1, 1, 2)
        moved, good = _track(previous, gray, points)
        moved, good = moved.reshape(-1, 5, 2), good.reshape(-1, 5)
        out = []
        for face, face_moved, face_good in zip(self._faces, moved, good, strict=True):
            if int(face_good.sum()) < MIN_TRACKED_KPS:
                self.lost_tracks += 1
                self._force = True
                self._streak = 0
                out.append(face)
                continue
            out.append(_moved_face(face, face_moved, face_good))
        self._faces = out
        self._remember(gray)
        return self._handed_out(out, t_s)

    def _handed_out(self, faces: list[Face], t_s: float | None) -> list[Face]:
        if self._smoother is None:
            return list(faces)
        return self._smoother(faces, self.frames / NOMINAL_FPS if t_s is None else t_s)

    def _remember(self, gray: np.ndarray) -> None:
        self._previous = gray.copy()  # a copy: the caller may reuse its buffer


def _track(previous: np.ndarray, current: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Forward LK from ``previous`` to ``current`` and back; returns moved points (N, 2) and a good mask (N,)."""
    kwargs = {"winSize": _LK_WINDOW, "maxLevel": LK_PYRAMID_LEVELS, "criteria": _LK_CRITERIA}
    forward, status_f, _ = cv2.calcOpticalFlowPyrLK(previous, current, points, None, **kwargs)
    backward, status_b, _ = cv2.calcOpticalFlowPyrLK(current, previous, forward, None, **kwargs)
    round_trip = np.linalg.norm((backward - points).reshape(-1, 2), axis=1)
    good = (status_f.ravel() == 1) & (status_b.ravel() == 1) & (round_trip <= FORWARD_BACKWARD_MAX_PX)
    return forward.reshape(-1, 2), good


def _moved_face(face: Face, moved: np.ndarray, good: np.ndarray) -> Face:
    """The face moved by its tracked keypoints: good points as tracked, the rest and the box by their similarity."""
    matrix = similarity_matrix(face.kps[good], moved[good]).astype(np.float64)
    kps = np.where(good[:, None], moved, _apply(matrix, face.kps)).astype(np.float32)
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    x1, y1, x2, y2 = (float(v) for v in face.bbox)
    cx, cy = _apply(matrix, np.array([[(x1 + x2) / 2, (y1 + y2) / 2]]))[0]
    half_w, half_h = (x2 - x1) * scale / 2, (y2 - y1) * scale / 2
    bbox = np.array([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dtype=np.float32)
    landmarks = None if face.landmarks is None else _apply(matrix, face.landmarks).astype(np.float32)
    return dataclasses.replace(face, bbox=bbox, kps=kps, landmarks=landmarks)


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return np.asarray(points, dtype=np.float64) @ matrix[:, :2].T + matrix[:, 2]


def _scaled(face: Face, sx: float, sy: float) -> Face:
    factor = np.array([sx, sy], dtype=np.float32)
    landmarks = None if face.landmarks is None else (face.landmarks * factor).astype(np.float32)
    return dataclasses.replace(
        face, bbox=(face.bbox * np.tile(factor, 2)).astype(np.float32), kps=(face.kps * factor), landmarks=landmarks
    )


def _check_gray(gray: np.ndarray) -> np.ndarray:
    if not isinstance(gray, np.ndarray) or gray.ndim != 2 or gray.dtype != np.uint8:
        shape = getattr(gray, "shape", None)
        raise ValueError(
            f"expected a grayscale uint8 (H, W) frame, got shape {shape} dtype {getattr(gray, 'dtype', None)}"
        )
    if min(gray.shape) == 0:
        raise ValueError(f"empty frame of shape {gray.shape}")
    return gray


def _check_max_faces(value: int) -> int:
    if int(value) < 1:
        raise ValueError(f"max_faces must be >= 1, got {value}")
    return int(value)
