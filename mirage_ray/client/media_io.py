"""Files in and out of the desktop client: a video with its audio (PyAV), or frames (OpenCV) + a WAV.

Audio is returned as float32 mono 16 kHz. Video is read lazily (one frame at a time) and written as it comes back.
"""

from __future__ import annotations

import logging
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import soxr

from mirage_ray.client.extras import ClientError, available, require
from mirage_ray.client.pacing import SAMPLE_RATE

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
WRITER_FOURCC = {".avi": "MJPG", ".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "MJPG"}
DEFAULT_FPS = 20.0
FRAMES_AUDIO_NAME = "audio.wav"


@dataclass(frozen=True)
class VideoInput:
    """A lazily read video: frames (BGR uint8) with their times in seconds from the start."""

    path: Path
    fps: float
    kind: str  # "pyav", "opencv" or "frames"

    def frames(self) -> Iterator[tuple[float, np.ndarray]]:
        if self.kind == "frames":
            files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            for index, file in enumerate(files):
                image = cv2.imread(str(file), cv2.IMREAD_COLOR)
                if image is None:
                    raise ClientError(f"{file} is not a readable image")
                yield index / self.fps, image
        elif self.kind == "pyav":
            yield from _pyav_frames(self.path)
        else:
            capture = cv2.VideoCapture(str(self.path))
            index = 0
            try:
                while True:
                    ok, image = capture.read()
                    if not ok:
                        return
                    yield index / self.fps, image
                    index += 1
            finally:
                capture.release()


@dataclass(frozen=True)
class InputMedia:
    video: VideoInput | None
    audio: np.ndarray  # float32 mono 16 kHz (empty when the input has none)


def to_16k_mono(samples: np.ndarray, rate: int) -> np.ndarray:
    """Float audio, any channel layout (frames x channels) and rate -> float32 mono 16 kHz."""
    mono = samples.mean(axis=1) if samples.ndim == 2 else samples
    mono = mono.astype(np.float32, copy=False)
    if rate != SAMPLE_RATE and len(mono):
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
    return mono


def read_audio(path: Path) -> np.ndarray:
    """A WAV (PCM16 with the standard library; anything soundfile reads when installed) as float32 mono 16 kHz."""
    if not path.is_file():
        raise ClientError(f"audio file not found: {path}")
    if available("soundfile"):
        soundfile = require("soundfile", "reading audio files")
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        return to_16k_mono(data, int(rate))
    if path.suffix.lower() != ".wav":
        require("soundfile", f"reading {path.suffix} audio")
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            require("soundfile", f"reading {8 * wav.getsampwidth()}-bit WAV")
        channels, rate = wav.getnchannels(), wav.getframerate()
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, channels)
    return to_16k_mono(pcm / 32768.0, rate)


def write_wav(path: Path, samples: np.ndarray) -> None:
    """Float audio in [-1, 1] as PCM16 mono 16 kHz."""
    pcm = np.clip(np.round(np.asarray(samples, np.float64) * 32767.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(pcm.tobytes())


def _pyav_frames(path: Path) -> Iterator[tuple[float, np.ndarray]]:
    av = require("av", "reading video files with their audio")
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        first: float | None = None
        for frame in container.decode(stream):
            at = float(frame.time or 0.0)
            first = at if first is None else first
            yield at - first, frame.to_ndarray(format="bgr24")


def _pyav_audio(path: Path) -> np.ndarray:
    av = require("av", "reading a video's audio track")
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return np.zeros(0, np.float32)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        parts = []
        for frame in container.decode(container.streams.audio[0]):
            parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
        parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)


def _video_fps(path: Path, use_pyav: bool) -> float:
    if use_pyav:
        av = require("av", "reading video files")
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ClientError(f"{path} has no video stream")
            rate = container.streams.video[0].average_rate
            return float(rate) if rate else DEFAULT_FPS
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise ClientError(f"{path} is not a video OpenCV can read (install the client extra for PyAV)")
        return float(capture.get(cv2.CAP_PROP_FPS)) or DEFAULT_FPS
    finally:
        capture.release()


def open_input(path: Path, audio_path: Path | None = None, fps: float | None = None) -> InputMedia:
    """``path``: a video file (its own audio is read with PyAV), a folder of frames, or an audio file alone.
    ``audio_path`` (a WAV) replaces or supplies the audio; ``fps`` sets the rate of a folder of frames."""
    if not path.exists():
        raise ClientError(f"input not found: {path}")
    audio = read_audio(audio_path) if audio_path is not None else np.zeros(0, np.float32)
    if path.is_dir():
        return InputMedia(VideoInput(path, fps or DEFAULT_FPS, "frames"), audio)
    if path.suffix.lower() in AUDIO_SUFFIXES:
        return InputMedia(None, read_audio(path))
    use_pyav = available("av")
    video = VideoInput(path, fps or _video_fps(path, use_pyav), "pyav" if use_pyav else "opencv")
    if audio_path is None:
        if use_pyav:
            audio = _pyav_audio(path)
        else:
            logger.warning("reading %s's own audio needs PyAV (the client extra); sending its video only", path.name)
    return InputMedia(video, audio)


class VideoOutput:
    """Returned frames to a video file (OpenCV; .mp4/.mov/.m4v mp4v, .avi/.mkv MJPG) or a folder of JPEGs."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path = path
        self.fps = fps
        self.count = 0
        self._size: tuple[int, int] | None = None
        self._writer: cv2.VideoWriter | None = None
        self._folder = path.suffix == ""
        if self._folder:
            path.mkdir(parents=True, exist_ok=True)
        elif path.suffix.lower() not in WRITER_FOURCC:
            raise ClientError(f"--output {path.name}: use one of {', '.join(WRITER_FOURCC)}, .wav, or a folder")

    def write(self, image: np.ndarray) -> None:
        if self._size is None:
            self._size = (image.shape[1], image.shape[0])
        elif (image.shape[1], image.shape[0]) != self._size:
            image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
        if self._folder:
            cv2.imwrite(str(self.path / f"frame_{self.count:06d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        else:
            if self._writer is None:
                fourcc = cv2.VideoWriter_fourcc(*WRITER_FOURCC[self.path.suffix.lower()])
                self._writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, self._size)
                if not self._writer.isOpened():
                    raise ClientError(f"OpenCV cannot write {self.path}: try an .avi output or a folder")
            self._writer.write(image)
        self.count += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None


def audio_output_path(output: Path) -> Path:
    """Where the converted audio goes: the output itself (.wav), ``audio.wav`` in a folder, else beside the video."""
    if output.suffix.lower() == ".wav":
        return output
    if output.suffix == "":
        return output / FRAMES_AUDIO_NAME
    return output.with_suffix(".wav")


DEFAULT_JPEG_QUALITY = 85


def encode_frame(image: np.ndarray, video_target: dict[str, object]) -> bytes:
    """A frame as the server directs: longest side within the directed width/height, at its JPEG quality."""
    from mirage_ray.codec import encode_jpeg, resize_max_side

    sides = [int(v) for v in (video_target.get("width"), video_target.get("height")) if isinstance(v, int | float)]
    if sides:
        image = resize_max_side(image, max(sides))
    quality = video_target.get("jpeg_quality")
    return encode_jpeg(image, int(quality) if isinstance(quality, int | float) else DEFAULT_JPEG_QUALITY)
