"""Delay-line pitch shifter: the fail-closed converter the ingress runs itself (no model, no Ray, ~1 ms a window).

Two read taps sweep a short delay line at the pitch ratio, each with a triangular gain, half a grain apart (the
classic "Doppler" shifter): pitch changes, duration does not. It is what goes out when the voice stage cannot
answer in time (backlog, timeout, error), so that the speaker's real voice never leaves the server. The result is
rougher than the real converters and is flagged as such (media flag bit 0).
"""

from __future__ import annotations

import math

import numpy as np

from mirage_ray.voice.base import SAMPLE_RATE, VoiceParams

GRAIN_MS = 40.0  # delay-line sweep: long enough for low voices, short enough to keep the timing
MIN_SHIFT_SEMITONES = 3.0  # a smaller shift does not disguise; the session's shift is pushed out to this
DEFAULT_SHIFT_SEMITONES = -4.0  # used when the session's own shift is zero (e.g. a model voice)


def disguise_semitones(params: VoiceParams) -> float:
    """The shift this converter applies for ``params``: the session's own, at least MIN_SHIFT_SEMITONES away from 0."""
    semitones = params.pitch_semitones
    if semitones == 0.0:
        return DEFAULT_SHIFT_SEMITONES
    return math.copysign(max(abs(semitones), MIN_SHIFT_SEMITONES), semitones)


class ShiftConverter:
    """Stateless pitch shift of a whole window (the tail is what the voice stream keeps; SOLA joins the blocks)."""

    name = "pitch-shift"
    context_ms = round(2 * GRAIN_MS)  # two grains: the taps read up to one grain back

    def __init__(self, sample_rate: int = SAMPLE_RATE, grain_ms: float = GRAIN_MS) -> None:
        self._grain = max(2, round(sample_rate * grain_ms / 1000.0))

    def convert(self, window: np.ndarray, params: VoiceParams) -> np.ndarray:
        """``window`` (float32 mono) shifted by :func:`disguise_semitones`; same length."""
        x = np.asarray(window, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"expected a mono 1-D window, got shape {x.shape}")
        ratio = 2.0 ** (disguise_semitones(params) / 12.0)
        t = np.arange(len(x), dtype=np.float64)
        phase = ((1.0 - ratio) * t / self._grain) % 1.0  # the read pointer moves at `ratio` samples per sample
        out = np.zeros(len(x), dtype=np.float64)
        for offset in (0.0, 0.5):
            p = (phase + offset) % 1.0
            gain = 1.0 - np.abs(2.0 * p - 1.0)  # zero where the tap jumps; the two taps' gains sum to 1
            position = np.clip(t - p * self._grain, 0.0, len(x) - 1.0)
            low = np.floor(position).astype(np.int64)
            high = np.minimum(low + 1, len(x) - 1)
            frac = position - low
            out += gain * ((1.0 - frac) * x[low] + frac * x[high])
        return out.astype(np.float32)
