"""RVC voice converter (production): ContentVec features + RMVPE F0 + a per-voice RVC generator, on onnxruntime.

Per window: content features at 50 frames/s (ContentVec ONNX, 768-d layer 12 or 256-d layer 9 + proj; the size is
read from the model) are repeated ×2 to 100 frames/s; RMVPE gives F0 at 100 frames/s, shifted by the pitch
parameter; the generator (RVC ONNX export: ``phone``/``feats``, ``phone_lengths``/``p_len``, ``pitch`` coarse 1–255,
``pitchf`` Hz, ``ds``/``sid``, optional ``rnd``) returns audio at 32/40/48 kHz, resampled to 16 kHz with soxr and fitted
to exactly the window's length. Formant shift does not apply to RVC (the voice model sets the timbre).

Voices are ``*.onnx`` files in ``voices_dir``; ``params.voice`` picks one per call (sessions are loaded once and
cached). Stateless across calls and thread-safe (onnxruntime sessions are; the cache is guarded by a lock).

Precision: ``fp16=True`` turns on TensorRT's fp16 mode where that provider is used, and fp16-exported files (inputs
declared float16) are fed in float16 on any provider. Every output is checked: non-finite or absurdly loud audio
raises :class:`RvcNumericsError` (the session then passes that block through) — fp16 RVC generators are known to
overflow on some GPUs/providers, so keep fp32 where that check fires.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import soxr

from mirage_ray.voice.base import SAMPLE_RATE, VoiceParams
from mirage_ray.voice.onnx_io import fp16_providers, make_session, numpy_dtype
from mirage_ray.voice.pitch_rmvpe import HOP, RmvpePitch

logger = logging.getLogger(__name__)

CONTENT_HOP = 320  # ContentVec/HuBERT: 20 ms per feature frame at 16 kHz
CONTENT_RECEPTIVE = 400  # samples seen by one feature frame
FEATURE_DIMS = (256, 768)
F0_MIN_HZ, F0_MAX_HZ = 50.0, 1100.0  # RVC's coarse-pitch range
COARSE_MIN, COARSE_MAX = 1, 255
GENERATOR_FRAME_RATE = 100  # generator output frames per second
KNOWN_OUTPUT_RATES = (32_000, 40_000, 48_000)
RATE_SNAP_TOLERANCE = 0.02
NOISE_CHANNELS = 192
OUTPUT_PEAK_LIMIT = 4.0  # |sample| above this is not speech: a numerics failure
RESAMPLE_QUALITY = "HQ"


class RvcModelError(ValueError):
    """A model file does not have the signature this backend expects."""


class UnknownVoiceError(ValueError):
    """``params.voice`` names no available voice; the message lists them."""


class RvcNumericsError(RuntimeError):
    """The generator produced non-finite or absurd audio (typically an fp16 overflow)."""


def list_voices(voices_dir: str | os.PathLike[str]) -> list[str]:
    """Names (file stems) of the ``*.onnx`` voice generators in ``voices_dir``, sorted; [] if it does not exist."""
    folder = Path(voices_dir)
    return sorted(p.stem for p in folder.glob("*.onnx") if p.is_file()) if folder.is_dir() else []


def coarse_pitch(f0_hz: np.ndarray) -> np.ndarray:
    """RVC's coarse pitch: mel-scaled F0 mapped to 1..255 (1 = unvoiced)."""
    mel_min = 1127.0 * np.log(1.0 + F0_MIN_HZ / 700.0)
    mel_max = 1127.0 * np.log(1.0 + F0_MAX_HZ / 700.0)
    mel = 1127.0 * np.log(1.0 + np.asarray(f0_hz, dtype=np.float64) / 700.0)
    voiced = mel > 0
    mel[voiced] = (mel[voiced] - mel_min) * (COARSE_MAX - 1) / (mel_max - mel_min) + 1
    return np.clip(np.rint(mel), COARSE_MIN, COARSE_MAX).astype(np.int64)


def _fit(frames: np.ndarray, n: int) -> np.ndarray:
    """First ``n`` rows of ``frames``, repeating the last row if there are fewer."""
    if len(frames) >= n:
        return frames[:n]
    if len(frames) == 0:
        return np.zeros((n, *frames.shape[1:]), dtype=frames.dtype)
    return np.concatenate((frames, np.repeat(frames[-1:], n - len(frames), axis=0)))


class ContentEncoder:
    """ContentVec / HuBERT ONNX: 16 kHz audio ``[1, 1, N]`` (or ``[1, N]``) → features ``[T, C]`` at 50 frames/s."""

    def __init__(self, model: str | os.PathLike[str] | ort.InferenceSession, providers: Sequence[Any] | None = None):
        self.session = make_session(model, providers)
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        if len(inp.shape) not in (2, 3) or len(out.shape) != 3:
            raise RvcModelError(f"content encoder must map [1, 1, N] audio to [1, T, C]; got {inp.shape} → {out.shape}")
        self._input, self._rank, self._dtype = inp.name, len(inp.shape), numpy_dtype(inp.type)
        self._output = out.name
        last, middle = out.shape[2], out.shape[1]
        self._channels_first = isinstance(middle, int) and middle in FEATURE_DIMS and not isinstance(last, int)
        dim = middle if self._channels_first else last
        self.dim: int | None = dim if isinstance(dim, int) else None

    def features(self, audio: np.ndarray) -> np.ndarray:
        """``(T, C)`` float32 features; the audio is padded so frame i is centred on the i-th 20 ms span."""
        half = (CONTENT_RECEPTIVE - CONTENT_HOP) // 2
        x = np.pad(np.asarray(audio, dtype=np.float32), half, mode="reflect")
        feed = x[None, None] if self._rank == 3 else x[None]
        out = np.asarray(self.session.run([self._output], {self._input: feed.astype(self._dtype)})[0], np.float32)
        feats = out[0].T if self._channels_first else out[0]
        if self.dim is None:
            self.dim = int(feats.shape[1])
        return feats


class _Voice:
    """One generator session plus what we learned about it."""

    def __init__(self, name: str, session: ort.InferenceSession, output_rate: int | None) -> None:
        self.name, self.session, self.output_rate = name, session, output_rate
        self.inputs = {i.name: i for i in session.get_inputs()}
        self.output = session.get_outputs()[0].name
        phone = self.inputs.get("phone") or self.inputs.get("feats")
        if phone is None or len(phone.shape) != 3:
            raise RvcModelError(
                f"voice {name!r}: generator needs a 'phone' or 'feats' [1, T, C] input; inputs are {list(self.inputs)}"
            )
        self.phone = phone
        self.dim = phone.shape[2] if isinstance(phone.shape[2], int) else None
        rnd = self.inputs.get("rnd")
        self.noise_channels = rnd.shape[1] if rnd is not None and isinstance(rnd.shape[1], int) else NOISE_CHANNELS
        self.has_pitch = "pitchf" in self.inputs


class RvcConverter:
    """RVC on onnxruntime; implements :class:`mirage_ray.voice.base.VoiceConverter`."""

    name = "rvc"

    def __init__(
        self,
        content_model: str | os.PathLike[str] | ort.InferenceSession,
        rmvpe_model: str | os.PathLike[str] | ort.InferenceSession,
        voices_dir: str | os.PathLike[str] | None = None,
        providers: Sequence[Any] | None = None,
        *,
        voices: Mapping[str, str | os.PathLike[str] | ort.InferenceSession] | None = None,
        default_voice: str | None = None,
        fp16: bool = False,
        speaker_id: int = 0,
        output_rate: int | None = None,
        seed: int = 0,
    ) -> None:
        """``voices`` (name → path or session) adds to / overrides the ``*.onnx`` files found in ``voices_dir``."""
        self.fp16 = fp16
        self._providers = fp16_providers(providers or []) if fp16 and providers else providers
        self.content = ContentEncoder(content_model, self._providers)
        self.pitch = RmvpePitch(rmvpe_model, self._providers)
        found: dict[str, str | os.PathLike[str] | ort.InferenceSession] = {}
        if voices_dir is not None:
            skip = {Path(m).resolve() for m in (content_model, rmvpe_model) if not isinstance(m, ort.InferenceSession)}
            for name in list_voices(voices_dir):
                path = Path(voices_dir) / f"{name}.onnx"
                if path.resolve() not in skip:
                    found[name] = path
        found.update(voices or {})
        if not found:
            raise RvcModelError(f"no RVC voice: no *.onnx generator in {voices_dir} and none given")
        self._sources = found
        self.default_voice = default_voice or sorted(found)[0]
        if self.default_voice not in found:
            raise UnknownVoiceError(f"default voice {default_voice!r} unknown; voices: {', '.join(sorted(found))}")
        self.speaker_id = speaker_id
        self._output_rate = output_rate
        self._seed = seed
        self._cache: dict[str, _Voice] = {}
        self._lock = threading.Lock()
        self._voice(self.default_voice)  # fail at start, not on the first chunk

    @property
    def voices(self) -> list[str]:
        """Selectable voice names."""
        return sorted(self._sources)

    def _voice(self, name: str | None) -> _Voice:
        key = name or self.default_voice
        voice = self._cache.get(key)
        if voice is not None:
            return voice
        if key not in self._sources:
            raise UnknownVoiceError(f"unknown voice {key!r}; voices: {', '.join(self.voices)}")
        with self._lock:
            voice = self._cache.get(key)
            if voice is None:
                voice = _Voice(key, make_session(self._sources[key], self._providers), self._output_rate)
                if voice.dim is not None and self.content.dim is not None and voice.dim != self.content.dim:
                    raise RvcModelError(
                        f"voice {key!r} expects {voice.dim}-d features but the content encoder gives {self.content.dim}"
                    )
                if self.fp16 and voice.phone.type != "tensor(float16)":
                    logger.info("voice %s is an fp32 file: it runs in fp32 unless TensorRT fp16 applies", key)
                self._cache[key] = voice
        return voice

    def _feeds(self, voice: _Voice, feats: np.ndarray, f0: np.ndarray) -> dict[str, np.ndarray]:
        frames = len(feats)
        values: dict[str, np.ndarray] = {
            "phone": feats[None],
            "feats": feats[None],
            "phone_lengths": np.array([frames], dtype=np.int64),
            "p_len": np.array([frames], dtype=np.int64),
            "pitch": coarse_pitch(f0)[None],
            "pitchf": f0.astype(np.float32)[None],
            "ds": np.array([self.speaker_id], dtype=np.int64),
            "sid": np.array([self.speaker_id], dtype=np.int64),
            "skip_head": np.array([0], dtype=np.int64),
            "return_length": np.array([frames], dtype=np.int64),
        }
        feeds: dict[str, np.ndarray] = {}
        for name, arg in voice.inputs.items():
            if name == "rnd":
                rng = np.random.default_rng(self._seed)
                value = rng.standard_normal((1, voice.noise_channels, frames), dtype=np.float32)
            elif name in values:
                value = values[name]
            else:
                raise RvcModelError(
                    f"voice {voice.name!r}: unsupported generator input {name!r}; known: {list(values)}"
                )
            feeds[name] = value.astype(numpy_dtype(arg.type))
        return feeds

    def _rate(self, voice: _Voice, n_out: int, frames: int) -> int:
        if voice.output_rate is not None:
            return voice.output_rate
        meta = voice.session.get_modelmeta().custom_metadata_map
        for key in ("sampling_rate", "sample_rate", "sr"):
            if meta.get(key, "").isdigit():
                voice.output_rate = int(meta[key])
                return voice.output_rate
        measured = n_out * GENERATOR_FRAME_RATE / max(frames, 1)
        nearest = min(KNOWN_OUTPUT_RATES, key=lambda r: abs(r - measured))
        rate = nearest if abs(nearest - measured) <= RATE_SNAP_TOLERANCE * nearest else round(measured)
        voice.output_rate = rate
        logger.info("voice %s: output rate %d Hz (from its output length)", voice.name, rate)
        return rate

    def convert(self, window: np.ndarray, params: VoiceParams) -> np.ndarray:
        """Convert a 16 kHz window with voice ``params.voice`` (default voice if None); same length out."""
        x = np.asarray(window, dtype=np.float32)
        if x.ndim != 1 or len(x) < CONTENT_RECEPTIVE:
            raise ValueError(f"expected a mono 1-D window of at least {CONTENT_RECEPTIVE} samples, got {x.shape}")
        voice = self._voice(params.voice)
        n = len(x)
        frames = -(-n // HOP)  # generator frames at 100 Hz covering the window
        feats = _fit(np.repeat(self.content.features(x), 2, axis=0), frames)
        f0 = _fit(self.pitch.f0(x), frames) * np.float32(2.0 ** (params.pitch_semitones / 12.0))
        out = voice.session.run([voice.output], self._feeds(voice, feats, f0))[0]
        audio = np.asarray(out, dtype=np.float32).reshape(-1)
        if not np.all(np.isfinite(audio)) or float(np.abs(audio).max(initial=0.0)) > OUTPUT_PEAK_LIMIT:
            raise RvcNumericsError(
                f"voice {voice.name!r} produced non-finite or out-of-range audio (fp16={self.fp16}); use fp32"
            )
        rate = self._rate(voice, len(audio), frames)
        resampled = soxr.resample(audio, rate, SAMPLE_RATE, quality=RESAMPLE_QUALITY).astype(np.float32)
        result = np.zeros(n, dtype=np.float32)
        m = min(n, len(resampled))
        result[:m] = resampled[:m]
        return result
