"""Real speech for tests: espeak-ng speaks a sentence, we resample it to 16 kHz mono float32 and cache it.

espeak-ng is a Debian package (``apt-get install -y espeak-ng sox``). When it is missing and we run as root with
apt-get available (CI, fresh developer machines), it is installed once; otherwise a clear error says how to install it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np
import soxr

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
SENTENCE = "The quick brown fox jumps over the lazy dog, while five boxing wizards jump quickly."
CACHE_DIR = Path(tempfile.gettempdir()) / "mirage_speech_cache"
INSTALL_HINT = "apt-get update && apt-get install -y espeak-ng sox"
APT_TIMEOUT_S = 600


class SpeechUnavailableError(RuntimeError):
    """espeak-ng is not installed and could not be installed."""


def _ensure_espeak() -> str:
    found = shutil.which("espeak-ng")
    if found:
        return found
    if shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        logger.info("espeak-ng missing: installing it with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, timeout=APT_TIMEOUT_S)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "espeak-ng", "sox"], check=False, env=env, timeout=APT_TIMEOUT_S
        )
        found = shutil.which("espeak-ng")
        if found:
            return found
    raise SpeechUnavailableError(f"espeak-ng is needed to make test speech; install it with: {INSTALL_HINT}")


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 16-bit PCM, got {8 * wav.getsampwidth()}-bit")
        rate = wav.getframerate()
        channels = wav.getnchannels()
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    audio = pcm.reshape(-1, channels).mean(axis=1) / 32768.0
    return audio.astype(np.float32), rate


def write_wav(path: Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write float audio in [-1, 1] as 16-bit mono PCM (handy for listening to test outputs)."""
    pcm = np.clip(np.round(np.asarray(audio, dtype=np.float64) * 32767.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(pcm.tobytes())


def speech(text: str = SENTENCE, *, voice: str = "en-us", pitch: int = 50, multiple_of: int = 160) -> np.ndarray:
    """Spoken ``text`` as float32 mono 16 kHz, trimmed to a multiple of ``multiple_of`` samples (cached on disk)."""
    key = hashlib.sha256(f"{text}|{voice}|{pitch}".encode()).hexdigest()[:16]
    cached = CACHE_DIR / f"{key}.wav"
    if not cached.exists():
        espeak = _ensure_espeak()
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        raw = CACHE_DIR / f"{key}.raw.wav"
        subprocess.run([espeak, "-v", voice, "-p", str(pitch), "-w", str(raw), text], check=True, timeout=60)
        audio, rate = _read_wav(raw)
        if rate != SAMPLE_RATE:
            audio = soxr.resample(audio, rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
        tmp = CACHE_DIR / f"{key}.{os.getpid()}.tmp.wav"
        write_wav(tmp, audio)
        tmp.replace(cached)
        raw.unlink(missing_ok=True)
    audio, _ = _read_wav(cached)
    usable = len(audio) - len(audio) % multiple_of
    return audio[:usable].copy()
