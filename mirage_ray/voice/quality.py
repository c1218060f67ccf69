"""Audio quality measures for the voice path (used by tests and bench/bench_voice.py).

- ``click_score``: how big the sample-to-sample jump across each block boundary is, in units of the mean
  sample-to-sample change around it. Natural audio scores about 1 anywhere; a discontinuity (a click) scores several.
- ``log_spectral_distance``: RMS difference in dB of band energies (log-spaced bands), averaged over speech frames.
"""

from __future__ import annotations

import itertools

import numpy as np

CLICK_HALF_WIDTH = 32  # samples each side of a boundary used as its local reference (2 ms at 16 kHz)
CLICK_MIN_SLOPE = 1e-3  # boundaries whose surroundings are quieter than this are skipped (silence cannot click)
LSD_FFT = 512
LSD_HOP = 160
LSD_BANDS_HZ = (150.0, 7000.0)
LSD_N_BANDS = 18
LSD_FLOOR_DB = 30.0  # frames more than this below the loudest reference frame are not speech


def click_score(audio: np.ndarray, positions: np.ndarray, half_width: int = CLICK_HALF_WIDTH) -> float:
    """Mean over ``positions`` of |x[p] - x[p-1]| / mean |Δx| in ±half_width (excluding that step); NaN if none."""
    x = np.asarray(audio, dtype=np.float64)
    step = np.abs(np.diff(x))  # step[i] = |x[i+1] - x[i]|
    ratios = []
    for p in np.asarray(positions, dtype=np.int64):
        if p - half_width - 1 < 0 or p + half_width > len(step):
            continue
        jump = step[p - 1]
        around = np.concatenate((step[p - 1 - half_width : p - 1], step[p : p + half_width]))
        level = float(around.mean())
        if level >= CLICK_MIN_SLOPE:
            ratios.append(jump / level)
    return float(np.mean(ratios)) if ratios else float("nan")


def block_boundaries(length: int, block: int, offset: int = 0) -> np.ndarray:
    """Sample indices where block k+1 starts (k ≥ 0), shifted by ``offset`` (use block // 2 for a control set)."""
    return np.arange(block, length, block, dtype=np.int64) + offset


def _band_energies_db(x: np.ndarray, sample_rate: int) -> np.ndarray:
    frames = np.lib.stride_tricks.sliding_window_view(np.asarray(x, dtype=np.float64), LSD_FFT)[::LSD_HOP]
    power = np.abs(np.fft.rfft(frames * np.hanning(LSD_FFT), axis=1)) ** 2
    freqs = np.fft.rfftfreq(LSD_FFT, 1.0 / sample_rate)
    edges = np.geomspace(*LSD_BANDS_HZ, LSD_N_BANDS + 1)
    bands = [power[:, (freqs >= lo) & (freqs < hi)].mean(axis=1) for lo, hi in itertools.pairwise(edges)]
    return 10.0 * np.log10(np.stack(bands, axis=1) + 1e-10)


def log_spectral_distance(test: np.ndarray, reference: np.ndarray, sample_rate: int = 16_000) -> float:
    """Mean over speech frames of the RMS band-energy difference in dB; frames chosen on ``reference``."""
    n = min(len(test), len(reference))
    if n < LSD_FFT:
        raise ValueError(f"need at least {LSD_FFT} samples, got {n}")
    a, b = _band_energies_db(test[:n], sample_rate), _band_energies_db(reference[:n], sample_rate)
    level = 10.0 * np.log10(np.mean(10.0 ** (b / 10.0), axis=1))
    keep = level > level.max() - LSD_FLOOR_DB
    return float(np.mean(np.sqrt(np.mean((a[keep] - b[keep]) ** 2, axis=1))))
