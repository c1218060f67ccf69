"""The embedded default enhancer: no restoration, crops come back unchanged.

No registry package ships face-restoration weights, so without ``codeformer.pth`` the enhance stage is this
named no-op. It still validates its input like a real enhancer, so a caller's bug shows up without weights too.
"""

from __future__ import annotations

import logging
import math
import numbers

import numpy as np

from mirage_ray.config import field_range
from mirage_ray.vision.base import ENHANCE_CROP_PX

logger = logging.getLogger(__name__)

FIDELITY_RANGE = field_range("codeformer_fidelity")


def check_restore_args(crops: np.ndarray, fidelity: float) -> None:
    """Raise ``ValueError`` unless ``crops`` is uint8 (N, 512, 512, 3) and ``fidelity`` is within [0, 1]."""
    low, high = FIDELITY_RANGE
    if (
        not isinstance(fidelity, numbers.Real)
        or isinstance(fidelity, bool)
        or not math.isfinite(fidelity)
        or not low <= fidelity <= high
    ):
        raise ValueError(f"fidelity must be a number in [{low}, {high}], got {fidelity!r}")
    if not isinstance(crops, np.ndarray):
        raise TypeError(f"crops must be a numpy array, got {type(crops).__name__}")
    expected = (ENHANCE_CROP_PX, ENHANCE_CROP_PX, 3)
    if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[1:] != expected:
        raise ValueError(f"crops must be uint8 (N, {', '.join(map(str, expected))}), got {crops.dtype} {crops.shape}")


class NoEnhancer:
    """``Enhancer`` that returns a copy of its input: the stage is on but no restoration model is loaded."""

    name = "none"

    def __init__(self) -> None:
        logger.info("enhancer 'none': face crops pass through unchanged (no restoration model loaded)")

    def restore(self, crops: np.ndarray, fidelity: float) -> np.ndarray:
        """The crops, unchanged (a new array), after the same validation a real enhancer does."""
        check_restore_args(crops, fidelity)
        return crops.copy()
