"""The classical swap's face geometry: a source face's shape placed on a target face, in the target's pose and with
the target's expression (see :func:`shaped_landmarks`). Pure functions on dlib 68-point landmarks."""

from __future__ import annotations

import numpy as np

from mirage_ray.vision.landmarks_dlib import LEFT_EYE, OUTER_LIPS, RIGHT_EYE, transform_points

# Tuned on tests/media.py IDENTITY_TUNING_CASES (never on the held-out set; docs/benchmarks.md, identity).
SHAPE_TRANSFER = 1.0  # how far the target's landmarks move to the source's geometry (0: none, 1: all of it)
SHAPE_FADE_TURN = (0.5, 0.8)  # the transfer fades from full to none over this range of the target's head turn
PLACEMENT_POINTS = np.r_[27:48]  # nose and eyes: the similarity fit that places the source on the target
EYES = (LEFT_EYE, RIGHT_EYE)
EYE_OPENNESS_RANGE = (0.0, 2.5)  # clamp of the factor that gives the source's eye the target's opening
MOUTH = slice(48, 68)  # outer and inner lips
LOWER_LIP_BOTTOM = 57
CHIN_POINTS = np.r_[4:13]  # lower jaw points that drop with the mouth's opening, by these weights:
CHIN_WEIGHTS = np.array([0.15, 0.4, 0.7, 0.9, 1.0, 0.9, 0.7, 0.4, 0.15], np.float32)


def fit_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares 2D similarity (rotation, uniform scale, translation; no reflection) taking ``src`` onto ``dst``;
    float64 2x3. The closed form of :func:`mirage_ray.vision.align.similarity_matrix` for the non-reflecting case,
    without an SVD (it runs several times per face and frame)."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    sx, sy = (src - src_mean).T
    dx, dy = (dst - dst_mean).T
    norm = max(float(sx @ sx + sy @ sy), 1e-12)
    a = float(sx @ dx + sy @ dy) / norm  # scale * cos
    b = float(sx @ dy - sy @ dx) / norm  # scale * sin
    linear = np.array([[a, -b], [b, a]])
    return np.hstack([linear, (dst_mean - linear @ src_mean)[:, None]])


def _unit(vector: np.ndarray) -> np.ndarray:
    return (vector / max(float(np.linalg.norm(vector)), 1e-6)).astype(np.float32)


def head_turn(landmarks: np.ndarray) -> float:
    """0 for a frontal face, towards 1 in profile: the imbalance of the two outer eye corners about the nose bridge."""
    across = _unit(landmarks[45] - landmarks[36])
    spans = np.abs((landmarks[[36, 45]] - landmarks[27]) @ across)
    return float(abs(spans[0] - spans[1]) / max(float(spans.sum()), 1e-6))


def placed_source(target: np.ndarray, source: np.ndarray) -> np.ndarray:
    """The source's 68 landmarks placed on the target's by a similarity fit of eyes and nose.

    The source keeps its own proportions on both sides of the face. (Stretching each side as the target's outer eye
    corners say, to foreshorten a turned head's far side, gave the source the target's own asymmetry, and a wink's
    squeezed eye corner, as much as its pose: farther from the reference on both sets, docs/benchmarks.md.)
    """
    return transform_points(source, fit_similarity(source[PLACEMENT_POINTS], target[PLACEMENT_POINTS]))


def eye_openness(eye: np.ndarray) -> float:
    """An eye's opening (its six points): mean lid-to-lid distance over the corner-to-corner width."""
    width = max(float(np.linalg.norm(eye[3] - eye[0])), 1e-6)
    return float(np.linalg.norm(eye[1] - eye[5]) + np.linalg.norm(eye[2] - eye[4])) / (2 * width)


def with_openness(eye: np.ndarray, openness: float) -> np.ndarray:
    """The six eye points with the lids moved across the corner line so that the eye opens ``openness``."""
    factor = float(np.clip(openness / max(eye_openness(eye), 1e-6), *EYE_OPENNESS_RANGE))
    centre = (eye[0] + eye[3]) / 2
    across = _unit(eye[3] - eye[0])
    offset = eye - centre
    along = (offset @ across)[:, None] * across
    return (centre + along + factor * (offset - along)).astype(np.float32)


def shaped_landmarks(landmarks: np.ndarray, source_landmarks: np.ndarray) -> np.ndarray:
    """The target's 68 ``landmarks`` moved to the source's face geometry, keeping the target's pose and expression.

    Jaw, brows and nose take the placed source's positions (:func:`placed_source`); each eye is the source's eye
    opened as far as the target's; the mouth is the target's own, moved by the similarity that fits its outer lips
    to the source's; the chin drops as far as the target's lower lip does. The move is :data:`SHAPE_TRANSFER` of the
    way, fading out for strongly turned heads (:data:`SHAPE_FADE_TURN`), where a frontal geometry would not fit.
    """
    target = np.asarray(landmarks, np.float32)
    placed = placed_source(target, np.asarray(source_landmarks, np.float32))
    shaped = placed.copy()
    for group in EYES:
        shaped[group] = with_openness(placed[group], eye_openness(target[group]))
    mouth_fit = fit_similarity(target[OUTER_LIPS], placed[OUTER_LIPS])
    shaped[MOUTH] = transform_points(target[MOUTH], mouth_fit)
    down = _unit(target[8] - target[27])
    drop = max(0.0, float((shaped[LOWER_LIP_BOTTOM] - placed[LOWER_LIP_BOTTOM]) @ down))
    shaped[CHIN_POINTS] += (CHIN_WEIGHTS * drop)[:, None] * down
    low, high = SHAPE_FADE_TURN
    fade = float(np.clip((high - head_turn(target)) / (high - low), 0.0, 1.0))
    return (target + SHAPE_TRANSFER * fade * (shaped - target)).astype(np.float32)
