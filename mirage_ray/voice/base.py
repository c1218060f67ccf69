"""The small protocol every voice converter implements (one file per backend)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from mirage_ray.protocol import AUDIO_SAMPLE_RATE

SAMPLE_RATE = AUDIO_SAMPLE_RATE  # converters work at the wire's rate (no resampling at the ingress)


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
    context_ms: int  # left context a window needs for its new block to convert as in the whole utterance

    def convert(self, window: np.ndarray, params: VoiceParams) -> np.ndarray: ...
