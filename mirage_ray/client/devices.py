"""Live mode: camera (OpenCV) and microphone (sounddevice) -> server -> virtual camera (pyvirtualcam) or a preview
window, and a speaker or virtual audio cable (sounddevice). Runs until Ctrl-C or the server closes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from mirage_ray.client.extras import ClientError, require
from mirage_ray.client.media_io import encode_frame
from mirage_ray.client.pacing import SAMPLE_RATE, PlayoutBuffer, VideoWindow, send_chunk_ms
from mirage_ray.client.wire import MirageConnection
from mirage_ray.protocol import SAMPLES_PER_10MS, Media

logger = logging.getLogger(__name__)

CAMERA_FPS = 30
LIVE_WINDOW = 2  # frames unanswered before the camera's frames are skipped at the source (latency stays constant)
LIVE_FRAME_TIMEOUT_S = 2.0
PLAYOUT_MAX_MS = 400
PREVIEW_TITLE = "mirage-ray client (q quits)"
SPEAKER_BLOCK = SAMPLES_PER_10MS  # the speaker plays 10 ms blocks


@dataclass(frozen=True)
class LiveOptions:
    camera: int | None = 0  # OpenCV index; None: no video
    microphone: str | int | None = None  # sounddevice name or index; None: the default input
    speaker: str | int | None = None  # sounddevice name or index (a virtual cable for calls); None: default output
    virtual_camera: bool = False
    preview: bool = True
    audio: bool = True


def now_us() -> int:
    return time.time_ns() // 1000


class Camera:
    """``cv2.VideoCapture`` read on its own thread."""

    def __init__(self, index: int) -> None:
        self._capture = cv2.VideoCapture(index)
        if not self._capture.isOpened():
            raise ClientError(f"cannot open camera {index}: check --camera (0 is the first camera)")
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="camera")

    async def read(self) -> np.ndarray | None:
        ok, image = await asyncio.get_running_loop().run_in_executor(self._executor, self._capture.read)
        return image if ok else None

    def close(self) -> None:
        self._capture.release()
        self._executor.shutdown(wait=False)


class Microphone:
    """16 kHz mono PCM16 chunks with the capture time of their first sample, onto an asyncio queue."""

    def __init__(self, device: str | int | None, chunk_ms: int, loop: asyncio.AbstractEventLoop) -> None:
        sounddevice = require("sounddevice", "the microphone")
        self.queue: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue(maxsize=50)
        self._loop = loop
        block = chunk_ms * SAMPLE_RATE // 1000
        self._stream = sounddevice.RawInputStream(
            samplerate=SAMPLE_RATE, channels=1, dtype="int16", blocksize=block, device=device, callback=self._callback
        )
        self._stream.start()

    def _callback(self, data: Any, frames: int, time_info: Any, status: Any) -> None:
        age_s = time_info.currentTime - time_info.inputBufferAdcTime if time_info.inputBufferAdcTime else 0.0
        capture_us = now_us() - int(max(age_s, frames / SAMPLE_RATE) * 1e6)
        with contextlib.suppress(asyncio.QueueFull, RuntimeError):
            self._loop.call_soon_threadsafe(self.queue.put_nowait, (capture_us, bytes(data)))

    def close(self) -> None:
        self._stream.stop()
        self._stream.close()


class Speaker:
    """Plays returned audio from a short :class:`PlayoutBuffer` (silence on underrun, trimmed when behind)."""

    def __init__(self, device: str | int | None) -> None:
        sounddevice = require("sounddevice", "the speaker / virtual audio cable")
        self.buffer = PlayoutBuffer(PLAYOUT_MAX_MS)
        self._lock = threading.Lock()
        self._stream = sounddevice.RawOutputStream(
            samplerate=SAMPLE_RATE,
            channels=1,
            dtype="int16",
            blocksize=SPEAKER_BLOCK,
            device=device,
            callback=self._callback,
        )
        self._stream.start()

    def _callback(self, out: Any, frames: int, time_info: Any, status: Any) -> None:
        with self._lock:
            out[:] = self.buffer.pull(frames).tobytes()

    def play(self, pcm16: bytes) -> None:
        with self._lock:
            self.buffer.push(np.frombuffer(pcm16, "<i2"))

    def close(self) -> None:
        self._stream.stop()
        self._stream.close()


class VideoOut:
    """Returned frames to a virtual camera (pyvirtualcam) and/or a preview window, on one thread."""

    def __init__(self, virtual_camera: bool, preview: bool, fps: int) -> None:
        self._virtual_camera = virtual_camera
        self._pyvirtualcam = require("pyvirtualcam", "the virtual camera") if virtual_camera else None
        self._camera: Any = None
        self._fps = fps
        self._preview = preview
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="video-out")
        self.quit = threading.Event()

    def show(self, jpeg: bytes) -> None:
        self._executor.submit(self._show, jpeg)

    def _show(self, jpeg: bytes) -> None:
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            return
        if self._pyvirtualcam is not None:
            height, width = image.shape[:2]
            if self._camera is None or (self._camera.width, self._camera.height) != (width, height):
                if self._camera is not None:
                    self._camera.close()
                try:
                    self._camera = self._pyvirtualcam.Camera(
                        width, height, self._fps, fmt=self._pyvirtualcam.PixelFormat.BGR
                    )
                except RuntimeError as exc:
                    logger.error("virtual camera unavailable (%s): on Linux load v4l2loopback", exc)
                    self._pyvirtualcam = None
                    return
                logger.info("virtual camera: %s", self._camera.device)
            self._camera.send(image)
        if self._preview:
            cv2.imshow(PREVIEW_TITLE, image)
            if cv2.waitKey(1) & 0xFF == ord("q"):
                self.quit.set()

    def close(self) -> None:
        def _close() -> None:
            if self._camera is not None:
                self._camera.close()
            if self._preview:
                cv2.destroyAllWindows()

        self._executor.submit(_close)
        self._executor.shutdown(wait=True)


async def _camera_loop(connection: MirageConnection, camera: Camera, window: VideoWindow) -> None:
    last_sent_us = 0
    while connection.closed is None:
        image = await camera.read()
        if image is None:
            raise ClientError("the camera stopped delivering frames")
        captured = now_us()
        window.expire(time.monotonic())
        target = connection.video_target
        fps = 1.0 if target.get("paused") else float(target.get("fps") or CAMERA_FPS)
        if window.full or captured - last_sent_us < 1e6 / fps:
            continue  # the server is busy or the directed rate says wait: skip at the source
        seq = await connection.send_video(encode_frame(image, target), captured)
        window.on_sent(0, seq, captured, time.monotonic())
        last_sent_us = captured


async def _microphone_loop(connection: MirageConnection, microphone: Microphone) -> None:
    while connection.closed is None:
        capture_us, pcm = await microphone.queue.get()
        await connection.send_audio(pcm, capture_us)


async def run_live(connection: MirageConnection, options: LiveOptions) -> None:
    """Stream devices through an open connection (reference and settings applied) until Ctrl-C or close."""
    loop = asyncio.get_running_loop()
    window = VideoWindow(LIVE_WINDOW, LIVE_FRAME_TIMEOUT_S)
    fps = int(connection.video_target.get("fps") or CAMERA_FPS)
    video_out = VideoOut(options.virtual_camera, options.preview, fps) if options.camera is not None else None
    speaker = Speaker(options.speaker) if options.audio else None
    microphone = Microphone(options.microphone, send_chunk_ms(connection.audio_chunk_ms), loop) if speaker else None
    camera = Camera(options.camera) if options.camera is not None else None

    def on_video(media: Media) -> None:
        window.on_reply(media.seq)
        if video_out is not None:
            video_out.show(media.payload)

    connection.on_video = on_video
    connection.on_audio = (lambda media: speaker.play(media.payload)) if speaker else None
    tasks = []
    if camera is not None:
        tasks.append(asyncio.create_task(_camera_loop(connection, camera, window)))
    if microphone is not None:
        tasks.append(asyncio.create_task(_microphone_loop(connection, microphone)))
    if not tasks:
        raise ClientError("nothing to stream: give a camera or enable audio")
    try:
        while connection.closed is None and not (video_out and video_out.quit.is_set()):
            done = [t for t in tasks if t.done()]
            for task in done:
                task.result()  # raises the loop's error
            await asyncio.sleep(0.2)
        if connection.closed is not None and connection.closed.code not in (1000, None):
            raise connection.closed
    finally:
        for task in tasks:
            task.cancel()
        for device in (camera, microphone, speaker, video_out):
            if device is not None:
                device.close()
