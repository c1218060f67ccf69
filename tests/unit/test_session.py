"""Session: a frame's and a chunk's journey with scripted inputs and an injected fake clock (no Ray, no sockets).

The stages are the real embedded backends (RetinaFace, the classical swapper, WORLD / passthrough voice) behind a thin
wrapper that only adds what cannot be had for real here: slowness (the wrapper advances the session's fake clock by a
set number of ms per call) and failures (a call that raises). Timing is therefore exact and nothing sleeps.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import pytest

from mirage_ray import adapt
from mirage_ray.codec import encode_jpeg, float_to_pcm16, image_size, pcm16_to_float
from mirage_ray.config import MirageSettings
from mirage_ray.metrics import SessionSummary
from mirage_ray.protocol import FLAG_PASSTHROUGH, Kind, Media
from mirage_ray.session import Session
from mirage_ray.stages import StageInfo, StageUnavailable, Workers
from mirage_ray.vision.detect_retinaface import RetinaFaceDetector
from mirage_ray.vision.faces import Face, SourceIdentity
from mirage_ray.vision.swap_classical import ClassicalSwapper
from mirage_ray.voice.base import VoiceParams
from mirage_ray.voice.convert_passthrough import PassthroughConverter
from mirage_ray.voice.convert_world import WorldConverter
from tests.media import astronaut, insightface_image, moving_face_frames
from tests.speech import speech

BLOCK_192 = 3072  # samples in the default 192 ms block
CHUNK_200 = 3200  # a 200 ms wire chunk (the natural client choice for 192 ms blocks)
FRAME_US = 50_000  # 20 fps capture spacing
INFO = StageInfo(fallback_converter="world-fast")


class FakeClock:
    """The session's clock; only the stage wrapper (or the test, between calls) moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance_ms(self, ms: float) -> None:
        self.now += ms / 1000.0


class ScriptedStages:
    """Real backends; ``cost_ms`` advances the fake clock per call, ``fail`` holds the call numbers that raise."""

    def __init__(self, clock: FakeClock, detector=None, swapper=None, converter=None, fallback=None) -> None:
        self.clock = clock
        self.detector, self.swapper = detector, swapper
        self.converter = converter or PassthroughConverter()
        self.fallback = fallback or PassthroughConverter()
        self.cost_ms = {"detect": 0.0, "swap": 0.0, "convert": 0.0, "fallback": 0.0}
        self.fail: dict[str, set[int]] = {"detect": set(), "identity": set(), "swap": set(), "convert": set()}
        self.miss: set[int] = set()  # detect call numbers that find no face although one is there
        self.detect_calls: list[list[Face]] = []
        self.identities: list[SourceIdentity] = []
        self.swap_calls: list[tuple[list[Face], SourceIdentity]] = []
        self.swap_images: list[np.ndarray] = []  # what the swapper received: the region around the faces
        self.convert_calls: list[bool] = []  # the fallback flag of each call
        self.calls = dict.fromkeys(self.fail, 0)  # every call, failed ones included

    def _enter(self, stage: str, cost: str | None = None) -> None:
        call = self.calls[stage]
        self.calls[stage] += 1
        self.clock.advance_ms(self.cost_ms.get(cost or stage, 0.0))
        if call in self.fail[stage]:
            raise StageUnavailable(f"scripted {stage} failure on call {call}")

    async def detect(self, image: np.ndarray) -> list[Face]:
        self._enter("detect")
        faces = [] if self.calls["detect"] - 1 in self.miss else self.detector.detect(image)
        self.detect_calls.append(faces)
        return faces

    async def identity(self, image: np.ndarray, face: Face) -> SourceIdentity:
        self._enter("identity")
        identity = self.swapper.identity(image, face)
        self.identities.append(identity)
        return identity

    async def swap(self, image: np.ndarray, faces: Sequence[Face], identity: SourceIdentity) -> np.ndarray:
        self.swap_calls.append((list(faces), identity))
        self.swap_images.append(image)
        self._enter("swap")
        return self.swapper.swap(image, list(faces), identity)

    async def restore(self, crops: np.ndarray, fidelity: float) -> np.ndarray:
        raise AssertionError("the enhancer is off in these tests")

    async def convert(self, window: np.ndarray, params: VoiceParams, fallback: bool = False) -> np.ndarray:
        self.convert_calls.append(fallback)
        self._enter("convert", "fallback" if fallback else "convert")
        return (self.fallback if fallback else self.converter).convert(window, params)


@pytest.fixture(scope="module")
def detector() -> RetinaFaceDetector:
    return RetinaFaceDetector()


@pytest.fixture(scope="module")
def swapper() -> ClassicalSwapper:
    return ClassicalSwapper()


@pytest.fixture(scope="module")
def voiced() -> np.ndarray:
    """espeak-ng speech without its leading/trailing digital silence (loops without a silent block)."""
    x = speech()
    loud = np.flatnonzero(np.abs(x) > 1e-3)
    return x[loud[0] : loud[-1] + 1 - (loud[-1] + 1 - loud[0]) % 160]


def make_session(stages: ScriptedStages, **overrides: Any) -> Session:
    # these tests are written for the seed's 192 ms block and 40 + 10 ms hold-back (800 samples), not today's defaults
    seed = {"chunk_ms": 192, "crossfade_ms": 40, "sola_search_ms": 10}
    return Session(MirageSettings(**(seed | overrides)), stages, INFO, session_id="s1", clock=stages.clock)


async def disguised_session(stages: ScriptedStages, **overrides: Any) -> Session:
    """A session with the Tom Hanks reference set (the disguise on)."""
    session = make_session(stages, **overrides)
    await session.on_reference(Media(Kind.REFERENCE, 0, 0, png(insightface_image("Tom_Hanks_54745.png"))))
    return session


def png(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image)
    assert ok
    return data.tobytes()


def looped(x: np.ndarray, n: int) -> np.ndarray:
    return np.resize(x, n).astype(np.float32)


async def send_audio(session: Session, samples: np.ndarray, start_seq: int = 0, late: bool = False) -> list[Any]:
    """Send ``samples`` as 200 ms chunks (the last one shorter); every reply, in order.

    After every chunk: the samples that came back are exactly the samples sent minus what waits for a whole block.
    """
    assert len(samples) % 160 == 0, "the wire carries whole 10 ms frames"
    replies: list[Any] = []
    for seq, pos in enumerate(range(0, len(samples), CHUNK_200), start=start_seq):
        chunk = float_to_pcm16(samples[pos : pos + CHUNK_200])
        out_before = session.samples_out
        answer = await session.on_audio(Media(Kind.AUDIO, seq, seq * 200_000, chunk), late=late)
        assert sum(len(m.payload) // 2 for m in audio_blocks(answer)) == session.samples_out - out_before
        assert session.samples_in - session.samples_out == session._voice.pending_samples
        assert all(m.seq == seq for m in audio_blocks(answer))  # tagged with the chunk that completed them
        replies += answer
    return replies


def audio_blocks(replies: list[Any]) -> list[Media]:
    return [r for r in replies if isinstance(r, Media)]


def messages(replies: list[Any], kind: str) -> list[dict]:
    return [r for r in replies if isinstance(r, dict) and r["type"] == kind]


def assert_conserved(session: Session) -> None:
    audio = session.stats_message()["audio"]
    pending = session._voice.pending_samples
    assert audio["samples_in"] - audio["samples_out"] == pending
    assert 0 <= pending < session._voice.block_samples


# --- a chunk's journey -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cost_ms", "blocks", "reason", "new_ms", "at_block"),
    [
        (150.0, 60, "grow", 240, 49),  # 150/192 = 0.78 > 0.75 over 40 chunks; applied 10 chunks later (no silence)
        (50.0, 140, "shrink", 160, 129),  # 50/192 = 0.26 < 0.55 over 120 chunks; applied 10 chunks later
    ],
)
async def test_chunk_size_adapts_to_a_slow_or_fast_converter(
    voiced: np.ndarray, cost_ms: float, blocks: int, reason: str, new_ms: int, at_block: int
) -> None:
    stages = ScriptedStages(FakeClock())
    stages.cost_ms["convert"] = cost_ms
    session = make_session(stages, gate_db=-120.0)
    assert session.hello()["audio"]["chunk_ms"] == 192
    replies = await send_audio(session, looped(voiced, blocks * BLOCK_192 + CHUNK_200))
    # walk the replies: block sizes, and which block the directive follows
    sizes, directives = [], []
    for reply in replies:
        if isinstance(reply, Media):
            sizes.append(len(reply.payload) // 2)
        elif reply["type"] == "directive":
            directives.append((len(sizes) - 1, reply))
    assert len(stages.convert_calls) == len(sizes) and not any(stages.convert_calls)  # nothing gated, no fallback
    assert directives == [(at_block, {"type": "directive", "reason": reason, "audio_chunk_ms": new_ms})]
    assert set(sizes[: at_block + 1]) == {BLOCK_192}
    assert set(sizes[at_block + 1 :]) == {new_ms * 16}
    assert messages(replies, "error") == []
    assert session.stats_message()["audio"]["chunk_ms"] == new_ms
    assert_conserved(session)


async def test_a_pending_chunk_change_is_applied_at_the_next_silent_block(voiced: np.ndarray) -> None:
    stages = ScriptedStages(FakeClock())
    stages.cost_ms["convert"] = 150.0
    session = make_session(stages)
    slow = await send_audio(session, looped(voiced, 40 * BLOCK_192))  # 40 slow blocks: a grow is now pending
    assert len(audio_blocks(slow)) == 40 and messages(slow, "directive") == []
    silent = await send_audio(session, np.zeros(5 * BLOCK_192, np.float32), start_seq=100)
    assert len(stages.convert_calls) == 40  # the silent blocks were gated
    assert messages(silent, "directive") == [{"type": "directive", "reason": "grow", "audio_chunk_ms": 240}]


async def test_a_converter_too_slow_for_40_chunks_is_an_audio_failure_then_fallback(voiced: np.ndarray) -> None:
    stages = ScriptedStages(FakeClock())
    stages.cost_ms.update(convert=170.0, fallback=10.0)  # 170/192 = 0.885 > 0.80
    session = make_session(stages, gate_db=-120.0)
    replies = await send_audio(session, looped(voiced, 50 * BLOCK_192 + CHUNK_200))
    errors, blocks_before = [], 0
    for reply in replies:
        if isinstance(reply, Media):
            blocks_before += 1
        elif reply["type"] == "error":
            errors.append((blocks_before, reply["code"]))
    assert errors == [(40, "audio_failure")]
    assert stages.convert_calls[:40] == [False] * 40
    assert stages.convert_calls[40:] == [True] * (len(stages.convert_calls) - 40) and len(stages.convert_calls) > 45
    assert messages(replies, "directive") == []  # the failure cleared the ratio window: no grow as well
    assert all(block.flags == 0 for block in audio_blocks(replies))
    stats = session.stats_message()["audio"]
    assert stats["failed"] is True and stats["chunk_ms"] == 192
    assert_conserved(session)


def best_match(block: np.ndarray, source: np.ndarray, start: int, search: int = 160, skip: int = 640) -> float:
    """Highest normalised correlation of ``block[skip:]`` with ``source`` starting within [start, start+search]."""
    body = block[skip:].astype(np.float64)
    scores = []
    for offset in range(search + 1):
        ref = source[start + offset + skip : start + offset + len(block)].astype(np.float64)
        scores.append(float(body @ ref / (np.linalg.norm(body) * np.linalg.norm(ref) + 1e-12)))
    return max(scores)


async def test_a_converter_that_raises_fails_closed_and_switches_to_the_fallback(voiced: np.ndarray) -> None:
    stages = ScriptedStages(FakeClock(), converter=WorldConverter(), fallback=WorldConverter())
    stages.fail["convert"] = {2}
    session = make_session(stages)
    x = voiced[: 6 * BLOCK_192 + 128]  # whole 10 ms frames
    replies = await send_audio(session, x)
    blocks = audio_blocks(replies)
    assert [b.flags & FLAG_PASSTHROUGH for b in blocks] == [0, 0, 1, 0, 0, 0]
    assert [len(b.payload) for b in blocks] == [2 * BLOCK_192] * 6
    # the call that raised switched the session to the fallback converter (not only a slow one does)
    assert stages.convert_calls == [False, False, False, True, True, True]
    assert [m["code"] for m in messages(replies, "error")] == ["audio_failure"]
    # block k carries input from k*block - (crossfade + search) + SOLA offset: every block, the failed one (the
    # ingress's own pitch shift) included, is far from the speaker's real voice (raw would score ~1.0)
    x16 = pcm16_to_float(float_to_pcm16(x))
    scores = [best_match(pcm16_to_float(b.payload), x16, k * BLOCK_192 - 800) for k, b in enumerate(blocks) if k]
    assert max(scores) < 0.8, scores
    assert session.stats_message()["stage_failures"] == {"voice": 1}
    assert session.stats_message()["fail_closed"] == {"video": 0, "audio": 1}


async def test_reveal_is_the_operators_explicit_opt_out(voiced: np.ndarray) -> None:
    stages = ScriptedStages(FakeClock(), converter=WorldConverter(), fallback=WorldConverter())
    stages.fail["convert"] = {2}
    session = make_session(stages, on_stage_failure="reveal")
    x = voiced[: 6 * BLOCK_192 + 128]
    blocks = audio_blocks(await send_audio(session, x))
    x16 = pcm16_to_float(float_to_pcm16(x))
    assert best_match(pcm16_to_float(blocks[2].payload), x16, 2 * BLOCK_192 - 800) > 0.999  # the raw block
    assert blocks[2].flags & FLAG_PASSTHROUGH


async def test_late_blocks_skip_the_converter_but_not_the_disguise(voiced: np.ndarray) -> None:
    stages = ScriptedStages(FakeClock())
    session = make_session(stages)
    five = 5 * BLOCK_192  # five blocks are whole 10 ms frames too

    async def send(samples: np.ndarray, seq: int, late: bool = False) -> list[Media]:
        return audio_blocks(await send_audio(session, samples, start_seq=seq, late=late))

    late = await send(voiced[:five], 0, late=True)
    assert [b.flags for b in late] == [FLAG_PASSTHROUGH] * 5 and stages.convert_calls == []
    x16 = pcm16_to_float(float_to_pcm16(voiced[:five]))
    scores = [best_match(pcm16_to_float(b.payload), x16, k * BLOCK_192 - 800) for k, b in enumerate(late) if k]
    assert max(scores) < 0.8, scores  # the ingress's pitch shift, never the speaker's real voice
    silent = await send(np.zeros(five, np.float32), 10)
    assert [b.flags for b in silent] == [0] * 5 and stages.convert_calls == []
    assert not np.any(pcm16_to_float(silent[1].payload))  # silence in, silence out (after the first fade-out)
    silent_late = await send(np.zeros(five, np.float32), 20, late=True)
    assert [b.flags for b in silent_late] == [0] * 5  # gated wins: nothing to convert, nothing counted late
    live = await send(voiced[:five], 30)
    assert [b.flags for b in live] == [0] * 5 and stages.convert_calls == [False] * 5
    assert session.stats_message()["audio"]["late_blocks"] == 5
    assert_conserved(session)


class StuckConverterStages(ScriptedStages):
    """The voice stage runs on the session's audio thread and takes far longer than any block's budget."""

    def __init__(self, clock: FakeClock, workers: Workers, stuck_s: float) -> None:
        super().__init__(clock)
        self.workers, self.stuck_s = workers, stuck_s

    async def convert(self, window: np.ndarray, params: VoiceParams, fallback: bool = False) -> np.ndarray:
        self.convert_calls.append(fallback)
        await self.workers.audio(time.sleep, self.stuck_s)  # a timeout cancels the await, not the thread
        return window


async def test_a_timed_out_conversion_fails_closed_without_waiting_for_the_stuck_audio_thread(
    voiced: np.ndarray,
) -> None:
    stuck_s = 3.0
    workers = Workers(1, 1)
    stages = StuckConverterStages(FakeClock(), workers, stuck_s)
    seed = MirageSettings(chunk_ms=192, crossfade_ms=40, sola_search_ms=10)
    session = Session(seed, stages, INFO, workers, session_id="s1", clock=stages.clock)
    try:
        answered_after = []
        blocks = []
        for seq in range(3):  # each chunk completes a block; the first conversion still holds the audio thread
            start = time.monotonic()
            chunk = float_to_pcm16(voiced[seq * CHUNK_200 : (seq + 1) * CHUNK_200])
            blocks += audio_blocks(await session.on_audio(Media(Kind.AUDIO, seq, seq * 200_000, chunk)))
            answered_after.append(time.monotonic() - start)
    finally:
        workers.shutdown()
    # budget 0.8 x 192 ms, then the pitch shift on its own thread: far sooner than the stuck conversion ends
    assert max(answered_after) < stuck_s / 2, answered_after
    assert len(blocks) == 3 and all(b.flags == FLAG_PASSTHROUGH for b in blocks)  # failed closed, never raw
    x16 = pcm16_to_float(float_to_pcm16(voiced[: 3 * CHUNK_200]))
    assert best_match(pcm16_to_float(blocks[2].payload), x16, 2 * BLOCK_192 - 800) < 0.8
    assert session.stats_message()["fail_closed"]["audio"] == 3


# --- a frame's journey -------------------------------------------------------------------------------------------
def video(seq: int, capture_us: int, payload: bytes) -> Media:
    return Media(Kind.VIDEO, seq, capture_us, payload)


async def test_frames_more_than_150_ms_behind_the_audio_head_are_dropped(detector: RetinaFaceDetector) -> None:
    stages = ScriptedStages(FakeClock(), detector)
    session = make_session(stages, chunk_ms=200)
    frame = moving_face_frames(1)[0]
    await session.on_audio(Media(Kind.AUDIO, 0, 1_000_000, float_to_pcm16(np.zeros(CHUNK_200, np.float32))))
    head = 1_200_000  # capture + 200 ms
    at_limit = await session.on_video(video(1, head - 150_000, frame))
    late = await session.on_video(video(2, head - 150_001, frame))
    after = await session.on_video(video(3, head - 100_000, frame))
    assert [type(r) for r in at_limit] == [Media] and at_limit[0].seq == 1
    assert late == []
    assert [r.seq for r in after if isinstance(r, Media)] == [3]
    # the late frame also asked for one video degrade, taken at the next processed frame
    assert messages(after, "directive") == [
        {
            "type": "directive",
            "reason": "request:audio leads video",
            "video": {"width": 512, "height": 512, "fps": 20.0, "jpeg_quality": 75},
        }
    ]
    frames = session.stats_message()["frames"]
    assert frames["dropped_by_reason"] == {"late": 1} and (frames["in"], frames["out"]) == (3, 2)


@pytest.mark.parametrize(
    ("spacing_us", "kept"),
    [
        (25_000, list(range(0, 20, 2))),  # 40 fps in, 20 fps out: every other frame
        (10_000, [0, 4, 9, 14, 19]),  # 100 fps in: one in five (the first due 50 ms on, taken 12.5 ms early)
    ],
)
async def test_the_fps_gate_drops_frames_above_the_levels_fps(
    detector: RetinaFaceDetector, spacing_us: int, kept: list[int]
) -> None:
    session = make_session(ScriptedStages(FakeClock(), detector))
    frame = moving_face_frames(1)[0]
    answered = []
    for seq in range(20):
        answered += [r.seq for r in await session.on_video(video(seq, seq * spacing_us, frame))]
    assert answered == kept
    assert session.stats_message()["frames"]["dropped_by_reason"] == {adapt.DROP_FPS_GATE: 20 - len(kept)}


def kps_error(face: Face, reference: Face) -> float:
    return float(np.abs(face.kps - reference.kps).max())


async def test_detector_every_5th_frame_and_the_tracker_carries_the_face_between(
    detector: RetinaFaceDetector, swapper: ClassicalSwapper
) -> None:
    stages = ScriptedStages(FakeClock(), detector, swapper)
    session = make_session(stages)
    assert (await session.on_reference(Media(Kind.REFERENCE, 0, 0, png(insightface_image("Tom_Hanks_54745.png")))))[0][
        "ok"
    ]
    frames = moving_face_frames(16)  # the face pans 3 px per frame
    detected_on, replies = [], []
    for i, frame in enumerate(frames):
        before = len(stages.detect_calls)
        replies += await session.on_video(video(i, i * FRAME_US, frame))
        if len(stages.detect_calls) > before:
            detected_on.append(i)
    assert detected_on == [0, 5, 10, 15]
    assert [(r.seq, r.flags) for r in replies] == [(i, 0) for i in range(16)]  # every frame swapped
    # in between, the faces handed to the swapper are the tracked ones: where the detector finds them in the
    # region the swapper received (only the area around the face travels, in that region's coordinates)
    for i, ((faces, identity), region) in enumerate(zip(stages.swap_calls, stages.swap_images, strict=True)):
        assert len(faces) == 1 and identity is stages.identities[0]
        assert region.shape[0] < 512 or region.shape[1] < 512  # not the whole frame
        truth = detector.detect(region)[0]
        assert kps_error(faces[0], truth) < 3.0, i


async def test_slow_processing_walks_the_degrade_ladder_down_to_384(detector: RetinaFaceDetector) -> None:
    stages = ScriptedStages(FakeClock(), detector)
    stages.cost_ms["detect"] = 500.0  # one detection per 5 frames: 100 ms per frame, ratio 2.0 at 20 fps
    session = make_session(stages)
    frame = encode_jpeg(astronaut(), 85)  # a steady real face
    ladder = adapt.build_ladder()
    directives, sizes = [], []
    for i in range(200):
        for reply in await session.on_video(video(i, i * 100_000, frame)):
            if isinstance(reply, Media):
                sizes.append(image_size(reply.payload))
            else:
                directives.append((i, reply))
    assert directives == [
        (30 * k - 1, {"type": "directive", "reason": "overload", "video": ladder[k].as_directive()})
        for k in range(1, 7)
    ]
    assert ladder[6].as_directive() == {"width": 384, "height": 384, "fps": 15.0, "jpeg_quality": 55}
    assert len(sizes) == 200  # capture times 100 ms apart: the fps gate drops nothing at 15-20 fps
    assert set(sizes[:180]) == {(512, 512)} and set(sizes[180:]) == {(384, 384)}
    assert session.stats_message()["video"] == ladder[6].as_directive()


def face_psnr(output: bytes, reference_frame: bytes, box: np.ndarray) -> float:
    """PSNR (dB) of the output against the input inside the face box: ~30 dB when the input went out raw."""
    a = cv2.imdecode(np.frombuffer(output, np.uint8), 1).astype(np.float64)
    b = cv2.imdecode(np.frombuffer(reference_frame, np.uint8), 1).astype(np.float64)
    x1, y1, x2, y2 = box.astype(int)
    mse = float(((a[y1:y2, x1:x2] - b[y1:y2, x1:x2]) ** 2).mean())
    return 10.0 * np.log10(255.0**2 / max(mse, 1e-9))


RAW_FACE_PSNR_DB = 25.0  # a raw face scores ~30 dB after the JPEG round trip; masked or swapped ones far less


async def test_a_failing_swapper_masks_the_face_once_a_reference_is_set(
    detector: RetinaFaceDetector, swapper: ClassicalSwapper
) -> None:
    stages = ScriptedStages(FakeClock(), detector, swapper)
    session = make_session(stages)
    frames = moving_face_frames(4)
    before = (await session.on_video(video(0, 0, frames[0])))[0]  # no reference yet: unswapped, as the protocol says
    assert before.flags == FLAG_PASSTHROUGH
    box = stages.detect_calls[-1][0].bbox
    assert face_psnr(before.payload, frames[0], box) > RAW_FACE_PSNR_DB
    await session.on_reference(Media(Kind.REFERENCE, 0, 0, png(insightface_image("Tom_Hanks_54745.png"))))
    stages.fail["swap"] = {1}  # the second swap call (frame 2) raises
    replies = [(await session.on_video(video(i, i * FRAME_US, frames[i])))[0] for i in (1, 2, 3)]
    assert [r.flags for r in replies] == [0, FLAG_PASSTHROUGH, 0]  # swapped, swap failed (masked), swapped
    scores = [face_psnr(r.payload, frames[i], box) for r, i in zip(replies, (1, 2, 3), strict=True)]
    assert max(scores) < RAW_FACE_PSNR_DB, scores  # the real face never went out
    assert session.stats_message()["stage_failures"] == {"swap": 1}
    assert session.stats_message()["fail_closed"]["video"] == 1


async def test_a_failing_detector_with_no_known_face_masks_the_whole_frame(
    detector: RetinaFaceDetector, swapper: ClassicalSwapper
) -> None:
    stages = ScriptedStages(FakeClock(), detector, swapper)
    session = await disguised_session(stages)
    stages.fail["detect"] = {1}  # call 0 was the reference: the first frame's detection fails, no face known yet
    frame = moving_face_frames(1)[0]
    reply = (await session.on_video(video(0, 0, frame)))[0]
    assert reply.flags == FLAG_PASSTHROUGH
    box = detector.detect(cv2.imdecode(np.frombuffer(frame, np.uint8), 1))[0].bbox
    assert face_psnr(reply.payload, frame, box) < RAW_FACE_PSNR_DB
    assert session.stats_message()["stage_failures"] == {"detect": 1}


def face_boxes(frames: list[bytes], detector: RetinaFaceDetector) -> list[np.ndarray]:
    return [detector.detect(cv2.imdecode(np.frombuffer(f, np.uint8), 1))[0].bbox for f in frames]


async def stream(session: Session, stages: ScriptedStages, frames: list[bytes], first: int = 0) -> list[Media]:
    """Frames at 20 fps (the fake clock advances 50 ms a frame); each frame's video reply."""
    replies = []
    for i, frame in enumerate(frames, start=first):
        stages.clock.advance_ms(50)
        replies.append((await session.on_video(video(i, i * FRAME_US, frame)))[0])
    return replies


async def test_a_detector_failing_beside_a_tracked_face_masks_the_frame_once_the_track_is_a_second_old(
    detector: RetinaFaceDetector, swapper: ClassicalSwapper
) -> None:
    """Optical flow drifts off a face the detector cannot confirm: after 1 s the whole frame is masked, not swapped
    on a stale track; when the detector answers again, frames are swapped again."""
    stages = ScriptedStages(FakeClock(), detector, swapper)
    session = await disguised_session(stages)
    frames = moving_face_frames(50)
    boxes = face_boxes(frames, detector)
    healthy = await stream(session, stages, frames[:6])
    stages.fail["detect"] = set(range(stages.calls["detect"], 10_000))  # the detector dies
    outage = await stream(session, stages, frames[6:36], first=6)
    stages.fail["detect"] = set()  # Serve replaced it
    recovered = await stream(session, stages, frames[36:], first=36)
    replies = healthy + outage + recovered
    scores = [face_psnr(r.payload, frames[i], boxes[i]) for i, r in enumerate(replies)]
    assert max(scores) < RAW_FACE_PSNR_DB, scores  # the real face never went out
    assert [r.flags for r in healthy] == [0] * 6
    assert outage[0].flags == 0  # the track is fresh: swapped
    # the first failed detection is frame 10 (one every 5 frames); 1 s later (frame 30) the track is not trusted
    assert all(r.flags == FLAG_PASSTHROUGH for r in outage[-5:])
    assert all(r.flags == 0 for r in recovered[-5:])  # swapped again
    assert session.stats_message()["fail_closed"]["video"] >= 5


async def test_a_face_the_detector_misses_is_masked_not_revealed_until_it_is_found_again(
    detector: RetinaFaceDetector, swapper: ClassicalSwapper
) -> None:
    stages = ScriptedStages(FakeClock(), detector, swapper)
    session = await disguised_session(stages)
    frames = moving_face_frames(14)
    boxes = face_boxes(frames, detector)
    replies = await stream(session, stages, frames[:6])  # detections: call 1 (frame 0), call 2 (frame 5)
    stages.miss = set(range(stages.calls["detect"], stages.calls["detect"] + 3))  # the next 3 detections miss
    replies += await stream(session, stages, frames[6:], first=6)
    scores = [face_psnr(r.payload, frames[i], boxes[i]) for i, r in enumerate(replies)]
    assert max(scores) < RAW_FACE_PSNR_DB, scores
    flags = [r.flags for r in replies]
    assert FLAG_PASSTHROUGH in flags[6:] and flags[-1] == 0, flags  # masked while missed, swapped once found


async def test_someone_who_left_is_shown_again_after_a_second_without_a_face(
    detector: RetinaFaceDetector, swapper: ClassicalSwapper
) -> None:
    stages = ScriptedStages(FakeClock(), detector, swapper)
    session = await disguised_session(stages)
    await stream(session, stages, moving_face_frames(6))
    empty_room = encode_jpeg(np.full((512, 512, 3), 90, np.uint8), 90)
    replies = await stream(session, stages, [empty_room] * 30, first=6)
    # the face just vanished (the first frames still carry the held track): masked until its absence is confirmed
    assert FLAG_PASSTHROUGH in [r.flags for r in replies[:10]]
    last = cv2.imdecode(np.frombuffer(replies[-1].payload, np.uint8), 1).astype(np.float64)
    assert np.abs(last - 90).mean() < 2.0  # then the room goes out as it is (nothing to hide, nothing masked)
    assert session.stats_message()["fail_closed"]["video"] < 30


class SlowSwapStages(ScriptedStages):
    """A swapper that answers later than the session's video stage timeout (real time, not the fake clock)."""

    async def swap(self, image: np.ndarray, faces: Sequence[Face], identity: SourceIdentity) -> np.ndarray:
        await asyncio.sleep(0.3)
        return await super().swap(image, faces, identity)


async def test_a_swap_slower_than_the_timeout_goes_out_masked(
    detector: RetinaFaceDetector, swapper: ClassicalSwapper
) -> None:
    stages = SlowSwapStages(FakeClock(), detector, swapper)
    session = await disguised_session(stages, video_stage_timeout_ms=50)
    frame = moving_face_frames(1)[0]
    reply = (await session.on_video(video(0, 0, frame)))[0]
    box = stages.detect_calls[-1][0].bbox
    assert reply.flags == FLAG_PASSTHROUGH and face_psnr(reply.payload, frame, box) < RAW_FACE_PSNR_DB
    assert session.stats_message()["stage_failures"] == {"swap": 1}


async def test_reveal_sends_the_unswapped_frame_on_failure(
    detector: RetinaFaceDetector, swapper: ClassicalSwapper
) -> None:
    stages = ScriptedStages(FakeClock(), detector, swapper)
    session = await disguised_session(stages, on_stage_failure="reveal")
    stages.fail["swap"] = {0}
    frame = moving_face_frames(1)[0]
    reply = (await session.on_video(video(0, 0, frame)))[0]
    box = stages.detect_calls[-1][0].bbox
    assert reply.flags == FLAG_PASSTHROUGH and face_psnr(reply.payload, frame, box) > RAW_FACE_PSNR_DB


# --- reference -----------------------------------------------------------------------------------------------------
async def test_reference_paths_and_the_previous_identity_stays(
    detector: RetinaFaceDetector, swapper: ClassicalSwapper
) -> None:
    stages = ScriptedStages(FakeClock(), detector, swapper)
    session = make_session(stages)

    async def upload(payload: bytes) -> dict:
        (reply,) = await session.on_reference(Media(Kind.REFERENCE, 0, 0, payload))
        return reply

    frame = moving_face_frames(1)[0]
    assert (await session.on_video(video(0, 0, frame)))[0].flags == FLAG_PASSTHROUGH  # no reference yet
    ok = await upload(png(insightface_image("Tom_Hanks_54745.png")))
    assert ok == {"type": "reference", "ok": True, "faces": len(stages.detect_calls[-1])} and ok["faces"] >= 1
    no_face = await upload(encode_jpeg(np.full((256, 256, 3), 127, np.uint8), 90))
    assert (no_face["ok"], no_face["faces"]) == (False, 0) and no_face["error"].startswith("No face was found")
    not_image = await upload(b"definitely not an image")
    assert not_image["ok"] is False and "not a usable image" in not_image["error"]
    stages.fail["identity"] = {stages.calls["identity"]}
    broken = await upload(png(insightface_image("Tom_Hanks_54745.png")))
    assert broken["ok"] is False and "could not be processed right now" in broken["error"]
    assert len(stages.identities) == 1
    reply = await session.on_video(video(1, FRAME_US, frame))
    assert reply[0].flags == 0 and stages.swap_calls[-1][1] is stages.identities[0]


# --- the controller --------------------------------------------------------------------------------------------
async def test_controller_floor_holds_until_the_controller_is_unreachable() -> None:
    small = RetinaFaceDetector(det_size=128)  # keeps 300+ frames cheap
    stages = ScriptedStages(FakeClock(), small)
    session = make_session(stages)
    frame = encode_jpeg(cv2.resize(astronaut()[20:240, 150:370], (128, 128)), 85)
    ladder = adapt.build_ladder()
    assert session.apply_controller({"level": 3}) == [
        {"type": "directive", "reason": "controller", "video": ladder[3].as_directive()}
    ]
    directives = []
    for i in range(320):  # fast frames: 300 stable frames would restore a level, but not below the floor
        directives += messages(await session.on_video(video(i, i * FRAME_US, frame)), "directive")
        stages.clock.advance_ms(50.0)
    assert directives == [] and session.stats_message()["degrade_level"] == 3
    summary = session.summary()
    assert json.loads(json.dumps(summary)) == summary
    assert SessionSummary.from_dict(summary).to_dict() == summary
    assert (summary["degrade_level"], summary["floor"], summary["max_level"]) == (3, 3, len(ladder) - 1)
    assert summary["fps_out"] == pytest.approx(20.0)
    session.controller_unreachable("timeout")
    assert session.stats_message()["controller"] == "unreachable (local rules)"
    restored = messages(await session.on_video(video(320, 320 * FRAME_US, frame)), "directive")
    assert restored == [{"type": "directive", "reason": "restore", "video": ladder[2].as_directive()}]
    assert session.summary()["floor"] == 0
    assert session.apply_controller({"level": 0}) == []  # a lower level only lowers the floor
    assert session.stats_message()["controller"] == "ok"


async def test_audio_over_budget_makes_video_yield(voiced: np.ndarray) -> None:
    """A converter over 0.65 of real time (chunk after chunk) asks the video ladder for a degrade; audio itself keeps
    its chunk."""
    stages = ScriptedStages(FakeClock())
    stages.cost_ms["convert"] = 140.0  # 140/192 = 0.73: not accepted, not a failure
    session = make_session(stages, gate_db=-120.0)
    await send_audio(session, looped(voiced, 2 * CHUNK_200))  # two 192 ms blocks over budget: not yet
    assert session._video._request is None
    await send_audio(session, looped(voiced, CHUNK_200), start_seq=2)  # the third
    assert session._video._request == "audio over budget"
    assert session.stats_message()["audio"]["chunk_ms"] == 192


class EnhancingStages(ScriptedStages):
    """A restorer stand-in (no CodeFormer weights can exist here): it brightens the aligned crops it is given."""

    def __init__(self, clock: FakeClock, **kwargs: Any) -> None:
        super().__init__(clock, **kwargs)
        self.restored: list[tuple[tuple[int, ...], float]] = []

    async def restore(self, crops: np.ndarray, fidelity: float) -> np.ndarray:
        self.restored.append((crops.shape, fidelity))
        return np.clip(crops.astype(np.int16) + 60, 0, 255).astype(np.uint8)


async def test_enhancement_sends_only_aligned_crops_and_pastes_them_back_on_the_face(
    detector: RetinaFaceDetector, swapper: ClassicalSwapper
) -> None:
    stages = EnhancingStages(FakeClock(), detector=detector, swapper=swapper)
    info = StageInfo(enhancer_available=True)
    session = Session(MirageSettings(enhance=True), stages, info, session_id="s1", clock=stages.clock)
    reference = insightface_image("Tom_Hanks_54745.png")
    assert (await session.on_reference(Media(Kind.REFERENCE, 0, 0, png(reference))))[0]["ok"] is True
    frame = moving_face_frames(1)[0]
    session.controls.enhance = False
    plain = cv2.imdecode(
        np.frombuffer((await session.on_video(Media(Kind.VIDEO, 1, 0, frame)))[0].payload, np.uint8), 1
    )
    session.controls.enhance = True
    session.on_text('{"type": "settings", "fidelity": 0.3}')
    reply = (await session.on_video(Media(Kind.VIDEO, 2, FRAME_US, frame)))[0]
    enhanced = cv2.imdecode(np.frombuffer(reply.payload, np.uint8), 1)
    assert stages.restored == [((1, 512, 512, 3), 0.3)]  # one aligned 512 crop per face, the session's fidelity
    brighter = (enhanced.astype(np.int16) - plain.astype(np.int16)).mean(axis=2) > 20
    face = stages.detect_calls[-1][0].bbox.astype(int)
    inside = brighter[face[1] : face[3], face[0] : face[2]].mean()
    outside = np.delete(brighter, np.s_[max(0, face[1] - 60) : face[3] + 60], axis=0).mean()
    assert inside > 0.5 and outside < 0.01  # pasted back on the face, the rest of the frame untouched


async def test_the_swapper_gets_the_context_it_declares(
    detector: RetinaFaceDetector, swapper: ClassicalSwapper
) -> None:
    frame = moving_face_frames(1)[0]
    sizes = []
    for margin in (0.2, 0.65):
        stages = ScriptedStages(FakeClock(), detector, swapper)
        session = Session(MirageSettings(), stages, StageInfo(swap_margin=margin), session_id="m", clock=stages.clock)
        await session.on_reference(Media(Kind.REFERENCE, 0, 0, png(insightface_image("Tom_Hanks_54745.png"))))
        await session.on_video(video(0, 0, frame))
        box = stages.detect_calls[-1][0].bbox
        region = stages.swap_images[-1]
        size = max(box[2] - box[0], box[3] - box[1])
        assert region.shape[1] <= min(512, (box[2] - box[0]) + 2 * margin * size + 2)
        sizes.append(region.shape[0] * region.shape[1])
    assert sizes[1] > 1.5 * sizes[0]


class _WindowLengths(PassthroughConverter):
    """Passthrough that records the length of every window it converts."""

    def __init__(self) -> None:
        self.lengths: list[int] = []

    def convert(self, window: np.ndarray, params: VoiceParams) -> np.ndarray:
        self.lengths.append(len(window))
        return super().convert(window, params)


@pytest.mark.parametrize(
    ("voice_report", "configured_ms", "expected_ms"),
    [
        ({"context_ms": WorldConverter.context_ms}, None, 128),  # the embedded default's own need
        ({}, None, 384),  # a voice stage that does not say: the most any backend needs
        ({"context_ms": 0}, None, 80),  # a converter that needs none: the fail-closed shift's two grains
        ({"context_ms": 128}, 300, 300),  # configured: the operator's value
    ],
)
async def test_voice_windows_carry_the_context_the_converters_need(
    voiced: np.ndarray, voice_report: dict[str, int], configured_ms: int | None, expected_ms: int
) -> None:
    converter = _WindowLengths()
    stages = ScriptedStages(FakeClock(), converter=converter)
    info = StageInfo.from_report({"voice": voice_report}, "pitch-shift")
    seed = {"chunk_ms": 192, "crossfade_ms": 40, "sola_search_ms": 10}
    session = Session(
        MirageSettings(context_ms=configured_ms, **seed), stages, info, session_id="c", clock=stages.clock
    )
    await session.on_audio(Media(Kind.AUDIO, 0, 0, float_to_pcm16(voiced[: 16 * 800])))
    assert converter.lengths and set(converter.lengths) == {16 * (expected_ms + 192 + 40 + 10)}
