"""Classical face swap (the embedded default): dlib 68 landmarks, shape morph, piecewise-affine warp, colour, blend.

Per target face, inside a ring around it only:
- shape: the target's landmarks take the source's face geometry (jaw, cheeks, brows, nose; eye and mouth placement),
  placed on the target by a similarity fit of eyes and nose (the source keeps its own proportions);
  the target's expression stays: how open each eye is, the mouth's own shape (opening, smile) and the chin's drop;
- the target image is morphed to that shape (its jaw line, cheeks and the background next to them move with it), and
  the source face's texture is warped onto it triangle by triangle;
- the source's colours move to the target's skin (LAB mean/std), and the face is blended under a soft hull mask over
  jaw, cheeks and forehead; the target's own mouth interior (inside the inner lips) is kept.
Pixels outside each face's ring are returned untouched. The swapper keeps no state between calls: smoothing over time
belongs to the session that owns the stream (its tracker hands out One-Euro-smoothed keypoints, ``smooth.py``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import cv2
import numpy as np
from scipy.spatial import Delaunay

from mirage_ray.vision.align import similarity_matrix
from mirage_ray.vision.base import MIN_REFERENCE_FACE_PX, ReferenceRejected
from mirage_ray.vision.face_shape import fit_similarity, shaped_landmarks
from mirage_ray.vision.faces import Face, SourceIdentity
from mirage_ray.vision.landmarks_dlib import (
    BROWS,
    CANONICAL_SIZE_PX,
    CANONICAL_TEMPLATE_256,
    INNER_LIPS,
    JAW,
    MIRRORED_INDEX,
    NUM_LANDMARKS,
    DlibFrontalFaceCheck,
    DlibLandmarks,
    kps_from_landmarks,
    transform_points,
)

logger = logging.getLogger(__name__)

CLASSICAL_NAME = "classical-dlib68"
SOURCE_CROP_PX = 256  # aligned source crop; the face spans ~150 px of it
MAX_KPS_DEVIATION = 0.35  # landmark-derived vs detector keypoints, as a fraction of the eye distance
MAX_SOURCE_YAW = 0.6  # |nose->left jaw - nose->right jaw| / sum: 0 frontal; a strongly turned reference is refused
MIN_FACE_BOX_IOU = 0.3  # the HOG check's box vs the predictor's box in the canonical crop

# Geometry. Tuned on tests/media.py IDENTITY_TUNING_CASES (never on the held-out set; docs/benchmarks.md).
FOREHEAD_RAISE = 0.35  # forehead points: brows moved up by this fraction of the chin->nose-bridge distance
NUM_FACE_POINTS = NUM_LANDMARKS + 10  # 68 landmarks + one forehead point above each of the 10 brow points
RING_MARGIN = 0.15  # boundary ring around the face points, as a fraction of their extent (the morph ends there)
MAP_STEP_PX = 2  # the warp maps are computed every this many pixels, then interpolated (they are piecewise linear)
EDGE_FADE_PX = 6.0  # the morph fades out over this distance from the image's own border

# Mask and colour.
MASK_ERODE_FRACTION = -0.03  # hull erosion (besides half the feather; < 0 grows it: the feather straddles the hull)
MASK_FEATHER_FRACTION = 0.06  # feather (blur) width, as a fraction of the face size
MOUTH_KEEP_FRACTION = 0.015  # inner-lip polygon grown by this fraction of the face size before its own feather
STD_RATIO_RANGE = (0.5, 2.0)  # clamp of the LAB std ratio in the colour transfer
STATS_MIN_WEIGHT = 0.5  # pixels with at least this blend weight give the colour statistics
STATS_STEP_PX = 2  # the colour statistics read every this many pixels
MIN_ROI_PX = 8  # faces whose region is smaller than this are left alone

# Source repair (once per identity).
SOURCE_EDGE_PX = 3  # source-crop pixels this close to the reference photo's edge count as outside it
SKIN_SAMPLE_POINTS = np.r_[1:16, 29]  # cheeks, chin and nose: where the source's skin colour is read
SKIN_STD_FLOOR = 4.0  # LAB std floor of the skin model (a grayscale photo has no chroma spread)
SKIN_MAX_DISTANCE = 3.0  # forehead pixels further than this (Mahalanobis) from the skin colour stay the target's
INPAINT_RADIUS_PX = 5

_EXTRA_POINTS = "points"
_EXTRA_TRIANGLES = "triangles"
_EXTRA_SOURCE = "source_bgra"  # uint8 (crop, 4): the repaired crop + where it may paint (face, skin; not hair/padding)


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


def yaw_asymmetry(landmarks: np.ndarray) -> float:
    """0 for a frontal face, towards 1 as the head turns: |nose->left jaw - nose->right jaw| / their sum."""
    left = float(np.linalg.norm(landmarks[30] - landmarks[2]))
    right = float(np.linalg.norm(landmarks[30] - landmarks[14]))
    return abs(left - right) / max(left + right, 1e-6)


def destination_points(landmarks: np.ndarray, src_points: np.ndarray) -> np.ndarray:
    """Where each source point goes for a target face with these 68 ``landmarks``: face points + ring; float32.

    The face points are :func:`shaped_landmarks`'s; the ring follows the similarity fit of the face points, so the
    warp stays smooth around the face, and it encloses the face points before and after the reshaping, so nothing
    outside it changes.
    """
    pts = face_points(shaped_landmarks(landmarks, src_points[:NUM_LANDMARKS]))
    to_target = fit_similarity(src_points[:NUM_FACE_POINTS], pts)
    # the ring is the source's, placed by the similarity fit, and large enough to enclose the face points before
    # and after the reshaping (a turned head's points can reach beyond the source's own ring)
    upright = transform_points(np.concatenate([pts, face_points(landmarks)]), cv2.invertAffineTransform(to_target))
    ring = transform_points(ring_points(np.concatenate([upright, src_points[:NUM_FACE_POINTS]])), to_target)
    return np.concatenate([pts, ring]).astype(np.float32)


def morph_polygon(dst_points: np.ndarray) -> np.ndarray:
    """The ring around a face (float32 (8, 2)): pixels outside it are never changed."""
    return dst_points[NUM_FACE_POINTS:]


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


def warp_maps(
    dst_points: np.ndarray,
    src_points: np.ndarray,
    tgt_points: np.ndarray,
    triangles: np.ndarray,
    roi: tuple[int, int, int, int],
    image_shape: tuple[int, ...],
) -> tuple[np.ndarray, np.ndarray]:
    """cv2.remap maps for the ROI: float32 (h, w, 2) into the source crop, and (h, w, 2) into the target image.

    The destination mesh is ``dst_points`` (with ``triangles``); the same points sit at ``src_points`` in the source
    and at ``tgt_points`` in the target. The maps are evaluated every :data:`MAP_STEP_PX` pixels, each grid pixel
    taking the affine map of the destination triangle that covers it, and interpolated linearly to the ROI. Outside
    every triangle the source map is the overall similarity and the target map the identity; the target map fades
    to the identity near the image's own border, where the frame has nothing beyond it to pull in.
    """
    x1, y1, x2, y2 = roi
    step = MAP_STEP_PX
    width, height = x2 - x1, y2 - y1
    # Grid point (i, j) sits at pixel (x1, y1) + ((i, j) - 1) * step + (step - 1) / 2: then cv2.resize by ``step``
    # (which aligns pixel centres) reproduces any affine map exactly, and one grid cell on each side covers the edges.
    grid_w, grid_h = -(-width // step) + 2, -(-height // step) + 2
    origin = np.array([x1, y1], np.float32) + (step - 1) / 2 - step
    dst_grid = (dst_points - origin) / step
    n_tri = len(triangles)
    labels = np.full((grid_h, grid_w), n_tri, np.int32)
    shift = 4  # subpixel bits for fillConvexPoly
    fixed = np.round(dst_grid * (1 << shift)).astype(np.int32)
    for index, tri in enumerate(fixed[triangles]):
        cv2.fillConvexPoly(labels, tri, index, lineType=cv2.LINE_8, shift=shift)

    corners = dst_grid[triangles].astype(np.float64)  # (T, 3, 2)
    homogeneous = np.concatenate([corners, np.ones((n_tri, 3, 1))], axis=2)  # (T, 3, 3)
    degenerate = np.abs(np.linalg.det(homogeneous)) < 1e-4
    homogeneous[degenerate] = np.eye(3)
    ends = np.concatenate([src_points, tgt_points], axis=1).astype(np.float64)  # (N, 4)
    coeffs = np.linalg.solve(homogeneous, ends[triangles])  # (T, 3, 4): [gx gy 1] @ coeffs[t] = (sx, sy, tx, ty)
    to_source = fit_similarity(dst_grid, src_points).T  # (3, 2)
    to_target = np.array([[step, 0.0], [0.0, step], [*origin]], np.float64)  # the identity, from grid units
    outside = np.concatenate([to_source, to_target], axis=1)
    coeffs[degenerate] = outside
    table = np.concatenate([coeffs, outside[None]]).astype(np.float32)  # (T + 1, 3, 4)

    gy, gx = np.mgrid[0:grid_h, 0:grid_w].astype(np.float32)
    per_pixel = table[labels]  # (gh, gw, 3, 4)
    grid_maps = per_pixel[..., 0, :] * gx[..., None] + per_pixel[..., 1, :] * gy[..., None] + per_pixel[..., 2, :]
    height_px, width_px = image_shape[:2]
    if x1 < EDGE_FADE_PX or y1 < EDGE_FADE_PX or x2 > width_px - EDGE_FADE_PX or y2 > height_px - EDGE_FADE_PX:
        xs, ys = gx * step + origin[0], gy * step + origin[1]
        fade = np.clip(np.minimum(np.minimum(xs, width_px - 1 - xs), np.minimum(ys, height_px - 1 - ys)), 0, None)
        fade = np.minimum(fade / EDGE_FADE_PX, 1.0)
        grid_maps[..., 2] = xs + fade * (grid_maps[..., 2] - xs)
        grid_maps[..., 3] = ys + fade * (grid_maps[..., 3] - ys)
    size = (grid_w * step, grid_h * step)
    to_source_map, to_target_map = (
        cv2.resize(np.ascontiguousarray(part), size, interpolation=cv2.INTER_LINEAR)[
            step : step + height, step : step + width
        ]
        for part in (grid_maps[..., :2], grid_maps[..., 2:])
    )
    return to_source_map, to_target_map


def blend_outline(points: np.ndarray) -> tuple[np.ndarray, float, int]:
    """The blend mask's polygon before its blur: the face hull scaled about its centre by :data:`MASK_ERODE_FRACTION`
    of the face size (less half the feather, so that by default the feather stays inside), with the face size (px)
    and the feather (odd blur width, px)."""
    hull = mask_polygon(points)
    area = max(float(cv2.contourArea(hull)), 1.0)
    face_size = float(np.sqrt(area))
    feather = max(3, int(round(face_size * MASK_FEATHER_FRACTION))) | 1
    inset = int(round(face_size * MASK_ERODE_FRACTION)) + feather // 2
    centre = hull.mean(axis=0)
    radius = max(float(np.sqrt(area / np.pi)), 1.0)
    return (centre + (hull - centre) * max(0.0, 1.0 - inset / radius)).astype(np.float32), face_size, feather


def mask_box(points: np.ndarray, shape: tuple[int, ...]) -> tuple[int, int, int, int] | None:
    """The box (clipped to the image) holding every pixel that :func:`blend_weight` can weigh, or None."""
    outline, _, feather = blend_outline(points)
    reach = feather // 2 + 1
    return face_roi(np.array([outline.min(axis=0) - reach, outline.max(axis=0) + reach], np.float32), shape)


def blend_weight(points: np.ndarray, roi: tuple[int, int, int, int]) -> np.ndarray:
    """Float32 ROI weight: 1 inside the face hull, feathered across its edge (:func:`blend_outline`), 0 outside it
    and inside the target's mouth."""
    x1, y1, x2, y2 = roi
    shape = (y2 - y1, x2 - x1)
    offset = np.array([x1, y1], np.float32)
    outline, face_size, feather = blend_outline(points)
    shift = 4
    mask = np.zeros(shape, np.uint8)
    cv2.fillConvexPoly(mask, np.round((outline - offset) * (1 << shift)).astype(np.int32), 255, cv2.LINE_8, shift)
    mask = cv2.GaussianBlur(mask, (feather, feather), 0)

    mouth = np.zeros(shape, np.uint8)
    lips = (points[INNER_LIPS] - offset) * (1 << shift)
    cv2.fillPoly(mouth, [np.round(lips).astype(np.int32)], 255, cv2.LINE_8, shift)
    grow = max(1, int(round(face_size * MOUTH_KEEP_FRACTION)))
    kernel = 2 * grow + 1  # blur radius == growth: the inner-lip interior stays exactly 255 (kept bit for bit)
    mouth = cv2.dilate(mouth, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel, kernel)))
    mouth = cv2.GaussianBlur(mouth, (kernel, kernel), 0)
    return (mask.astype(np.float32) * (1.0 / 255.0)) * (1.0 - mouth.astype(np.float32) * (1.0 / 255.0))


def transfer_colour(warped: np.ndarray, target: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``warped`` (BGR uint8) recoloured to the target's skin over the face (pixels with ``weight`` >= 0.5).

    LAB mean/std transfer (statistics on every :data:`STATS_STEP_PX`-th pixel, applied through a lookup table); a
    grayscale source (no chroma spread) gets the target's mean skin colour.
    """
    step = STATS_STEP_PX
    region = (weight[::step, ::step] >= STATS_MIN_WEIGHT).astype(np.uint8)
    if int(region.sum()) * step * step < MIN_ROI_PX * MIN_ROI_PX:
        return warped
    src_lab = cv2.cvtColor(warped, cv2.COLOR_BGR2LAB)
    dst_lab = cv2.cvtColor(np.ascontiguousarray(target[::step, ::step]), cv2.COLOR_BGR2LAB)
    src_sample = np.ascontiguousarray(src_lab[::step, ::step])
    src_mean, src_std = (v.reshape(3).astype(np.float32) for v in cv2.meanStdDev(src_sample, mask=region))
    dst_mean, dst_std = (v.reshape(3).astype(np.float32) for v in cv2.meanStdDev(dst_lab, mask=region))
    ratio = np.clip(dst_std / np.maximum(src_std, 1e-3), *STD_RATIO_RANGE)
    levels = np.arange(256, dtype=np.float32)[:, None]
    table = np.clip(np.rint((levels - src_mean) * ratio + dst_mean), 0, 255).astype(np.uint8).reshape(256, 1, 3)
    return cv2.cvtColor(cv2.LUT(src_lab, table), cv2.COLOR_LAB2BGR)


def blend(target: np.ndarray, face: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``target + weight * (face - target)`` rounded to uint8; where ``weight`` is 0 the target is returned exactly."""
    base = target.astype(np.float32)
    mixed = base + weight[..., None] * (face.astype(np.float32) - base)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def source_alpha(crop: np.ndarray, crop_landmarks: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """uint8 (crop): where the source crop may paint a target face.

    The face core (hull of jaw and brows) always; around it only pixels of the reference photo (``inside``) whose
    colour is the source's skin (LAB distance to the cheeks' colour), so the source's hair and background stay out.
    """
    points = face_points(crop_landmarks)
    size = crop.shape[:2]
    core = np.zeros(size, np.uint8)
    cv2.fillConvexPoly(core, np.round(cv2.convexHull(points[:27])).astype(np.int32), 255)
    cheeks = np.zeros(size, np.uint8)
    cv2.fillConvexPoly(cheeks, np.round(cv2.convexHull(points[SKIN_SAMPLE_POINTS])).astype(np.int32), 255)
    lab = cv2.cvtColor(crop, cv2.COLOR_BGR2LAB).astype(np.float32)
    sample = lab[(cheeks > 0) & (inside > 0)]
    if len(sample) < MIN_ROI_PX * MIN_ROI_PX:
        return np.maximum(core, inside)
    diff = lab - sample.mean(axis=0)
    inverse = np.linalg.inv(np.cov(sample.T) + np.eye(3) * SKIN_STD_FLOOR**2)
    skin = (np.einsum("hwi,ij,hwj->hw", diff, inverse, diff) < SKIN_MAX_DISTANCE**2).astype(np.uint8) * 255
    skin = cv2.morphologyEx(skin, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
    allowed = np.maximum(core, np.minimum(skin, inside))
    return cv2.GaussianBlur(allowed, (9, 9), 0)


def repaired_source(crop: np.ndarray, crop_landmarks: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """The source crop with the parts outside the reference photo filled: first from the face's mirror image (the
    other side of the face), then by inpainting, so a face cut by the photo's edge still paints a whole face."""
    mirror_points = crop_landmarks[MIRRORED_INDEX].copy()
    mirror_points[:, 0] = crop.shape[1] - 1 - mirror_points[:, 0]
    to_mirror = similarity_matrix(crop_landmarks, mirror_points)  # crop -> its mirror image's face, aligned
    flipped = crop[:, ::-1].copy()
    flipped_inside = inside[:, ::-1].copy()
    size = (crop.shape[1], crop.shape[0])
    back = cv2.invertAffineTransform(to_mirror)
    mirrored = cv2.warpAffine(flipped, back, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    mirrored_inside = cv2.warpAffine(flipped_inside, back, size, flags=cv2.INTER_NEAREST, borderValue=0)
    missing = inside == 0
    use_mirror = missing & (mirrored_inside > 0)
    repaired = crop.copy()
    repaired[use_mirror] = mirrored[use_mirror]
    still_missing = (missing & ~use_mirror).astype(np.uint8) * 255
    if still_missing.any():
        repaired = cv2.inpaint(repaired, still_missing, INPAINT_RADIUS_PX, cv2.INPAINT_TELEA)
    return repaired


def _photo_area(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """uint8 (size, size): 255 where the aligned crop shows ``image``, 0 on its padding (and its edge pixels)."""
    inside = cv2.warpAffine(np.full(image.shape[:2], 255, np.uint8), matrix, (size, size), borderValue=0)
    inside = cv2.erode(inside, np.ones((2 * SOURCE_EDGE_PX + 1, 2 * SOURCE_EDGE_PX + 1), np.uint8))
    return np.where(inside == 255, 255, 0).astype(np.uint8)


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
        """Aligned source crop + its 68 landmarks (and the cached triangulation and paint mask) from a reference face.

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
        crop_landmarks = self._landmarks.predict(crop, rect, mirrored=True)
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
        inside = _photo_area(image, matrix, self._source_size)
        crop = repaired_source(crop, crop_landmarks, inside)
        points, triangles = source_geometry(crop_landmarks)
        frame_landmarks = transform_points(crop_landmarks, cv2.invertAffineTransform(matrix))
        return SourceIdentity(
            backend=self.name,
            face=dataclasses.replace(face, landmarks=frame_landmarks),
            crop=crop,
            crop_landmarks=crop_landmarks,
            extras={
                _EXTRA_POINTS: points,
                _EXTRA_TRIANGLES: triangles,
                _EXTRA_SOURCE: np.dstack([crop, source_alpha(crop, crop_landmarks, inside)]),
            },
        )

    def target_landmarks(self, image: np.ndarray, face: Face) -> np.ndarray:
        """The face's 68 landmarks: its own when it carries them (a session may smooth them over time), else the
        predictor's on its canonical crop (one prediction: the mirror-averaged one halves the jitter's growth but
        costs a second prediction per face and frame)."""
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
        source = identity.extras.get(_EXTRA_SOURCE)
        if source is None:
            source = np.dstack([identity.crop, np.full(identity.crop.shape[:2], 255, np.uint8)])
        out = image.copy()
        for face in faces:
            landmarks = self.target_landmarks(image, face)
            self._swap_one(out, source, points, triangles, landmarks)
        return out

    @staticmethod
    def _swap_one(
        out: np.ndarray, source: np.ndarray, src_points: np.ndarray, triangles: np.ndarray, landmarks: np.ndarray
    ) -> None:
        """Swap one face into ``out`` (a private copy owned by :meth:`swap`), inside the face's ring only.

        ``source`` is the BGRA source crop; its alpha says where it may paint.
        """
        dst_points = destination_points(landmarks, src_points)
        tgt_points = np.concatenate([face_points(landmarks), morph_polygon(dst_points)])
        roi = face_roi(morph_polygon(dst_points), out.shape)
        if roi is None:
            return
        x1, y1, x2, y2 = roi
        to_source, to_target = warp_maps(dst_points, src_points, tgt_points, triangles, roi, out.shape)
        morphed = cv2.remap(out, to_target, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
        face_box = mask_box(dst_points[:NUM_FACE_POINTS], out.shape)
        if face_box is not None:
            fx1, fy1, fx2, fy2 = (
                max(face_box[0], x1),
                max(face_box[1], y1),
                min(face_box[2], x2),
                min(face_box[3], y2),
            )
            if fx2 - fx1 >= MIN_ROI_PX and fy2 - fy1 >= MIN_ROI_PX:
                inner = (slice(fy1 - y1, fy2 - y1), slice(fx1 - x1, fx2 - x1))
                warped = cv2.remap(
                    source, np.ascontiguousarray(to_source[inner]), None, cv2.INTER_LINEAR, borderValue=0
                )
                weight = blend_weight(dst_points[:NUM_FACE_POINTS], (fx1, fy1, fx2, fy2))
                weight *= warped[..., 3].astype(np.float32) * (1.0 / 255.0)
                coloured = transfer_colour(np.ascontiguousarray(warped[..., :3]), morphed[inner], weight)
                morphed[inner] = blend(morphed[inner], coloured, weight)
        out[y1:y2, x1:x2] = morphed


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a BGR uint8 (H, W, 3) image, got {getattr(image, 'shape', type(image))}")
