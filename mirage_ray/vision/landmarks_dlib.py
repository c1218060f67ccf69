"""dlib 68-point facial landmarks, located from the weights that the ``face-recognition-models`` package ships.

The predictor runs on an upright *canonical crop*: the face's 5 keypoints are warped onto a fixed template, and the
predictor gets a fixed rectangle in that crop, calibrated to where dlib's own HOG detector puts its box. So it works
with any detector's keypoints (RetinaFace, SCRFD) and with heads rolled far from upright.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from pathlib import Path

import cv2
import dlib
import numpy as np

from mirage_ray.vision.align import ARCFACE_TEMPLATE_112, similarity_matrix

logger = logging.getLogger(__name__)

MODELS_PACKAGE = "face_recognition_models"
LANDMARKS_68_FILE = "shape_predictor_68_face_landmarks.dat"
FACE_DESCRIPTOR_FILE = "dlib_face_recognition_resnet_model_v1.dat"
NUM_LANDMARKS = 68

# Canonical crop: the ArcFace 5-point template scaled x1.8 about its mean, which lands at (128, 108) in a 256 crop.
# The whole face (brows to chin, ~150 px) then sits inside the crop with a margin.
CANONICAL_SIZE_PX = 256
_TEMPLATE_SCALE = 1.8
_TEMPLATE_MEAN_AT = np.array([128.0, 108.0], np.float32)
CANONICAL_TEMPLATE_256 = (
    (ARCFACE_TEMPLATE_112 - ARCFACE_TEMPLATE_112.mean(axis=0)) * _TEMPLATE_SCALE + _TEMPLATE_MEAN_AT
).astype(np.float32)
# dlib HOG detector box on canonical crops (left, top, right, bottom), averaged over 8 faces of t1.jpg,
# Tom_Hanks_54745.png and astronaut(); the 68-point predictor was trained on boxes like these.
CANONICAL_RECT_256 = (56.0, 32.0, 202.0, 178.0)
# Target faces: a smaller crop is enough (landmarks agree with the full-size crop to ~2% of the eye distance).
TARGET_CROP_PX = 192

# Landmark groups (dlib / iBUG 300-W numbering).
JAW = slice(0, 17)
BROWS = slice(17, 27)
NOSE = slice(27, 36)
LEFT_EYE = slice(36, 42)  # the eye on the image's left
RIGHT_EYE = slice(42, 48)
OUTER_LIPS = slice(48, 60)
INNER_LIPS = slice(60, 68)
# Each landmark's counterpart in the mirror image (left <-> right); the midline points map to themselves.
MIRRORED_INDEX = np.array(
    [
        *range(16, -1, -1),  # jaw
        *range(26, 16, -1),  # brows
        *(27, 28, 29, 30, 35, 34, 33, 32, 31),  # nose
        *(45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40),  # eyes
        *(54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55),  # outer lips
        *(64, 63, 62, 61, 60, 67, 66, 65),  # inner lips
    ],
    np.int64,
)


class DlibModelMissing(FileNotFoundError):
    """A dlib model file that the ``face-recognition-models`` package should provide is not installed."""


def dlib_model_path(filename: str) -> Path:
    """Path of a ``.dat`` file shipped by ``face-recognition-models``, found without importing the package.

    (Importing it needs ``pkg_resources``; ``importlib.util.find_spec`` only locates it.)
    """
    spec = importlib.util.find_spec(MODELS_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / "models" / filename
        if path.is_file():
            return path
    looked = ", ".join(str(Path(loc) / "models") for loc in locations) or f"(package {MODELS_PACKAGE} not installed)"
    raise DlibModelMissing(
        f"dlib model {filename} not found; looked in {looked}. "
        "Install it with: pip install face-recognition-models==0.3.0"
    )


def kps_from_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """The 5 insightface-order keypoints (eye centres, nose tip, mouth corners) of 68 landmarks; float32 (5, 2)."""
    pts = np.asarray(landmarks, np.float32)
    return np.stack([pts[LEFT_EYE].mean(axis=0), pts[RIGHT_EYE].mean(axis=0), pts[30], pts[48], pts[54]]).astype(
        np.float32
    )


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to (N, 2) points; float32."""
    pts = np.asarray(points, np.float64)
    return (pts @ np.asarray(matrix, np.float64)[:, :2].T + np.asarray(matrix, np.float64)[:, 2]).astype(np.float32)


class DlibLandmarks:
    """The dlib 68-point shape predictor (thread-safe: dlib documents concurrent use of one instance as safe)."""

    def __init__(self, predictor_path: str | Path | None = None) -> None:
        path = Path(predictor_path) if predictor_path is not None else dlib_model_path(LANDMARKS_68_FILE)
        if not path.is_file():
            raise DlibModelMissing(f"dlib landmark predictor not found at {path}")
        self._predictor = dlib.shape_predictor(str(path))
        self.path = path

    def predict(self, image: np.ndarray, rect: tuple[float, float, float, float], mirrored: bool = False) -> np.ndarray:
        """68 landmarks (float32 (68, 2), image coordinates) for the face in box ``rect`` = (left, top, right, bottom).

        ``image`` is uint8 BGR, RGB or grayscale: the predictor works on intensity only. ``mirrored``: also predict on
        the horizontally flipped image and average the two (about a quarter less frame-to-frame jitter; twice the
        predictor's cost).
        """
        points = self._predict_once(image, rect)
        if not mirrored:
            return points
        last = image.shape[1] - 1
        left, top, right, bottom = rect
        flipped = self._predict_once(np.ascontiguousarray(image[:, ::-1]), (last - right, top, last - left, bottom))
        flipped[:, 0] = last - flipped[:, 0]
        return ((points + flipped[MIRRORED_INDEX]) / 2).astype(np.float32)

    def _predict_once(self, image: np.ndarray, rect: tuple[float, float, float, float]) -> np.ndarray:
        left, top, right, bottom = (int(round(v)) for v in rect)
        shape = self._predictor(np.ascontiguousarray(image), dlib.rectangle(left, top, right, bottom))
        if shape.num_parts != NUM_LANDMARKS:
            raise ValueError(f"{self.path} predicts {shape.num_parts} points, expected {NUM_LANDMARKS}")
        return np.array([(p.x, p.y) for p in shape.parts()], np.float32)

    def canonical_crop(
        self, image: np.ndarray, kps: np.ndarray, size: int = CANONICAL_SIZE_PX
    ) -> tuple[np.ndarray, np.ndarray]:
        """Upright ``size`` x ``size`` crop of the face with keypoints ``kps``, and its 2x3 image->crop matrix."""
        template = CANONICAL_TEMPLATE_256 * (size / CANONICAL_SIZE_PX)
        matrix = similarity_matrix(kps, template)
        crop = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return crop, matrix

    @staticmethod
    def canonical_rect(size: int = CANONICAL_SIZE_PX) -> tuple[float, float, float, float]:
        """The predictor's box inside a canonical crop of ``size`` pixels."""
        scale = size / CANONICAL_SIZE_PX
        left, top, right, bottom = CANONICAL_RECT_256
        return left * scale, top * scale, right * scale, bottom * scale

    def from_kps(
        self, image: np.ndarray, kps: np.ndarray, crop_size: int = TARGET_CROP_PX, mirrored: bool = False
    ) -> np.ndarray:
        """68 landmarks in ``image`` coordinates for the face whose 5 keypoints are ``kps``; float32 (68, 2).

        ``mirrored``: average with the prediction on the mirrored crop (see :meth:`predict`).
        """
        crop, matrix = self.canonical_crop(image, kps, crop_size)
        local = self.predict(crop, self.canonical_rect(crop_size), mirrored)
        return transform_points(local, cv2.invertAffineTransform(matrix))


class DlibFrontalFaceCheck:
    """dlib's HOG frontal face detector, used to confirm that a crop holds a clear frontal face.

    dlib's object detectors are not safe for concurrent use, so calls are serialised (they are rare: one per upload).
    """

    def __init__(self) -> None:
        self._detector = dlib.get_frontal_face_detector()
        self._lock = threading.Lock()

    def boxes(self, image: np.ndarray, upsample: int = 0) -> list[tuple[float, float, float, float]]:
        """Face boxes (left, top, right, bottom) that the HOG detector finds in a uint8 image."""
        with self._lock:
            rects = self._detector(np.ascontiguousarray(image), upsample)
        return [(float(r.left()), float(r.top()), float(r.right()), float(r.bottom())) for r in rects]
