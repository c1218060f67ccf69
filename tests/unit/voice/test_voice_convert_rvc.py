"""RvcConverter end to end on synthetic models with the exact RMVPE / ContentVec / RVC generator signatures.

Generator signatures are checked at start: streaming exports (``skip_head`` / ``return_length`` / ``formant_length``,
scalar or [1]) are fed as declared, and voices this backend cannot feed are refused with the input's name.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto

from mirage_ray.voice.base import VoiceConverter, VoiceParams
from mirage_ray.voice.convert_rvc import (
    RvcConverter,
    RvcModelError,
    RvcNumericsError,
    UnknownVoiceError,
    coarse_pitch,
    declared_inputs,
    generator_problem,
    list_voices,
)
from mirage_ray.voice.onnx_io import fp16_providers
from mirage_ray.voice.stream import VoiceStream
from tests.synthetic import rvc_onnx as syn

SR = 16_000
RMVPE_F0 = syn.f0_of_class(syn.class_of_f0(220.0))  # the synthetic RMVPE always hears this pitch (≈ 220.8 Hz)
CENTS_TOLERANCE = 25.0


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rvc")
    syn.save(syn.content_model(768), root / "vec-768-layer-12.onnx")
    syn.save(syn.content_model(256), root / "vec-256-layer-9.onnx")
    syn.save(syn.rmvpe_model(220.0), root / "rmvpe.onnx")
    syn.save(syn.generator_model(768, 40_000, amplitude=0.3), root / "v2" / "alice.onnx")
    syn.save(syn.generator_model(768, 48_000, amplitude=0.1, alt_names=True, with_rnd=False), root / "v2" / "bob.onnx")
    syn.save(syn.generator_model(256, 40_000, amplitude=0.2), root / "v1" / "carol.onnx")
    (root / "v2" / "notes.txt").write_text("not a voice")
    return root


@pytest.fixture(scope="module")
def rvc(models) -> RvcConverter:
    return RvcConverter(models / "vec-768-layer-12.onnx", models / "rmvpe.onnx", models / "v2")


def _peak_hz(y: np.ndarray) -> float:
    seg = y[len(y) // 4 : 3 * len(y) // 4].astype(np.float64)
    spectrum = np.abs(np.fft.rfft(seg * np.hanning(len(seg)), 1 << 18))
    return float(np.argmax(spectrum) * SR / (1 << 18))


def _cents(a: float, b: float) -> float:
    return float(1200.0 * np.log2(a / b))


def test_list_voices_names_onnx_files(models):
    assert list_voices(models / "v2") == ["alice", "bob"]
    assert list_voices(models / "missing") == []


@pytest.mark.parametrize("n", [10_016, 6_400, 7_360, 12_000])
@pytest.mark.parametrize("semitones", [0.0, 5.0, -3.0])
def test_768_path_keeps_length_and_applies_pitch_shift(rvc, voice, n, semitones):
    assert isinstance(rvc, VoiceConverter) and rvc.name == "rvc"
    y = rvc.convert(voice[8000 : 8000 + n], VoiceParams(pitch_semitones=semitones))
    assert y.shape == (n,) and y.dtype == np.float32
    assert _cents(_peak_hz(y), RMVPE_F0 * 2 ** (semitones / 12)) == pytest.approx(0.0, abs=CENTS_TOLERANCE)
    assert 0.25 < np.abs(y).max() < 0.35  # alice's amplitude, resampled from 40 kHz


def test_256_feature_models_run_end_to_end(models, voice):
    rvc = RvcConverter(models / "vec-256-layer-9.onnx", models / "rmvpe.onnx", models / "v1")
    assert rvc.content.dim == 256 and rvc.voices == ["carol"]
    y = rvc.convert(voice[:9600], VoiceParams(pitch_semitones=2.0))
    assert y.shape == (9600,)
    assert _cents(_peak_hz(y), RMVPE_F0 * 2 ** (2 / 12)) == pytest.approx(0.0, abs=CENTS_TOLERANCE)


def test_switching_voice_switches_generator(rvc, voice):
    window = voice[8000:18016]
    alice = rvc.convert(window, VoiceParams(voice="alice"))
    bob = rvc.convert(window, VoiceParams(voice="bob"))  # 48 kHz, feats/p_len/sid names, no rnd
    default = rvc.convert(window, VoiceParams())
    assert 0.25 < np.abs(alice).max() < 0.35 and 0.07 < np.abs(bob).max() < 0.13
    np.testing.assert_array_equal(default, alice)  # default = first voice by name
    assert len(bob) == len(window)
    assert _cents(_peak_hz(bob), RMVPE_F0) == pytest.approx(0.0, abs=CENTS_TOLERANCE)


def test_unknown_voice_lists_the_names(rvc, voice):
    with pytest.raises(UnknownVoiceError, match=r"'dave'.*alice, bob"):
        rvc.convert(voice[:9600], VoiceParams(voice="dave"))


def test_ready_sessions_and_explicit_voices(models, voice):
    cpu = ["CPUExecutionProvider"]
    content = ort.InferenceSession(str(models / "vec-256-layer-9.onnx"), providers=cpu)
    rmvpe = ort.InferenceSession(str(models / "rmvpe.onnx"), providers=cpu)
    carol = ort.InferenceSession(str(models / "v1" / "carol.onnx"), providers=cpu)
    rvc = RvcConverter(content, rmvpe, voices={"carol": carol}, default_voice="carol")
    assert rvc.convert(voice[:6400], VoiceParams()).shape == (6400,)


def test_feature_size_mismatch_fails_at_start(models):
    with pytest.raises(RvcModelError, match="768-d features but the content encoder gives 256"):
        RvcConverter(models / "vec-256-layer-9.onnx", models / "rmvpe.onnx", models / "v2")


def test_no_voice_fails_at_start(models, tmp_path):
    with pytest.raises(RvcModelError, match="no RVC voice"):
        RvcConverter(models / "vec-768-layer-12.onnx", models / "rmvpe.onnx", tmp_path)


def test_overflowing_generator_raises_numerics_error(models, voice, tmp_path):
    syn.save(syn.generator_model(768, 40_000, amplitude=float("inf")), tmp_path / "broken.onnx")
    rvc = RvcConverter(models / "vec-768-layer-12.onnx", models / "rmvpe.onnx", tmp_path)
    with pytest.raises(RvcNumericsError, match="non-finite"):
        rvc.convert(voice[:6400], VoiceParams())


def test_streaming_rvc_conserves_samples_and_stays_on_pitch(rvc, voice):
    stream = VoiceStream(block_ms=120, gate_db=-50.0)
    out = stream.process(voice, lambda w: rvc.convert(w, VoiceParams(pitch_semitones=4.0)))
    assert len(out) + stream.pending_samples == len(voice)
    loud = out[16000:32000]
    assert np.abs(loud).max() > 0.2
    assert _cents(_peak_hz(loud), RMVPE_F0 * 2 ** (4 / 12)) == pytest.approx(0.0, abs=CENTS_TOLERANCE)


def test_coarse_pitch_matches_rvc_mapping():
    coarse = coarse_pitch(np.array([0.0, 50.0, 1100.0, 5000.0, 220.0]))
    assert coarse[:4].tolist() == [1, 1, 255, 255]
    mel = 1127 * np.log(1 + np.array([50.0, 220.0, 1100.0]) / 700)
    assert coarse[4] == round((mel[1] - mel[0]) * 254 / (mel[2] - mel[0]) + 1)


def test_fp16_switches_tensorrt_fp16_only():
    providers = ["TensorrtExecutionProvider", ("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    result = fp16_providers(providers)
    assert result[0] == ("TensorrtExecutionProvider", {"trt_fp16_enable": True})
    assert result[1:] == providers[1:]


def test_fp16_exported_generator_is_fed_in_float16(models, voice, tmp_path):
    syn.save(syn.generator_model(768, 32_000, amplitude=0.3, half=True), tmp_path / "half.onnx")
    rvc = RvcConverter(models / "vec-768-layer-12.onnx", models / "rmvpe.onnx", tmp_path, fp16=True)
    y = rvc.convert(voice[8000:18016], VoiceParams(pitch_semitones=1.0))
    assert y.shape == (10_016,) and y.dtype == np.float32
    assert _cents(_peak_hz(y), RMVPE_F0 * 2 ** (1 / 12)) == pytest.approx(0.0, abs=CENTS_TOLERANCE)


class RecordingSession(ort.InferenceSession):
    """An onnxruntime session that keeps what it was fed."""

    def __init__(self, path: Path) -> None:
        super().__init__(str(path), providers=["CPUExecutionProvider"])
        self.feeds: list[dict[str, np.ndarray]] = []

    def run(self, output_names, input_feed, run_options=None):
        self.feeds.append(dict(input_feed))
        return super().run(output_names, input_feed, run_options)


@pytest.mark.parametrize("formant", [False, True], ids=["no-formant", "formant_length"])
@pytest.mark.parametrize("stream_type", [TensorProto.INT64, TensorProto.INT32], ids=["int64", "int32"])
@pytest.mark.parametrize("kind", ["scalar", "vector"])
def test_streaming_exports_get_skip_head_return_length_and_formant_length_as_declared(
    models, voice, tmp_path, kind, stream_type, formant
):
    model = syn.generator_model(768, 40_000, amplitude=0.3, stream=kind, formant=formant, stream_type=stream_type)
    session = RecordingSession(syn.save(model, tmp_path / "stream.onnx"))
    rvc = RvcConverter(models / "vec-768-layer-12.onnx", models / "rmvpe.onnx", voices={"stream": session})
    window = voice[8000:18016]
    y = rvc.convert(window, VoiceParams(pitch_semitones=2.0))
    assert y.shape == window.shape
    assert _cents(_peak_hz(y), RMVPE_F0 * 2 ** (2 / 12)) == pytest.approx(0.0, abs=CENTS_TOLERANCE)
    assert np.abs(y[-160:]).max() > 0.2  # the whole window came back: return_length covers it, skip_head is 0
    (feeds,) = session.feeds
    frames = -(-len(window) // 160)
    expected = {"skip_head": 0, "return_length": frames, **({"formant_length": frames} if formant else {})}
    dtype = np.int64 if stream_type == TensorProto.INT64 else np.int32
    for name, value in expected.items():
        fed = feeds[name]
        assert (
            fed.dtype == dtype and fed.shape == (() if kind == "scalar" else (1,)) and int(fed.reshape(-1)[0]) == value
        )


BAD_SIGNATURES = {
    "unknown input": ({"extra": (("energy", TensorProto.FLOAT, [1, "T"]),)}, r"input 'energy'.*not one this backend"),
    "no speaker id": ({"omit": ("ds",)}, r"no 'ds' / 'sid' input"),
    "pitch without pitchf": ({"omit": ("pitch",)}, r"only one of 'pitch' / 'pitchf'"),
    "boolean pitch": ({"inputs_as": {"pitch": (TensorProto.BOOL, [1, "T"])}}, r"input 'pitch'.*element type"),
    "integer features": ({"inputs_as": {"rnd": (TensorProto.INT64, [1, 192, "T"])}}, r"input 'rnd'.*float tensor"),
    "pitch of rank 3": ({"inputs_as": {"pitch": (TensorProto.INT64, [1, "T", 2])}}, r"input 'pitch'.*rank 2"),
    "fixed time axis": ({"inputs_as": {"rnd": (TensorProto.FLOAT, [1, 192, 200])}}, r"input 'rnd'.*fixed time axis"),
    "batch of 2": ({"inputs_as": {"pitch": (TensorProto.INT64, [2, "T"])}}, r"input 'pitch'.*batch of 1"),
    "skip_head of 2": (
        {"stream": "vector", "inputs_as": {"skip_head": (TensorProto.INT64, [2])}},
        r"input 'skip_head'.*scalar or a \[1\]",
    ),
}


@pytest.mark.parametrize("case", list(BAD_SIGNATURES))
def test_a_voice_that_cannot_be_fed_is_refused_at_start_naming_the_input(models, tmp_path, case):
    options, message = BAD_SIGNATURES[case]
    syn.save(syn.generator_model(768, 40_000, **options), tmp_path / "odd.onnx")
    with pytest.raises(RvcModelError, match=r"no usable RVC voice: voice 'odd': generator .*" + message):
        RvcConverter(models / "vec-768-layer-12.onnx", models / "rmvpe.onnx", tmp_path)
    with pytest.raises(RvcModelError, match=r"default voice 'odd'"):
        RvcConverter(models / "vec-768-layer-12.onnx", models / "rmvpe.onnx", tmp_path, default_voice="odd")


def test_a_refused_voice_leaves_the_others_usable(models, voice, tmp_path, caplog):
    syn.save(syn.generator_model(768, 40_000, amplitude=0.3), tmp_path / "alice.onnx")
    syn.save(syn.generator_model(768, 40_000, extra=(("energy", TensorProto.FLOAT, [1, "T"]),)), tmp_path / "eve.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with caplog.at_level(logging.WARNING, logger="mirage_ray.voice.convert_rvc"):
        rvc = RvcConverter(models / "vec-768-layer-12.onnx", models / "rmvpe.onnx", tmp_path)
    assert rvc.voices == ["alice"] and rvc.default_voice == "alice"
    assert any("'eve'" in r.message and "'energy'" in r.message for r in caplog.records)
    assert any("'junk'" in r.message and "not a readable ONNX" in r.message for r in caplog.records)
    with pytest.raises(UnknownVoiceError, match=r"voice 'eve'.*input 'energy'.*refused at start; voices: alice"):
        rvc.convert(voice[:6400], VoiceParams(voice="eve"))
    assert rvc.convert(voice[:6400], VoiceParams()).shape == (6400,)


def test_declared_inputs_read_from_the_file_match_onnxruntime(models, tmp_path):
    path = syn.save(syn.generator_model(768, 40_000, stream="scalar", formant=True), tmp_path / "s.onnx")
    from_file = declared_inputs(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert from_file == declared_inputs(session)
    assert {i.name: i.shape for i in from_file}["skip_head"] == ()
    assert generator_problem(from_file, 768) is None
    assert "768-d features but the content encoder gives 256" in generator_problem(from_file, 256)
