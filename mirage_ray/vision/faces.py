"""The data that flows through the video stages: detected faces and the source identity."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


@dataclass(frozen=True, eq=False)
class Face:
    """One face in one frame, in that frame's pixel coordinates.

    ``bbox`` is float32 [x1, y1, x2, y2]; ``kps`` is float32 (5, 2) in insightface order
    (left eye, right eye, nose, left mouth corner, right mouth corner, as seen in the image).
    """

    bbox: np.ndarray
    kps: np.ndarray
    score: float
    landmarks: np.ndarray | None = None  # (68, 2) float32 when a backend computed them
    embedding: np.ndarray | None = None  # (512,) float32, L2-normalised, when computed

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = (float(v) for v in self.bbox)
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)

    @property
    def size(self) -> float:
        """Geometric mean of box width and height, in pixels."""
        return float(np.sqrt(self.area))


@dataclass(frozen=True, eq=False)
class SourceIdentity:
    """The uploaded reference, computed once per upload by the swapper backend that will use it."""

    backend: str
    face: Face
    embedding: np.ndarray | None = None  # ArcFace 512-d (InSwapper); latent is derived by the swapper
    crop: np.ndarray | None = None  # aligned BGR source crop (classical swapper)
    crop_landmarks: np.ndarray | None = None  # (68, 2) landmarks in crop coordinates
    extras: dict[str, np.ndarray] = field(default_factory=dict)


def largest_faces(faces: list[Face], n: int) -> list[Face]:
    """The ``n`` largest faces by box area, largest first."""
    return sorted(faces, key=lambda f: f.area, reverse=True)[:n]


def translate(face: Face, dx: float, dy: float) -> Face:
    """The same face in a coordinate frame shifted by (dx, dy) pixels (e.g. a crop's)."""
    offset = np.array([dx, dy], np.float32)
    return replace(
        face,
        bbox=face.bbox + np.tile(offset, 2),
        kps=face.kps + offset,
        landmarks=None if face.landmarks is None else face.landmarks + offset,
    )


def face_region(faces: list[Face], width: int, height: int, margin: float) -> tuple[int, int, int, int]:
    """Integer (x1, y1, x2, y2) covering every face box grown by ``margin`` x its size, clipped to the image."""
    boxes = np.array([face.bbox for face in faces], np.float32)
    grow = np.array([margin * max(face.bbox[2] - face.bbox[0], face.bbox[3] - face.bbox[1]) for face in faces])
    x1 = int(max(0, np.floor((boxes[:, 0] - grow).min())))
    y1 = int(max(0, np.floor((boxes[:, 1] - grow).min())))
    x2 = int(min(width, np.ceil((boxes[:, 2] + grow).max())))
    y2 = int(min(height, np.ceil((boxes[:, 3] + grow).max())))
    return x1, y1, x2, y2
