"""The desktop client's file-to-file mode through the running app: `mirage-ray client --input ... --output ...`."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import cv2
import numpy as np
import pytest
import pyworld

from mirage_ray import protocol
from mirage_ray.cli import main
from tests.conftest import ServeApp
from tests.media import insightface_image, moving_face_frames
from tests.speech import speech, write_wav

pytestmark = pytest.mark.integration
FRAMES = 40  # 2 s at 20 fps
FPS = 20
AUDIO_SAMPLES = 2 * 16_000 + 50  # 2 s and a bit: neither whole server blocks nor whole 10 ms frames


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 16_000)
        return np.frombuffer(wav.readframes(wav.getnframes()), "<i2").astype(np.float32) / 32768.0


def read_video(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        frames.append(image)
    capture.release()
    return frames


def median_f0(audio: np.ndarray) -> float:
    f0, _ = pyworld.harvest(audio.astype(np.float64), 16_000, f0_floor=50.0, f0_ceil=900.0, frame_period=10.0)
    voiced = f0[f0 > 0]
    assert len(voiced) > 30, "too little voiced speech to measure"
    return float(np.median(voiced))


@pytest.fixture(scope="module")
def file_run(serve_app: ServeApp, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One file-to-file run: a folder of 40 moving-face frames + 2 s of speech, the Tom Hanks reference."""
    work = tmp_path_factory.mktemp("desktop-client")
    frames_dir = work / "frames"
    frames_dir.mkdir()
    jpegs = moving_face_frames(FRAMES, step_px=2)
    for index, jpeg in enumerate(jpegs):
        (frames_dir / f"{index:04d}.jpg").write_bytes(jpeg)
    audio = speech()[:AUDIO_SAMPLES]
    assert len(audio) == AUDIO_SAMPLES
    write_wav(work / "speech.wav", audio)
    reference = work / "hanks.png"
    cv2.imwrite(str(reference), insightface_image("Tom_Hanks_54745.png"))
    output, report_path = work / "out.avi", work / "report.json"
    argv = [
        "client", "--url", serve_app.ws_url, "--token", serve_app.token(), "--reference", str(reference),
        "--input", str(frames_dir), "--audio", str(work / "speech.wav"), "--fps", str(FPS),
        "--output", str(output), "--report", str(report_path), "--timeout", "90",
    ]  # fmt: skip
    status = main(argv)
    report = json.loads(report_path.read_text())
    return {
        "status": status,
        "report": report,
        "inputs": [cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR) for j in jpegs],
        "outputs": read_video(output),
        "audio_in": read_wav(work / "speech.wav"),
        "audio_out": read_wav(work / "out.wav"),
    }


def test_output_video_frames_are_swapped(file_run: dict) -> None:
    report = file_run["report"]
    assert report["frames_in"] == FRAMES
    assert report["frames_returned"] >= 0.8 * FRAMES, report
    flags = [f for f in report["frame_flags"] if f is not None]
    swapped = [f for f in flags if not f & protocol.FLAG_PASSTHROUGH]
    assert len(swapped) >= 0.8 * len(flags), flags  # flag bit 0 clear on most replies
    outputs, inputs = file_run["outputs"], file_run["inputs"]
    assert len(outputs) == FRAMES  # one output frame per input frame (held where the server sent none)
    changed, margin = [], []
    for index, flag in enumerate(report["frame_flags"]):
        if flag is None or flag & protocol.FLAG_PASSTHROUGH:
            continue
        diff = np.abs(outputs[index].astype(np.int16) - inputs[index].astype(np.int16)).max(axis=2) > 40
        changed.append(diff.mean())
        margin.append(diff[:, :40].mean())
    assert np.median(changed) > 0.002, changed  # the face region differs from the input
    assert np.median(margin) < 0.01, margin  # the background is the input's


def test_output_audio_is_converted(file_run: dict) -> None:
    audio_in, audio_out = file_run["audio_in"], file_run["audio_out"]
    assert np.sqrt(np.mean(audio_out**2)) > 0.3 * np.sqrt(np.mean(audio_in**2))  # speech, not silence
    report = file_run["report"]
    assert report["audio_passthrough"] <= 2, report  # converted by the voice stage, not the fallback
    # the server's default preset is "deeper" (-4 semitones): the pitch moved down by well over 2 semitones
    assert median_f0(audio_out) < median_f0(audio_in) * 2 ** (-2 / 12)


def test_every_sample_comes_back(file_run: dict) -> None:
    report = file_run["report"]
    assert file_run["status"] == 0 and report["complete"] is True, report
    assert report["samples_sent"] == AUDIO_SAMPLES + (-AUDIO_SAMPLES % 160)  # padded to whole 10 ms frames
    assert report["samples_returned"] == report["samples_sent"]  # the flush returned the partial block
    assert len(file_run["audio_out"]) == len(file_run["audio_in"]) == AUDIO_SAMPLES
