"""The small protocols every video backend implements (one file per backend)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from mirage_ray.vision.faces import Face, SourceIdentity


class ReferenceRejected(ValueError):
    """The uploaded reference cannot become an identity; the message is shown to the user."""


@runtime_checkable
class Detector(Protocol):
    """BGR uint8 image in, faces out (frame coordinates, best first)."""

    name: str

    def detect(self, image: np.ndarray) -> list[Face]: ...

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        """Faces per image; images from several sessions run through the model as one batch where it allows."""
        ...


def check_detector_thresholds(score_threshold: float, nms_threshold: float) -> None:
    """A detector's score threshold must lie in (0, 1) and its NMS IoU threshold in (0, 1]."""
    if not 0.0 < score_threshold < 1.0:
        raise ValueError(f"score_threshold must be in (0, 1), got {score_threshold}")
    if not 0.0 < nms_threshold <= 1.0:
        raise ValueError(f"nms_threshold must be in (0, 1], got {nms_threshold}")


@runtime_checkable
class Swapper(Protocol):
    """Builds an identity from a reference face, and swaps it onto target faces."""

    name: str

    def identity(self, image: np.ndarray, face: Face) -> SourceIdentity: ...

    def swap(self, image: np.ndarray, faces: Sequence[Face], identity: SourceIdentity) -> np.ndarray: ...


MIN_REFERENCE_FACE_PX = 64  # a reference face smaller than this gives no usable identity (checked by both swappers)
ENHANCE_CROP_PX = 512  # the enhance stage's input: face crops aligned on align.FFHQ_TEMPLATE_512, this many px square


@runtime_checkable
class Enhancer(Protocol):
    """Aligned 512x512 BGR uint8 face crops in (N, 512, 512, 3), restored crops out, same shape."""

    name: str

    def restore(self, crops: np.ndarray, fidelity: float) -> np.ndarray: ...
