"""security.FrameGuard: every per-message rule on client input (size, header, flags, seq, payload, invalid window)."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from mirage_ray import protocol
from mirage_ray.codec import encode_jpeg
from mirage_ray.config import MirageSettings
from mirage_ray.protocol import CloseCode, ErrorCode, Kind
from mirage_ray.security import FrameGuard, FrameRejected, SeqWindow
from tests import hostile

PCM_10MS = bytes(protocol.AUDIO_FRAME_BYTES)


def guard(**overrides: object) -> FrameGuard:
    return FrameGuard(MirageSettings(**overrides))


def rejected(frame_guard: FrameGuard, raw: bytes) -> FrameRejected:
    with pytest.raises(FrameRejected) as caught:
        frame_guard.media(raw)
    return caught.value


def test_seq_window_allows_up_to_the_tolerance_ahead_and_nothing_behind() -> None:
    window = SeqWindow(tolerance=3)
    assert window.check(Kind.AUDIO, 10) is None  # the first message of a kind sets the base
    assert window.check(Kind.AUDIO, 11) is None
    assert window.check(Kind.AUDIO, 15) is None  # expected 12: 3 ahead is the most allowed
    assert window.check(Kind.AUDIO, 20) == "seq 20 is 4 ahead of the expected 16 (tolerance 3)"
    assert window.check(Kind.AUDIO, 15) == "seq 15 is 1 behind the expected 16 (tolerance 3)"  # a replay
    assert window.check(Kind.AUDIO, 16) is None  # a refusal left the expectation where it was
    assert window.check(Kind.VIDEO, 0) is None  # every kind has its own


def test_seq_window_wraps_at_2_32_and_zero_tolerance_is_strict() -> None:
    window = SeqWindow(tolerance=0)
    top = protocol.UINT32_MOD - 1
    assert window.check(Kind.VIDEO, top) is None
    assert window.check(Kind.VIDEO, 0) is None  # +1 from 2**32 - 1 wraps to 0
    assert window.check(Kind.VIDEO, 2) is not None  # a skip of one
    assert window.check(Kind.VIDEO, top) is not None  # behind, across the wrap
    assert window.check(Kind.VIDEO, 1) is None


def test_the_size_cap() -> None:
    frame_guard = guard(max_frame_bytes=4096)
    assert frame_guard.too_big(4096) is None
    assert frame_guard.too_big(4097) == "message larger than max_frame_bytes=4096"


def test_header_rules() -> None:
    frame_guard = guard()
    assert rejected(frame_guard, b"\x01\x02").code == ErrorCode.BAD_HEADER
    short = rejected(frame_guard, b"\x07" * 20)
    assert (short.code, short.kind, short.what) == (ErrorCode.BAD_KIND, None, "message")
    reserved = struct.pack("<BBHIq", Kind.AUDIO, 0, 1, 0, 0) + PCM_10MS
    assert rejected(frame_guard, reserved).code == ErrorCode.BAD_HEADER
    flagged = rejected(frame_guard, protocol.pack(Kind.AUDIO, 0, 0, PCM_10MS, flags=1))
    assert (flagged.code, flagged.kind, flagged.what) == (ErrorCode.BAD_HEADER, Kind.AUDIO, "audio chunk")
    assert frame_guard.media(protocol.pack(Kind.AUDIO, 0, 0, PCM_10MS)).seq == 0  # header refusals set no base


@pytest.mark.parametrize("nbytes", [0, 1, 318, 321, protocol.AUDIO_FRAME_BYTES * 3 + 2])
def test_audio_is_whole_10ms_pcm16_frames(nbytes: int) -> None:
    error = rejected(guard(), protocol.pack(Kind.AUDIO, 0, 0, bytes(nbytes)))
    assert error.code == ErrorCode.BAD_PAYLOAD and "(10 ms)" in str(error)


def test_video_dimensions_come_from_the_header_before_any_decode() -> None:
    frame_guard = guard(max_image_pixels=64 * 64)
    small = encode_jpeg(np.zeros((48, 64, 3), np.uint8), 80)
    assert frame_guard.media(protocol.pack(Kind.VIDEO, 0, 0, small)).payload == small
    claims = rejected(frame_guard, protocol.pack(Kind.VIDEO, 1, 0, hostile.png_claiming(65, 64)))  # no pixels at all
    assert claims.code == ErrorCode.BAD_PAYLOAD and "exceeds the limit of 4096 pixels" in str(claims)
    assert rejected(frame_guard, protocol.pack(Kind.VIDEO, 2, 0, b"not an image")).what == "video frame"
    reference = frame_guard.media(protocol.pack(Kind.REFERENCE, 0, 0, b"not an image"))  # answered by its decode
    assert reference.kind == Kind.REFERENCE


def test_a_payload_refusal_still_uses_up_its_seq() -> None:
    frame_guard = guard(seq_tolerance=0)
    frame_guard.media(protocol.pack(Kind.AUDIO, 0, 0, PCM_10MS))
    assert rejected(frame_guard, protocol.pack(Kind.AUDIO, 1, 0, b"\x00")).code == ErrorCode.BAD_PAYLOAD
    assert frame_guard.media(protocol.pack(Kind.AUDIO, 2, 0, PCM_10MS)).seq == 2


def test_the_invalid_window_closes_4002_for_framing_and_4003_for_payloads() -> None:
    for error, code in [
        (FrameRejected(ErrorCode.BAD_SEQ, "seq"), CloseCode.PROTOCOL_ERROR),
        (FrameRejected(ErrorCode.BAD_HEADER, "header"), CloseCode.PROTOCOL_ERROR),
        (FrameRejected(ErrorCode.BAD_PAYLOAD, "payload"), CloseCode.ABANDONED),
    ]:
        frame_guard = guard(invalid_window=10, invalid_ratio_abandon=0.3)
        for _ in range(7):
            frame_guard.valid()
        assert [frame_guard.invalid(error) for _ in range(3)] == [None, None, None]  # 30%: not above
        assert frame_guard.invalid(error) == (code, "more than 30% of recent messages were invalid")
