"""Temporal smoothing of face keypoints: a One-Euro filter per face track (Casiez, Roussel, Vogel, CHI 2012).

A One-Euro filter is a first-order low-pass whose cutoff rises with the signal's speed: a still face gets a low
cutoff (the detector's and the optical flow's jitter is averaged away), a moving one a high cutoff (little lag).
As in the original, the velocity is low-passed (signed, so jitter averages out) before its magnitude sets the cutoff;
here the magnitude is one number per face, the RMS of its points' velocities in face sizes per second, so the whole
face gets one cutoff and a rigid motion is followed without bending the face's shape.

Pure state: numbers and arrays in, arrays out; the caller passes the time. One :class:`FaceSmoother` belongs to
one stream (a session's :class:`~mirage_ray.vision.tracker.FaceTracker`); the swappers stay stateless.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mirage_ray.vision.faces import Face

# Chosen on a simulated face (100 px, 0.6 px keypoint jitter, 20 fps): steadier when still, little lag when it
# starts to move or moves fast (tests/unit/vision/test_vision_smooth.py).
MIN_CUTOFF_HZ = 0.5  # cutoff of a still face: jitter above this frequency is averaged away
SPEED_GAIN = 24.0  # beta: cutoff rise in Hz per (face size per second) of speed
DERIVATE_CUTOFF_HZ = 2.0  # low-pass on the (signed) velocity estimate
MATCH_MAX_DISTANCE = 0.5  # a face continues a track when its centre is within this many face sizes of the track's
MAX_GAP_S = 0.5  # a track not seen for longer restarts (no smoothing across a gap)
MIN_DT_S = 1e-4  # repeated or out-of-order times count as this step


def _alpha(cutoff_hz: float, dt_s: float) -> float:
    """Smoothing factor of a first-order low-pass at ``cutoff_hz`` for a step of ``dt_s``."""
    tau = 1.0 / (2.0 * math.pi * cutoff_hz)
    return 1.0 / (1.0 + tau / dt_s)


@dataclass(frozen=True)
class OneEuroParams:
    """The filter's three constants (see the module docstring)."""

    min_cutoff_hz: float = MIN_CUTOFF_HZ
    speed_gain: float = SPEED_GAIN
    derivate_cutoff_hz: float = DERIVATE_CUTOFF_HZ

    def __post_init__(self) -> None:
        if self.min_cutoff_hz <= 0 or self.derivate_cutoff_hz <= 0 or self.speed_gain < 0:
            raise ValueError(f"One-Euro cutoffs must be > 0 Hz and the speed gain >= 0, got {self}")


class OneEuroFilter:
    """One-Euro filter on an array of points (any shape); the speed is their RMS speed over ``scale``."""

    def __init__(self, params: OneEuroParams = OneEuroParams()) -> None:
        self.params = params
        self._value: np.ndarray | None = None
        self._velocity: np.ndarray | None = None
        self._t_s = 0.0

    def reset(self) -> None:
        self._value = None
        self._velocity = None

    def __call__(self, value: np.ndarray, t_s: float, scale: float = 1.0) -> np.ndarray:
        """The filtered ``value`` at time ``t_s`` (seconds); ``scale`` normalises the speed (e.g. the face size)."""
        value = np.asarray(value, np.float64)
        if self._value is None or self._velocity is None or self._value.shape != value.shape:
            self._value, self._velocity, self._t_s = value.copy(), np.zeros_like(value), float(t_s)
            return value.copy()
        dt = max(float(t_s) - self._t_s, MIN_DT_S)
        self._t_s = float(t_s)
        step = value - self._value
        self._velocity += _alpha(self.params.derivate_cutoff_hz, dt) * (step / dt - self._velocity)
        speed = float(np.sqrt(np.mean(self._velocity**2))) / max(scale, 1e-6)
        cutoff = self.params.min_cutoff_hz + self.params.speed_gain * speed
        self._value = self._value + _alpha(cutoff, dt) * step
        return self._value.copy()


@dataclass(eq=False)
class _Track:
    centre: np.ndarray
    size: float
    t_s: float
    points: OneEuroFilter


class FaceSmoother:
    """Smooths each face's keypoints (and landmarks, when it has them) over time; the box moves with the keypoints.

    Faces are matched to tracks by their centres; a face without a track (new, or after a gap) passes unchanged.
    """

    def __init__(self, params: OneEuroParams = OneEuroParams()) -> None:
        self.params = params
        self._tracks: list[_Track] = []

    def reset(self) -> None:
        self._tracks = []

    def __call__(self, faces: Sequence[Face], t_s: float) -> list[Face]:
        """The faces of the frame at ``t_s`` seconds, smoothed; the same order."""
        live = [track for track in self._tracks if t_s - track.t_s <= MAX_GAP_S]
        out, tracks = [], []
        for face in faces:
            centre = (face.bbox[:2] + face.bbox[2:]).astype(np.float64) / 2
            size = max(face.size, 1.0)
            track = _nearest(live, centre, size)
            if track is None:
                track = _Track(centre, size, t_s, OneEuroFilter(self.params))
            else:
                live.remove(track)
            out.append(_smoothed(face, track, t_s, size))
            track.centre, track.size, track.t_s = centre, size, float(t_s)
            tracks.append(track)
        self._tracks = tracks
        return out


def _nearest(tracks: list[_Track], centre: np.ndarray, size: float) -> _Track | None:
    best, best_distance = None, MATCH_MAX_DISTANCE
    for track in tracks:
        distance = float(np.linalg.norm(track.centre - centre)) / max(size, track.size)
        if distance <= best_distance:
            best, best_distance = track, distance
    return best


def _smoothed(face: Face, track: _Track, t_s: float, size: float) -> Face:
    """``face`` with its keypoints (and landmarks) filtered by ``track``; the box shifted by the keypoints' mean."""
    has_landmarks = face.landmarks is not None
    parts = [np.asarray(face.kps, np.float64)]
    if has_landmarks:
        parts.append(np.asarray(face.landmarks, np.float64))
    stacked = np.concatenate(parts)
    filtered = track.points(stacked, t_s, size)
    kps = filtered[: len(face.kps)].astype(np.float32)
    shift = (kps.mean(axis=0) - np.asarray(face.kps, np.float32).mean(axis=0)).astype(np.float32)
    landmarks = filtered[len(face.kps) :].astype(np.float32) if has_landmarks else None
    bbox = (face.bbox + np.tile(shift, 2)).astype(np.float32)
    return dataclasses.replace(face, kps=kps, bbox=bbox, landmarks=landmarks)
