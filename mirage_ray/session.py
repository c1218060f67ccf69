"""The per-session orchestrator: a frame's journey and a chunk's journey, in one place.

A `Session` owns every piece of a connection's streaming state (tracker, voice stream, sync clock, security
window, degrade level, metrics) and reaches the stateless model stages only through the injected
:class:`~mirage_ray.stages.Stages`. CPU work (decode, tracking, encode, the fail-closed conversions) runs on the
replica's :class:`~mirage_ray.stages.Workers`, never on the event loop; audio has its own pool.

Fail closed: once a disguise is chosen (a reference is set, or the voice differs from the speaker's), a frame or
block that could not be processed goes out masked (face regions pixelated) or through the ingress's own pitch
shift, flagged, never raw (``on_stage_failure: reveal`` is the operator's opt-out).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import cv2
import numpy as np

from mirage_ray import protocol
from mirage_ray.adapt import DROP_FPS_GATE, FAIL_ABOVE, AudioPolicy, FpsGate, VideoDecision, VideoDegradePolicy
from mirage_ray.codec import CodecError, decode_image, encode_jpeg, float_to_pcm16, pcm16_to_float, resize_max_side
from mirage_ray.config import MirageSettings
from mirage_ray.controls import SessionControls
from mirage_ray.metrics import MetricsSink, SessionMetrics, SessionSummary
from mirage_ray.protocol import FLAG_PASSTHROUGH, ErrorCode, Kind, Media, ProtocolError
from mirage_ray.reference import choose_reference_face
from mirage_ray.security import FrameGuard, TokenBucket
from mirage_ray.session_stats import AudioState, FpsWindow, build_stats_message
from mirage_ray.stages import StageInfo, Stages, Workers
from mirage_ray.sync import AvSync
from mirage_ray.vision.align import FFHQ_TEMPLATE_512, face_mask, paste_back, warp_face
from mirage_ray.vision.base import ENHANCE_CROP_PX, ReferenceRejected
from mirage_ray.vision.faces import Face, SourceIdentity, face_region, translate
from mirage_ray.vision.mask import TrackConfirmation, mask_faces
from mirage_ray.vision.smooth import FaceSmoother
from mirage_ray.vision.tracker import FaceTracker
from mirage_ray.voice.base import SAMPLE_RATE, VoiceConverter
from mirage_ray.voice.convert_shift import ShiftConverter
from mirage_ray.voice.stream import VoiceStream, VoiceWindow, usable_output

logger = logging.getLogger(__name__)

Outgoing = Media | dict[str, Any]
T = TypeVar("T")

US_PER_S = 1_000_000
DROP_PAUSED = "paused"
# what became of an audio block
SILENT, CONVERTED, TIMED_OUT, FAILED, LATE = "silent", "converted", "timed_out", "failed", "late"


def voice_context_ms(settings: MirageSettings, info: StageInfo, fail_closed: VoiceConverter) -> int:
    """The left context of the session's voice windows: the configured one, else what the voice stage's converters
    and the ingress's own fail-closed converter need."""
    if settings.context_ms is not None:
        return settings.context_ms
    return max(info.voice_context_ms, fail_closed.context_ms)


class Session:
    """All state of one WebSocket session; every method returns the messages to send back."""

    def __init__(
        self,
        settings: MirageSettings,
        stages: Stages,
        info: StageInfo,
        workers: Workers | None = None,
        session_id: str | None = None,
        clock: Callable[[], float] = time.perf_counter,
        sink: MetricsSink | None = None,
    ) -> None:
        self.settings = settings
        self.id = session_id or uuid.uuid4().hex[:12]
        self._stages = stages
        self.info = info
        self._workers = workers or Workers(1, 1)
        self._clock = clock
        self.close_code: int | None = None
        self.close_reason = ""
        self.controls = SessionControls(settings, info.voices)
        self._fail_closed = settings.on_stage_failure == "mask"
        # security: the frame guard (size, header, seq, payload checks, invalid-frame window) the transport applies
        self.guard = FrameGuard(settings)
        self._messages = TokenBucket(settings.max_messages_per_s, settings.message_burst)
        # video
        self._tracker = FaceTracker(
            detect_every=settings.detect_every, max_faces=settings.max_faces, smoother=FaceSmoother()
        )
        self._identity: SourceIdentity | None = None
        self._video = VideoDegradePolicy.from_settings(settings)
        self._fps_gate = FpsGate()
        self._sync = AvSync()
        self._video_timeout_s = settings.video_stage_timeout_ms / 1000.0
        # audio
        self._shift = ShiftConverter()
        self._voice = VoiceStream.from_settings(settings, voice_context_ms(settings, info, self._shift))
        self._audio = AudioPolicy.from_settings(settings)
        self.audio_failed = False
        self.metrics = SessionMetrics(self.id, clock(), sink)
        self.last_summary: SessionSummary | None = None
        self._fps_window = FpsWindow(clock())  # restarted by each stats message
        self.samples_in = 0
        self.samples_out = 0
        self.audio_late_blocks = 0
        self._flushes = 0  # flush requests not yet taken by the transport
        self._last_audio = (0, 0)  # (seq, capture time) of the latest audio chunk: a flushed block answers it
        self._fail_closed_count = {"video": 0, "audio": 0}
        self._faces_check = TrackConfirmation()
        self._stage_failures: dict[str, int] = {}
        self._controller_ok = True

    # -- connection-level ------------------------------------------------------------------------------------------
    def hello(self) -> dict[str, Any]:
        return protocol.hello(
            session_id=self.id,
            audio={"sample_rate": SAMPLE_RATE, "chunk_ms": self._audio.chunk_ms},
            video=self._video.level.as_directive(),
            limits={
                "max_frame_bytes": self.settings.max_frame_bytes,
                "max_messages_per_s": self.settings.max_messages_per_s,
            },
            backends=dict(self.info.report),
            settings=self.controls.as_dict(),
            on_stage_failure=self.settings.on_stage_failure,
        )

    def admit(self, now: float) -> bool:
        """Message rate limit (token bucket); False means close with 4029."""
        return self._messages.allow(now)

    def on_invalid(self, error: ProtocolError | CodecError, kind: str = "message") -> list[Outgoing]:
        """Count an invalid message in the guard's window; answer with an error; end the session when it says so."""
        self.metrics.invalid_message()
        self._count_invalid(error)
        code = error.code if isinstance(error, ProtocolError) else ErrorCode.BAD_PAYLOAD
        return [protocol.error(code, f"invalid {kind}: {error}")]

    def _count_invalid(self, error: ProtocolError | CodecError) -> None:
        close = self.guard.invalid(error)
        if close is not None and self.close_code is None:
            self.close_code, self.close_reason = close

    def on_text(self, text: str) -> list[Outgoing]:
        try:
            message = protocol.parse_text(text, self.settings.max_json_bytes, self.settings.max_json_depth)
        except ProtocolError as exc:
            return self.on_invalid(exc, "text message")
        kind = message["type"]
        if kind == "ping":
            return [protocol.pong(message.get("t"))]
        if kind == "flush":  # end of stream: queued behind the audio already received (see take_flush)
            self._flushes += 1
            return []
        if kind == "settings":
            replies = self.controls.apply(message)
            self._tracker.max_faces = self.controls.max_faces
            return replies
        return []  # unknown types are ignored (protocol: forward compatibility)

    # -- reference ------------------------------------------------------------------------------------------------
    async def on_reference(self, media: Media) -> list[Outgoing]:
        """Reference image -> largest face -> identity. On any failure the previous identity stays."""
        try:
            image = await self._workers.video(decode_image, media.payload, self.settings.max_image_pixels, 1024)
        except CodecError as exc:
            self._count_invalid(exc)
            return [protocol.reference_reply(False, 0, f"That file is not a usable image ({exc}).")]
        self.guard.valid()
        faces: list[Face] = []
        try:
            faces = await self._stages.detect(image)
            identity = await self._stages.identity(image, choose_reference_face(faces))
        except ReferenceRejected as exc:
            return [protocol.reference_reply(False, len(faces), str(exc))]
        except Exception as exc:
            logger.exception("session %s: reference failed", self.id)
            return [protocol.reference_reply(False, 0, f"The reference could not be processed right now ({exc}).")]
        self._identity = identity
        logger.info("session %s: reference set (%d faces in image)", self.id, len(faces))
        return [protocol.reference_reply(True, len(faces))]

    # -- a frame's journey ----------------------------------------------------------------------------------------
    def count_video_drop(self, reason: str) -> None:
        """A frame dropped before it reached the pipeline (e.g. replaced while busy): received, then dropped."""
        self.metrics.frame_in()
        self.metrics.frame_dropped(reason)

    async def on_video(self, media: Media) -> list[Outgoing]:
        started = self._clock()
        self.metrics.frame_in()
        level = self._video.level
        # 1. the frame guard has passed it (transport.py: header, seq, the image's dimensions from its header)
        # 2. sync (audio is the master clock), then the degrade level: paused, fps gate
        decision = self._sync.on_video(media.capture_us)
        if decision.degrade_request:
            self._video.request_degrade("audio leads video")
        if not decision.keep:
            self.metrics.frame_dropped(decision.reason)
            return []
        if level.paused:
            self.metrics.frame_dropped(DROP_PAUSED)
            return []
        if not self._fps_gate.admit(media.capture_us, level.fps):
            self.metrics.frame_dropped(DROP_FPS_GATE)
            return []
        # 3. decode with the resolution cap, off the loop
        try:
            image, gray = await self._workers.video(self._decode, media.payload, level.max_side)
        except CodecError as exc:
            self.metrics.frame_dropped("invalid")
            return self.on_invalid(exc, "video frame")
        self.guard.valid()
        decoded = self._clock()
        # 4-6. detect / track, swap, enhance (fails closed)
        output, flags, timings = await self._process_faces(image, gray, media.capture_us / 1e6)
        encode_start = self._clock()
        payload = await self._workers.video(encode_jpeg, output, level.jpeg_quality)
        done = self._clock()
        timings["decode"] = (decoded - started) * 1000.0
        timings["encode"] = (done - encode_start) * 1000.0
        total_ms = (done - started) * 1000.0
        for stage, ms in timings.items():
            self.metrics.stage_ms("video", stage, ms)
        self.metrics.runtime_ratio("video", total_ms * level.fps / 1000.0)
        self.metrics.frame_out()
        replies = self._video_changed(self._video.step(total_ms))
        return [Media(Kind.VIDEO, media.seq, media.capture_us, payload, flags), *replies]

    def _decode(self, payload: bytes, max_side: int) -> tuple[np.ndarray, np.ndarray]:
        image = resize_max_side(decode_image(payload, self.settings.max_image_pixels), max_side)
        return image, cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)

    async def _video_stage(self, call: Awaitable[T]) -> T:
        """A video stage call, bounded: a frame whose stage is slower than the timeout fails closed."""
        return await asyncio.wait_for(call, self._video_timeout_s)

    async def _process_faces(
        self, image: np.ndarray, gray: np.ndarray, t_s: float
    ) -> tuple[np.ndarray, int, dict[str, float]]:
        """(frame out, flags, stage timings). Unswapped frames carry FLAG_PASSTHROUGH.

        A frame due for detection while a face is already tracked is swapped with the tracked faces and detected at
        the same time (one serial stage hop per frame); the detection corrects the track for the next frames.
        """
        timings: dict[str, float] = {}
        disguise = self._identity is not None and self.controls.swap
        t0 = self._clock()
        detect = self._tracker.needs_detection()
        self.metrics.detector_call(detect)
        beside = detect and disguise and bool(self._tracker.faces)
        detection: asyncio.Task[list[Face]] | None = None
        try:
            if beside:
                faces = await self._workers.video(self._tracker.propagate, gray, t_s)
                detection = asyncio.ensure_future(self._video_stage(self._stages.detect(image)))
            elif detect:
                found = await self._video_stage(self._stages.detect(image))
                faces = await self._workers.video(self._tracker.update, found, gray, t_s)
                timings["detect"] = (self._clock() - t0) * 1000.0
            else:
                faces = await self._workers.video(self._tracker.propagate, gray, t_s)
        except Exception as exc:
            self._faces_check.detection_failed(self._clock())
            return await self._frame_failed("detect", exc, image, disguise), FLAG_PASSTHROUGH, timings
        if detect and not beside:
            self._faces_check.detected(faces, self._clock())
        if disguise and self._fail_closed and not self._faces_check.trusted(faces, self._clock()):
            # the detector is failing or a face just vanished: hide what may be a face instead of revealing it
            await self._detected_beside(detection, gray, t0, timings)
            self._fail_closed_count["video"] += 1
            return await self._workers.video(mask_faces, image, []), FLAG_PASSTHROUGH, timings
        if self._identity is None or not disguise or not faces:
            return image, FLAG_PASSTHROUGH, timings
        t1 = self._clock()
        try:
            output = await self._swap_region(image, faces, self._identity)
        except Exception as exc:
            await self._detected_beside(detection, gray, t0, timings)
            return await self._frame_failed("swap", exc, image, disguise), FLAG_PASSTHROUGH, timings
        timings["swap"] = (self._clock() - t1) * 1000.0
        await self._detected_beside(detection, gray, t0, timings)
        if self.controls.enhance and self.info.enhancer_available:
            t2 = self._clock()
            output = await self._enhance(output, faces)
            timings["enhance"] = (self._clock() - t2) * 1000.0
        return output, FLAG_PASSTHROUGH if self.info.swap_passthrough else 0, timings

    async def _detected_beside(
        self, detection: asyncio.Task[list[Face]] | None, gray: np.ndarray, t0: float, timings: dict[str, float]
    ) -> None:
        """Take the detection that ran beside the swap into the track (a failed one only asks for another)."""
        if detection is None:
            return
        try:
            found = await detection
        except Exception as exc:
            self._faces_check.detection_failed(self._clock())
            self._stage_failed("detect", exc)
            return
        timings["detect"] = (self._clock() - t0) * 1000.0
        kept = await self._workers.video(self._tracker.correct, found, gray)
        self._faces_check.detected(kept, self._clock())

    async def _swap_region(self, image: np.ndarray, faces: list[Face], identity: SourceIdentity) -> np.ndarray:
        """Only the region around the faces travels to the swapper (both swappers work bbox-local); its size is the
        swapper's own ``context_margin`` (InSwapper needs its whole 128 crop inside)."""
        x1, y1, x2, y2 = face_region(faces, image.shape[1], image.shape[0], self.info.swap_margin)
        shifted = [translate(face, -x1, -y1) for face in faces]
        region = np.ascontiguousarray(image[y1:y2, x1:x2])
        swapped = await self._video_stage(self._stages.swap(region, shifted, identity))
        output = image.copy()
        output[y1:y2, x1:x2] = swapped
        return output

    async def _enhance(self, image: np.ndarray, faces: list[Face]) -> np.ndarray:
        """Only the aligned 512 crops travel to the enhancer; they are pasted back under a soft face-shaped mask.

        A failed enhancement keeps the swapped frame (the face is already disguised)."""
        aligned = [warp_face(image, face.kps, FFHQ_TEMPLATE_512, ENHANCE_CROP_PX) for face in faces]
        crops = np.stack([crop for crop, _ in aligned])
        try:
            restored = await self._video_stage(self._stages.restore(crops, self.controls.fidelity))
        except Exception as exc:
            self._stage_failed("enhance", exc)
            return image
        mask = face_mask(ENHANCE_CROP_PX)
        for (_, matrix), crop in zip(aligned, restored, strict=True):
            image = paste_back(image, crop, matrix, mask)
        return image

    async def _frame_failed(self, stage: str, exc: BaseException, image: np.ndarray, disguise: bool) -> np.ndarray:
        """A frame whose stage failed or timed out: its face regions masked while a disguise is on."""
        self._stage_failed(stage, exc)
        if not (disguise and self._fail_closed):
            return image
        self._fail_closed_count["video"] += 1
        return await self._workers.video(mask_faces, image, self._tracker.faces)

    def _video_changed(self, decision: VideoDecision) -> list[Outgoing]:
        if not decision.changed:
            return []
        self.metrics.degrade(decision.level.index, self._video.floor, len(self._video.ladder) - 1)
        logger.info("session %s: video level %d (%s)", self.id, decision.level.index, decision.reason)
        reason = decision.reason
        if decision.level.paused:
            reason = f"{reason}: video paused so that audio stays in time; it resumes when the server has room"
        return [protocol.directive(reason, video=decision.level.as_directive())]

    def _stage_failed(self, stage: str, exc: BaseException) -> None:
        """A failed or timed-out stage call: the session goes on (that payload fails closed)."""
        self._stage_failures[stage] = self._stage_failures.get(stage, 0) + 1
        logger.warning("session %s: %s failed (%s)", self.id, stage, str(exc) or type(exc).__name__)

    # -- a chunk's journey ----------------------------------------------------------------------------------------
    async def on_audio(self, media: Media, late: bool = False) -> list[Outgoing]:
        """PCM16 in -> ring buffer -> converted blocks out, each tagged with the seq of the chunk that completed it.

        ``late``: the transport has a backlog; blocks skip the voice stage and go out through the ingress's own
        pitch shift (flagged) so that latency returns to normal. No sample is ever dropped.
        """
        self.guard.valid()  # the frame guard has passed it: whole 10 ms PCM16 frames
        self._last_audio = (media.seq, media.capture_us)
        decode_start = self._clock()
        samples = pcm16_to_float(media.payload)
        self.metrics.stage_ms("audio", "decode", (self._clock() - decode_start) * 1000.0)
        self.metrics.audio_in()
        self.samples_in += len(samples)
        self._sync.on_audio(media.capture_us, len(samples) * US_PER_S // SAMPLE_RATE)
        self._voice.push(samples)
        replies: list[Outgoing] = []
        while (window := self._voice.next_window()) is not None:
            started = self._clock()
            converted, outcome, notes = await self._convert(window, late)
            replies += notes
            converted_at = self._clock()
            block = self._voice.complete(window, converted)
            payload = float_to_pcm16(block)
            done = self._clock()
            ratio = (done - started) * SAMPLE_RATE / window.block
            self.metrics.stage_ms("audio", "convert", (converted_at - started) * 1000.0)
            self.metrics.stage_ms("audio", "post", (done - converted_at) * 1000.0)
            self.metrics.runtime_ratio("audio", ratio)
            self.samples_out += len(block)
            flags = 0 if outcome in (CONVERTED, SILENT) else FLAG_PASSTHROUGH
            replies.append(Media(Kind.AUDIO, media.seq, media.capture_us, payload, flags))
            if outcome == SILENT:
                self.metrics.audio_out(accepted=True)
                change = self._audio.at_silence()
                if change is not None:  # a silent block is where a pending chunk change lands without a glitch
                    replies += self._apply_chunk(*change)
            elif outcome in (CONVERTED, TIMED_OUT):  # the policy sees the real ratio (grow, fail over to fallback)
                replies += self._audio_decision(ratio)
            else:
                self.metrics.audio_out(accepted=False)
                self._video.request_degrade("audio over budget")
            replies += self._video_changed(self._video.tick_paused(outcome in (CONVERTED, SILENT)))
        return replies

    def take_flush(self) -> bool:
        """Whether a ``flush`` arrived since the last call (the transport queues it after the pending audio)."""
        if self._flushes == 0:
            return False
        self._flushes -= 1
        return True

    async def on_flush(self) -> list[Outgoing]:
        """End of stream: complete the partial block now (the converter's input is padded, not the output), so
        that samples out == samples in; the block answers the latest audio chunk's seq and capture time."""
        cut = self._voice.flush_window()
        if cut is None:
            return []
        window, real = cut
        converted, outcome, notes = await self._convert(window, late=False)
        block = self._voice.complete(window, converted)[:real]
        self.samples_out += len(block)
        self.metrics.audio_out(accepted=outcome in (CONVERTED, SILENT))
        flags = 0 if outcome in (CONVERTED, SILENT) else FLAG_PASSTHROUGH
        seq, capture_us = self._last_audio
        return [*notes, Media(Kind.AUDIO, seq, capture_us, float_to_pcm16(block), flags)]

    async def _convert(self, window: VoiceWindow, late: bool) -> tuple[np.ndarray | None, str, list[Outgoing]]:
        """(converted window or None for silence/raw, outcome, messages)."""
        if window.gated:
            return None, SILENT, []
        if late:
            self.audio_late_blocks += 1
            return await self._block_failed(window), LATE, []
        budget_s = FAIL_ABOVE * window.block / SAMPLE_RATE  # later than this counts toward an audio failure anyway
        params = self.controls.voice_params
        try:
            converted = await asyncio.wait_for(
                self._stages.convert(window.samples, params, self.audio_failed), budget_s
            )
        except TimeoutError:
            self._stage_failed("voice", TimeoutError(f"no answer within {budget_s * 1000:.0f} ms"))
            return await self._block_failed(window), TIMED_OUT, []
        except Exception as exc:
            self._stage_failed("voice", exc)
            notes = self._switch_to_fallback(f"the converter failed: {type(exc).__name__}")
            return await self._block_failed(window), FAILED, notes
        if not usable_output(window, converted):
            self._stage_failed("voice", ValueError("converter output is not sane audio"))
            return await self._block_failed(window), FAILED, self._switch_to_fallback("the converter returned noise")
        return converted, CONVERTED, []

    async def _block_failed(self, window: VoiceWindow) -> np.ndarray | None:
        """A block the voice stage could not convert: the ingress's own pitch shift while a disguise is on."""
        if not (self._fail_closed and self.controls.voice_disguised):
            return None  # the raw block (reveal was chosen, or the voice is the speaker's own)
        self._fail_closed_count["audio"] += 1
        try:
            return await self._workers.fail_closed(self._shift.convert, window.samples, self.controls.voice_params)
        except Exception:  # never the raw voice: silence
            logger.exception("session %s: fail-closed pitch shift failed; sending silence", self.id)
            return np.zeros_like(window.samples)

    def _switch_to_fallback(self, why: str) -> list[Outgoing]:
        if self.audio_failed:
            return []
        self.audio_failed = True
        logger.warning("session %s: audio failure (%s); switching to %s", self.id, why, self.info.fallback_converter)
        message = f"voice conversion failed ({why}): switched to {self.info.fallback_converter}"
        return [protocol.error("audio_failure", message)]

    def _audio_decision(self, ratio: float) -> list[Outgoing]:
        decision = self._audio.step(ratio)
        self.metrics.audio_out(decision.accepted)
        if decision.video_yields:  # the machine is short: video yields to audio, never the other way round
            self._video.request_degrade("audio over budget")
        replies = self._switch_to_fallback(f"too slow: {decision.reason}") if decision.fallback else []
        return replies + self._apply_chunk(decision.new_chunk_ms, decision.reason)

    def _apply_chunk(self, chunk_ms: int | None, reason: str) -> list[Outgoing]:
        """A new audio block size: the stream re-blocks from the next block; the client is told."""
        if chunk_ms is None:
            return []
        self._voice.set_block_ms(chunk_ms)
        logger.info("session %s: audio chunk %d ms (%s)", self.id, chunk_ms, reason)
        return [protocol.directive(reason, audio_chunk_ms=chunk_ms)]

    # -- stats and the controller ---------------------------------------------------------------------------------
    def set_backlog(self, audio: int, video: int, outbound: int = 0) -> None:
        self.metrics.queue_backlog("audio", audio)
        self.metrics.queue_backlog("video", video)
        self.metrics.queue_backlog("outbound", outbound)

    def stats_message(self) -> dict[str, Any]:
        """The ``stats`` message the session sends: counts, timings, and fps since its previous one (a new window
        starts here)."""
        now = self._clock()
        message = self.stats_snapshot(now)
        self._fps_window.restart(now, message["frames"]["in"], message["frames"]["out"])
        return message

    def stats_snapshot(self, now: float | None = None) -> dict[str, Any]:
        """The same body for an observer (GET /v1/stats): fps since the session's last ``stats`` message, whose
        window it leaves alone, so polling never changes what the session reports."""
        audio = AudioState(
            self._audio.chunk_ms, self.samples_in, self.samples_out, self.audio_late_blocks, self.audio_failed
        )
        return build_stats_message(
            self.metrics.stats(),
            self._fps_window,
            self._clock() if now is None else now,
            audio=audio,
            video=self._video.level.as_directive(),
            fail_closed=self._fail_closed_count,
            stage_failures=self._stage_failures,
            controller_ok=self._controller_ok,
        )

    def summary(self) -> dict[str, Any]:
        """The compact summary pushed to the controller (plain data); also kept for GET /v1/stats."""
        self.last_summary = self.metrics.summary(self._clock())
        return self.last_summary.to_dict()

    def apply_controller(self, directive: dict[str, Any]) -> list[Outgoing]:
        """A controller directive: hold at least this degrade level (a floor); 0 releases it."""
        if not self._controller_ok:
            logger.info("session %s: controller reachable again", self.id)
        self._controller_ok = True
        level = directive.get("level")
        if not isinstance(level, int):
            return []
        level = min(max(level, 0), len(self._video.ladder) - 1)
        decision = self._video.force_level(level)
        self.metrics.degrade(self._video.level.index, self._video.floor, len(self._video.ladder) - 1)
        return self._video_changed(decision)

    def controller_unreachable(self, reason: str) -> None:
        """Keep applying the local rules; a floor set by a controller that is gone is released."""
        if self._controller_ok:
            logger.warning("session %s: controller unreachable (%s); applying local rules only", self.id, reason)
        self._controller_ok = False
        self._video.release_floor()
