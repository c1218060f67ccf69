"""RMVPE pitch (F0) from the ONNX export RVC uses: the log-mel is built here, the network maps it to salience.

RVC's ``rmvpe.onnx`` takes a log-mel spectrogram ``[1, 128, T]`` (frames padded with zeros to a multiple of 32, as
RVC's ``mel2hidden`` does with ``F.pad(mel, (0, n_pad), mode="constant")``) and returns a
salience map ``[1, T, 360]`` over 360 pitch classes of 20 cents. The mel follows RVC's ``MelSpectrogram``: 16 kHz,
Hann window 1024, hop 160 (10 ms), centred frames (reflect padding), HTK mel scale 30–8000 Hz with Slaney area
normalisation, ``log(max(mel, 1e-5))``. Decoding: weighted average of the 9 bins around the peak, unvoiced where the
peak salience is at or under 0.03.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnxruntime as ort

from mirage_ray.voice.onnx_io import make_session, numpy_dtype

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
N_MELS = 128
N_FFT = 1024  # = window length
HOP = 160  # 10 ms
MEL_FMIN_HZ = 30.0
MEL_FMAX_HZ = 8000.0
LOG_CLAMP = 1e-5
N_CLASSES = 360
CENTS_PER_CLASS = 20.0
CENTS_AT_CLASS0 = 1997.3794084376191  # cents above 10 Hz of class 0 (≈ 31.7 Hz)
F0_REF_HZ = 10.0
LOCAL_AVERAGE_BINS = 4  # ± bins averaged around the peak
VOICED_THRESHOLD = 0.03
FRAME_MULTIPLE = 32  # the U-Net pools 5 times by 2 along time


class RmvpeError(ValueError):
    """The RMVPE model does not have the expected signature, or the input is unusable."""


def _hz_to_mel_htk(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _mel_to_hz_htk(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(
    sample_rate: int = SAMPLE_RATE,
    n_fft: int = N_FFT,
    n_mels: int = N_MELS,
    fmin: float = MEL_FMIN_HZ,
    fmax: float = MEL_FMAX_HZ,
) -> np.ndarray:
    """Triangular HTK-mel filters with Slaney area normalisation, shape ``(n_mels, n_fft // 2 + 1)``."""
    fft_hz = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    mel_pts = np.linspace(_hz_to_mel_htk(np.float64(fmin)), _hz_to_mel_htk(np.float64(fmax)), n_mels + 2)
    hz_pts = _mel_to_hz_htk(mel_pts)
    widths = np.diff(hz_pts)
    ramps = hz_pts[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (hz_pts[2:] - hz_pts[:-2]))[:, None]
    return weights.astype(np.float32)


_HANN = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)  # periodic Hann
_MEL_BASIS = mel_filterbank()


def log_mel(audio: np.ndarray) -> np.ndarray:
    """RVC's RMVPE log-mel of 16 kHz mono audio: ``(128, len(audio) // 160 + 1)`` float32."""
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim != 1 or len(x) == 0:
        raise RmvpeError(f"expected non-empty mono 1-D audio, got shape {x.shape}")
    padded = np.pad(x, N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    magnitude = np.abs(np.fft.rfft(frames * _HANN, axis=1)).astype(np.float32)
    mel = _MEL_BASIS @ magnitude.T
    return np.log(np.maximum(mel, LOG_CLAMP)).astype(np.float32)


def padded_log_mel(audio: np.ndarray) -> np.ndarray:
    """:func:`log_mel` with zero frames appended up to a multiple of ``FRAME_MULTIPLE``: what the network gets."""
    mel = log_mel(audio)
    return np.pad(mel, ((0, 0), (0, -mel.shape[1] % FRAME_MULTIPLE)), mode="constant")


_CENTS = CENTS_AT_CLASS0 + CENTS_PER_CLASS * np.arange(N_CLASSES)


def decode_salience(salience: np.ndarray, threshold: float = VOICED_THRESHOLD) -> np.ndarray:
    """``(T, 360)`` salience → F0 in Hz per frame (0 where unvoiced): local weighted average around the peak."""
    sal = np.asarray(salience, dtype=np.float64)
    if sal.ndim != 2 or sal.shape[1] != N_CLASSES:
        raise RmvpeError(f"salience must be (T, {N_CLASSES}), got {sal.shape}")
    if len(sal) == 0:
        return np.zeros(0, dtype=np.float32)
    peak = np.argmax(sal, axis=1)
    offsets = np.arange(-LOCAL_AVERAGE_BINS, LOCAL_AVERAGE_BINS + 1)
    idx = peak[:, None] + offsets[None, :]
    valid = (idx >= 0) & (idx < N_CLASSES)
    idx_c = np.clip(idx, 0, N_CLASSES - 1)
    weights = np.where(valid, np.take_along_axis(sal, idx_c, axis=1), 0.0)
    cents = (weights * _CENTS[idx_c]).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-12)
    f0 = F0_REF_HZ * 2.0 ** (cents / 1200.0)
    f0[sal.max(axis=1) <= threshold] = 0.0
    return f0.astype(np.float32)


class RmvpePitch:
    """RMVPE F0 tracker on onnxruntime; stateless per call and safe to share between threads."""

    def __init__(
        self,
        model: str | os.PathLike[str] | ort.InferenceSession,
        providers: Sequence[Any] | None = None,
        threshold: float = VOICED_THRESHOLD,
    ) -> None:
        self.session = make_session(model, providers)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        shape = inputs[0].shape if len(inputs) == 1 else []
        if len(shape) != 3 or not (shape[1] == N_MELS or shape[2] == N_MELS or not isinstance(shape[1], int)):
            raise RmvpeError(
                f"RMVPE ONNX must take one log-mel input [1, {N_MELS}, T]; got "
                f"{[(i.name, i.shape) for i in inputs]} (waveform-input exports are not supported)"
            )
        self._input = inputs[0].name
        self._input_dtype = numpy_dtype(inputs[0].type)
        self._time_major = shape[2] == N_MELS and shape[1] != N_MELS  # [1, T, 128] variant
        self._output = outputs[0].name
        self.threshold = threshold

    def salience(self, audio: np.ndarray) -> np.ndarray:
        """``(len(audio) // 160 + 1, 360)`` salience for 16 kHz audio."""
        mel = padded_log_mel(audio)
        n_frames = len(audio) // HOP + 1
        feed = (mel.T if self._time_major else mel)[None].astype(self._input_dtype)
        out = np.asarray(self.session.run([self._output], {self._input: feed})[0], dtype=np.float32)
        out = out.reshape(out.shape[-2], out.shape[-1])
        if out.shape[1] != N_CLASSES and out.shape[0] == N_CLASSES:
            out = out.T
        if out.shape[1] != N_CLASSES or out.shape[0] < n_frames:
            raise RmvpeError(f"RMVPE output must be [1, T>={n_frames}, {N_CLASSES}], got {out.shape}")
        return out[:n_frames]

    def f0(self, audio: np.ndarray) -> np.ndarray:
        """F0 in Hz at 100 frames/s (frame j centred on sample 160·j), 0 where unvoiced."""
        return decode_salience(self.salience(audio), self.threshold)
