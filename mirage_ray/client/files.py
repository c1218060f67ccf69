"""File-to-file mode: a video (with its audio) or frames + a WAV through the server into a video + a converted WAV.

Frames go at their timestamps (``realtime``) or as fast as the server answers (``fast``), never more than
``window`` unanswered. Audio goes in chunks of whole 10 ms frames, each stamped with its first sample's capture time,
never more than ``AUDIO_LEAD_MS`` ahead of the oldest frame in flight (so the server's sync never finds a frame late).
At the end a ``flush`` makes the server return the partial block: samples out == samples in.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mirage_ray.client.extras import ClientError
from mirage_ray.client.media_io import (
    InputMedia,
    VideoOutput,
    audio_output_path,
    encode_frame,
    open_input,
    write_wav,
)
from mirage_ray.client.pacing import (
    AudioChunker,
    MessageRate,
    VideoWindow,
    pad_to_10ms,
    send_chunk_ms,
)
from mirage_ray.client.wire import MirageConnection
from mirage_ray.codec import float_to_pcm16, pcm16_to_float
from mirage_ray.protocol import FLAG_PASSTHROUGH, Media

logger = logging.getLogger(__name__)

AUDIO_LEAD_MS = 100  # the server drops a frame more than 150 ms behind the audio head
FRAME_TIMEOUT_S = 20.0  # a frame unanswered this long is given up (written as the previous output frame)
END_TIMEOUT_S = 60.0  # after the flush: wait this long for every sample and frame
PACES = ("realtime", "fast")


@dataclass(frozen=True)
class FileRunOptions:
    input: Path
    output: Path
    audio: Path | None = None  # a WAV that supplies or replaces the input's audio
    fps: float | None = None  # for a folder of frames
    pace: str = "realtime"
    window: int = 1
    end_timeout_s: float = END_TIMEOUT_S


@dataclass
class FileRunReport:
    """What a run sent and got back (written as JSON by ``--report``)."""

    frames_in: int = 0
    frames_returned: int = 0
    frames_passthrough: int = 0  # returned with flag bit 0 (not swapped)
    frames_held: int = 0  # no reply (dropped by the server or timed out): the previous output frame repeated
    samples_in: int = 0  # the input's samples (16 kHz)
    samples_sent: int = 0  # the same padded to whole 10 ms frames
    samples_returned: int = 0
    audio_replies: int = 0
    audio_passthrough: int = 0  # blocks returned with flag bit 0 (the fail-closed pitch shift)
    complete: bool = False  # every frame settled and every sent sample returned before the timeout
    seconds: float = 0.0
    output_video: str | None = None
    output_audio: str | None = None
    frame_flags: list[int | None] = field(default_factory=list)  # per input frame: reply flags, None = held
    server_stats: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class _Replies:
    """Media replies filed as they arrive (callbacks of :class:`MirageConnection`)."""

    def __init__(self, window: VideoWindow) -> None:
        self.window = window
        self.frames: dict[int, Media] = {}
        self.audio: list[Media] = []

    def on_video(self, media: Media) -> None:
        index = self.window.on_reply(media.seq)
        if index is not None:
            self.frames[index] = media

    def on_audio(self, media: Media) -> None:
        self.audio.append(media)

    @property
    def samples(self) -> int:
        return sum(len(m.payload) // 2 for m in self.audio)


class _OutputWriter:
    """Writes settled frames in input order: the reply, else the previous output (black before any: fail closed)."""

    def __init__(self, output: VideoOutput, report: FileRunReport) -> None:
        self.output = output
        self.report = report
        self.next_index = 0
        self._last: np.ndarray | None = None
        self._sizes: dict[int, tuple[int, int]] = {}

    def remember_size(self, index: int, image: np.ndarray) -> None:
        self._sizes[index] = (image.shape[0], image.shape[1])

    def drain(self, replies: _Replies, settled: int) -> None:
        while self.next_index < settled:
            index = self.next_index
            reply = replies.frames.pop(index, None)
            image = None if reply is None else cv2.imdecode(np.frombuffer(reply.payload, np.uint8), cv2.IMREAD_COLOR)
            if image is not None:
                self.report.frames_returned += 1
                self.report.frames_passthrough += bool(reply.flags & FLAG_PASSTHROUGH)
                self.report.frame_flags.append(reply.flags)
                self._last = image
            else:
                self.report.frames_held += 1
                self.report.frame_flags.append(None)
                height, width = self._sizes.get(index, (480, 640))
                image = self._last if self._last is not None else np.zeros((height, width, 3), np.uint8)
            self.output.write(image)
            self._sizes.pop(index, None)
            self.next_index += 1


async def stream_file(connection: MirageConnection, media: InputMedia, options: FileRunOptions) -> FileRunReport:
    """Send ``media`` through an open connection (reference and settings already applied) and write the output."""
    if options.pace not in PACES:
        raise ClientError(f"--pace must be one of {', '.join(PACES)}, got {options.pace!r}")
    report = FileRunReport(samples_in=len(media.audio))
    started = time.monotonic()
    start_us = time.time_ns() // 1000
    window = VideoWindow(max(1, options.window), FRAME_TIMEOUT_S)
    replies = _Replies(window)
    connection.on_video, connection.on_audio = replies.on_video, replies.on_audio
    rate = MessageRate(connection.hello.get("limits", {}).get("max_messages_per_s"))
    padded = pad_to_10ms(media.audio)
    report.samples_sent = len(padded)
    chunker = AudioChunker(padded, start_us)
    realtime = options.pace == "realtime"
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    async def wait_due(capture_us: int) -> None:
        if realtime:
            await asyncio.sleep(max(0.0, t0 + (capture_us - start_us) / 1e6 - loop.time()))
        while (delay := rate.wait_s(time.monotonic())) > 0:
            await asyncio.sleep(delay)

    async def send_audio_until(limit_us: float) -> None:
        while not chunker.done:
            chunk_ms = send_chunk_ms(connection.audio_chunk_ms)
            end_us = chunker.next_end_us(chunk_ms)
            if end_us > limit_us:
                return
            await wait_due(end_us)  # a chunk exists once its last sample is captured
            chunk = chunker.take(chunk_ms)
            await connection.send_audio(float_to_pcm16(chunk.samples), chunk.capture_us)
            rate.on_sent(time.monotonic())

    def settle() -> None:
        window.expire(time.monotonic())
        frames = connection.stats.get("frames", {})
        if isinstance(frames.get("out"), int) and isinstance(frames.get("dropped"), int):
            window.on_server_count(frames["out"] + frames["dropped"])

    writer: _OutputWriter | None = None
    if media.video is not None and options.output.suffix.lower() != ".wav":
        output = VideoOutput(options.output, media.video.fps)
        writer = _OutputWriter(output, report)
        report.output_video = str(options.output)
    try:
        if media.video is not None:
            for index, (at_s, image) in enumerate(media.video.frames()):
                capture_us = start_us + round(at_s * 1e6)
                oldest = window.oldest_capture_us()
                in_flight_from = capture_us if oldest is None else min(oldest, capture_us)
                await send_audio_until(in_flight_from + AUDIO_LEAD_MS * 1000)
                while window.full:
                    settle()
                    await connection.wait_until(lambda: not window.full, 0.25)
                    if connection.closed is not None:
                        raise connection.closed
                    if writer is not None:
                        writer.drain(replies, window.settled)
                await wait_due(capture_us)
                if writer is not None:
                    writer.remember_size(index, image)
                seq = await connection.send_video(encode_frame(image, connection.video_target), capture_us)
                rate.on_sent(time.monotonic())
                window.on_sent(index, seq, capture_us, time.monotonic())
                report.frames_in += 1
                if writer is not None:
                    writer.drain(replies, window.settled)
        await send_audio_until(float("inf"))
        await connection.flush()

        def finished() -> bool:
            settle()
            return window.empty and replies.samples >= report.samples_sent

        report.complete = await connection.wait_until(finished, options.end_timeout_s)
        if not report.complete and connection.closed is None:
            logger.warning(
                "gave up after %.0f s: %d of %d samples and %d of %d frames settled",
                options.end_timeout_s,
                replies.samples,
                report.samples_sent,
                window.settled,
                window.sent,
            )
        window.expire(float("inf"))  # whatever is still in flight is held
        if writer is not None:
            writer.drain(replies, window.settled)
    finally:
        if writer is not None:
            writer.output.close()
    report.server_stats = dict(connection.stats)
    report.audio_replies = len(replies.audio)
    report.audio_passthrough = sum(bool(m.flags & FLAG_PASSTHROUGH) for m in replies.audio)
    report.samples_returned = replies.samples
    if len(media.audio):
        returned = np.concatenate([pcm16_to_float(m.payload) for m in replies.audio]) if replies.audio else None
        audio = np.zeros(len(media.audio), np.float32)
        if returned is not None:
            kept = min(len(returned), len(audio))
            audio[:kept] = returned[:kept]
        path = audio_output_path(options.output)
        write_wav(path, audio)
        report.output_audio = str(path)
    report.seconds = round(time.monotonic() - started, 3)
    return report


async def run_file(
    url: str,
    token: str,
    options: FileRunOptions,
    reference: bytes | None = None,
    settings: dict[str, Any] | None = None,
) -> FileRunReport:
    """Open a session, set the reference and settings, stream the file, close."""
    media = open_input(options.input, options.audio, options.fps)
    if media.video is None and not len(media.audio):
        raise ClientError(f"{options.input} has neither video nor audio")
    connection = await MirageConnection.open(url, token)
    try:
        if reference is not None:
            await connection.set_reference(reference)
        if settings:
            await connection.apply_settings(**settings)
        return await stream_file(connection, media, options)
    finally:
        await connection.close()
