"""Small synthetic ONNX models with the exact I/O signatures of RMVPE, ContentVec and RVC generator exports.

The real weights cannot be had here; these stand-ins run through the production code paths (onnxruntime sessions,
names and shapes read from the model) and compute something checkable:

- ``rmvpe_model``: log-mel ``[1, 128, T]`` → salience ``[1, T, 360]``; a tiny mel projection plus a fixed bump at
  the class of ``f0_hz``, so RMVPE decoding must give that F0 on voiced input.
- ``rmvpe_mel_model``: the same signature with an output that is a function of the mel, to check the mel that
  reaches the model: ``"projection"`` is ``sigmoid(mel_t · W + b)`` per frame with a random W (see
  :func:`mel_projection`), ``"loudest_band"`` puts the salience peak at the pitch class of the frame's loudest mel
  band (a softmax over bands), so a tone's F0 comes out as the tone's frequency.
- ``content_model``: audio ``[1, 1, N]`` → ``[1, T, C]`` with T = (N − 400) // 320 + 1, one strided convolution
  (HuBERT's frame geometry), C = 768 or 256.
- ``generator_model``: the RVC export signature (``phone``/``feats`` [1,T,C] f32, ``phone_lengths``/``p_len`` [1]
  i64, ``pitch`` [1,T] i64, ``pitchf`` [1,T] f32, ``ds``/``sid`` [1] i64, ``rnd`` [1,192,T]) → ``audio`` [1,1,T·sr/100]:
  a sine that follows ``pitchf`` (phase = cumulative sum) times ``amplitude``, plus a small term from the features.
  ``stream`` adds the streaming exports' ``skip_head`` / ``return_length`` (and with ``formant`` ``formant_length``)
  as scalars (``"scalar"``) or [1] tensors (``"vector"``): the output is frames ``skip_head ..
  skip_head + return_length`` of that audio, resampled to ``formant_length`` frames (nearest sample), as RVC's
  ``infer(skip_head, return_length, return_length2)`` does. Scalars go through ops that refuse a [1] tensor
  (``Range``, ``Slice`` starts built by ``Unsqueeze``), as the real graphs' do. ``inputs_as`` re-declares inputs
  (name → (element type, shape)), ``omit`` drops declared inputs and ``extra`` adds unused ones, to make
  signatures the backend must refuse.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.synthetic.onnx_graph import build_model as _model
from tests.synthetic.onnx_graph import save as save

N_MELS, N_CLASSES = 128, 360
CENTS_AT_CLASS0, CENTS_PER_CLASS = 1997.3794084376191, 20.0


def class_of_f0(f0_hz: float) -> int:
    """RMVPE class whose centre is nearest ``f0_hz``."""
    cents = 1200.0 * np.log2(f0_hz / 10.0)
    return int(round((cents - CENTS_AT_CLASS0) / CENTS_PER_CLASS))


def f0_of_class(index: int) -> float:
    """Centre frequency in Hz of RMVPE class ``index``."""
    return float(10.0 * 2.0 ** ((CENTS_AT_CLASS0 + CENTS_PER_CLASS * index) / 1200.0))


def rmvpe_model(f0_hz: float = 220.0, time_major: bool = False, seed: int = 0) -> onnx.ModelProto:
    """RVC-style ``rmvpe.onnx`` stand-in: input ``input`` log-mel, output ``output`` salience peaked at ``f0_hz``."""
    rng = np.random.default_rng(seed)
    weight = (rng.standard_normal((N_MELS, N_CLASSES)) * 1e-4).astype(np.float32)
    classes = np.arange(N_CLASSES)
    bias = (-8.0 + 12.0 * np.exp(-0.5 * ((classes - class_of_f0(f0_hz)) / 1.5) ** 2)).astype(np.float32)
    in_shape = [1, "T", N_MELS] if time_major else [1, N_MELS, "T"]
    nodes = [] if time_major else [helper.make_node("Transpose", ["input"], ["mel_t"], perm=[0, 2, 1])]
    nodes += [
        helper.make_node("MatMul", ["input" if time_major else "mel_t", "w"], ["proj"]),
        helper.make_node("Add", ["proj", "b"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["output"]),
    ]
    return _model(
        nodes,
        "rmvpe_synthetic",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, "T", N_CLASSES])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )


MEL_MODEL_KINDS = ("projection", "loudest_band")
LOUDEST_BAND_SHARPNESS = 4.0  # softmax gain over the log-mel bands
LOUDEST_BAND_WIDTH_CLASSES = 2.0  # Gaussian width of a band's salience bump


def mel_projection(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(W [128, 360], b [360]) of the ``"projection"`` mel model: logits of a few units from log-mels of speech."""
    rng = np.random.default_rng(seed)
    weight = (rng.standard_normal((N_MELS, N_CLASSES)) * 0.03).astype(np.float32)
    bias = (rng.standard_normal(N_CLASSES) * 0.5).astype(np.float32)
    return weight, bias


def mel_band_centres_hz(fmin: float = 30.0, fmax: float = 8000.0) -> np.ndarray:
    """Centre frequencies of RMVPE's 128 HTK-mel bands (30-8000 Hz)."""
    mel = np.linspace(2595.0 * np.log10(1.0 + fmin / 700.0), 2595.0 * np.log10(1.0 + fmax / 700.0), N_MELS + 2)
    return (700.0 * (10.0 ** (mel / 2595.0) - 1.0))[1:-1]


def rmvpe_mel_model(kind: str = "projection", time_major: bool = False, seed: int = 0) -> onnx.ModelProto:
    """RMVPE-signature model whose salience is a function of its log-mel input; see the module docstring."""
    if kind not in MEL_MODEL_KINDS:
        raise ValueError(f"kind must be one of {MEL_MODEL_KINDS}, not {kind!r}")
    in_shape = [1, "T", N_MELS] if time_major else [1, N_MELS, "T"]
    nodes = [] if time_major else [helper.make_node("Transpose", ["input"], ["mel_t"], perm=[0, 2, 1])]
    mel = "input" if time_major else "mel_t"
    if kind == "projection":
        weight, bias = mel_projection(seed)
        nodes += [
            helper.make_node("MatMul", [mel, "w"], ["proj"]),
            helper.make_node("Add", ["proj", "b"], ["logits"]),
            helper.make_node("Sigmoid", ["logits"], ["output"]),
        ]
        inits = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")]
    else:
        classes = np.arange(N_CLASSES)
        centre_classes = [class_of_f0(f) for f in mel_band_centres_hz()]
        bumps = np.exp(
            -0.5 * ((classes[None, :] - np.array(centre_classes)[:, None]) / LOUDEST_BAND_WIDTH_CLASSES) ** 2
        )
        nodes += [
            helper.make_node("Mul", [mel, "sharpness"], ["sharp"]),
            helper.make_node("Softmax", ["sharp"], ["band_weights"], axis=-1),
            helper.make_node("MatMul", ["band_weights", "bumps"], ["output"]),
        ]
        inits = [
            numpy_helper.from_array(np.array(LOUDEST_BAND_SHARPNESS, np.float32), "sharpness"),
            numpy_helper.from_array(bumps.astype(np.float32), "bumps"),
        ]
    return _model(
        nodes,
        f"rmvpe_{kind}_synthetic",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, "T", N_CLASSES])],
        inits,
    )


def content_model(dim: int = 768, seed: int = 1) -> onnx.ModelProto:
    """ContentVec stand-in: ``source`` [1, 1, N] → ``embed`` [1, T, dim] (20 ms frames, 400-sample receptive field)."""
    rng = np.random.default_rng(seed)
    kernel = (rng.standard_normal((dim, 1, 400)) * 0.05).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["source", "k"], ["conv"], strides=[320]),
        helper.make_node("Transpose", ["conv"], ["embed"], perm=[0, 2, 1]),
    ]
    return _model(
        nodes,
        f"contentvec_{dim}_synthetic",
        [helper.make_tensor_value_info("source", TensorProto.FLOAT, [1, 1, "N"])],
        [helper.make_tensor_value_info("embed", TensorProto.FLOAT, [1, "T", dim])],
        [numpy_helper.from_array(kernel, "k")],
    )


STREAM_KINDS = ("scalar", "vector")


def generator_model(
    dim: int = 768,
    sample_rate: int = 40_000,
    amplitude: float = 0.3,
    alt_names: bool = False,
    with_rnd: bool = True,
    half: bool = False,
    seed: int = 2,
    stream: str | None = None,
    formant: bool = False,
    stream_type: int = TensorProto.INT64,
    inputs_as: dict[str, tuple[int, list]] | None = None,
    omit: tuple[str, ...] = (),
    extra: tuple[tuple[str, int, list], ...] = (),
) -> onnx.ModelProto:
    """RVC generator stand-in with the export signature; ``alt_names`` uses ``feats``/``p_len``/``sid``;
    ``half`` declares float16 float inputs and output (an fp16 export); see the module docstring for the rest."""
    if stream is not None and stream not in STREAM_KINDS:
        raise ValueError(f"stream must be one of {STREAM_KINDS} or None, not {stream!r}")
    hop = sample_rate // 100
    phone, lengths, speaker = ("feats", "p_len", "sid") if alt_names else ("phone", "phone_lengths", "ds")
    float_type = TensorProto.FLOAT16 if half else TensorProto.FLOAT
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array((rng.standard_normal((dim, 1)) * 1e-3).astype(np.float32), "w_phone"),
        numpy_helper.from_array(np.array([1, 1, hop], dtype=np.int64), "expand_shape"),
        numpy_helper.from_array(np.array([1, 1, -1], dtype=np.int64), "flat_shape"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "unsq_axes"),
        numpy_helper.from_array(np.array(2.0 * np.pi / sample_rate, dtype=np.float32), "rad_per_hz_sample"),
        numpy_helper.from_array(np.array(amplitude, dtype=np.float32), "amp"),
    ]
    nodes = []
    if half:
        nodes += [
            helper.make_node("Cast", [phone], ["phone32"], to=TensorProto.FLOAT),
            helper.make_node("Cast", ["pitchf"], ["pitchf32"], to=TensorProto.FLOAT),
        ]
    phone_f, pitchf_f, audio_f = ("phone32", "pitchf32", "audio32") if half else (phone, "pitchf", "audio")
    nodes += [
        # phase: repeat pitchf per output sample, integrate
        helper.make_node("Unsqueeze", [pitchf_f, "unsq_axes"], ["f0_3d"]),
        helper.make_node("Expand", ["f0_3d", "expand_shape"], ["f0_rep"]),
        helper.make_node("Reshape", ["f0_rep", "flat_shape"], ["f0_samples"]),
        helper.make_node("CumSum", ["f0_samples", "axis2"], ["cycles"]),
        helper.make_node("Mul", ["cycles", "rad_per_hz_sample"], ["phase"]),
        helper.make_node("Sin", ["phase"], ["sine"]),
        helper.make_node("Mul", ["sine", "amp"], ["voiced"]),
        # a small content term: proves the features (and their size) go through
        helper.make_node("MatMul", [phone_f, "w_phone"], ["content_1"]),
        helper.make_node("Tanh", ["content_1"], ["content_t"]),
        helper.make_node("Expand", ["content_t", "expand_shape"], ["content_rep"]),
        helper.make_node("Reshape", ["content_rep", "flat_shape"], ["content_samples"]),
        helper.make_node("Add", ["voiced", "content_samples"], ["full" if stream else audio_f]),
    ]
    if stream:
        nodes += _stream_nodes(hop, stream, formant, "full", audio_f, inits)
    if half:
        nodes.append(helper.make_node("Cast", [audio_f], ["audio"], to=TensorProto.FLOAT16))
    inputs = [
        helper.make_tensor_value_info(phone, float_type, [1, "T", dim]),
        helper.make_tensor_value_info(lengths, TensorProto.INT64, [1]),
        helper.make_tensor_value_info("pitch", TensorProto.INT64, [1, "T"]),
        helper.make_tensor_value_info("pitchf", float_type, [1, "T"]),
        helper.make_tensor_value_info(speaker, TensorProto.INT64, [1]),
    ]
    if with_rnd:
        inputs.append(helper.make_tensor_value_info("rnd", float_type, [1, 192, "T"]))
    if stream:
        shape = [] if stream == "scalar" else [1]
        for name in ("skip_head", "return_length", *(("formant_length",) if formant else ())):
            inputs.append(helper.make_tensor_value_info(name, stream_type, shape))
    for name, (element, shape) in (inputs_as or {}).items():
        inputs = [helper.make_tensor_value_info(name, element, shape) if i.name == name else i for i in inputs]
    inputs = [i for i in inputs if i.name not in omit]
    inputs += [helper.make_tensor_value_info(name, element, shape) for name, element, shape in extra]
    return _model(
        nodes,
        f"rvc_generator_{dim}_{sample_rate}_synthetic",
        inputs,
        [helper.make_tensor_value_info("audio", float_type, [1, 1, "S"])],
        inits,
    )


def _stream_nodes(hop: int, kind: str, formant: bool, full: str, out: str, inits: list) -> list[onnx.NodeProto]:
    """Frames skip_head .. skip_head + return_length of ``full`` [1, 1, S], resampled to formant_length frames."""
    inits += [
        numpy_helper.from_array(np.array(hop, dtype=np.int64), "hop"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "axis0"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "slice_axis"),
    ]
    nodes = []
    names = ("skip_head", "return_length", *(("formant_length",) if formant else ()))
    for name in names:  # scalars, as the real graphs use them (a [1] fed here breaks Range / Slice below)
        nodes.append(helper.make_node("Cast", [name], [f"{name}_i"], to=TensorProto.INT64))
        if kind == "vector":
            nodes.append(helper.make_node("Squeeze", [f"{name}_i", "axis0"], [f"{name}_s"]))
        else:
            nodes.append(helper.make_node("Identity", [f"{name}_i"], [f"{name}_s"]))
    nodes += [
        helper.make_node("Mul", ["skip_head_s", "hop"], ["start_s"]),
        helper.make_node("Add", ["skip_head_s", "return_length_s"], ["end_frames"]),
        helper.make_node("Mul", ["end_frames", "hop"], ["end_s"]),
        helper.make_node("Unsqueeze", ["start_s", "axis0"], ["start_1d"]),
        helper.make_node("Unsqueeze", ["end_s", "axis0"], ["end_1d"]),
        helper.make_node("Slice", [full, "start_1d", "end_1d", "slice_axis"], ["kept" if formant else out]),
    ]
    if formant:  # nearest-sample resampling of the kept frames to formant_length frames
        inits += [
            numpy_helper.from_array(np.array(0, dtype=np.int64), "zero_i"),
            numpy_helper.from_array(np.array(1, dtype=np.int64), "one_i"),
        ]
        nodes += [
            helper.make_node("Mul", ["formant_length_s", "hop"], ["n_out"]),
            helper.make_node("Range", ["zero_i", "n_out", "one_i"], ["positions"]),
            helper.make_node("Cast", ["positions"], ["positions_f"], to=TensorProto.FLOAT),
            helper.make_node("Cast", ["return_length_s"], ["kept_f"], to=TensorProto.FLOAT),
            helper.make_node("Cast", ["formant_length_s"], ["formant_f"], to=TensorProto.FLOAT),
            helper.make_node("Div", ["kept_f", "formant_f"], ["step"]),
            helper.make_node("Mul", ["positions_f", "step"], ["source_f"]),
            helper.make_node("Floor", ["source_f"], ["source_floor"]),
            helper.make_node("Cast", ["source_floor"], ["source_i"], to=TensorProto.INT64),
            helper.make_node("Gather", ["kept", "source_i"], [out], axis=2),
        ]
    return nodes
