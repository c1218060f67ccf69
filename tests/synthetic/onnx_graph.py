"""What every synthetic ONNX model shares: the opset and IR version, building a checked model, saving it."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import helper

OPSET = 17
IR_VERSION = 8


def build_model(nodes, name, inputs, outputs, initializers) -> onnx.ModelProto:
    """A checked model of one graph (opset ``OPSET``, IR ``IR_VERSION``)."""
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="mirage-tests")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def save(model: onnx.ModelProto, path: str | Path) -> Path:
    """Write ``model`` to ``path`` and return the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target))
    return target
