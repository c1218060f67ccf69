"""Classical face swap (the embedded default): dlib 68 landmarks + piecewise-affine warp + colour transfer + blend.

The source face's texture is warped triangle by triangle onto the target's landmarks, so it follows the target's
head pose and mouth; its colours are moved to the target's skin (LAB mean/std), and it is blended with a feathered
mask inside the face hull. The target's own mouth interior (inside the inner lips) is kept, so speech stays visible.
All work happens inside each face's bounding region; pixels elsewhere are returned untouched.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import cv2
import numpy as np
from scipy.spatial import Delaunay

from mirage_ray.vision.align import similarity_matrix
from mirage_ray.vision.base import ReferenceRejected
from mirage_ray.vision.faces import Face, SourceIdentity
from mirage_ray.vision.landmarks_dlib import (
    BROWS,
    CANONICAL_SIZE_PX,
    CANONICAL_TEMPLATE_256,
    INNER_LIPS,
    JAW,
    NUM_LANDMARKS,
    DlibFrontalFaceCheck,
    DlibLandmarks,
    kps_from_landmarks,
    transform_points,
)

logger = logging.getLogger(__name__)

CLASSICAL_NAME = "classical-dlib68"
MIN_REFERENCE_FACE_PX = 64  # smaller reference faces have too little texture to paint a face with
SOURCE_CROP_PX = 256  # aligned source crop; the face spans ~150 px of it
MAX_KPS_DEVIATION = 0.35  # landmark-derived vs detector keypoints, as a fraction of the eye distance
MAX_SOURCE_YAW = 0.6  # |nose->left jaw - nose->right jaw| / sum: 0 frontal; a strongly turned reference is refused
MIN_FACE_BOX_IOU = 0.3  # the HOG check's box vs the predictor's box in the canonical crop
FOREHEAD_RAISE = 0.07  # forehead points: brows moved up by this fraction of the chin->nose-bridge distance
NUM_FACE_POINTS = NUM_LANDMARKS + 10  # 68 landmarks + one forehead point above each of the 10 brow points
SHAPE_TRANSFER = 0.5  # brows, eyes and nose move this far towards the source's layout (mouth and jaw stay the target's)
SHAPE_POINTS = slice(17, 48)  # brows, nose, eyes
RING_MARGIN = 0.15  # boundary ring around the face points, as a fraction of their extent
MASK_ERODE_FRACTION = 0.02  # hull erosion (plus half the feather), as a fraction of the face size
MASK_FEATHER_FRACTION = 0.08  # feather (blur) width, as a fraction of the face size
MOUTH_KEEP_FRACTION = 0.015  # inner-lip polygon grown by this fraction of the face size before its own feather
STD_RATIO_RANGE = (0.5, 2.0)  # clamp of the LAB std ratio in the colour transfer
STATS_MIN_WEIGHT = 0.5  # pixels with at least this blend weight give the colour statistics
MIN_ROI_PX = 8  # faces whose region is smaller than this are left alone

_EXTRA_POINTS = "points"
_EXTRA_TRIANGLES = "triangles"


def face_points(landmarks: np.ndarray) -> np.ndarray:
    """68 landmarks + 10 forehead points (the brows raised along the face's up direction); float32 (78, 2)."""
    pts = np.asarray(landmarks, np.float32)
    up = pts[27] - pts[8]  # chin -> nose bridge
    forehead = pts[BROWS] + FOREHEAD_RAISE * up
    return np.concatenate([pts, forehead]).astype(np.float32)


def ring_points(points: np.ndarray) -> np.ndarray:
    """8 points on the box around ``points`` grown by :data:`RING_MARGIN` (corners and edge middles)."""
    lo, hi = points.min(axis=0), points.max(axis=0)
    pad = (hi - lo) * RING_MARGIN
    (x1, y1), (x2, y2) = lo - pad, hi + pad
    xm, ym = (x1 + x2) / 2, (y1 + y2) / 2
    return np.array([[x1, y1], [xm, y1], [x2, y1], [x2, ym], [x2, y2], [xm, y2], [x1, y2], [x1, ym]], np.float32)


def mask_polygon(points: np.ndarray) -> np.ndarray:
    """Convex hull of the jaw and forehead points (the region that gets the source face); float32 (K, 2)."""
    outline = np.concatenate([points[JAW], points[NUM_LANDMARKS:NUM_FACE_POINTS]])
    return cv2.convexHull(outline.astype(np.float32)).reshape(-1, 2)


def source_geometry(crop_landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Source points (78 face + 8 ring) and their Delaunay triangles (int32 (T, 3)), computed once per identity."""
    pts = face_points(crop_landmarks)
    points = np.concatenate([pts, ring_points(pts)]).astype(np.float32)
    triangles = Delaunay(points.astype(np.float64)).simplices.astype(np.int32)
    return points, triangles


def _with_source_shape(landmarks: np.ndarray, source_landmarks: np.ndarray) -> np.ndarray:
    """Target landmarks with brows, eyes and nose moved :data:`SHAPE_TRANSFER` of the way to the source's layout.

    The source layout is the source's landmarks placed on the target by a similarity fit, so pose is kept; the face
    proportions that make the identity move towards the source's. Measured while tuning on t1.jpg / astronaut() /
    Tom Hanks pairs (13 swaps): 0.5 brought the mean dlib descriptor distance to the source from 0.595 (0.0) to
    0.552; 1.0 gave 0.558 and bends a turned head's features more.
    """
    placed = transform_points(source_landmarks, similarity_matrix(source_landmarks, landmarks))
    out = np.array(landmarks, np.float32, copy=True)
    out[SHAPE_POINTS] += SHAPE_TRANSFER * (placed[SHAPE_POINTS] - out[SHAPE_POINTS])
    return out


def destination_points(landmarks: np.ndarray, src_points: np.ndarray) -> np.ndarray:
    """Where each source point goes for a target face with these 68 ``landmarks``: face points + ring; float32.

    Brows, eyes and nose take part of the source's layout (:func:`_with_source_shape`); the ring follows the
    similarity fit of the face points, so the warp stays smooth around the face.
    """
    pts = face_points(_with_source_shape(landmarks, src_points[:NUM_LANDMARKS]))
    ring = transform_points(src_points[len(pts) :], similarity_matrix(src_points[: len(pts)], pts))
    return np.concatenate([pts, ring]).astype(np.float32)


def face_roi(polygon: np.ndarray, shape: tuple[int, ...]) -> tuple[int, int, int, int] | None:
    """Integer (x1, y1, x2, y2) box around ``polygon`` clipped to the image, or None when too small."""
    height, width = shape[:2]
    x1 = max(0, int(np.floor(polygon[:, 0].min())) - 1)
    y1 = max(0, int(np.floor(polygon[:, 1].min())) - 1)
    x2 = min(width, int(np.ceil(polygon[:, 0].max())) + 2)
    y2 = min(height, int(np.ceil(polygon[:, 1].max())) + 2)
    if x2 - x1 < MIN_ROI_PX or y2 - y1 < MIN_ROI_PX:
        return None
    return x1, y1, x2, y2


def warp_source(
    source: np.ndarray,
    src_points: np.ndarray,
    dst_points: np.ndarray,
    triangles: np.ndarray,
    roi: tuple[int, int, int, int],
) -> np.ndarray:
    """Piecewise-affine warp of ``source`` (points ``src_points``) onto ``dst_points``, rendered for ``roi`` only.

    Each ROI pixel is labelled with the destination triangle that covers it; one cv2.remap then reads the source at
    that triangle's affine map of the pixel. Pixels outside every triangle use the overall similarity transform.
    """
    x1, y1, x2, y2 = roi
    dst_local = dst_points - np.array([x1, y1], np.float32)
    n_tri = len(triangles)
    labels = np.full((y2 - y1, x2 - x1), n_tri, np.int32)
    shift = 4  # subpixel bits for fillConvexPoly
    fixed = np.round(dst_local * (1 << shift)).astype(np.int32)
    for index, tri in enumerate(triangles):
        cv2.fillConvexPoly(labels, fixed[tri], int(index), lineType=cv2.LINE_8, shift=shift)

    # Affine maps dst(local) -> src for every triangle: [x y 1] @ coeffs[t] = (u, v).
    corners = dst_local[triangles].astype(np.float64)  # (T, 3, 2)
    homogeneous = np.concatenate([corners, np.ones((n_tri, 3, 1))], axis=2)  # (T, 3, 3)
    det = np.linalg.det(homogeneous)
    degenerate = np.abs(det) < 1e-3
    homogeneous[degenerate] = np.eye(3)
    coeffs = np.linalg.solve(homogeneous, src_points[triangles].astype(np.float64))  # (T, 3, 2)
    overall = cv2.invertAffineTransform(similarity_matrix(src_points, dst_local)).astype(np.float64).T  # (3, 2)
    coeffs[degenerate] = overall
    table = np.concatenate([coeffs, overall[None]]).astype(np.float32)  # (T + 1, 3, 2)

    ys, xs = np.mgrid[0 : y2 - y1, 0 : x2 - x1].astype(np.float32)
    per_pixel = table[labels]  # (h, w, 3, 2)
    map_x = per_pixel[..., 0, 0] * xs + per_pixel[..., 1, 0] * ys + per_pixel[..., 2, 0]
    map_y = per_pixel[..., 0, 1] * xs + per_pixel[..., 1, 1] * ys + per_pixel[..., 2, 1]
    return cv2.remap(source, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)


def blend_weight(points: np.ndarray, roi: tuple[int, int, int, int]) -> np.ndarray:
    """Float32 ROI weight: 1 inside the face hull (eroded, feathered), 0 outside it and inside the target's mouth."""
    x1, y1, x2, y2 = roi
    shape = (y2 - y1, x2 - x1)
    offset = np.array([x1, y1], np.float32)
    hull = mask_polygon(points) - offset
    face_size = float(np.sqrt(max(cv2.contourArea(hull), 1.0)))
    shift = 4
    mask = np.zeros(shape, np.uint8)
    cv2.fillConvexPoly(mask, np.round(hull * (1 << shift)).astype(np.int32), 255, cv2.LINE_8, shift)
    feather = max(3, int(round(face_size * MASK_FEATHER_FRACTION))) | 1
    erode = max(1, int(round(face_size * MASK_ERODE_FRACTION))) + feather // 2  # the feather stays inside the hull
    mask = cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * erode + 1, 2 * erode + 1)))
    mask = cv2.GaussianBlur(mask, (feather, feather), 0)

    mouth = np.zeros(shape, np.uint8)
    lips = (points[INNER_LIPS] - offset) * (1 << shift)
    cv2.fillPoly(mouth, [np.round(lips).astype(np.int32)], 255, cv2.LINE_8, shift)
    grow = max(1, int(round(face_size * MOUTH_KEEP_FRACTION)))
    kernel = 2 * grow + 1  # blur radius == growth: the inner-lip interior stays exactly 255 (kept bit for bit)
    mouth = cv2.dilate(mouth, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel, kernel)))
    mouth = cv2.GaussianBlur(mouth, (kernel, kernel), 0)
    return (mask.astype(np.float32) / 255.0) * (1.0 - mouth.astype(np.float32) / 255.0)


def transfer_colour(warped: np.ndarray, target: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``warped`` (BGR uint8) recoloured to the target's skin over the face (pixels with ``weight`` >= 0.5).

    LAB mean/std transfer; a grayscale source (no chroma spread) gets the target's mean skin colour.
    """
    region = (weight >= STATS_MIN_WEIGHT).astype(np.uint8)
    if int(region.sum()) < MIN_ROI_PX * MIN_ROI_PX:
        return warped
    src_lab = cv2.cvtColor(warped, cv2.COLOR_BGR2LAB)
    dst_lab = cv2.cvtColor(target, cv2.COLOR_BGR2LAB)
    src_mean, src_std = (v.reshape(3).astype(np.float32) for v in cv2.meanStdDev(src_lab, mask=region))
    dst_mean, dst_std = (v.reshape(3).astype(np.float32) for v in cv2.meanStdDev(dst_lab, mask=region))
    ratio = np.clip(dst_std / np.maximum(src_std, 1e-3), *STD_RATIO_RANGE)
    lab = (src_lab.astype(np.float32) - src_mean) * ratio + dst_mean
    return cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2BGR)


def blend(target: np.ndarray, face: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``target + weight * (face - target)`` rounded to uint8; where ``weight`` is 0 the target is returned exactly."""
    base = target.astype(np.float32)
    mixed = base + weight[..., None] * (face.astype(np.float32) - base)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def yaw_asymmetry(landmarks: np.ndarray) -> float:
    """0 for a frontal face, towards 1 as the head turns: |nose->left jaw - nose->right jaw| / their sum."""
    left = float(np.linalg.norm(landmarks[30] - landmarks[2]))
    right = float(np.linalg.norm(landmarks[30] - landmarks[14]))
    return abs(left - right) / max(left + right, 1e-6)


def _box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class ClassicalSwapper:
    """Landmark-warp face swapper on dlib's 68-point predictor; stateless and safe for concurrent calls."""

    name = CLASSICAL_NAME

    def __init__(self, landmarks: DlibLandmarks | None = None, source_size: int = SOURCE_CROP_PX) -> None:
        self._landmarks = landmarks if landmarks is not None else DlibLandmarks()
        self._face_check = DlibFrontalFaceCheck()
        self._source_size = int(source_size)

    def identity(self, image: np.ndarray, face: Face) -> SourceIdentity:
        """Aligned source crop + its 68 landmarks (and the cached triangulation) from a reference photo's face.

        Raises :class:`ReferenceRejected` with a message for the user when the face cannot serve as a source.
        """
        _check_image(image)
        if face.size < MIN_REFERENCE_FACE_PX:
            raise ReferenceRejected(
                f"The face in the reference photo is too small ({face.size:.0f} px); "
                f"use a photo where the face is at least {MIN_REFERENCE_FACE_PX} px across."
            )
        crop, matrix = self._landmarks.canonical_crop(image, face.kps, self._source_size)
        rect = self._landmarks.canonical_rect(self._source_size)
        crop_landmarks = self._landmarks.predict(crop, rect)
        template = CANONICAL_TEMPLATE_256 * (self._source_size / CANONICAL_SIZE_PX)
        eye_distance = float(np.linalg.norm(template[1] - template[0]))
        deviation = float(np.linalg.norm(kps_from_landmarks(crop_landmarks) - template, axis=1).mean()) / eye_distance
        boxes = self._face_check.boxes(crop, upsample=0) or self._face_check.boxes(crop, upsample=1)
        if deviation > MAX_KPS_DEVIATION or not any(_box_iou(box, rect) >= MIN_FACE_BOX_IOU for box in boxes):
            logger.info("reference rejected: kps deviation %.2f, %d HOG boxes", deviation, len(boxes))
            raise ReferenceRejected(
                "No clear, roughly frontal face was found in the reference photo; "
                "use a well-lit photo that looks straight at the camera."
            )
        yaw = yaw_asymmetry(crop_landmarks)
        if yaw > MAX_SOURCE_YAW:
            logger.info("reference rejected: yaw asymmetry %.2f", yaw)
            raise ReferenceRejected(
                "The face in the reference photo is turned too far to the side; use a photo that looks straight "
                "at the camera."
            )
        points, triangles = source_geometry(crop_landmarks)
        frame_landmarks = transform_points(crop_landmarks, cv2.invertAffineTransform(matrix))
        return SourceIdentity(
            backend=self.name,
            face=dataclasses.replace(face, landmarks=frame_landmarks),
            crop=crop,
            crop_landmarks=crop_landmarks,
            extras={_EXTRA_POINTS: points, _EXTRA_TRIANGLES: triangles},
        )

    def target_landmarks(self, image: np.ndarray, face: Face) -> np.ndarray:
        """The face's 68 landmarks: its own when it carries them, else the predictor's on its canonical crop."""
        if face.landmarks is not None and np.shape(face.landmarks) == (NUM_LANDMARKS, 2):
            return np.asarray(face.landmarks, np.float32)
        return self._landmarks.from_kps(image, face.kps)

    def swap(self, image: np.ndarray, faces: Sequence[Face], identity: SourceIdentity) -> np.ndarray:
        """A new image with every face in ``faces`` replaced by ``identity``'s face; ``image`` is not modified."""
        _check_image(image)
        if identity.crop is None or identity.crop_landmarks is None:
            raise ValueError(
                f"identity from backend {identity.backend!r} has no source crop/landmarks; "
                f"build it with {self.name}'s identity()"
            )
        points = identity.extras.get(_EXTRA_POINTS)
        triangles = identity.extras.get(_EXTRA_TRIANGLES)
        if points is None or triangles is None:
            points, triangles = source_geometry(identity.crop_landmarks)
        out = image.copy()
        for face in faces:
            landmarks = self.target_landmarks(image, face)
            self._swap_one(out, identity.crop, points, triangles, landmarks)
        return out

    @staticmethod
    def _swap_one(
        out: np.ndarray, source: np.ndarray, src_points: np.ndarray, triangles: np.ndarray, landmarks: np.ndarray
    ) -> None:
        """Swap one face into ``out`` (a private copy owned by :meth:`swap`), inside the face's region only."""
        dst_points = destination_points(landmarks, src_points)
        pts = dst_points[:NUM_FACE_POINTS]
        roi = face_roi(mask_polygon(pts), out.shape)
        if roi is None:
            return
        x1, y1, x2, y2 = roi
        target = out[y1:y2, x1:x2]
        weight = blend_weight(pts, roi)
        warped = warp_source(source, src_points, dst_points, triangles, roi)
        coloured = transfer_colour(warped, target, weight)
        out[y1:y2, x1:x2] = blend(target, coloured, weight)


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a BGR uint8 (H, W, 3) image, got {getattr(image, 'shape', type(image))}")
