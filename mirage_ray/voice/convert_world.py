"""WORLD vocoder voice converter: the embedded default (no weights needed).

Analysis (DIO + StoneMask F0, or Harvest; CheapTrick envelope; D4C aperiodicity), then the F0 is scaled by the pitch
shift, the spectral envelope is warped along frequency by the formant factor, and WORLD resynthesises the window.
Stateless and thread-safe: every call works on its own arrays (pyworld releases nothing shared).
"""

from __future__ import annotations

import logging
import warnings
from typing import Literal

import numpy as np

from mirage_ray.config import field_range
from mirage_ray.voice.base import SAMPLE_RATE, VoiceParams

logger = logging.getLogger(__name__)

F0_FLOOR_HZ = 60.0  # lowest voice F0 we track (deep male voices)
F0_CEIL_HZ = 800.0  # highest (children, singing)
# left context per window: DIO, CheapTrick and D4C look at most ~3 F0 periods (50 ms at the 60 Hz floor) around a
# frame; 128 ms keeps pitch (-387 vs -392 cents for -400 at 384 ms) and the log-spectral distance to the offline
# conversion (4.8 vs 4.5 dB) and halves WORLD's CPU at 80 ms blocks (0.17 vs 0.37 CPU-s/s; docs/benchmarks.md)
CONTEXT_MS = 128
DIO_SPEED = 2  # DIO decimation: 2 halves its cost with no audible change at 16 kHz
SILENCE_RMS = 1e-5  # a window this quiet is returned as zeros (WORLD is ill-conditioned on digital silence)
FORMANT_RANGE = field_range("formant_shift")  # allowed envelope warp factors
PITCH_RANGE_ST = field_range("pitch_semitones")[1]  # allowed |pitch shift| in semitones

F0Method = Literal["dio", "harvest"]


class WorldConverterError(ValueError):
    """Bad input or parameters for the WORLD converter."""


def _import_pyworld():  # pyworld has no type stubs
    # pyworld imports pkg_resources, which warns on recent setuptools; the warning is not ours to act on.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        import pyworld

    return pyworld


def warp_envelope(envelope: np.ndarray, factor: float) -> np.ndarray:
    """Move formants by ``factor`` (>1 up, <1 down): new[k] = old[k / factor], linear in log power, edge-held."""
    if factor == 1.0:
        return envelope
    bins = envelope.shape[-1]
    src = np.arange(bins, dtype=np.float64) / factor
    lo = np.clip(np.floor(src).astype(np.int64), 0, bins - 1)
    hi = np.clip(lo + 1, 0, bins - 1)
    frac = np.clip(src - lo, 0.0, 1.0)
    log_env = np.log(np.maximum(envelope, 1e-300))
    warped = log_env[:, lo] * (1.0 - frac) + log_env[:, hi] * frac
    return np.ascontiguousarray(np.exp(warped))


class WorldConverter:
    """pyworld analysis / modification / synthesis; same-length float32 window out."""

    name = "world"
    context_ms = CONTEXT_MS

    def __init__(
        self,
        sample_rate: int = SAMPLE_RATE,
        f0_method: F0Method = "dio",
        frame_period_ms: float = 10.0,
        f0_floor_hz: float = F0_FLOOR_HZ,
        f0_ceil_hz: float = F0_CEIL_HZ,
        name: str = "world",
    ) -> None:
        if f0_method not in ("dio", "harvest"):
            raise WorldConverterError(f"f0_method must be 'dio' or 'harvest', got {f0_method!r}")
        if not 1.0 <= frame_period_ms <= 20.0:
            raise WorldConverterError(f"frame_period_ms must lie in [1, 20], got {frame_period_ms}")
        if not 0 < f0_floor_hz < f0_ceil_hz:
            raise WorldConverterError(f"need 0 < f0_floor_hz < f0_ceil_hz, got {f0_floor_hz}, {f0_ceil_hz}")
        self._pw = _import_pyworld()
        self.sample_rate = sample_rate
        self.f0_method = f0_method
        self.frame_period_ms = frame_period_ms
        self.name = name
        self.f0_floor_hz = f0_floor_hz
        self.f0_ceil_hz = f0_ceil_hz
        self.fft_size = self._pw.get_cheaptrick_fft_size(sample_rate, f0_floor_hz)

    def _f0(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pw, fs = self._pw, self.sample_rate
        if self.f0_method == "harvest":
            return pw.harvest(
                x, fs, f0_floor=self.f0_floor_hz, f0_ceil=self.f0_ceil_hz, frame_period=self.frame_period_ms
            )
        f0, times = pw.dio(
            x,
            fs,
            f0_floor=self.f0_floor_hz,
            f0_ceil=self.f0_ceil_hz,
            frame_period=self.frame_period_ms,
            speed=DIO_SPEED,
        )
        return pw.stonemask(x, f0, times, fs), times

    def analyse(self, window: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """WORLD parameters of ``window``: (f0 Hz per frame, spectral envelope, aperiodicity)."""
        pw, fs = self._pw, self.sample_rate
        x = np.ascontiguousarray(window, dtype=np.float64)
        f0, times = self._f0(x)
        envelope = pw.cheaptrick(x, f0, times, fs, f0_floor=self.f0_floor_hz, fft_size=self.fft_size)
        aperiodicity = pw.d4c(x, f0, times, fs, fft_size=self.fft_size)
        return f0, envelope, aperiodicity

    def convert(self, window: np.ndarray, params: VoiceParams) -> np.ndarray:
        """Pitch-shift by ``params.pitch_semitones`` and warp formants by ``params.formant_shift``."""
        x = np.asarray(window)
        if x.ndim != 1:
            raise WorldConverterError(f"expected a mono 1-D window, got shape {x.shape}")
        if abs(params.pitch_semitones) > PITCH_RANGE_ST:
            raise WorldConverterError(f"pitch_semitones must lie in ±{PITCH_RANGE_ST}, got {params.pitch_semitones}")
        if not FORMANT_RANGE[0] <= params.formant_shift <= FORMANT_RANGE[1]:
            raise WorldConverterError(f"formant_shift must lie in {FORMANT_RANGE}, got {params.formant_shift}")
        n = len(x)
        if n == 0 or float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) < SILENCE_RMS:
            return np.zeros(n, dtype=np.float32)
        f0, envelope, aperiodicity = self.analyse(x)
        f0 = f0 * 2.0 ** (params.pitch_semitones / 12.0)
        envelope = warp_envelope(envelope, params.formant_shift)
        y = self._pw.synthesize(f0, envelope, aperiodicity, self.sample_rate, self.frame_period_ms)
        out = np.zeros(n, dtype=np.float32)
        m = min(n, len(y))
        out[:m] = y[:m]
        return out
