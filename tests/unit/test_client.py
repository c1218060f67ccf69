"""The desktop client's pieces: pacing, token lookup, files, and a whole file run against an in-process fake server."""

from __future__ import annotations

import asyncio
import json
import wave
from pathlib import Path

import cv2
import numpy as np
import pytest
import websockets
from websockets.asyncio.server import ServerConnection, serve

from mirage_ray import protocol
from mirage_ray.client.extras import ClientError, MissingExtraError, require
from mirage_ray.client.files import FileRunOptions, stream_file
from mirage_ray.client.media_io import (
    VideoOutput,
    audio_output_path,
    encode_frame,
    open_input,
    read_audio,
    write_wav,
)
from mirage_ray.client.pacing import (
    AudioChunker,
    MessageRate,
    PlayoutBuffer,
    VideoWindow,
    pad_to_10ms,
    send_chunk_ms,
)
from mirage_ray.client.token import fetch_page_token, page_token_url
from mirage_ray.client.wire import MirageConnection, ServerClosedError
from mirage_ray.codec import encode_jpeg
from mirage_ray.protocol import Kind


# --- pacing -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("server_ms", "sent_ms"), [(192, 190), (200, 200), (5, 10), (None, 200), (0, 200)])
def test_send_chunk_is_whole_10ms_frames(server_ms: int | None, sent_ms: int) -> None:
    assert send_chunk_ms(server_ms) == sent_ms


@pytest.mark.parametrize("length", [0, 1, 159, 160, 161, 3250])
def test_pad_to_10ms_appends_silence_only(length: int) -> None:
    samples = np.arange(length, dtype=np.float32) + 1
    padded = pad_to_10ms(samples)
    assert len(padded) % 160 == 0 and len(padded) - length < 160
    assert np.array_equal(padded[:length], samples) and not padded[length:].any()


@pytest.mark.parametrize("sizes", [[200], [190], [10, 50, 200], [190, 200, 10]])
def test_chunks_cover_the_stream_and_carry_the_first_samples_capture_time(sizes: list[int]) -> None:
    samples = np.arange(160 * 53, dtype=np.float32)
    start_us = 1_700_000_000_000_000
    chunker = AudioChunker(samples, start_us)
    chunks = []
    while not chunker.done:
        chunk_ms = sizes[len(chunks) % len(sizes)]
        end_us = chunker.next_end_us(chunk_ms)
        chunk = chunker.take(chunk_ms)
        assert chunk.capture_us == start_us + chunk.offset * 1_000_000 // 16_000  # the first sample's instant
        assert end_us == chunk.capture_us + len(chunk.samples) * 1_000_000 // 16_000
        assert len(chunk.samples) % 160 == 0
        chunks.append(chunk)
    assert np.array_equal(np.concatenate([c.samples for c in chunks]), samples)


def test_chunker_refuses_partial_frames_and_odd_sizes() -> None:
    with pytest.raises(ValueError, match="multiple of 160"):
        AudioChunker(np.zeros(161, np.float32), 0)
    with pytest.raises(ValueError, match="multiple of 10"):
        AudioChunker(np.zeros(160, np.float32), 0).take(15)


def test_video_window_settles_older_frames_on_a_reply() -> None:
    window = VideoWindow(size=3, timeout_s=5.0)
    for index in range(3):
        window.on_sent(index, seq=100 + index, capture_us=index * 50_000, now=0.0)
    assert window.full and window.oldest_capture_us() == 0
    assert window.on_reply(101) == 1  # the server answers in order: frame 0 got no reply
    assert window.unanswered == [0] and window.settled == 2 and not window.full
    assert window.on_reply(999) is None  # not ours
    window.on_server_count(3)  # stats: 3 frames finished (out + dropped)
    assert window.empty and window.unanswered == [0, 2]


def test_video_window_gives_up_after_its_timeout() -> None:
    window = VideoWindow(size=1, timeout_s=2.0)
    window.on_sent(0, 0, 0, now=10.0)
    window.expire(11.0)
    assert window.full
    window.expire(12.5)
    assert window.empty and window.unanswered == [0]


def test_message_rate_keeps_under_the_servers_limit() -> None:
    rate = MessageRate(max_per_s=10)  # 80 %: 8 a second
    for i in range(8):
        assert rate.wait_s(now=i * 0.01) == 0.0
        rate.on_sent(i * 0.01)
    assert rate.wait_s(now=0.5) == pytest.approx(0.5)
    assert rate.wait_s(now=1.0) == 0.0
    assert MessageRate(None).wait_s(0.0) == 0.0


def test_playout_buffer_fills_gaps_with_silence_and_trims_when_behind() -> None:
    buffer = PlayoutBuffer(max_ms=10)  # 160 samples
    buffer.push(np.arange(1, 101, dtype=np.int16))
    out = buffer.pull(160)
    assert np.array_equal(out[:100], np.arange(1, 101)) and not out[100:].any() and buffer.underruns == 1
    buffer.push(np.arange(300, dtype=np.int16))
    assert len(buffer) == 160 and buffer.trimmed == 140
    assert buffer.pull(1)[0] == 140  # the oldest audio went


# --- extras and token -------------------------------------------------------------------------------------------------
def test_missing_optional_package_names_the_extra() -> None:
    with pytest.raises(MissingExtraError, match=r"mirage-ray\[client\]") as caught:
        require("no_such_module_for_mirage", "the virtual camera")
    assert "the virtual camera" in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("ws_url", "http_url"),
    [
        ("ws://127.0.0.1:8000/ws", "http://127.0.0.1:8000/v1/page-token"),
        ("ws://localhost:9000/mirage/ws", "http://localhost:9000/mirage/v1/page-token"),
        ("wss://example.org/ws", "https://example.org/v1/page-token"),
    ],
)
def test_page_token_url_sits_beside_the_websocket(ws_url: str, http_url: str) -> None:
    assert page_token_url(ws_url) == http_url


def test_no_page_token_for_a_remote_server() -> None:
    with pytest.raises(ClientError, match="--token"):
        fetch_page_token("ws://example.org/ws")
    with pytest.raises(ClientError, match="ws://"):
        page_token_url("http://127.0.0.1:8000/ws")


# --- files ------------------------------------------------------------------------------------------------------------
def test_read_audio_makes_16k_mono(tmp_path: Path) -> None:
    t = np.arange(48_000) / 48_000
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t)], axis=1)
    path = tmp_path / "tone.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(48_000)
        wav.writeframes((stereo * 16_000).astype("<i2").tobytes())
    audio = read_audio(path)
    assert audio.dtype == np.float32 and abs(len(audio) - 16_000) <= 1
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * 16_000 / len(audio) - 440) < 3


def test_read_audio_of_a_missing_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ClientError, match="not found"):
        read_audio(tmp_path / "nope.wav")


def test_frames_folder_and_outputs(tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    for index in range(3):
        cv2.imwrite(str(frames / f"{index:03d}.png"), np.full((48, 64, 3), index * 60, np.uint8))
    media = open_input(frames, fps=10.0)
    assert media.video is not None and not len(media.audio)
    read = list(media.video.frames())
    assert [t for t, _ in read] == [0.0, 0.1, 0.2] and read[2][1].shape == (48, 64, 3)
    for name in ("out.avi", "out.mp4", "folder"):
        output = VideoOutput(tmp_path / name, fps=10.0)
        for _, image in read:
            output.write(image)
        output.write(np.zeros((96, 128, 3), np.uint8))  # another size is scaled to the first
        output.close()
        if name == "folder":
            assert len(list((tmp_path / name).glob("*.jpg"))) == 4
        else:
            capture = cv2.VideoCapture(str(tmp_path / name))
            assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
            capture.release()
    assert audio_output_path(tmp_path / "out.mp4") == tmp_path / "out.wav"
    assert audio_output_path(tmp_path / "folder") == tmp_path / "folder" / "audio.wav"
    assert audio_output_path(tmp_path / "x.wav") == tmp_path / "x.wav"
    with pytest.raises(ClientError, match=r"\.avi"):
        VideoOutput(tmp_path / "out.gif", fps=10.0)


def test_a_video_with_its_audio_is_read_with_pyav(tmp_path: Path) -> None:
    av = pytest.importorskip("av")
    path = tmp_path / "talk.mp4"
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=20)
        video.width, video.height, video.pix_fmt = 160, 120, "yuv420p"
        audio = container.add_stream("aac", rate=48_000)
        audio.layout = "mono"
        for index in range(20):
            frame = av.VideoFrame.from_ndarray(np.full((120, 160, 3), 10 * index, np.uint8), format="bgr24")
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        tone = (0.3 * np.sin(2 * np.pi * 300 * np.arange(48_000) / 48_000)).astype(np.float32)
        for start in range(0, len(tone), 1024):
            frame = av.AudioFrame.from_ndarray(tone[None, start : start + 1024], format="flt", layout="mono")
            frame.sample_rate, frame.pts = 48_000, start
            for packet in audio.encode(frame):
                container.mux(packet)
        for packet in audio.encode():
            container.mux(packet)
    media = open_input(path)
    assert media.video is not None and media.video.kind == "pyav" and media.video.fps == 20.0
    frames = list(media.video.frames())
    assert len(frames) == 20 and frames[1][0] == pytest.approx(0.05) and frames[0][1].shape == (120, 160, 3)
    assert abs(len(media.audio) - 16_000) < 400  # 1 s at 16 kHz (the AAC encoder adds a little priming)


def test_encode_frame_follows_the_directed_size_and_quality() -> None:
    image = np.random.default_rng(0).integers(0, 255, (480, 640, 3), np.uint8)
    small = cv2.imdecode(np.frombuffer(encode_frame(image, {"width": 256, "height": 256}), np.uint8), 1)
    assert small.shape == (192, 256, 3)
    low = encode_frame(image, {"jpeg_quality": 30})
    assert len(low) < len(encode_frame(image, {"jpeg_quality": 90}))


# --- a whole file run against a fake protocol-v1 server ---------------------------------------------------------------
TOKEN = "good-token"
BLOCK = 3072  # 192 ms


class FakeServer:
    """Protocol v1 as docs/protocol.md writes it: audio re-blocked in 192 ms blocks (negated) and a flush that
    returns the rest; every 5th frame dropped (no reply), the rest answered inverted; records sync lag."""

    def __init__(self) -> None:
        self.audio = np.zeros(0, np.int16)
        self.samples_in = self.samples_out = 0
        self.frames = {"in": 0, "out": 0, "dropped": 0}
        self.head_us: int | None = None
        self.lags_ms: list[float] = []
        self.audio_capture: list[tuple[int, int]] = []  # (capture_us, samples)
        self.reference = False

    async def handle(self, socket: ServerConnection) -> None:
        offered = socket.request.headers.get("Sec-WebSocket-Protocol", "")
        if f"bearer.{TOKEN}" not in offered:
            await socket.close(1008, "bad token")
            return
        await socket.send(
            protocol.dumps(
                protocol.hello(
                    "s1",
                    {"sample_rate": 16_000, "chunk_ms": 192},
                    {"width": 512, "height": 512, "fps": 20, "jpeg_quality": 80},
                    {"max_frame_bytes": 1 << 20, "max_messages_per_s": 400},
                    {},
                    settings={"voice": "deeper", "pitch_semitones": -4},
                )
            )
        )
        async for raw in socket:
            for reply in self.answer(raw):
                await socket.send(reply)

    def stats(self) -> str:
        return protocol.dumps(
            protocol.stats(
                {"frames": dict(self.frames), "audio": {"samples_in": self.samples_in, "samples_out": self.samples_out}}
            )
        )

    def answer(self, raw: bytes | str) -> list[bytes | str]:
        if isinstance(raw, str):
            message = json.loads(raw)
            if message["type"] == "settings":
                if message.get("pitch_semitones", 0) > 24:
                    return [protocol.dumps(protocol.error("bad_setting", "pitch_semitones must be in [-24, 24]"))]
                return [protocol.dumps({"type": "settings", "applied": [k for k in message if k != "type"]})]
            if message["type"] == "flush" and len(self.audio):
                return [*self.blocks(len(self.audio)), self.stats()]
            return []
        media = protocol.parse_media(raw)
        if media.kind == Kind.REFERENCE:
            self.reference = True
            return [protocol.dumps(protocol.reference_reply(True, 1))]
        if media.kind == Kind.AUDIO:
            samples = np.frombuffer(media.payload, "<i2")
            self.audio_capture.append((media.capture_us, len(samples)))
            self.samples_in += len(samples)
            self.audio = np.concatenate([self.audio, samples])
            self.head_us = media.capture_us + len(samples) * 1_000_000 // 16_000
            self.seq, self.capture = media.seq, media.capture_us
            return [*self.blocks(len(self.audio) // BLOCK * BLOCK), self.stats()]
        self.frames["in"] += 1
        if self.head_us is not None:
            self.lags_ms.append((self.head_us - media.capture_us) / 1000)
        if self.frames["in"] % 5 == 0:
            self.frames["dropped"] += 1
            return [self.stats()]
        self.frames["out"] += 1
        image = cv2.imdecode(np.frombuffer(media.payload, np.uint8), cv2.IMREAD_COLOR)
        reply = protocol.Media(Kind.VIDEO, media.seq, media.capture_us, encode_jpeg(255 - image, 90))
        return [protocol.pack_media(reply)]

    def blocks(self, count: int) -> list[bytes]:
        out, self.audio = self.audio[:count], self.audio[count:]
        self.samples_out += len(out)
        return [
            protocol.pack(Kind.AUDIO, self.seq, self.capture, (-out[i : i + BLOCK]).astype("<i2").tobytes())
            for i in range(0, len(out), BLOCK)
        ]


async def run_against_fake(tmp_path: Path, frames: int, samples: int, pace: str = "fast") -> tuple:
    fake = FakeServer()
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    for index in range(frames):
        image = np.full((120, 160, 3), 40 + index, np.uint8)
        cv2.imwrite(str(frames_dir / f"{index:03d}.png"), image)
    tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(samples) / 16_000)
    write_wav(tmp_path / "in.wav", tone)
    async with serve(fake.handle, "127.0.0.1", 0, subprotocols=["mirage.v1"]) as server:
        port = server.sockets[0].getsockname()[1]
        connection = await MirageConnection.open(f"ws://127.0.0.1:{port}/ws", TOKEN)
        await connection.set_reference(b"png")
        await connection.apply_settings(voice="higher")
        options = FileRunOptions(frames_dir, tmp_path / "out", tmp_path / "in.wav", fps=20.0, pace=pace, window=2)
        report = await stream_file(connection, open_input(frames_dir, tmp_path / "in.wav", 20.0), options)
        await connection.close()
    return fake, report, tone


async def test_file_run_returns_every_sample_and_one_frame_per_input(tmp_path: Path) -> None:
    fake, report, tone = await run_against_fake(tmp_path, frames=30, samples=16_000 + 1234)
    assert report.complete and fake.reference
    assert report.samples_in == len(tone) and report.samples_sent == len(pad_to_10ms(tone))
    assert report.samples_returned == report.samples_sent == fake.samples_in  # the flush brought the partial block
    with wave.open(report.output_audio, "rb") as wav:
        out = np.frombuffer(wav.readframes(wav.getnframes()), "<i2")
    assert len(out) == len(tone)
    expected = -np.round(tone * 32767).astype(np.int32)
    assert np.abs(out.astype(np.int32) - expected).max() <= 2  # the fake's conversion, in order
    # chunks are contiguous, each stamped with its first sample's capture time
    for (t0, n0), (t1, _) in zip(fake.audio_capture, fake.audio_capture[1:], strict=False):
        assert t1 - t0 == n0 * 1_000_000 // 16_000
    assert report.frames_in == 30 and report.frames_returned == 24 and report.frames_held == 6
    assert max(fake.lags_ms) <= 150  # audio never ran far enough ahead for the server to drop a frame as late
    written = sorted((tmp_path / "out").glob("*.jpg"))
    assert len(written) == 30
    first = cv2.imread(str(written[0]))
    assert abs(int(first.mean()) - (255 - 40)) <= 3  # the server's (inverted) frame, not the input
    held = cv2.imread(str(written[4]))  # frame 4 (the 5th) got no reply: the previous output is repeated
    assert np.abs(held.astype(int) - cv2.imread(str(written[3])).astype(int)).max() <= 3


async def test_realtime_pace_takes_the_input_duration(tmp_path: Path) -> None:
    _, report, _ = await run_against_fake(tmp_path, frames=10, samples=8_000, pace="realtime")
    assert report.complete and 0.45 <= report.seconds < 3.0


async def test_refused_token_and_setting_are_clear_errors(tmp_path: Path) -> None:
    fake = FakeServer()
    async with serve(fake.handle, "127.0.0.1", 0, subprotocols=["mirage.v1"]) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
        with pytest.raises(ServerClosedError, match=r"1008.*--token"):
            await MirageConnection.open(url, "wrong")
        connection = await MirageConnection.open(url, TOKEN)
        assert connection.settings["voice"] == "deeper" and connection.audio_chunk_ms == 192
        with pytest.raises(ClientError, match="refused a setting: pitch_semitones"):
            await connection.apply_settings(pitch_semitones=99)
        await connection.close()


async def test_unreachable_server_says_to_start_it() -> None:
    with pytest.raises(ClientError, match="mirage-ray serve"):
        await MirageConnection.open("ws://127.0.0.1:1/ws", TOKEN, timeout_s=2)


def test_websockets_is_the_clients_transport() -> None:
    assert websockets.__version__ >= "12"
    assert asyncio.iscoroutinefunction(MirageConnection.open)
