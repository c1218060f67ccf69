"""The one way Mirage opens an onnxruntime session (the detectors and the voice models alike)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import onnxruntime as ort

CPU_PROVIDER = "CPUExecutionProvider"


def open_session(
    model: bytes | str,
    providers: Sequence[Any] | None = None,
    threads: int | None = None,
) -> ort.InferenceSession:
    """A session for ``model`` (ONNX bytes, or a path the caller has checked) on ``providers`` (default: CPU), with
    ``threads`` intra-op threads and one inter-op thread (None: onnxruntime's defaults)."""
    options = ort.SessionOptions()
    # no busy-waiting worker threads: on a few shared cores they burn the CPU the other replicas need
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=list(providers or [CPU_PROVIDER]))
