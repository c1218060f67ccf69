"""SCRFD-10G face detector (the production backend): buffalo_l ``det_10g.onnx`` through insightface's SCRFD class.

insightface does the letterbox (top-left, to ``det_size`` square), (x - 127.5) / 128 with BGR->RGB, the anchor decode
for strides 8/16/32 with 2 anchors per cell, the score threshold and NMS; this wrapper builds the onnxruntime session
(providers, threads), fixes a single detection scale and returns :class:`Face` objects.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from mirage_ray.onnx_session import open_session
from mirage_ray.vision.base import check_detector_thresholds
from mirage_ray.vision.faces import Face

logger = logging.getLogger(__name__)

DEFAULT_DET_SIZE_PX = 640  # square letterbox side, single scale
DEFAULT_SCORE_THRESHOLD = 0.5
NMS_IOU = 0.4
SCRFD_KPS_OUTPUTS = 9  # score/bbox/kps x strides 8, 16, 32
INSIGHTFACE_CPU_CTX = 0  # prepare(ctx_id >= 0) leaves the session's providers alone
MIN_DET_SIZE_PX = 32


class ScrfdDetector:
    """SCRFD with 5 keypoints: BGR uint8 image in, faces (frame coordinates, best first) out."""

    name = "scrfd-10g"

    def __init__(
        self,
        model: str | os.PathLike[str] | ort.InferenceSession,
        *,
        det_size: int = DEFAULT_DET_SIZE_PX,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        nms_threshold: float = NMS_IOU,
    ) -> None:
        """``model``: path to ``det_10g.onnx`` or a ready session (then ``providers``/``threads`` are unused).
        ``det_size``: side of the square the image is letterboxed into (multiple of 32)."""
        if det_size < MIN_DET_SIZE_PX or det_size % 32:
            raise ValueError(f"det_size must be a multiple of 32 and >= {MIN_DET_SIZE_PX}, got {det_size}")
        check_detector_thresholds(score_threshold, nms_threshold)
        from insightface.model_zoo.scrfd import SCRFD  # heavy import (~1 s), only when this backend is chosen

        if isinstance(model, ort.InferenceSession):
            session, model_file = model, None
        else:
            model_file = os.fspath(model)
            if not os.path.isfile(model_file):
                raise FileNotFoundError(
                    f"SCRFD model not found at {model_file}; fetch it with `mirage-ray models fetch`"
                )
            session = open_session(model_file, providers, threads)
        outputs = session.get_outputs()
        if len(outputs) != SCRFD_KPS_OUTPUTS:
            raise ValueError(
                f"SCRFD with keypoints has {SCRFD_KPS_OUTPUTS} outputs (score/bbox/kps x 3 strides); "
                f"this model has {len(outputs)}: {[o.name for o in outputs]}"
            )
        self.det_size = int(det_size)
        self._model = SCRFD(model_file=model_file, session=session)
        self._model.prepare(
            INSIGHTFACE_CPU_CTX,
            input_size=(self.det_size, self.det_size),
            det_thresh=float(score_threshold),
            nms_thresh=float(nms_threshold),
        )
        self.score_threshold = float(score_threshold)
        logger.info("SCRFD detector ready: det_size=%d providers=%s", self.det_size, session.get_providers())

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in one BGR uint8 (H, W, 3) image, sorted by score (best first)."""
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"expected a BGR uint8 image of shape (H, W, 3), got {getattr(image, 'shape', type(image).__name__)}"
            )
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError(f"empty image of shape {image.shape}")
        dets, kpss = self._model.detect(
            image, input_size=(self.det_size, self.det_size), det_thresh=self.score_threshold
        )
        if kpss is None:
            raise ValueError("SCRFD model returned no keypoints; a keypoint model (det_10g) is required")
        order = np.argsort(-dets[:, 4], kind="stable")
        return [
            Face(bbox=dets[i, :4].astype(np.float32), kps=kpss[i].astype(np.float32), score=float(dets[i, 4]))
            for i in order
        ]

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        """Faces per image (det_10g takes batch 1, so one run per image)."""
        return [self.detect(image) for image in images]
