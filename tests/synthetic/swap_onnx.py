"""Small synthetic ONNX models with the exact I/O signatures of ArcFace R50 and InSwapper 128.

The real weights cannot be had here; these stand-ins load through ``insightface.model_zoo.get_model`` (which routes
them to ``ArcFaceONNX`` and ``INSwapper`` by signature) and compute something checkable:

- ``arcface_model``: ``input.1`` [N,3,112,112] → ``embedding`` [N,512]: 28x28 average pooling (a 4x4 colour layout)
  times a fixed random projection, so different faces give different embeddings.
- ``inswapper_model``: ``target`` [1,3,128,128] (first) and ``source`` [1,512] → ``output`` [1,3,128,128]:
  ``(1 - MIX) * target + MIX * sigmoid(GAIN * source[:3])`` per channel, i.e. the target blended with a colour read from
  the latent. ``emap`` (512x512) is the LAST initializer, as in the real file (insightface reads it from there).
  ``mode`` "nan" / "black" make a degenerate model (all NaN / all zeros) for the output sanity checks, and
  ``precision="fp16"`` stores the weights and computes in float16 (float32 I/O unless ``fp16_io``).
- ``geometry_swapper_model``: the same signature for geometry checks. ``"identity"`` returns ``target`` unchanged
  (a swap with it must leave the frame as it was); ``"pattern"`` returns :func:`crop_pattern` whatever the input, so
  where each crop pixel lands in the frame shows the paste-back's warp.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.synthetic.onnx_graph import build_model as _model
from tests.synthetic.onnx_graph import save as save

EMBEDDING_DIM = 512
ARCFACE_SIZE, SWAP_SIZE = 112, 128
MIX = 0.6  # weight of the latent colour in the synthetic swapper's output
GAIN = 20.0  # sigmoid gain on the latent's first three entries (latent entries are ~±0.05)


def arcface_model(seed: int = 0) -> onnx.ModelProto:
    """ArcFace-signature model: [N,3,112,112] float → [N,512] float."""
    rng = np.random.default_rng(seed)
    pooled = 3 * 4 * 4
    projection = rng.standard_normal((pooled, EMBEDDING_DIM)).astype(np.float32)
    nodes = [
        helper.make_node("AveragePool", ["input.1"], ["pooled"], kernel_shape=[28, 28], strides=[28, 28]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "projection"], ["embedding"]),
    ]
    inputs = [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, ARCFACE_SIZE, ARCFACE_SIZE])]
    outputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", EMBEDDING_DIM])]
    return _model(nodes, "arcface-synthetic", inputs, outputs, [numpy_helper.from_array(projection, "projection")])


def random_emap(seed: int = 1) -> np.ndarray:
    """A 512x512 float32 emap (scaled so latents stay well-conditioned)."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((EMBEDDING_DIM, EMBEDDING_DIM)) / np.sqrt(EMBEDDING_DIM)).astype(np.float32)


def expected_colour(embedding: np.ndarray, emap: np.ndarray) -> np.ndarray:
    """The RGB colour in [0, 1] that :func:`inswapper_model` blends in for a normed ``embedding``."""
    latent = np.asarray(embedding, np.float64).reshape(1, -1) @ np.asarray(emap, np.float64)
    latent /= np.linalg.norm(latent)
    return 1.0 / (1.0 + np.exp(-GAIN * latent[0, :3]))


def inswapper_model(
    emap: np.ndarray | None = None, mode: str = "blend", precision: str = "fp32", fp16_io: bool = False
) -> onnx.ModelProto:
    """InSwapper-signature model; see the module docstring for what it computes."""
    if mode not in ("blend", "nan", "black"):
        raise ValueError(f"mode must be blend, nan or black, not {mode!r}")
    emap = random_emap() if emap is None else np.asarray(emap, np.float32)
    dtype = np.float16 if precision == "fp16" else np.float32
    elem = TensorProto.FLOAT16 if precision == "fp16" else TensorProto.FLOAT
    io_elem = TensorProto.FLOAT16 if fp16_io else TensorProto.FLOAT
    select = np.zeros((EMBEDDING_DIM, 3), dtype)
    select[np.arange(3), np.arange(3)] = 1.0
    nodes: list[onnx.NodeProto] = []
    if io_elem != elem:
        nodes += [
            helper.make_node("Cast", ["target"], ["target_c"], to=elem),
            helper.make_node("Cast", ["source"], ["source_c"], to=elem),
        ]
        target, source = "target_c", "source_c"
    else:
        target, source = "target", "source"
    nodes += [
        helper.make_node("MatMul", [source, "select"], ["picked"]),
        helper.make_node("Mul", ["picked", "gain"], ["scaled"]),
        helper.make_node("Sigmoid", ["scaled"], ["colour_flat"]),
        helper.make_node("Reshape", ["colour_flat", "colour_shape"], ["colour"]),
        helper.make_node("Mul", [target, "keep"], ["kept"]),
        helper.make_node("Mul", ["colour", "mix"], ["mixed"]),
        helper.make_node("Add", ["kept", "mixed"], ["blended"]),
    ]
    result = "blended"
    if mode == "nan":  # 0 / 0
        nodes += [
            helper.make_node("Sub", ["blended", "blended"], ["zeros"]),
            helper.make_node("Div", ["zeros", "zeros"], ["nan"]),
        ]
        result = "nan"
    elif mode == "black":
        nodes.append(helper.make_node("Mul", ["blended", "zero"], ["black"]))
        result = "black"
    if io_elem != elem:
        nodes.append(helper.make_node("Cast", [result], ["output"], to=io_elem))
    else:
        nodes.append(helper.make_node("Identity", [result], ["output"]))
    initializers = [
        numpy_helper.from_array(select, "select"),
        numpy_helper.from_array(np.array(GAIN, dtype), "gain"),
        numpy_helper.from_array(np.array([1, 3, 1, 1], np.int64), "colour_shape"),
        numpy_helper.from_array(np.array(1.0 - MIX, dtype), "keep"),
        numpy_helper.from_array(np.array(MIX, dtype), "mix"),
    ]
    if mode == "black":
        initializers.append(numpy_helper.from_array(np.array(0.0, dtype), "zero"))
    initializers.append(numpy_helper.from_array(emap.astype(dtype), "emap"))  # last, as insightface expects
    inputs = [
        helper.make_tensor_value_info("target", io_elem, [1, 3, SWAP_SIZE, SWAP_SIZE]),
        helper.make_tensor_value_info("source", io_elem, [1, EMBEDDING_DIM]),
    ]
    outputs = [helper.make_tensor_value_info("output", io_elem, [1, 3, SWAP_SIZE, SWAP_SIZE])]
    return _model(nodes, "inswapper-synthetic", inputs, outputs, initializers)


GEOMETRY_MODES = ("identity", "pattern")


def crop_pattern(size: int = SWAP_SIZE) -> np.ndarray:
    """RGB (1, 3, size, size) float32 in [0.1, 0.9]: smooth ramps across x and y plus a product term, all different
    per channel, so any flip, transpose, shift or channel swap of the crop changes what lands in the frame."""
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    x, y = np.meshgrid(ramp, ramp)
    channels = [0.1 + 0.8 * x, 0.1 + 0.8 * y, 0.1 + 0.8 * (0.5 * x + 0.5 * (1.0 - y) * x + 0.25 * (1.0 - x))]
    return np.clip(np.stack(channels)[None], 0.1, 0.9).astype(np.float32)


def geometry_swapper_model(mode: str = "identity", emap: np.ndarray | None = None) -> onnx.ModelProto:
    """InSwapper-signature model (``target`` first, ``source``, ``emap`` last) that ignores the identity; see above."""
    if mode not in GEOMETRY_MODES:
        raise ValueError(f"mode must be one of {GEOMETRY_MODES}, not {mode!r}")
    emap = random_emap() if emap is None else np.asarray(emap, np.float32)
    initializers = [numpy_helper.from_array(np.zeros((3, EMBEDDING_DIM, 1, 1), np.float32), "source_weight")]
    # the source takes part with weight 0, so both inputs are used as in the real graph
    nodes = [
        helper.make_node("Reshape", ["source", "source_shape"], ["source_4d"]),
        helper.make_node("Conv", ["source_4d", "source_weight"], ["source_term"]),
    ]
    initializers.append(numpy_helper.from_array(np.array([1, EMBEDDING_DIM, 1, 1], np.int64), "source_shape"))
    if mode == "identity":
        nodes.append(helper.make_node("Add", ["target", "source_term"], ["output"]))
    else:
        initializers.append(numpy_helper.from_array(crop_pattern(), "pattern"))
        nodes += [
            helper.make_node("Mul", ["target", "zero"], ["target_term"]),
            helper.make_node("Add", ["target_term", "pattern"], ["pattern_out"]),
            helper.make_node("Add", ["pattern_out", "source_term"], ["output"]),
        ]
        initializers.append(numpy_helper.from_array(np.array(0.0, np.float32), "zero"))
    initializers.append(numpy_helper.from_array(emap, "emap"))  # last, as insightface expects
    inputs = [
        helper.make_tensor_value_info("target", TensorProto.FLOAT, [1, 3, SWAP_SIZE, SWAP_SIZE]),
        helper.make_tensor_value_info("source", TensorProto.FLOAT, [1, EMBEDDING_DIM]),
    ]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, SWAP_SIZE, SWAP_SIZE])]
    return _model(nodes, f"inswapper-{mode}-synthetic", inputs, outputs, initializers)
