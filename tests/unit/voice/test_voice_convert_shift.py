"""The ingress's fail-closed pitch shift: a real pitch change on real speech, far from the speaker's waveform."""

from __future__ import annotations

import numpy as np
import pytest
import pyworld

from mirage_ray.voice.base import SAMPLE_RATE, VoiceParams
from mirage_ray.voice.convert_shift import MIN_SHIFT_SEMITONES, ShiftConverter, disguise_semitones
from tests.speech import speech


def ncc_peak(a: np.ndarray, b: np.ndarray, max_lag: int = 6400) -> float:
    """Highest normalised cross-correlation of ``a`` against ``b`` over lags up to ``max_lag`` samples (400 ms)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    best = 0.0
    for lag in range(0, max_lag, 8):
        x, y = a64[lag:], b64[: len(a64) - lag]
        best = max(best, float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-12)))
    return best


def median_f0(x: np.ndarray) -> float:
    f0, _ = pyworld.harvest(x.astype(np.float64), SAMPLE_RATE, f0_floor=60.0, f0_ceil=500.0)
    return float(np.median(f0[f0 > 0]))


@pytest.mark.parametrize("semitones", [-4.0, 7.0])
def test_the_pitch_moves_by_the_sessions_shift(semitones: float) -> None:
    x = speech()[: 2 * SAMPLE_RATE]
    out = ShiftConverter().convert(x, VoiceParams(pitch_semitones=semitones))
    assert out.shape == x.shape and out.dtype == np.float32 and np.all(np.isfinite(out))
    moved = 12 * np.log2(median_f0(out) / median_f0(x))
    assert abs(moved - semitones) < 1.0, moved


def test_the_output_is_not_the_speakers_waveform() -> None:
    x = speech()[: 2 * SAMPLE_RATE]
    assert ncc_peak(x, x) > 0.999  # the measure sees raw audio for what it is
    out = ShiftConverter().convert(x, VoiceParams(pitch_semitones=-4.0, formant_shift=0.9))
    assert ncc_peak(out, x) < 0.6


def test_a_small_or_zero_shift_is_pushed_out_to_a_disguise() -> None:
    assert disguise_semitones(VoiceParams(pitch_semitones=0.0)) == -4.0
    assert disguise_semitones(VoiceParams(pitch_semitones=1.0)) == MIN_SHIFT_SEMITONES
    assert disguise_semitones(VoiceParams(pitch_semitones=-12.0)) == -12.0


def test_rejects_stereo() -> None:
    with pytest.raises(ValueError, match="mono"):
        ShiftConverter().convert(np.zeros((2, 160), np.float32), VoiceParams())
