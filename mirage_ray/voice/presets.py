"""Named voice presets: a pitch shift (semitones) and a formant factor, as VoiceParams."""

from __future__ import annotations

from types import MappingProxyType

from mirage_ray.voice.base import VoiceParams


class UnknownPresetError(ValueError):
    """A preset name that is not defined; the message lists the defined names."""


# name -> (pitch shift in semitones, formant warp factor: >1 brighter/smaller, <1 darker/larger)
_PRESETS: dict[str, tuple[float, float]] = {
    "neutral": (0.0, 1.0),
    "deeper": (-4.0, 0.9),
    "brighter": (4.0, 1.12),
    "much-deeper": (-7.0, 0.85),
    "higher": (7.0, 1.18),
    "octave-down": (-12.0, 1.0),
}
PRESETS = MappingProxyType({name: VoiceParams(st, formant) for name, (st, formant) in _PRESETS.items()})


def preset_names() -> list[str]:
    """The defined preset names, in a stable order."""
    return list(PRESETS)


def preset_params(name: str, voice: str | None = None) -> VoiceParams:
    """VoiceParams for preset ``name`` (case-insensitive), optionally naming an RVC ``voice``."""
    params = PRESETS.get(name.strip().lower())
    if params is None:
        raise UnknownPresetError(f"unknown voice preset {name!r}; known presets: {', '.join(PRESETS)}")
    return params if voice is None else VoiceParams(params.pitch_semitones, params.formant_shift, voice)
