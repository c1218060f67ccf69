"""Fail-closed masking: hide the faces of a frame that could not be swapped (the real face never leaves)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from mirage_ray.vision.faces import Face, face_region

MASK_MARGIN = 0.35  # face boxes grown by this fraction of their size on each side (hair line, jaw, ears)
MASK_CELLS = 6  # the masked region keeps this many cells across: identity is gone, the layout stays
UNCONFIRMED_TRACK_S = 1.0  # while the detector fails, a track it has not confirmed for this long is not swapped
ABSENCE_CONFIRM_S = 1.0  # a face that vanished counts as gone once the detector has found none for this long


def pixelate(region: np.ndarray, cells: int = MASK_CELLS) -> np.ndarray:
    """``region`` reduced to about ``cells`` blocks across its longer side (area mean, nearest upscale)."""
    height, width = region.shape[:2]
    scale = cells / max(height, width, 1)
    small = cv2.resize(
        region, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA
    )
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST)


def mask_faces(image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
    """A copy of ``image`` with every face region pixelated; with no known face, the whole frame is."""
    if not faces:
        return pixelate(image, cells=4 * MASK_CELLS)
    height, width = image.shape[:2]
    out = image.copy()
    for face in faces:
        x1, y1, x2, y2 = face_region([face], width, height, MASK_MARGIN)
        if x2 > x1 and y2 > y1:
            out[y1:y2, x1:x2] = pixelate(out[y1:y2, x1:x2])
    return out


class TrackConfirmation:
    """Whether a session's tracked faces can be trusted while a disguise is on (the fail-closed rule for video).

    Not trusted (the caller masks the whole frame): while the detector is failing, no track or a track it has not
    confirmed for ``unconfirmed_after_s`` (optical flow drifts off the face); and a face that vanished, until the
    detector has found no face for ``absence_confirm_s`` (a miss on a turned head, or a fresh replica's first calls,
    must not reveal it; someone who really left is shown again after that).
    """

    def __init__(
        self, unconfirmed_after_s: float = UNCONFIRMED_TRACK_S, absence_confirm_s: float = ABSENCE_CONFIRM_S
    ) -> None:
        self._unconfirmed_after_s = unconfirmed_after_s
        self._absence_confirm_s = absence_confirm_s
        self._failing_since: float | None = None
        self._seen = False  # a face was found and its absence is not yet confirmed
        self._vanished_at: float | None = None

    def detection_failed(self, now: float) -> None:
        if self._failing_since is None:
            self._failing_since = now

    def detected(self, faces: Sequence[Face], now: float) -> None:
        """A detection that answered, with or without faces."""
        self._failing_since = None
        if faces:
            self._seen, self._vanished_at = True, None
        elif self._seen and self._vanished_at is None:
            self._vanished_at = now

    def trusted(self, faces: Sequence[Face], now: float) -> bool:
        """False when the frame must be masked whole rather than swapped with ``faces`` or sent as it is."""
        if self._failing_since is not None:
            return bool(faces) and now - self._failing_since <= self._unconfirmed_after_s
        if faces or not self._seen:
            return True
        if self._vanished_at is not None and now - self._vanished_at >= self._absence_confirm_s:
            self._seen = False  # the face is gone: frames without a face go out as they are again
            return True
        return False
