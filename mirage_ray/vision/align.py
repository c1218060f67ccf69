"""Face alignment: 5-point similarity warps onto model templates, and bbox-local paste-back.

Templates are in pixel coordinates of the crop size they name.
"""

from __future__ import annotations

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


def warp_face(image: np.ndarray, kps: np.ndarray, template: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Aligned ``size``x``size`` crop of the face whose 5 keypoints are ``kps``, and the 2x3 image->crop matrix."""
    matrix = similarity_matrix(kps, template)
    crop = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return crop, matrix


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
