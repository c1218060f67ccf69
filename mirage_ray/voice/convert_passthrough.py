"""Passthrough "converter": returns the input unchanged. For diagnostics only (latency, transport, SOLA checks);
it does not disguise the voice."""

from __future__ import annotations

import numpy as np

from mirage_ray.voice.base import VoiceParams


class PassthroughConverter:
    """Identity converter (diagnostics only: the speaker's real voice goes out)."""

    name = "passthrough"
    context_ms = 0

    def convert(self, window: np.ndarray, params: VoiceParams) -> np.ndarray:
        """A float32 copy of ``window``; ``params`` are ignored."""
        x = np.asarray(window)
        if x.ndim != 1:
            raise ValueError(f"expected a mono 1-D window, got shape {x.shape}")
        return x.astype(np.float32, copy=True)
