"""RvcConverter end to end on synthetic models with the exact RMVPE / ContentVec / RVC generator signatures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from mirage_ray.voice.base import VoiceConverter, VoiceParams
from mirage_ray.voice.convert_rvc import (
    RvcConverter,
    RvcModelError,
    RvcNumericsError,
    UnknownVoiceError,
    coarse_pitch,
    list_voices,
)
from mirage_ray.voice.onnx_io import fp16_providers
from mirage_ray.voice.stream import VoiceStream
from tests.speech import speech
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
def voice() -> np.ndarray:
    return speech()


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
