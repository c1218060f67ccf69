"""Voice presets and the diagnostic passthrough converter."""

from __future__ import annotations

import numpy as np
import pytest

from mirage_ray.voice.base import VoiceConverter, VoiceParams
from mirage_ray.voice.convert_passthrough import PassthroughConverter
from mirage_ray.voice.presets import UnknownPresetError, preset_names, preset_params


def test_named_presets():
    assert preset_params("deeper") == VoiceParams(pitch_semitones=-4.0, formant_shift=0.9)
    assert preset_params("Brighter ") == VoiceParams(pitch_semitones=4.0, formant_shift=1.12)
    assert preset_params("neutral") == VoiceParams()
    assert preset_params("deeper", voice="alice").voice == "alice"
    assert {"neutral", "deeper", "brighter"} <= set(preset_names())


def test_unknown_preset_lists_names():
    with pytest.raises(UnknownPresetError, match=r"'squeaky'.*neutral, deeper, brighter"):
        preset_params("squeaky")


def test_passthrough_returns_a_copy():
    converter = PassthroughConverter()
    assert isinstance(converter, VoiceConverter) and converter.name == "passthrough"
    x = np.linspace(-0.5, 0.5, 1600, dtype=np.float32)
    y = converter.convert(x, VoiceParams(pitch_semitones=5.0))
    np.testing.assert_array_equal(x, y)
    assert y is not x
