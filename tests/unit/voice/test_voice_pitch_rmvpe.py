"""RMVPE helpers: RVC's log-mel, salience decoding, and the ONNX wrapper on a synthetic model."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from mirage_ray.voice.pitch_rmvpe import (
    N_CLASSES,
    RmvpeError,
    RmvpePitch,
    decode_salience,
    log_mel,
    mel_filterbank,
)
from tests.speech import speech
from tests.synthetic import rvc_onnx as syn

SR = 16_000


def test_mel_filterbank_is_htk_triangles_with_unit_area():
    fb = mel_filterbank()
    assert fb.shape == (128, 513)
    bin_hz = SR / 1024
    freqs = np.arange(513) * bin_hz
    assert not fb[:, freqs < 30.0 - bin_hz].any() and not fb[:, freqs > 8000.0].any()
    peaks_hz = freqs[np.argmax(fb, axis=1)]
    assert np.all(np.diff(peaks_hz) >= 0)  # ordered by frequency
    wide = (fb > 0).sum(axis=1) > 12  # filters wide enough to be well sampled
    areas = fb[wide].sum(axis=1) * bin_hz
    np.testing.assert_allclose(areas, 1.0, rtol=0.05)  # Slaney normalisation: unit area in Hz


def test_log_mel_frames_and_tone_band():
    t = np.arange(16_000) / SR
    tone = (0.5 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32)
    mel = log_mel(tone)
    assert mel.shape == (128, 16_000 // 160 + 1)
    loudest_band = int(np.argmax(mel[:, 50]))
    assert loudest_band == int(np.argmax(mel_filterbank()[:, round(1000 * 1024 / SR)]))
    assert mel.min() >= np.log(1e-5) - 1e-6


def test_decode_salience_local_average_and_threshold():
    sal = np.zeros((3, N_CLASSES), dtype=np.float32)
    sal[0, 100] = 0.9
    sal[1, 100] = sal[1, 101] = 0.5  # halfway between two classes
    sal[2, 200] = 0.02  # under the voiced threshold
    f0 = decode_salience(sal)
    assert f0[0] == pytest.approx(syn.f0_of_class(100), rel=1e-5)
    assert f0[1] == pytest.approx(np.sqrt(syn.f0_of_class(100) * syn.f0_of_class(101)), rel=1e-5)
    assert f0[2] == 0.0
    with pytest.raises(RmvpeError, match="salience"):
        decode_salience(np.zeros((3, 12)))


@pytest.mark.parametrize("time_major", [False, True])
@pytest.mark.parametrize("n", [9_600, 10_016, 16_000])
def test_rmvpe_wrapper_on_synthetic_model(tmp_path, time_major, n):
    path = syn.save(syn.rmvpe_model(150.0, time_major=time_major), tmp_path / "rmvpe.onnx")
    rmvpe = RmvpePitch(path)
    f0 = rmvpe.f0(speech()[:n])
    assert f0.shape == (n // 160 + 1,)
    np.testing.assert_allclose(f0, syn.f0_of_class(syn.class_of_f0(150.0)), rtol=1e-4)


def test_rmvpe_refuses_a_waveform_input_model(tmp_path):
    path = syn.save(syn.content_model(256), tmp_path / "not_rmvpe.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with pytest.raises(RmvpeError, match="log-mel"):
        RmvpePitch(session)
    with pytest.raises(FileNotFoundError, match=r"missing\.onnx"):
        RmvpePitch(tmp_path / "missing.onnx")
