"""RVC voice converter (production): ContentVec features + RMVPE F0 + a per-voice RVC generator, on onnxruntime.

Per window: content features at 50 frames/s (ContentVec ONNX, 768-d layer 12 or 256-d layer 9 + proj; the size is
read from the model) are repeated ×2 to 100 frames/s; RMVPE gives F0 at 100 frames/s, shifted by the pitch
parameter; the generator (RVC ONNX export: ``phone``/``feats``, ``phone_lengths``/``p_len``, ``pitch`` coarse 1–255,
``pitchf`` Hz, ``ds``/``sid``, optional ``rnd``) returns audio at 32/40/48 kHz, resampled to 16 kHz with soxr and fitted
to exactly the window's length. Formant shift does not apply to RVC (the voice model sets the timbre).

Voices are ``*.onnx`` files in ``voices_dir``; ``params.voice`` picks one per call (sessions are loaded once and
cached). Stateless across calls and thread-safe (onnxruntime sessions are; the cache is guarded by a lock).

Every generator input is checked at start, for every voice (names, element types, ranks, fixed sizes): the
streaming exports' ``skip_head`` / ``return_length`` / ``formant_length`` (frames at 100/s; scalar or ``[1]``, fed as
declared) get 0 / the window's frames / the window's frames, so the whole window comes back with its formants as
they are. A voice with an input this backend cannot feed is refused at start with a message that names the input:
it is left out of :attr:`RvcConverter.voices` (or, when it is the default voice, the converter does not start).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
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
# left context per window: the content encoder's features (and the generator's attention) want a few hundred ms of
# speech before the new block; RVC's realtime tools use 0.5-2.5 s, this project's streaming tests run at 384 ms
CONTEXT_MS = 384
OUTPUT_PEAK_LIMIT = 4.0  # |sample| above this is not speech: a numerics failure
RESAMPLE_QUALITY = "HQ"

# Generator inputs this backend can feed: name -> rank (frame inputs [1, T, C] / [1, T] / [1, C, T]) ...
FRAME_INPUT_RANKS = {"phone": 3, "feats": 3, "pitch": 2, "pitchf": 2, "rnd": 3}
FLOAT_INPUTS = ("phone", "feats", "pitchf", "rnd")
# ... and the per-call numbers, each a scalar or a [1] tensor as the export declares it
NUMBER_INPUTS = ("phone_lengths", "p_len", "ds", "sid", "skip_head", "return_length", "formant_length")
KNOWN_INPUTS = (*FRAME_INPUT_RANKS, *NUMBER_INPUTS)
# one of each group must be there
REQUIRED_INPUT_GROUPS = (("phone", "feats"), ("phone_lengths", "p_len"), ("ds", "sid"))
_ONNX_ELEMENT_TYPES = {
    onnx.TensorProto.FLOAT: "tensor(float)",
    onnx.TensorProto.FLOAT16: "tensor(float16)",
    onnx.TensorProto.DOUBLE: "tensor(double)",
    onnx.TensorProto.INT64: "tensor(int64)",
    onnx.TensorProto.INT32: "tensor(int32)",
}


class RvcModelError(ValueError):
    """A model file does not have the signature this backend expects."""


class UnknownVoiceError(ValueError):
    """``params.voice`` names no available voice; the message lists them."""


class RvcNumericsError(RuntimeError):
    """The generator produced non-finite or absurd audio (typically an fp16 overflow)."""


@dataclass(frozen=True)
class DeclaredInput:
    """A graph input as the model declares it: onnxruntime's type string and shape (ints, names or None per dim)."""

    name: str
    type: str
    shape: tuple[int | str | None, ...]


def declared_inputs(source: str | os.PathLike[str] | ort.InferenceSession) -> list[DeclaredInput]:
    """The graph inputs of a generator, from a ready session or read from the file (no session is created)."""
    if isinstance(source, ort.InferenceSession):
        return [DeclaredInput(i.name, i.type, tuple(i.shape or ())) for i in source.get_inputs()]
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:  # protobuf decode errors have no common base class
        raise RvcModelError(f"{path.name} is not a readable ONNX model ({exc})") from exc
    initializers = {init.name for init in graph.initializer}  # old exports list initializers as inputs too
    inputs = []
    for value in graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        element = _ONNX_ELEMENT_TYPES.get(
            tensor.elem_type, f"tensor({onnx.TensorProto.DataType.Name(tensor.elem_type).lower()})"
        )
        dims = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim
        )  # no shape at all reads as () here, as onnxruntime reports it
        inputs.append(DeclaredInput(value.name, element, dims))
    return inputs


def generator_problem(inputs: Sequence[DeclaredInput], feature_dim: int | None) -> str | None:
    """Why this backend cannot feed a generator with these inputs (naming the input), or None when it can."""
    by_name = {i.name: i for i in inputs}
    for group in REQUIRED_INPUT_GROUPS:
        if not any(name in by_name for name in group):
            return f"has no {' / '.join(repr(n) for n in group)} input; inputs are {list(by_name)}"
    if ("pitch" in by_name) != ("pitchf" in by_name):
        return "has only one of 'pitch' / 'pitchf' (a pitch model needs both, a no-pitch model neither)"
    for declared in inputs:
        problem = _input_problem(declared, feature_dim)
        if problem is not None:
            return f"input {declared.name!r} ({declared.type} {list(declared.shape)}) {problem}"
    return None


def _input_problem(declared: DeclaredInput, feature_dim: int | None) -> str | None:
    if declared.name not in KNOWN_INPUTS:
        return f"is not one this backend can feed (known: {', '.join(KNOWN_INPUTS)})"
    try:
        dtype = np.dtype(numpy_dtype(declared.type))
    except ValueError:
        return "has an element type this backend cannot feed"
    shape = declared.shape
    if declared.name in FLOAT_INPUTS and dtype.kind != "f":
        return "must be a float tensor"
    if declared.name in NUMBER_INPUTS:
        if len(shape) > 1 or (len(shape) == 1 and isinstance(shape[0], int) and shape[0] != 1):
            return "must be a scalar or a [1] tensor"
        return None
    rank = FRAME_INPUT_RANKS[declared.name]
    if len(shape) != rank:
        return f"must have rank {rank}"
    if isinstance(shape[0], int) and shape[0] != 1:
        return "must take a batch of 1"
    time_axis = 2 if declared.name == "rnd" else 1
    if isinstance(shape[time_axis], int):
        return f"has a fixed time axis ({shape[time_axis]} frames); export it with a dynamic one"
    features = declared.name in ("phone", "feats") and isinstance(shape[2], int)
    if features and feature_dim is not None and shape[2] != feature_dim:
        return f"expects {shape[2]}-d features but the content encoder gives {feature_dim}"
    return None


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
    """One generator session plus what we learned about it (its inputs passed :func:`generator_problem`)."""

    def __init__(self, name: str, session: ort.InferenceSession, output_rate: int | None) -> None:
        self.name, self.session, self.output_rate = name, session, output_rate
        self.inputs = {i.name: i for i in session.get_inputs()}
        self.output = session.get_outputs()[0].name
        self.phone = self.inputs.get("phone") or self.inputs["feats"]
        self.dim = self.phone.shape[2] if isinstance(self.phone.shape[2], int) else None
        rnd = self.inputs.get("rnd")
        self.noise_channels = rnd.shape[1] if rnd is not None and isinstance(rnd.shape[1], int) else NOISE_CHANNELS
        self.has_pitch = "pitchf" in self.inputs
        self.scalar = {name for name, arg in self.inputs.items() if name in NUMBER_INPUTS and len(arg.shape) == 0}


class RvcConverter:
    """RVC on onnxruntime; implements :class:`mirage_ray.voice.base.VoiceConverter`."""

    name = "rvc"
    context_ms = CONTEXT_MS

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
        self._refused: dict[str, str] = {}  # voice -> why it cannot be fed
        for name in sorted(found):
            try:
                problem = generator_problem(declared_inputs(found[name]), self.content.dim)
            except RvcModelError as exc:  # not an ONNX file
                problem = str(exc)
            if problem is not None:
                self._refused[name] = f"voice {name!r}: generator {problem}"
                logger.warning("RVC %s; that voice is refused", self._refused[name])
        self._sources = {name: source for name, source in found.items() if name not in self._refused}
        if default_voice in self._refused:
            raise RvcModelError(f"default {self._refused[default_voice]}")
        if not self._sources:
            raise RvcModelError("no usable RVC voice: " + "; ".join(self._refused.values()))
        self.default_voice = default_voice or sorted(self._sources)[0]
        if self.default_voice not in self._sources:
            raise UnknownVoiceError(f"default voice {default_voice!r} unknown; voices: {', '.join(self.voices)}")
        self.speaker_id = speaker_id
        self._output_rate = output_rate
        self._seed = seed
        self._cache: dict[str, _Voice] = {}
        self._lock = threading.Lock()
        self._voice(self.default_voice)  # fail at start, not on the first chunk

    @property
    def voices(self) -> list[str]:
        """Selectable voice names (voices refused at start are not among them)."""
        return sorted(self._sources)

    def _voice(self, name: str | None) -> _Voice:
        key = name or self.default_voice
        voice = self._cache.get(key)
        if voice is not None:
            return voice
        if key in self._refused:
            raise UnknownVoiceError(
                f"{self._refused[key]}, so it was refused at start; voices: {', '.join(self.voices)}"
            )
        if key not in self._sources:
            raise UnknownVoiceError(f"unknown voice {key!r}; voices: {', '.join(self.voices)}")
        with self._lock:
            voice = self._cache.get(key)
            if voice is None:
                session = make_session(self._sources[key], self._providers)
                problem = generator_problem(declared_inputs(session), self.content.dim)  # as onnxruntime reads it
                if problem is not None:
                    raise RvcModelError(f"voice {key!r}: generator {problem}")
                voice = _Voice(key, session, self._output_rate)
                if self.fp16 and voice.phone.type != "tensor(float16)":
                    logger.info("voice %s is an fp32 file: it runs in fp32 unless TensorRT fp16 applies", key)
                self._cache[key] = voice
        return voice

    def _feeds(self, voice: _Voice, feats: np.ndarray, f0: np.ndarray) -> dict[str, np.ndarray]:
        """One value per generator input, in the dtype and rank it declares (every name was checked at start)."""
        frames = len(feats)
        numbers = {
            "phone_lengths": frames,
            "p_len": frames,
            "ds": self.speaker_id,
            "sid": self.speaker_id,
            "skip_head": 0,  # frames to skip: none, the whole window comes back
            "return_length": frames,
            "formant_length": frames,  # = return_length: formants unchanged
        }
        feeds: dict[str, np.ndarray] = {}
        for name, arg in voice.inputs.items():
            if name in numbers:
                value = np.array(numbers[name] if name in voice.scalar else [numbers[name]])
            elif name in ("phone", "feats"):
                value = feats[None]
            elif name == "pitch":
                value = coarse_pitch(f0)[None]
            elif name == "pitchf":
                value = f0[None]
            else:  # rnd
                rng = np.random.default_rng(self._seed)
                value = rng.standard_normal((1, voice.noise_channels, frames), dtype=np.float32)
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
