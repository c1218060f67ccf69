"""Small onnxruntime helpers shared by the voice backends: sessions from paths or ready sessions, dtypes, fp16."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from mirage_ray.onnx_session import open_session

logger = logging.getLogger(__name__)

TENSORRT_PROVIDER = "TensorrtExecutionProvider"
_ORT_TO_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def numpy_dtype(ort_type: str) -> type[np.generic]:
    """numpy dtype for an onnxruntime type string such as ``tensor(float16)``."""
    try:
        return _ORT_TO_NUMPY[ort_type]
    except KeyError:
        raise ValueError(f"unsupported ONNX tensor type {ort_type}") from None


def fp16_providers(providers: Sequence[Any]) -> list[Any]:
    """Providers with fp16 switched on where onnxruntime can do it at run time (TensorRT's ``trt_fp16_enable``)."""
    result: list[Any] = []
    for entry in providers:
        name, options = (entry, {}) if isinstance(entry, str) else (entry[0], dict(entry[1]))
        if name == TENSORRT_PROVIDER:
            result.append((name, {**options, "trt_fp16_enable": True}))
        else:
            result.append(entry)
    return result


def make_session(
    model: str | os.PathLike[str] | ort.InferenceSession,
    providers: Sequence[Any] | None = None,
    threads: int = 0,
) -> ort.InferenceSession:
    """A ready session is returned as is; a path is opened with ``providers`` (default CPU)."""
    if isinstance(model, ort.InferenceSession):
        return model
    path = Path(model)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    session = open_session(str(path), providers, threads or None)
    logger.info("loaded %s with %s", path.name, session.get_providers())
    return session
