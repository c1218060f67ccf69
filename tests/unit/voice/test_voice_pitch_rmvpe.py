"""RMVPE helpers: RVC's log-mel, salience decoding, and the ONNX wrapper on synthetic models.

The mel is checked against one computed independently here (torch's STFT and a filter-by-filter mel basis), and
synthetic RMVPE models whose salience is a function of the mel check that exactly that mel, frame by frame, is what
reaches the network.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from mirage_ray.voice.pitch_rmvpe import (
    N_CLASSES,
    RmvpeError,
    RmvpePitch,
    decode_salience,
    log_mel,
    mel_filterbank,
    padded_log_mel,
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


def reference_filterbank() -> np.ndarray:
    """RVC's mel basis (librosa ``mel(sr=16000, n_fft=1024, n_mels=128, fmin=30, fmax=8000, htk=True)``, Slaney
    area norm), written out filter by filter from its definition: triangles between consecutive HTK-mel points."""
    edges_mel = np.linspace(2595.0 * np.log10(1.0 + 30.0 / 700.0), 2595.0 * np.log10(1.0 + 8000.0 / 700.0), 130)
    edges_hz = 700.0 * (10.0 ** (edges_mel / 2595.0) - 1.0)
    bins_hz = np.arange(513) * (SR / 1024)
    bank = np.zeros((128, 513))
    for band in range(128):
        low, centre, high = edges_hz[band : band + 3]
        rising = (bins_hz >= low) & (bins_hz <= centre)
        falling = (bins_hz > centre) & (bins_hz <= high)
        bank[band, rising] = (bins_hz[rising] - low) / (centre - low)
        bank[band, falling] = (high - bins_hz[falling]) / (high - centre)
        bank[band] *= 2.0 / (high - low)  # unit area in Hz
    return bank


def reference_log_mel(audio: np.ndarray) -> np.ndarray:
    """RVC's ``MelSpectrogram`` in torch: centred reflect-padded STFT, periodic Hann, magnitude, mel, log clamp."""
    spectrum = torch.stft(
        torch.from_numpy(audio.astype(np.float64)),
        n_fft=1024,
        hop_length=160,
        win_length=1024,
        window=torch.hann_window(1024, periodic=True, dtype=torch.float64),
        center=True,
        pad_mode="reflect",
        return_complex=True,
    ).abs()
    return np.log(np.maximum(reference_filterbank() @ spectrum.numpy(), 1e-5))


def test_the_mel_matches_an_independent_torch_mel():
    audio = speech()[:16_000]
    mel, expected = log_mel(audio), reference_log_mel(audio)
    assert mel.shape == expected.shape
    loud = expected > np.log(1e-4)  # away from the clamp, where float32 rounding is relative
    np.testing.assert_allclose(mel[loud], expected[loud], atol=2e-4)
    np.testing.assert_allclose(mel, expected, atol=1e-3)


@pytest.mark.parametrize("time_major", [False, True], ids=["bands-first", "time-major"])
@pytest.mark.parametrize("n", [1_120, 4_960, 9_600, 10_016, 16_000])  # torch needs n > 512 to reflect-pad
def test_salience_is_the_model_of_the_independent_mel(tmp_path, time_major, n):
    path = syn.save(syn.rmvpe_mel_model("projection", time_major=time_major), tmp_path / "rmvpe.onnx")
    audio = speech()[4_000 : 4_000 + n]
    weight, bias = syn.mel_projection()
    expected = 1.0 / (1.0 + np.exp(-(reference_log_mel(audio).T @ weight + bias)))  # frame by frame
    salience = RmvpePitch(path).salience(audio)
    assert salience.shape == (n // 160 + 1, N_CLASSES)
    np.testing.assert_allclose(salience, expected, atol=1e-4)
    shifted = np.abs(salience[1:] - expected[:-1]).max()  # one frame off would be seen
    assert shifted > 100 * 1e-4


@pytest.mark.parametrize("tone_hz", [150.0, 220.0, 440.0])
def test_f0_follows_the_tone_through_the_mel(tmp_path, tone_hz):
    path = syn.save(syn.rmvpe_mel_model("loudest_band"), tmp_path / "rmvpe.onnx")
    t = np.arange(12_000) / SR
    tone = (0.5 * np.sin(2 * np.pi * tone_hz * t)).astype(np.float32)
    f0 = RmvpePitch(path).f0(tone)
    band = np.argmin(np.abs(syn.mel_band_centres_hz() - tone_hz))  # the tone's loudest band, as the model sees it
    expected_hz = syn.f0_of_class(syn.class_of_f0(syn.mel_band_centres_hz()[band]))
    inner = f0[10:-10]
    assert np.all(np.abs(1200 * np.log2(inner / tone_hz)) < 100)  # within the band's width of the tone
    assert np.median(inner) == pytest.approx(expected_hz, rel=0.03)


@pytest.mark.parametrize("n", [1_120, 4_960, 5_120, 10_016])
def test_the_network_gets_the_mel_padded_with_zero_frames_to_a_multiple_of_32(n):
    audio = speech()[:n]
    padded, mel = padded_log_mel(audio), log_mel(audio)
    frames = n // 160 + 1
    assert padded.shape == (128, 32 * -(-frames // 32))
    np.testing.assert_array_equal(padded[:, :frames], mel)
    assert not padded[:, frames:].any()  # as RVC's mel2hidden: F.pad(mel, (0, n_pad), mode="constant")
