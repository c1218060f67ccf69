"""The click and log-spectral-distance measures used by the voice tests and bench."""

from __future__ import annotations

import numpy as np
import pytest

from mirage_ray.voice.quality import block_boundaries, click_score, log_spectral_distance

SR = 16_000


def _tone(n: int, hz: float = 211.7, phase: float = 0.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * hz * np.arange(n) / SR + phase)).astype(np.float32)


def test_click_score_is_about_one_on_smooth_audio_and_large_on_a_phase_jump():
    smooth = _tone(16_000)
    assert click_score(smooth, block_boundaries(len(smooth), 1600)) == pytest.approx(1.0, abs=0.3)
    jumpy = np.concatenate([_tone(1600, phase=k * 2.0) for k in range(10)])  # blocks glued with phase jumps
    assert click_score(jumpy, block_boundaries(len(jumpy), 1600)) > 5.0
    assert click_score(jumpy, block_boundaries(len(jumpy), 1600, offset=800)) == pytest.approx(1.0, abs=0.3)
    assert np.isnan(click_score(np.zeros(16_000), block_boundaries(16_000, 1600)))  # silence cannot click


def test_log_spectral_distance():
    rng = np.random.default_rng(0)
    x = _tone(16_000) + 0.05 * rng.standard_normal(16_000).astype(np.float32)
    assert log_spectral_distance(x, x) == 0.0
    assert log_spectral_distance(0.5 * x, x) == pytest.approx(20 * np.log10(2), abs=0.01)  # 6 dB everywhere
    assert log_spectral_distance(_tone(16_000, 440.0), x) > 10.0
    with pytest.raises(ValueError, match="at least"):
        log_spectral_distance(x[:100], x[:100])
