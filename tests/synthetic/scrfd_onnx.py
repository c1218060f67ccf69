"""A synthetic SCRFD ONNX with det_10g's exact signature, for testing the production path without the real weights.

Signature (as insightface's ``model_zoo/scrfd.py`` reads it): one input ``input.1`` [1, 3, H, W] (dynamic H, W;
RGB, (x - 127.5) / 128) and 9 rank-2 outputs in the order score/bbox/kps for strides 8, 16, 32: ``score_s``
[H/s * W/s * 2, 1], ``bbox_s`` [.., 4] (distances l, t, r, b in stride units), ``kps_s`` [.., 10] (offsets in stride
units); rows are cell-major (row, column), then the 2 anchors of the cell.

Behaviour: strides 8 and 16 never fire. At stride 32 a cell's score is sigmoid(GAIN * (mean brightness - LEVEL)) for
anchor 0 (anchor 1 is ANCHOR1_LOGIT_OFFSET lower), so a white, grid-aligned 32x32 block on black (in detector input
pixels) gives exactly one face whose anchor centre is the block's top-left corner; box and keypoints are constant
offsets from that centre (see :func:`expected_face`).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INPUT_NAME = "input.1"
STRIDES = (8, 16, 32)
ANCHORS_PER_CELL = 2
FACE_STRIDE = 32
GAIN = 8.0
LEVEL = 0.5  # normalised brightness (in [-1, 1]) at which the score crosses 0.5
ANCHOR1_LOGIT_OFFSET = -3.0
SILENT_LOGIT = -12.0  # strides that never fire
BOX_DISTANCES = np.array([1.5, 2.0, 2.5, 3.0], np.float32)  # l, t, r, b in stride units
KPS_OFFSETS = np.array(
    [[-0.6, -0.5], [0.6, -0.5], [0.0, 0.3], [-0.5, 1.1], [0.5, 1.1]], np.float32
)  # insightface order, stride units
OPSET = 13
IR_VERSION = 8
WHITE_LEVEL = (255.0 - 127.5) / 128.0


def face_score(level: float = WHITE_LEVEL) -> float:
    """The score the model gives anchor 0 of a cell whose normalised mean brightness is ``level``."""
    return float(1.0 / (1.0 + np.exp(-GAIN * (level - LEVEL))))


def expected_face(center_x: float, center_y: float, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Box [x1, y1, x2, y2] and (5, 2) kps for an anchor centre given in detector-input pixels, mapped to the frame
    by dividing by the letterbox ``scale`` (detector input size / frame size)."""
    left, top, right, bottom = BOX_DISTANCES * FACE_STRIDE
    box = np.array([center_x - left, center_y - top, center_x + right, center_y + bottom], np.float32) / scale
    kps = (np.array([center_x, center_y], np.float32) + KPS_OFFSETS * FACE_STRIDE) / scale
    return box, kps


def _const_conv(name: str, source: str, weight: np.ndarray, bias: np.ndarray, nodes: list, inits: list) -> str:
    inits.append(numpy_helper.from_array(weight.astype(np.float32).reshape(-1, 1, 1, 1), f"{name}_w"))
    inits.append(numpy_helper.from_array(bias.astype(np.float32), f"{name}_b"))
    nodes.append(helper.make_node("Conv", [source, f"{name}_w", f"{name}_b"], [f"{name}_conv"]))
    return f"{name}_conv"


def _to_rows(name: str, source: str, width: int, output: str, nodes: list, inits: list) -> None:
    inits.append(numpy_helper.from_array(np.array([-1, width], np.int64), f"{name}_shape"))
    nodes.append(helper.make_node("Transpose", [source], [f"{name}_nhwc"], perm=[0, 2, 3, 1]))
    nodes.append(helper.make_node("Reshape", [f"{name}_nhwc", f"{name}_shape"], [output]))


def build_scrfd_onnx() -> bytes:
    """The serialized synthetic SCRFD model."""
    nodes: list = [helper.make_node("ReduceMean", [INPUT_NAME], ["brightness"], axes=[1], keepdims=1)]
    inits: list = []
    outputs = {"score": [], "bbox": [], "kps": []}
    for stride in STRIDES:
        pooled = f"pool{stride}"
        nodes.append(
            helper.make_node(
                "AveragePool", ["brightness"], [pooled], kernel_shape=[stride, stride], strides=[stride] * 2
            )
        )
        if stride == FACE_STRIDE:
            weight = np.full(ANCHORS_PER_CELL, GAIN)
            bias = np.array([-GAIN * LEVEL, -GAIN * LEVEL + ANCHOR1_LOGIT_OFFSET])
        else:
            weight, bias = np.zeros(ANCHORS_PER_CELL), np.full(ANCHORS_PER_CELL, SILENT_LOGIT)
        logits = _const_conv(f"score{stride}", pooled, weight, bias, nodes, inits)
        nodes.append(helper.make_node("Sigmoid", [logits], [f"score{stride}_sig"]))
        heads = {
            "score": (f"score{stride}_sig", 1),
            "bbox": (_const_conv(f"bbox{stride}", pooled, np.zeros(8), np.tile(BOX_DISTANCES, 2), nodes, inits), 4),
            "kps": (
                _const_conv(f"kps{stride}", pooled, np.zeros(20), np.tile(KPS_OFFSETS.ravel(), 2), nodes, inits),
                10,
            ),
        }
        for kind, (source, width) in heads.items():
            out = f"{kind}_{stride}"
            _to_rows(f"{kind}{stride}r", source, width, out, nodes, inits)
            outputs[kind].append(helper.make_tensor_value_info(out, TensorProto.FLOAT, [f"n{stride}", width]))
    graph = helper.make_graph(
        nodes,
        "synthetic_scrfd",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [1, 3, "height", "width"])],
        outputs["score"] + outputs["bbox"] + outputs["kps"],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def white_block_image(width: int, height: int, x: int, y: int, size: int) -> np.ndarray:
    """Black BGR uint8 (height, width, 3) frame with a white ``size`` square whose top-left corner is (x, y)."""
    image = np.zeros((height, width, 3), np.uint8)
    image[y : y + size, x : x + size] = 255
    return image
