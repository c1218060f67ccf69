"""The per-session orchestrator: a frame's journey and a chunk's journey, in one place.

A `Session` owns every piece of a connection's streaming state (tracker, voice stream, sync clock, security
window, degrade level, metrics) and reaches the stateless model stages only through the injected
:class:`~mirage_ray.stages.Stages`. It sees typed values (:class:`~mirage_ray.protocol.Media`, dicts), never
sockets; :mod:`mirage_ray.transport` runs its I/O loops.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from mirage_ray import protocol
from mirage_ray.adapt import DROP_FPS_GATE, AudioPolicy, FpsGate, VideoDecision, VideoDegradePolicy
from mirage_ray.codec import CodecError, decode_image, encode_jpeg, float_to_pcm16, pcm16_to_float, resize_max_side
from mirage_ray.config import MirageSettings
from mirage_ray.metrics import MetricsSink, SessionMetrics, SessionSummary
from mirage_ray.protocol import FLAG_PASSTHROUGH, CloseCode, ErrorCode, Kind, Media, ProtocolError
from mirage_ray.security import InvalidFrameWindow, TokenBucket
from mirage_ray.stages import Stages
from mirage_ray.sync import AvSync
from mirage_ray.vision.align import FFHQ_TEMPLATE_512, crop_mask, paste_back, warp_face
from mirage_ray.vision.base import ReferenceRejected
from mirage_ray.vision.faces import Face, SourceIdentity, face_region, largest_faces, translate
from mirage_ray.vision.tracker import FaceTracker
from mirage_ray.voice.base import SAMPLE_RATE, VoiceParams
from mirage_ray.voice.presets import PRESETS, preset_params
from mirage_ray.voice.stream import VoiceStream

logger = logging.getLogger(__name__)

Outgoing = Media | dict[str, Any]

MIN_REFERENCE_FACE_PX = 48  # a reference face smaller than this cannot give a usable identity
EQUAL_FACES_RATIO = 0.9  # two reference faces this close in size are ambiguous
ENHANCE_CROP_PX = 512
SWAP_MARGIN = 0.2  # region sent to the swapper: face boxes grown by this fraction of their size on each side
US_PER_S = 1_000_000
PROTOCOL_LEVEL_ERRORS = frozenset({ErrorCode.BAD_HEADER, ErrorCode.BAD_KIND, ErrorCode.BAD_JSON})


class Session:
    """All state of one WebSocket session; every method returns the messages to send back."""

    def __init__(
        self,
        settings: MirageSettings,
        stages: Stages,
        backends: dict[str, Any],
        session_id: str | None = None,
        clock: Callable[[], float] = time.perf_counter,
        sink: MetricsSink | None = None,
    ) -> None:
        self.settings = settings
        self.id = session_id or uuid.uuid4().hex[:12]
        self._stages = stages
        self._backends = backends
        self._clock = clock
        self.close_code: int | None = None
        self.close_reason = ""
        # security
        self._invalid = InvalidFrameWindow(settings.invalid_window, settings.invalid_ratio_abandon)
        self._messages = TokenBucket(settings.max_messages_per_s, settings.message_burst)
        # video
        self._tracker = FaceTracker(detect_every=settings.detect_every, max_faces=settings.max_faces)
        self._identity: SourceIdentity | None = None
        self.swap_enabled = True
        self.enhance_enabled = settings.enhance
        self.fidelity = settings.codeformer_fidelity
        self._video = VideoDegradePolicy.from_settings(settings)
        self._fps_gate = FpsGate()
        self._sync = AvSync()
        # audio
        base = preset_params(settings.voice_preset)
        self._voice_name: str | None = settings.voice_preset
        self.voice_params = VoiceParams(
            pitch_semitones=settings.pitch_semitones or base.pitch_semitones,
            formant_shift=settings.formant_shift if settings.formant_shift != 1.0 else base.formant_shift,
            voice=None,
        )
        self._voice = VoiceStream(
            sample_rate=SAMPLE_RATE,
            block_ms=settings.chunk_ms,
            context_ms=settings.context_ms,
            crossfade_ms=settings.crossfade_ms,
            crossfade=settings.crossfade,
            gate_db=settings.gate_db,
        )
        self._audio = AudioPolicy.from_settings(settings)
        self.audio_failed = False
        self.metrics = SessionMetrics(self.id, clock(), sink)
        self.last_summary: SessionSummary | None = None
        self._last_stats = (clock(), 0, 0)  # (time, frames in, frames out) at the previous stats message
        self.samples_in = 0
        self.samples_out = 0
        self.audio_late_blocks = 0
        self._stage_failures: dict[str, int] = {}
        self._controller_ok = True

    # -- connection-level ------------------------------------------------------------------------------------------
    def hello(self) -> dict[str, Any]:
        level = self._video.level
        return protocol.hello(
            session_id=self.id,
            audio={"sample_rate": SAMPLE_RATE, "chunk_ms": self._audio.chunk_ms},
            video=level.as_directive(),
            limits={
                "max_frame_bytes": self.settings.max_frame_bytes,
                "max_messages_per_s": self.settings.max_messages_per_s,
            },
            backends=self._backends,
            settings=self.current_settings(),
        )

    def current_settings(self) -> dict[str, Any]:
        return {
            "max_faces": self._tracker.max_faces,
            "swap": self.swap_enabled,
            "enhance": self.enhance_enabled,
            "fidelity": self.fidelity,
            "pitch_semitones": self.voice_params.pitch_semitones,
            "formant_shift": self.voice_params.formant_shift,
            "voice": self._voice_name,
        }

    def admit(self, now: float) -> bool:
        """Message rate limit (token bucket); False means close with 4029."""
        return self._messages.allow(now)

    def on_invalid(self, error: ProtocolError | CodecError, kind: str = "message") -> list[Outgoing]:
        """Count an invalid message in the window; answer with an error; abandon above the ratio."""
        self._invalid.record(True)
        self.metrics.invalid_message()
        code = error.code if isinstance(error, ProtocolError) else ErrorCode.BAD_PAYLOAD
        if self._invalid.should_abandon:
            # the message that tipped the window decides: a broken framing/JSON stream is a protocol error (4002),
            # undecodable payloads are an abandoned session (4003)
            framing = isinstance(error, ProtocolError) and error.code in PROTOCOL_LEVEL_ERRORS
            self.close_code = CloseCode.PROTOCOL_ERROR if framing else CloseCode.ABANDONED
            self.close_reason = f"more than {self.settings.invalid_ratio_abandon:.0%} of recent messages were invalid"
        return [protocol.error(code, f"invalid {kind}: {error}")]

    def on_text(self, text: str) -> list[Outgoing]:
        try:
            message = protocol.parse_text(text)
        except ProtocolError as exc:
            return self.on_invalid(exc, "text message")
        kind = message["type"]
        if kind == "ping":
            return [protocol.pong(message.get("t"))]
        if kind == "settings":
            return self._apply_settings(message)
        return []  # unknown types are ignored (protocol: forward compatibility)

    def _apply_settings(self, message: dict[str, Any]) -> list[Outgoing]:
        accepted, refused = protocol.parse_settings(message)
        replies: list[Outgoing] = [protocol.error(ErrorCode.BAD_SETTING, reason) for reason in refused]
        voice = accepted.get("voice")
        voices = [*self._backends.get("voices", []), *PRESETS]
        if voice is not None and voice not in voices:
            replies.append(
                protocol.error(ErrorCode.BAD_SETTING, f"voice must be one of [{', '.join(voices)}], got {voice!r}")
            )
            accepted.pop("voice")
        elif voice in PRESETS:  # a preset sets pitch and formant unless the same message sets them too
            preset = PRESETS[voice]
            accepted.setdefault("pitch_semitones", preset.pitch_semitones)
            accepted.setdefault("formant_shift", preset.formant_shift)
        if "max_faces" in accepted:
            self._tracker.max_faces = accepted["max_faces"]
        self.swap_enabled = accepted.get("swap", self.swap_enabled)
        self.enhance_enabled = accepted.get("enhance", self.enhance_enabled)
        self.fidelity = accepted.get("fidelity", self.fidelity)
        model_voice = accepted.get("voice", self.voice_params.voice)
        self.voice_params = VoiceParams(
            pitch_semitones=accepted.get("pitch_semitones", self.voice_params.pitch_semitones),
            formant_shift=accepted.get("formant_shift", self.voice_params.formant_shift),
            voice=None if model_voice in PRESETS else model_voice,
        )
        self._voice_name = accepted.get("voice", self._voice_name)
        if accepted:
            replies.append({"type": "settings", "applied": sorted(accepted), **self.current_settings()})
        return replies

    # -- reference ------------------------------------------------------------------------------------------------
    async def on_reference(self, media: Media) -> list[Outgoing]:
        """Reference image -> largest face -> identity. On any failure the previous identity stays."""
        try:
            image = decode_image(media.payload, self.settings.max_image_pixels, max_side=1024)
        except CodecError as exc:
            self._invalid.record(True)
            return [protocol.reference_reply(False, 0, f"That file is not a usable image ({exc}).")]
        self._invalid.record(False)
        faces: list[Face] = []
        try:
            faces = await self._stages.detect(image)
            face = self._reference_face(faces)
            identity = await self._stages.identity(image, face)
        except ReferenceRejected as exc:
            return [protocol.reference_reply(False, len(faces), str(exc))]
        except Exception as exc:
            logger.exception("session %s: reference failed", self.id)
            return [protocol.reference_reply(False, 0, f"The reference could not be processed right now ({exc}).")]
        self._identity = identity
        logger.info("session %s: reference set (%d faces in image)", self.id, len(faces))
        return [protocol.reference_reply(True, len(faces))]

    @staticmethod
    def _reference_face(faces: list[Face]) -> Face:
        if not faces:
            raise ReferenceRejected("No face was found in that photo. Use a clear, front-facing photo of one person.")
        ranked = largest_faces(faces, 2)
        if ranked[0].size < MIN_REFERENCE_FACE_PX:
            raise ReferenceRejected(
                f"The face in that photo is too small ({ranked[0].size:.0f} px); use a photo where the face is at "
                f"least {MIN_REFERENCE_FACE_PX} px across."
            )
        if len(ranked) > 1 and ranked[1].area >= EQUAL_FACES_RATIO * ranked[0].area:
            raise ReferenceRejected(
                "That photo has several faces of about the same size; crop it to the one person you want to become."
            )
        return ranked[0]

    # -- a frame's journey ----------------------------------------------------------------------------------------
    def count_video_drop(self, reason: str) -> None:
        """A frame dropped before it reached the pipeline (e.g. replaced while busy): received, then dropped."""
        self.metrics.frame_in()
        self.metrics.frame_dropped(reason)

    async def on_video(self, media: Media) -> list[Outgoing]:
        started = self._clock()
        self.metrics.frame_in()
        level = self._video.level
        # 1. decode with a dimension cap (invalid frames are counted and answered, never a crash)
        try:
            image = decode_image(media.payload, self.settings.max_image_pixels)
        except CodecError as exc:
            self.metrics.frame_dropped("invalid")
            return self.on_invalid(exc, "video frame")
        self._invalid.record(False)
        decoded = self._clock()
        # 2. sync: audio is the master clock
        decision = self._sync.on_video(media.capture_us)
        replies: list[Outgoing] = []
        if decision.degrade_request:
            self._video.request_degrade("audio leads video")
        if not decision.keep:
            self.metrics.frame_dropped(decision.reason)
            return []
        # 3. degrade level: fps gate and resolution cap
        if not self._fps_gate.admit(media.capture_us, level.fps):
            self.metrics.frame_dropped(DROP_FPS_GATE)
            return []
        image = resize_max_side(image, level.max_side)
        # 4-6. detect / track, swap, enhance
        output, passthrough, timings = await self._process_faces(image)
        encode_start = self._clock()
        payload = encode_jpeg(output, level.jpeg_quality)
        done = self._clock()
        timings["decode"] = (decoded - started) * 1000.0
        timings["encode"] = (done - encode_start) * 1000.0
        total_ms = (done - started) * 1000.0
        for stage, ms in timings.items():
            self.metrics.stage_ms("video", stage, ms)
        self.metrics.runtime_ratio("video", total_ms * level.fps / 1000.0)
        self.metrics.frame_out()
        replies = self._video_changed(self._video.step(total_ms))
        flags = FLAG_PASSTHROUGH if passthrough else 0
        return [Media(Kind.VIDEO, media.seq, media.capture_us, payload, flags), *replies]

    async def _process_faces(self, image: np.ndarray) -> tuple[np.ndarray, bool, dict[str, float]]:
        timings: dict[str, float] = {}
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        t0 = self._clock()
        detect = self._tracker.needs_detection()
        self.metrics.detector_call(detect)
        if detect:
            try:
                faces = self._tracker.update(await self._stages.detect(image), gray)
            except Exception as exc:
                self._stage_failed("detect", exc)
                return image, True, timings
            timings["detect"] = (self._clock() - t0) * 1000.0
        else:
            faces = self._tracker.propagate(gray)
        if self._identity is None or not self.swap_enabled or not faces:
            return image, True, timings
        t1 = self._clock()
        try:
            output = await self._swap_region(image, faces, self._identity)
        except Exception as exc:
            self._stage_failed("swap", exc)
            return image, True, timings
        timings["swap"] = (self._clock() - t1) * 1000.0
        passthrough = bool(self._backends.get("swapper", {}).get("passthrough", False))
        if self.enhance_enabled and not self._backends.get("enhancer", {}).get("fallback", True):
            t2 = self._clock()
            output = await self._enhance(output, faces)
            timings["enhance"] = (self._clock() - t2) * 1000.0
        return output, passthrough, timings

    async def _swap_region(self, image: np.ndarray, faces: list[Face], identity: SourceIdentity) -> np.ndarray:
        """Only the region around the faces travels to the swapper (both swappers work bbox-local)."""
        x1, y1, x2, y2 = face_region(faces, image.shape[1], image.shape[0], SWAP_MARGIN)
        shifted = [translate(face, -x1, -y1) for face in faces]
        swapped = await self._stages.swap(np.ascontiguousarray(image[y1:y2, x1:x2]), shifted, identity)
        output = image.copy()
        output[y1:y2, x1:x2] = swapped
        return output

    async def _enhance(self, image: np.ndarray, faces: list[Face]) -> np.ndarray:
        """Only the aligned 512 crops travel to the enhancer; they are pasted back with a feathered mask."""
        aligned = [warp_face(image, face.kps, FFHQ_TEMPLATE_512, ENHANCE_CROP_PX) for face in faces]
        crops = np.stack([crop for crop, _ in aligned])
        try:
            restored = await self._stages.restore(crops, self.fidelity)
        except Exception as exc:
            self._stage_failed("enhance", exc)
            return image
        mask = crop_mask(ENHANCE_CROP_PX)
        for (_, matrix), crop in zip(aligned, restored, strict=True):
            image = paste_back(image, crop, matrix, mask)
        return image

    def _video_changed(self, decision: VideoDecision) -> list[Outgoing]:
        if not decision.changed:
            return []
        self.metrics.degrade(decision.level.index, self._video.floor, len(self._video.ladder) - 1)
        logger.info("session %s: video level %d (%s)", self.id, decision.level.index, decision.reason)
        return [protocol.directive(decision.reason, video=decision.level.as_directive())]

    def _stage_failed(self, stage: str, exc: Exception) -> None:
        """A failed stage call: this payload goes out in passthrough; the session goes on."""
        self._stage_failures[stage] = self._stage_failures.get(stage, 0) + 1
        logger.warning("session %s: %s failed (%s); answering in passthrough", self.id, stage, exc)

    # -- a chunk's journey ----------------------------------------------------------------------------------------
    async def on_audio(self, media: Media, late: bool = False) -> list[Outgoing]:
        """PCM16 in -> ring buffer -> converted blocks out, each tagged with the seq of the chunk that completed it.

        ``late``: the transport has a backlog; blocks are passed through unconverted (flagged) to catch up.
        """
        samples_per_frame = protocol.SAMPLES_PER_10MS
        if not media.payload or len(media.payload) % (samples_per_frame * protocol.PCM_SAMPLE_BYTES):
            error = ProtocolError(
                ErrorCode.BAD_PAYLOAD,
                f"audio payload must be a non-empty multiple of {samples_per_frame} PCM16 samples (10 ms),"
                f" got {len(media.payload)} bytes",
            )
            return self.on_invalid(error, "audio chunk")
        self._invalid.record(False)
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
            converted, flags = None, FLAG_PASSTHROUGH
            if window.gated:
                flags = 0
            elif late:
                self.audio_late_blocks += 1
            else:
                try:
                    converted = await self._stages.convert(window.samples, self.voice_params, self.audio_failed)
                    flags = 0
                except Exception as exc:
                    self._stage_failed("voice", exc)
            converted_at = self._clock()
            block = self._voice.complete(window, converted)
            payload = float_to_pcm16(block)
            done = self._clock()
            runtime_s = done - started
            ratio = runtime_s * SAMPLE_RATE / window.block
            self.metrics.stage_ms("audio", "convert", (converted_at - started) * 1000.0)
            self.metrics.stage_ms("audio", "post", (done - converted_at) * 1000.0)
            self.metrics.runtime_ratio("audio", ratio)
            self.samples_out += len(block)
            replies.append(Media(Kind.AUDIO, media.seq, media.capture_us, payload, flags))
            if converted is not None:
                replies += self._audio_decision(ratio, silent=False)
            else:
                self.metrics.audio_out(accepted=window.gated)
                change = self._audio.at_silence() if window.gated else None
                if change is not None:  # a silent block is where a pending chunk change lands without a glitch
                    replies += self._apply_chunk(*change)
        return replies

    def _audio_decision(self, ratio: float, silent: bool) -> list[Outgoing]:
        decision = self._audio.step(ratio, is_silence=silent)
        self.metrics.audio_out(decision.accepted)
        if not decision.accepted:  # the machine is short: video yields to audio, never the other way round
            self._video.request_degrade("audio over budget")
        replies: list[Outgoing] = []
        if decision.fallback and not self.audio_failed:
            self.audio_failed = True
            logger.warning(
                "session %s: audio failure (%s); switching to the fallback converter", self.id, decision.reason
            )
            fallback = self._backends.get("voice", {}).get("fallback_converter", "the fallback converter")
            replies.append(
                protocol.error(
                    "audio_failure", f"voice conversion too slow ({decision.reason}): switched to {fallback}"
                )
            )
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
        """The ``stats`` message: the metrics' counts and timings plus rates since the previous stats message."""
        body = self.metrics.stats()
        now = self._clock()
        last_t, last_in, last_out = self._last_stats
        elapsed = now - last_t
        frames_in, frames_out = body["frames"]["in"], body["frames"]["out"]
        body["fps_in"] = round((frames_in - last_in) / elapsed, 2) if elapsed > 0 else 0.0
        body["fps_out"] = round((frames_out - last_out) / elapsed, 2) if elapsed > 0 else 0.0
        self._last_stats = (now, frames_in, frames_out)
        body["runtime_ratio"] = body["ratio"]["audio"]  # the voice's runtime/real (the seed's ratio)
        body["audio"].update(
            chunk_ms=self._audio.chunk_ms,
            samples_in=self.samples_in,
            samples_out=self.samples_out,
            late_passthrough_blocks=self.audio_late_blocks,
            failed=self.audio_failed,
        )
        body["video"] = self._video.level.as_directive()
        body["stage_failures"] = dict(self._stage_failures)
        body["controller"] = "ok" if self._controller_ok else "unreachable (local rules)"
        return protocol.stats(body)

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
