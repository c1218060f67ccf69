"""Pure pieces of the client's timing: audio chunks, the video send window, the message rate, the playout buffer.

Numbers in, decisions out; time comes in as an argument. No I/O, no asyncio.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from mirage_ray.protocol import AUDIO_FRAME_MS, AUDIO_SAMPLE_RATE, SAMPLES_PER_10MS, UINT32_MOD

SAMPLE_RATE = AUDIO_SAMPLE_RATE
US_PER_S = 1_000_000
DEFAULT_SEND_CHUNK_MS = 200
RATE_HEADROOM = 0.8  # send at most this fraction of hello's max_messages_per_s


def send_chunk_ms(server_chunk_ms: float | None) -> int:
    """The audio chunk to send for the server's block: whole 10 ms frames, rounded down (192 -> 190), at least 10."""
    if not server_chunk_ms or server_chunk_ms <= 0:
        return DEFAULT_SEND_CHUNK_MS
    return max(AUDIO_FRAME_MS, int(server_chunk_ms) // AUDIO_FRAME_MS * AUDIO_FRAME_MS)


def pad_to_10ms(samples: np.ndarray) -> np.ndarray:
    """``samples`` with zeros appended to a whole number of 10 ms frames (the protocol's audio unit)."""
    short = -len(samples) % SAMPLES_PER_10MS
    return np.concatenate([samples, np.zeros(short, samples.dtype)]) if short else samples


@dataclass(frozen=True)
class AudioChunk:
    """One audio message: its samples and the capture time of its **first** sample (protocol v1)."""

    offset: int  # samples from the start of the stream
    capture_us: int
    samples: np.ndarray


class AudioChunker:
    """Cuts a whole recording (a multiple of 10 ms) into chunks of a size that may change between chunks."""

    def __init__(self, samples: np.ndarray, start_us: int) -> None:
        if len(samples) % SAMPLES_PER_10MS:
            raise ValueError(f"audio must be a multiple of {SAMPLES_PER_10MS} samples; pad it with pad_to_10ms")
        self._samples = samples
        self._start_us = start_us
        self.offset = 0

    @property
    def done(self) -> bool:
        return self.offset >= len(self._samples)

    def next_end_us(self, chunk_ms: int) -> int:
        """Capture time just after the last sample of the chunk :meth:`take` would return now."""
        end = min(len(self._samples), self.offset + chunk_ms * SAMPLE_RATE // 1000)
        return self._start_us + end * US_PER_S // SAMPLE_RATE

    def take(self, chunk_ms: int) -> AudioChunk:
        if chunk_ms <= 0 or chunk_ms % AUDIO_FRAME_MS:
            raise ValueError(f"chunk_ms must be a positive multiple of {AUDIO_FRAME_MS}, got {chunk_ms}")
        end = min(len(self._samples), self.offset + chunk_ms * SAMPLE_RATE // 1000)
        chunk = AudioChunk(
            self.offset, self._start_us + self.offset * US_PER_S // SAMPLE_RATE, self._samples[self.offset : end]
        )
        self.offset = end
        return chunk


@dataclass
class _InFlight:
    index: int  # the frame's position in the input
    seq: int
    capture_us: int
    sent_at: float


class VideoWindow:
    """Frames sent and not yet answered. The server answers in order, so a reply settles every older frame (those
    got no reply: dropped by sync, the fps gate or a busy pipeline); stats counts and a timeout settle the rest."""

    def __init__(self, size: int, timeout_s: float) -> None:
        if size < 1:
            raise ValueError("the video window holds at least one frame")
        self.size = size
        self.timeout_s = timeout_s
        self._in_flight: deque[_InFlight] = deque()
        self.sent = 0
        self.settled = 0  # answered or given up, oldest first
        self.unanswered: list[int] = []  # input indexes of frames that got no reply

    @property
    def full(self) -> bool:
        return len(self._in_flight) >= self.size

    @property
    def empty(self) -> bool:
        return not self._in_flight

    def oldest_capture_us(self) -> int | None:
        return self._in_flight[0].capture_us if self._in_flight else None

    def on_sent(self, index: int, seq: int, capture_us: int, now: float) -> None:
        self._in_flight.append(_InFlight(index, seq % UINT32_MOD, capture_us, now))
        self.sent += 1

    def on_reply(self, seq: int) -> int | None:
        """The input index a reply answers (None for an unknown seq); older frames in flight are settled unanswered."""
        if not any(f.seq == seq for f in self._in_flight):
            return None
        while self._in_flight:
            frame = self._in_flight.popleft()
            self.settled += 1
            if frame.seq == seq:
                return frame.index
            self.unanswered.append(frame.index)
        return None

    def on_server_count(self, finished: int) -> None:
        """``frames.out + frames.dropped`` from ``stats``: that many of our frames are done, answered or not."""
        while self._in_flight and self.settled < finished:
            self.unanswered.append(self._in_flight.popleft().index)
            self.settled += 1

    def expire(self, now: float) -> None:
        """Give up on frames in flight longer than the timeout."""
        while self._in_flight and now - self._in_flight[0].sent_at > self.timeout_s:
            self.unanswered.append(self._in_flight.popleft().index)
            self.settled += 1


class MessageRate:
    """Keeps the client under the server's message rate limit (hello ``limits.max_messages_per_s``)."""

    def __init__(self, max_per_s: float | None) -> None:
        self.allowed = max(1, int(max_per_s * RATE_HEADROOM)) if max_per_s else None
        self._sent: deque[float] = deque()

    def wait_s(self, now: float) -> float:
        """Seconds to wait before the next message may go."""
        if self.allowed is None:
            return 0.0
        while self._sent and now - self._sent[0] >= 1.0:
            self._sent.popleft()
        return 0.0 if len(self._sent) < self.allowed else self._sent[0] + 1.0 - now

    def on_sent(self, now: float) -> None:
        if self.allowed is not None:
            self._sent.append(now)


class PlayoutBuffer:
    """Returned audio waiting for the speaker: pulls fixed blocks, fills gaps with silence, trims when too long."""

    def __init__(self, max_ms: int = 400, sample_rate: int = SAMPLE_RATE) -> None:
        self.max_samples = max_ms * sample_rate // 1000
        self._buffer = np.zeros(0, np.int16)
        self.underruns = 0
        self.trimmed = 0

    def __len__(self) -> int:
        return len(self._buffer)

    def push(self, samples: np.ndarray) -> None:
        self._buffer = np.concatenate([self._buffer, samples.astype(np.int16, copy=False)])
        excess = len(self._buffer) - self.max_samples
        if excess > 0:  # keep latency bounded: drop the oldest audio
            self._buffer = self._buffer[excess:]
            self.trimmed += excess

    def pull(self, count: int) -> np.ndarray:
        out = self._buffer[:count]
        self._buffer = self._buffer[count:]
        if len(out) < count:
            self.underruns += 1
            out = np.concatenate([out, np.zeros(count - len(out), np.int16)])
        return out
