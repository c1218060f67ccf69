"""Face alignment: 5-point similarity warps onto model templates, bbox-local paste-back, and crop-space masks.

Templates are in pixel coordinates of the crop size they name.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

# ArcFace template at 112x112 (insightface utils/face_align.py arcface_dst).
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
# InSwapper crop: the ArcFace template scaled to 128 with +8 px in x (insightface >= 0.7.2).
INSWAPPER_TEMPLATE_128 = np.array(
    [[46.2946, 51.6963], [81.5318, 51.5014], [64.0252, 71.7366], [49.5493, 92.3655], [78.7299, 92.2041]],
    dtype=np.float32,
)
# FFHQ 5-point template at 512x512 (CodeFormer / GFPGAN face restoration).
FFHQ_TEMPLATE_512 = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.1936],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ],
    dtype=np.float32,
)

# Face outline in the FFHQ 512 crop (CodeFormer's input): the jaw is the mean of dlib's 68-point jaw landmarks (0..8,
# mirrored onto 8..16) of the 8 faces in insightface's t1.jpg and Tom_Hanks_54745.png and scikit-image's astronaut,
# aligned onto FFHQ_TEMPLATE_512 by their detector keypoints; the forehead is a superelliptic arc from the temples
# (jaw point 0, level with the eyes) up to the hairline, 103 px above them. The outline is then grown by 10 % about
# FACE_CENTRE_512 so that the brows and jaw of faces wider than the mean (or turned a little) stay inside.
FFHQ_JAW_LEFT_512 = np.array(
    [[118, 243], [118, 280], [121, 317], [130, 353], [145, 387], [167, 418], [193, 446], [222, 469], [256, 476]],
    dtype=np.float32,
)
FFHQ_FOREHEAD_RISE_PX = 103.0
FOREHEAD_SQUARENESS = 3.0  # superellipse exponent of the forehead arc (2 = an ellipse): fuller above the brows' ends
FACE_CENTRE_512 = np.array([256.0, 300.0], np.float32)
FACE_OUTLINE_GROWTH = 1.1
FACE_MASK_BLUR_FRACTION = 0.02  # Gaussian sigma of the face mask's soft edge, as a fraction of the crop size
FOREHEAD_ARC_POINTS = 13

FEATHER_FRACTION = 0.08  # feather width as a fraction of the crop size
MASK_MARGIN_FRACTION = 0.06  # erosion of the crop mask before feathering


def similarity_matrix(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` points onto ``dst``; 2x3."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = (src_c**2).sum() / len(src)
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1.0
    rotation = u @ np.diag(d) @ vt
    scale = (s * d).sum() / src_var if src_var > 0 else 1.0
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, None]]).astype(np.float32)


def warp_face(
    image: np.ndarray, kps: np.ndarray, template: np.ndarray, size: int, border: int = cv2.BORDER_REPLICATE
) -> tuple[np.ndarray, np.ndarray]:
    """Aligned ``size``x``size`` crop of the face whose 5 keypoints are ``kps``, and the 2x3 image->crop matrix.

    ``border`` is the OpenCV border mode for crop pixels outside the image; ``cv2.BORDER_CONSTANT`` fills them with
    zeros, as insightface's ``norm_crop`` does.
    """
    matrix = similarity_matrix(kps, template)
    crop = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=border, borderValue=0)
    return crop, matrix


def crop_footprint(matrix: np.ndarray, size: int) -> np.ndarray:
    """Float32 [x1, y1, x2, y2]: image-space bounding box of the ``size`` crop that ``matrix`` (image -> crop) makes."""
    inverse = cv2.invertAffineTransform(np.asarray(matrix, np.float64))
    corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], np.float64) @ inverse.T
    return np.array([*corners.min(axis=0), *corners.max(axis=0)], np.float32)


def ffhq_face_outline(size: int) -> np.ndarray:
    """Float32 (N, 2) closed face outline (jaw, then forehead arc) in a ``size`` crop aligned on the FFHQ template."""
    centre_x = 256.0
    right = FFHQ_JAW_LEFT_512[-2::-1] * np.array([-1.0, 1.0], np.float32) + np.array([2 * centre_x, 0], np.float32)
    temple = FFHQ_JAW_LEFT_512[0]
    half_width, temple_y = centre_x - float(temple[0]), float(temple[1])
    angles = np.linspace(0.0, np.pi, FOREHEAD_ARC_POINTS)[1:-1]
    cos, sin = np.cos(angles), np.sin(angles)
    power = 2.0 / FOREHEAD_SQUARENESS
    forehead = np.stack(
        [
            centre_x + half_width * np.sign(cos) * np.abs(cos) ** power,
            temple_y - FFHQ_FOREHEAD_RISE_PX * np.abs(sin) ** power,
        ],
        axis=1,
    )
    outline = np.concatenate([FFHQ_JAW_LEFT_512, right, forehead.astype(np.float32)])
    grown = (outline - FACE_CENTRE_512) * FACE_OUTLINE_GROWTH + FACE_CENTRE_512
    return (grown * (size / 512.0)).astype(np.float32)


@functools.lru_cache(maxsize=8)
def face_mask(size: int) -> np.ndarray:
    """Read-only float32 (size, size) soft face mask in [0, 1] for a crop aligned on ``FFHQ_TEMPLATE_512``.

    1 over the face (brows, eyes, nose, mouth, cheeks, chin, forehead), 0 on hair, neck and background, with a Gaussian
    edge (sigma ``FACE_MASK_BLUR_FRACTION`` of the size) whose half-level follows :func:`ffhq_face_outline`; exactly 0
    on the crop's border. Use it to paste a restored FFHQ crop back without a square edge.
    """
    if size < 16:
        raise ValueError(f"face mask size must be at least 16 px, got {size}")
    shift = 4
    mask = np.zeros((size, size), np.uint8)
    points = np.round(ffhq_face_outline(size) * (1 << shift)).astype(np.int32)
    cv2.fillPoly(mask, [points], 255, cv2.LINE_AA, shift)
    sigma = FACE_MASK_BLUR_FRACTION * size
    blur = 2 * int(np.ceil(3.0 * sigma)) + 1
    soft = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (blur, blur), sigma, borderType=cv2.BORDER_CONSTANT)
    soft[[0, -1], :] = 0.0
    soft[:, [0, -1]] = 0.0
    soft = np.clip(soft, 0.0, 1.0)
    soft.setflags(write=False)
    return soft


def crop_mask(size: int, feather: float = FEATHER_FRACTION, margin: float = MASK_MARGIN_FRACTION) -> np.ndarray:
    """Float32 (size, size) mask, 1 inside, eroded by ``margin`` and feathered over ``feather`` of the size."""
    mask = np.zeros((size, size), np.float32)
    inset = max(1, int(round(size * margin)))
    mask[inset : size - inset, inset : size - inset] = 1.0
    blur = max(1, int(round(size * feather))) | 1
    return cv2.GaussianBlur(mask, (blur, blur), 0)


def paste_back(image: np.ndarray, crop: np.ndarray, matrix: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Blend an aligned ``crop`` back into a copy of ``image``, touching only the face's bounding box.

    ``matrix`` maps image -> crop (as returned by :func:`warp_face`); ``mask`` is a float (size, size) weight in
    crop coordinates (default :func:`crop_mask`). The inverse warp is computed for the bbox region only.
    """
    size = crop.shape[0]
    if mask is None:
        mask = crop_mask(size)
    inverse = cv2.invertAffineTransform(matrix)
    corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], np.float32) @ inverse.T
    height, width = image.shape[:2]
    x1 = int(max(0, np.floor(corners[:, 0].min())))
    y1 = int(max(0, np.floor(corners[:, 1].min())))
    x2 = int(min(width, np.ceil(corners[:, 0].max()) + 1))
    y2 = int(min(height, np.ceil(corners[:, 1].max()) + 1))
    out = image.copy()
    if x2 <= x1 or y2 <= y1:
        return out
    local = inverse.copy()
    local[:, 2] -= (x1, y1)
    region_size = (x2 - x1, y2 - y1)
    warped = cv2.warpAffine(crop, local, region_size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    weight = cv2.warpAffine(mask, local, region_size, flags=cv2.INTER_LINEAR, borderValue=0.0)[..., None]
    region = out[y1:y2, x1:x2].astype(np.float32)
    out[y1:y2, x1:x2] = np.clip(region + weight * (warped.astype(np.float32) - region), 0, 255).astype(image.dtype)
    return out
