"""The small protocol every voice converter implements (one file per backend)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class VoiceParams:
    """Per-session conversion parameters (from settings messages)."""

    pitch_semitones: float = 0.0
    formant_shift: float = 1.0
    voice: str | None = None


@runtime_checkable
class VoiceConverter(Protocol):
    """float32 mono 16 kHz window in [-1, 1] -> converted window of the same length."""

    name: str

    def convert(self, window: np.ndarray, params: VoiceParams) -> np.ndarray: ...
