"""Fixtures for the browser tests: real test media, a headless Debian chromium, and the server under test."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import soxr
from skimage import data as skdata

from tests.e2e.echo_server import EchoServer, make_token

CHROMIUM = Path("/usr/bin/chromium")
# The real Serve application (tests/conftest.py `serve_app`), or the echo server with MIRAGE_E2E_SERVER=echo
USE_REAL_SERVER = os.environ.get("MIRAGE_E2E_SERVER", "real") != "echo"

VIDEO_W, VIDEO_H, VIDEO_FRAMES, VIDEO_FPS = 640, 480, 8, 10
WAV_RATE_HZ = 48000
SPEECH = "Hello, this is Mirage. The quick brown fox jumps over the lazy dog. One, two, three, four, five."


@dataclass(frozen=True)
class Media:
    video_y4m: Path
    speech_wav: Path
    reference_jpeg: Path
    broken_jpeg: Path


def _write_y4m(path: Path) -> None:
    """A few 640×480 frames of the astronaut (a real face), slightly moving, as 4:2:0 y4m."""
    face = cv2.resize(skdata.astronaut(), (VIDEO_H, VIDEO_H), interpolation=cv2.INTER_AREA)
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{VIDEO_W} H{VIDEO_H} F{VIDEO_FPS}:1 Ip A1:1 C420jpeg\n".encode())
        for i in range(VIDEO_FRAMES):
            frame = np.full((VIDEO_H, VIDEO_W, 3), 40, np.uint8)
            x = (VIDEO_W - VIDEO_H) // 2 + int(6 * np.sin(2 * np.pi * i / VIDEO_FRAMES))
            frame[:, x : x + VIDEO_H] = face
            out.write(b"FRAME\n" + cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420).tobytes())


def _write_speech(path: Path, tmp: Path) -> None:
    """espeak-ng speech resampled to 48 kHz mono PCM16 (chromium's fake microphone loops it)."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise RuntimeError("espeak-ng is missing: apt-get install -y espeak-ng")
    raw = tmp / "speech_raw.wav"
    subprocess.run([espeak, "-w", str(raw), SPEECH], check=True, capture_output=True)
    with wave.open(str(raw), "rb") as src:
        rate = src.getframerate()
        pcm = np.frombuffer(src.readframes(src.getnframes()), "<i2")
    audio = soxr.resample(pcm.astype(np.float32) / 32768, rate, WAV_RATE_HZ)
    out = np.clip(np.round(audio * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as dst:
        dst.setnchannels(1)
        dst.setsampwidth(2)
        dst.setframerate(WAV_RATE_HZ)
        dst.writeframes(out.tobytes())


@pytest.fixture(scope="session")
def e2e_media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    tmp = tmp_path_factory.mktemp("e2e_media")
    media = Media(tmp / "face.y4m", tmp / "speech.wav", tmp / "reference.jpg", tmp / "broken.jpg")
    _write_y4m(media.video_y4m)
    _write_speech(media.speech_wav, tmp)
    spec = importlib.util.find_spec("insightface")  # its bundled real photo (one face), without importing it
    if spec is None or spec.origin is None:
        raise RuntimeError("insightface is not installed; it provides the reference face photo")
    source = Path(spec.origin).parent / "data" / "images" / "Tom_Hanks_54745.png"
    ok, reference = cv2.imencode(".jpg", cv2.imread(str(source), cv2.IMREAD_COLOR))
    if not ok:
        raise RuntimeError(f"could not read the reference photo {source}")
    media.reference_jpeg.write_bytes(reference.tobytes())
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("could not encode the broken-reference JPEG")
    media.broken_jpeg.write_bytes(jpeg.tobytes()[:200])  # a JPEG header, then nothing
    return media


@pytest.fixture(scope="module")  # module: Playwright's sync API holds an event loop that asyncio tests cannot share
def chromium_browser(request: pytest.FixtureRequest) -> Iterator[object]:
    """Debian's chromium, headless, with a fake camera (the y4m) and microphone (the WAV)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is absent (pip install playwright)")
    e2e_media: Media = request.getfixturevalue("e2e_media")
    args = [
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={e2e_media.video_y4m}",
        f"--use-file-for-fake-audio-capture={e2e_media.speech_wav}",
        "--autoplay-policy=no-user-gesture-required",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ]
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def echo_server() -> Iterator[EchoServer | None]:
    """The protocol echo server, or None when the tests run against the real application."""
    if USE_REAL_SERVER:
        yield None
        return
    server = EchoServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mirage_base_url(request: pytest.FixtureRequest, echo_server: EchoServer | None) -> str:
    """Base URL of the page (ends with '/'): the echo server's, or the real app's when USE_REAL_SERVER."""
    if echo_server is None:
        url = str(request.getfixturevalue("serve_app").url)
        return url if url.endswith("/") else url + "/"
    return echo_server.base_url


@pytest.fixture(scope="session")
def new_token(request: pytest.FixtureRequest, echo_server: EchoServer | None) -> Callable[[str], str]:
    """A function giving a fresh valid token for the server under test (subject as given)."""
    if echo_server is None:
        app = request.getfixturevalue("serve_app")
        return lambda sub: app.token(sub=sub)
    return make_token


@pytest.fixture(scope="session")
def token_fragment(request: pytest.FixtureRequest, echo_server: EchoServer | None) -> str:
    """'#token=…' for the real app (its key is configured, so it hands out no page token); '' for the echo server."""
    if echo_server is None:
        return "#token=" + request.getfixturevalue("serve_app").token(sub="e2e-browser")
    return ""
