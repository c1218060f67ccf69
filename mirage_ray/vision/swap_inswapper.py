"""InSwapper 128 (production swapper): ArcFace identity embedding + the inswapper ONNX model, bbox-local paste-back.

Both models load through ``insightface.model_zoo.get_model`` (or from ready onnxruntime sessions), so insightface's
own ``INSwapper`` / ``ArcFaceONNX`` classes hold the sessions, I/O names and ``emap``. Pre- and post-processing follow
insightface's ``INSwapper.get``: the 128x128 crop is ``norm_crop`` (similarity warp, zeros outside the image), and the
whole swapped crop goes back under the reference's mask (the crop's footprint, eroded by ``mask_size // 20`` and
blurred over as much), computed on a window around the crop's footprint instead of the whole frame.

The swapper is bbox-local: it gets a region around the faces in that region's coordinates. The crop needs real image
context over its whole footprint, i.e. face boxes grown by ``CONTEXT_MARGIN`` of their size on each side; a footprint
that leaves the region sees zeros there, as the reference does at the frame's edge.

Every output is checked (NaN/inf, out of range, black or near-constant). The fp16 file is known to produce such
outputs on some onnxruntime versions and providers: then, when an fp32 file is given, the swapper switches to it for
good and says why in :attr:`InSwapper.degraded_reason`; otherwise that face is left unswapped and counted.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from insightface.model_zoo import get_model
from insightface.model_zoo.arcface_onnx import ArcFaceONNX
from insightface.model_zoo.inswapper import INSwapper as InsightINSwapper

from mirage_ray.vision.align import (
    ARCFACE_TEMPLATE_112,
    INSWAPPER_TEMPLATE_128,
    crop_footprint,
    warp_face,
)
from mirage_ray.vision.base import MIN_REFERENCE_FACE_PX, ReferenceRejected
from mirage_ray.vision.faces import Face, SourceIdentity

logger = logging.getLogger(__name__)

INSWAPPER_NAME = "inswapper-128"
INSWAPPER_FP16_NAME = "inswapper-128-fp16"
PRECISIONS = ("fp32", "fp16")
DEFAULT_PROVIDERS = ("CPUExecutionProvider",)
ARCFACE_CROP_PX = 112
SWAP_CROP_PX = 128
# Paste-back mask of insightface's INSwapper.get, in image pixels, where mask_size is the geometric mean of the sides
# of the crop footprint's bounding box: erode with a k x k kernel, k = max(mask_size // 10, 10), then Gaussian-blur
# with a (2b + 1)-wide kernel, b = max(mask_size // 20, 5).
WHITE_THRESHOLD = 20.0  # warped white above this counts as inside the crop
ERODE_KERNEL_DIVISOR, MIN_ERODE_KERNEL_PX = 10, 10
BLUR_HALF_DIVISOR, MIN_BLUR_HALF_PX = 20, 5
# Face-box growth per side (fraction of the box's larger side) whose region holds the whole 128 crop: measured with
# RetinaFace boxes on the faces of t1.jpg, Tom_Hanks_54745.png and astronaut(), rolled by up to +-45 degrees
# (worst 0.50 upright, 0.62 rolled); the mask's own support needs 0.44 upright, 0.53 rolled.
CONTEXT_MARGIN = 0.65
# Output sanity (the model's output is RGB in [0, 1]).
SANE_RANGE = (-0.25, 1.25)
MAX_OUT_OF_RANGE_FRACTION = 0.01
MIN_OUTPUT_MEAN = 0.02  # darker than this on average: a black box
MIN_OUTPUT_STD = 0.01  # flatter than this: a constant image

_NP_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class SwapModelError(RuntimeError):
    """A model file is not what the swapper needs (wrong signature, missing emap)."""


def output_problem(pred: np.ndarray) -> str | None:
    """Why a swapper output (N, 3, H, W) in [0, 1] is not a usable face, or None when it is."""
    values = np.asarray(pred, np.float32)
    if not np.all(np.isfinite(values)):
        return "output contains NaN or inf"
    low, high = SANE_RANGE
    outside = float(np.mean((values < low) | (values > high)))
    if outside > MAX_OUT_OF_RANGE_FRACTION:
        return f"{outside:.1%} of output values outside [{low}, {high}]"
    if float(values.mean()) < MIN_OUTPUT_MEAN:
        return "output is black"
    if float(values.std()) < MIN_OUTPUT_STD:
        return "output is near-constant"
    return None


def latent_for(embedding: np.ndarray, emap: np.ndarray) -> np.ndarray:
    """InSwapper's source input: normalize(embedding @ emap), float32 (1, D)."""
    latent = np.asarray(embedding, np.float32).reshape(1, -1) @ np.asarray(emap, np.float32)
    norm = float(np.linalg.norm(latent))
    if not np.isfinite(norm) or norm <= 0.0:
        raise ValueError("identity embedding maps to a zero latent")
    return latent / norm


def paste_swapped(image: np.ndarray, swapped: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """insightface ``INSwapper.get``'s paste-back of a swapped crop into a copy of ``image``, done only where it lands.

    As the reference: the whole crop is warped back (zeros outside it), under a mask made by warping a white crop into
    the frame (values > 20 set to 255), eroding it with a k x k kernel (the frame's edge does not erode) and blurring
    it with a (2b + 1)-wide Gaussian, k and b from ``mask_size`` (see the constants). The reference does this over
    the whole frame; here it runs on a window around the crop's footprint that holds everything the result depends on.
    ``matrix`` maps image -> crop.
    """
    height, width = image.shape[:2]
    size = swapped.shape[0]
    x1, y1, x2, y2 = (float(v) for v in crop_footprint(matrix, size))
    upper_size = int(np.sqrt(max(x2 - x1, 1.0) * max(y2 - y1, 1.0))) + 1  # >= the mask_size measured below
    pad = _erode_kernel(upper_size) + _blur_half(upper_size) + 2
    wx1, wy1 = int(np.floor(x1)) - pad, int(np.floor(y1)) - pad
    wx2, wy2 = int(np.ceil(x2)) + pad + 1, int(np.ceil(y2)) + pad + 1
    local = cv2.invertAffineTransform(np.asarray(matrix, np.float64))
    local[:, 2] -= (wx1, wy1)
    window = (wx2 - wx1, wy2 - wy1)
    white = cv2.warpAffine(np.full((size, size), 255.0, np.float32), local, window, borderValue=0.0)
    white[white > WHITE_THRESHOLD] = 255.0
    fx1, fy1 = max(0, -wx1), max(0, -wy1)  # the window's part inside the frame
    fx2, fy2 = min(window[0], width - wx1), min(window[1], height - wy1)
    out = image.copy()
    if fx2 <= fx1 or fy2 <= fy1:
        return out
    inner = white[fy1:fy2, fx1:fx2]
    rows = np.flatnonzero((inner == 255.0).any(axis=1))
    cols = np.flatnonzero((inner == 255.0).any(axis=0))
    if len(rows) == 0:
        return out
    mask_size = int(np.sqrt(float(rows[-1] - rows[0]) * float(cols[-1] - cols[0])))
    # OpenCV's erosion treats the outside of the frame as white
    white[:fy1], white[fy2:], white[:, :fx1], white[:, fx2:] = 255.0, 255.0, 255.0, 255.0
    kernel = _erode_kernel(mask_size)
    eroded = cv2.erode(white, np.ones((kernel, kernel), np.uint8))[fy1:fy2, fx1:fx2]
    blur = 2 * _blur_half(mask_size) + 1
    weight = cv2.GaussianBlur(eroded, (blur, blur), 0) * np.float32(1.0 / 255.0)
    rows = np.flatnonzero(weight.any(axis=1))  # blend only where the weight is not 0
    cols = np.flatnonzero(weight.any(axis=0))
    if len(rows) == 0:
        return out
    weight = weight[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    bx1, by1 = wx1 + fx1 + int(cols[0]), wy1 + fy1 + int(rows[0])  # the blended box in the frame
    bx2, by2 = bx1 + weight.shape[1], by1 + weight.shape[0]
    local[:, 2] -= (bx1 - wx1, by1 - wy1)
    fake = cv2.warpAffine(swapped, local, (bx2 - bx1, by2 - by1), borderValue=0.0).astype(np.float32)
    target = out[by1:by2, bx1:bx2]
    merged = target.astype(np.float32)
    merged += weight[..., None] * (fake - merged)  # weight * fake + (1 - weight) * target
    target[...] = merged.astype(np.uint8)  # truncated, as the reference does
    return out


def _erode_kernel(mask_size: int) -> int:
    return max(mask_size // ERODE_KERNEL_DIVISOR, MIN_ERODE_KERNEL_PX)


def _blur_half(mask_size: int) -> int:
    return max(mask_size // BLUR_HALF_DIVISOR, MIN_BLUR_HALF_PX)


def align_for_swap(image: np.ndarray, kps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 128x128 BGR crop InSwapper sees (insightface's ``norm_crop``: zeros outside the image) and its matrix."""
    return warp_face(image, kps, INSWAPPER_TEMPLATE_128, SWAP_CROP_PX, border=cv2.BORDER_CONSTANT)


@dataclasses.dataclass(frozen=True)
class _Model:
    """One loaded swapper file with what a forward pass needs."""

    path: Path
    swapper: Any  # insightface INSwapper
    emap: np.ndarray
    target_dtype: type
    source_dtype: type


class InSwapper:
    """InSwapper 128 + ArcFace R50; thread-safe, and stateless across sessions (only health counters change)."""

    context_margin = CONTEXT_MARGIN  # the region around the faces it needs (the session sends that much)

    def __init__(
        self,
        inswapper_path: str | Path,
        arcface_path: str | Path,
        providers: Sequence[Any] | None = None,
        precision: str = "fp32",
        fp32_fallback_path: str | Path | None = None,
        *,
        inswapper_session: Any | None = None,
        arcface_session: Any | None = None,
        session_options: Any | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        self.name = INSWAPPER_FP16_NAME if precision == "fp16" else INSWAPPER_NAME
        self.precision = precision
        self._providers = list(providers) if providers is not None else list(DEFAULT_PROVIDERS)
        self._session_options = session_options
        self._fallback_path = Path(fp32_fallback_path) if fp32_fallback_path is not None else None
        if self._fallback_path is not None and not self._fallback_path.is_file():
            raise FileNotFoundError(
                f"fp32 fallback {self._fallback_path.name} not found at {self._fallback_path}; "
                "fetch it with: mirage-ray models fetch"
            )
        self._arcface = self._load(Path(arcface_path), ArcFaceONNX, arcface_session)
        self._model = self._load_swapper(Path(inswapper_path), inswapper_session)
        self._fallback: _Model | None = None
        self._lock = threading.Lock()
        self.degraded_reason: str | None = None  # set once the fp32 fallback replaced the fp16 model
        self.sanity_failures = 0  # outputs that failed the sanity check
        self.unswapped_faces = 0  # faces returned unswapped because no sane output could be had

    # ---- loading ----------------------------------------------------------------------------------------------
    def _load(self, path: Path, expected: type, session: Any | None) -> Any:
        if session is not None:
            return expected(model_file=str(path), session=session)
        if not path.is_file():
            raise FileNotFoundError(
                f"model file {path.name} not found at {path}; fetch it with: mirage-ray models fetch"
            )
        kwargs: dict[str, Any] = {"providers": self._providers}
        if self._session_options is not None:
            kwargs["sess_options"] = self._session_options
        model = get_model(str(path), **kwargs)
        if not isinstance(model, expected):
            raise SwapModelError(
                f"{path} does not have the {expected.__name__} signature (insightface routed it to "
                f"{type(model).__name__})"
            )
        return model

    def _load_swapper(self, path: Path, session: Any | None = None) -> _Model:
        swapper = self._load(path, InsightINSwapper, session)
        inputs = swapper.session.get_inputs()
        emap = np.asarray(swapper.emap, np.float32)
        source_dim = inputs[1].shape[-1]
        if emap.ndim != 2 or (isinstance(source_dim, int) and emap.shape[1] != source_dim):
            raise SwapModelError(f"{path}: last initializer {emap.shape} is not an emap for a {source_dim}-d source")
        dtypes = [_NP_DTYPES.get(inp.type) for inp in inputs[:2]]
        if None in dtypes:
            raise SwapModelError(f"{path}: unsupported input types {[inp.type for inp in inputs[:2]]}")
        return _Model(path, swapper, emap, dtypes[0], dtypes[1])

    # ---- identity -----------------------------------------------------------------------------------------------
    def identity(self, image: np.ndarray, face: Face) -> SourceIdentity:
        """ArcFace embedding (L2-normalised, 512-d) of the reference face on its 112x112 aligned crop."""
        _check_image(image)
        if face.size < MIN_REFERENCE_FACE_PX:
            raise ReferenceRejected(
                f"The face in the reference photo is too small ({face.size:.0f} px); "
                f"use a photo where the face is at least {MIN_REFERENCE_FACE_PX} px across."
            )
        crop, _ = warp_face(image, face.kps, ARCFACE_TEMPLATE_112, ARCFACE_CROP_PX, border=cv2.BORDER_CONSTANT)
        embedding = np.asarray(self._arcface.get_feat(crop), np.float32).reshape(-1)
        norm = float(np.linalg.norm(embedding))
        if not np.isfinite(norm) or norm <= 0.0:
            raise ReferenceRejected("No identity could be computed from the reference face; try another photo.")
        if embedding.shape[0] != self._model.emap.shape[0]:
            raise SwapModelError(
                f"ArcFace gives {embedding.shape[0]}-d embeddings, emap expects {self._model.emap.shape[0]}"
            )
        normed = embedding / norm
        return SourceIdentity(backend=self.name, face=dataclasses.replace(face, embedding=normed), embedding=normed)

    # ---- swap -----------------------------------------------------------------------------------------------------
    def swap(self, image: np.ndarray, faces: Sequence[Face], identity: SourceIdentity) -> np.ndarray:
        """A new image with each face replaced by ``identity``; only pixels under each face's 128 crop can change.

        Each crop is taken from ``image`` (not from the previous face's result) and pasted whole by
        :func:`paste_swapped`. ``image`` may be a region of a frame, with faces in its coordinates (``CONTEXT_MARGIN``).
        """
        _check_image(image)
        if identity.embedding is None:
            raise ValueError(f"identity from backend {identity.backend!r} has no embedding; build it with identity()")
        out = image.copy()
        for face in faces:
            crop, matrix = align_for_swap(image, face.kps)
            swapped = self._swap_crop(crop, identity.embedding)
            if swapped is None:
                continue
            out = paste_swapped(out, swapped, matrix)
        return out

    def _swap_crop(self, crop: np.ndarray, embedding: np.ndarray) -> np.ndarray | None:
        """The swapped 128 crop (BGR uint8), falling back to fp32 on a bad fp16 output; None if nothing sane."""
        model = self._fallback or self._model
        pred = self._forward(model, crop, embedding)
        problem = output_problem(pred)
        if problem is None:
            return _to_bgr(pred)
        self._count_failure(model, problem)
        if model is self._model and self.precision == "fp16" and self._fallback_path is not None:
            fallback = self._use_fallback(problem)
            pred = self._forward(fallback, crop, embedding)
            problem = output_problem(pred)
            if problem is None:
                return _to_bgr(pred)
            self._count_failure(fallback, problem)
        with self._lock:
            self.unswapped_faces += 1
        return None

    @staticmethod
    def _forward(model: _Model, crop: np.ndarray, embedding: np.ndarray) -> np.ndarray:
        blob = cv2.dnn.blobFromImage(crop, 1.0 / 255.0, (SWAP_CROP_PX, SWAP_CROP_PX), (0, 0, 0), swapRB=True)
        latent = latent_for(embedding, model.emap)
        swapper = model.swapper
        feeds = {
            swapper.input_names[0]: blob.astype(model.target_dtype),
            swapper.input_names[1]: latent.astype(model.source_dtype),
        }
        return swapper.session.run(swapper.output_names, feeds)[0]

    def _count_failure(self, model: _Model, problem: str) -> None:
        with self._lock:
            self.sanity_failures += 1
            count = self.sanity_failures
        if count & (count - 1) == 0:  # log the 1st, 2nd, 4th, 8th... failure
            logger.warning(
                "swapper output from %s failed the sanity check (%s); %d so far", model.path.name, problem, count
            )

    def _use_fallback(self, problem: str) -> _Model:
        with self._lock:
            if self._fallback is None:
                self._fallback = self._load_swapper(self._fallback_path)
                self.degraded_reason = (
                    f"fp16 output failed the sanity check ({problem}); using fp32 {self._fallback_path.name}"
                )
                logger.warning("%s: %s", self.name, self.degraded_reason)
            return self._fallback


def _to_bgr(pred: np.ndarray) -> np.ndarray:
    rgb = np.asarray(pred[0], np.float32).transpose(1, 2, 0)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)[..., ::-1].copy()


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a BGR uint8 (H, W, 3) image, got {getattr(image, 'shape', type(image))}")
