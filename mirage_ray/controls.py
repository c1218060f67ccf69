"""A session's user controls: face count, swap/enhance switches, fidelity, voice preset, pitch and formant.

Starts from the configured settings and the chosen preset; ``apply`` takes a client ``settings`` message and returns
the replies (an ``error`` per refused value with its allowed range, and a ``settings`` confirmation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mirage_ray import protocol
from mirage_ray.config import MirageSettings
from mirage_ray.protocol import ErrorCode
from mirage_ray.voice.base import VoiceParams
from mirage_ray.voice.presets import PRESETS, preset_params


class SessionControls:
    """The current value of every user control of one session."""

    def __init__(self, settings: MirageSettings, model_voices: Sequence[str] = ()) -> None:
        base = preset_params(settings.voice_preset)
        self.max_faces = settings.max_faces
        self.swap = True
        self.enhance = settings.enhance
        self.fidelity = settings.codeformer_fidelity
        self.voice_name: str | None = settings.voice_preset
        self.voice_params = VoiceParams(
            pitch_semitones=settings.pitch_semitones or base.pitch_semitones,
            formant_shift=settings.formant_shift if settings.formant_shift != 1.0 else base.formant_shift,
            voice=None,
        )
        self._voices = [*model_voices, *PRESETS]

    @property
    def voice_disguised(self) -> bool:
        """Whether the chosen voice differs from the speaker's own (then the raw voice must never go out)."""
        params = self.voice_params
        return params.voice is not None or params.pitch_semitones != 0.0 or params.formant_shift != 1.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_faces": self.max_faces,
            "swap": self.swap,
            "enhance": self.enhance,
            "fidelity": self.fidelity,
            "pitch_semitones": self.voice_params.pitch_semitones,
            "formant_shift": self.voice_params.formant_shift,
            "voice": self.voice_name,
        }

    def apply(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        """Apply a ``settings`` message: valid fields take effect, invalid ones are refused with their range."""
        accepted, refused = protocol.parse_settings(message)
        replies = [protocol.error(ErrorCode.BAD_SETTING, reason) for reason in refused]
        voice = accepted.get("voice")
        if voice is not None and voice not in self._voices:
            replies.append(
                protocol.error(
                    ErrorCode.BAD_SETTING, f"voice must be one of [{', '.join(self._voices)}], got {voice!r}"
                )
            )
            accepted.pop("voice")
        elif voice in PRESETS:  # a preset sets pitch and formant unless the same message sets them too
            preset = PRESETS[voice]
            accepted.setdefault("pitch_semitones", preset.pitch_semitones)
            accepted.setdefault("formant_shift", preset.formant_shift)
        self.max_faces = accepted.get("max_faces", self.max_faces)
        self.swap = accepted.get("swap", self.swap)
        self.enhance = accepted.get("enhance", self.enhance)
        self.fidelity = accepted.get("fidelity", self.fidelity)
        model_voice = accepted.get("voice", self.voice_params.voice)
        self.voice_params = VoiceParams(
            pitch_semitones=accepted.get("pitch_semitones", self.voice_params.pitch_semitones),
            formant_shift=accepted.get("formant_shift", self.voice_params.formant_shift),
            voice=None if model_voice in PRESETS else model_voice,
        )
        self.voice_name = accepted.get("voice", self.voice_name)
        if accepted:
            replies.append({"type": "settings", "applied": sorted(accepted), **self.as_dict()})
        return replies
