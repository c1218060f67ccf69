"""VoiceStream: exact identity through the ring buffer, sample conservation, gate, SOLA joins without clicks."""

from __future__ import annotations

import numpy as np
import pytest

from mirage_ray.voice.base import VoiceParams
from mirage_ray.voice.quality import block_boundaries, click_score
from mirage_ray.voice.stream import SOLA_SEARCH_MS, VoiceStream, VoiceStreamError, sola_offset

FRAME = 160
CLICK_PASS = 1.5  # natural audio scores ≈ 1; SOLA + crossfade must stay under this at block boundaries
CLICK_FAIL = 2.5  # naive concatenation of independently converted blocks scores above this


def _stream_random_chunks(stream: VoiceStream, x: np.ndarray, convert, rng: np.random.Generator) -> np.ndarray:
    out, pos = [], 0
    while pos < len(x):
        n = int(rng.integers(1, 40)) * FRAME
        stream.push(x[pos : pos + n])
        pos += n
        while (window := stream.next_window()) is not None:
            converted = None if window.gated else convert(window.samples)
            block = stream.complete(window, converted)
            assert len(block) == window.block
            out.append(block)
    return np.concatenate(out)


@pytest.mark.parametrize(
    ("block_ms", "crossfade_ms"),
    [
        (10, 10),
        (20, 10),
        (40, 40),
        (50, 20),
        (80, 40),
        (100, 40),
        (120, 40),
        (192, 40),
        (250, 50),
        (333, 40),
        (480, 80),
    ],
)
@pytest.mark.parametrize("crossfade", [True, False])
def test_identity_converter_reproduces_input_exactly_after_latency(voice, block_ms, crossfade_ms, crossfade):
    stream = VoiceStream(block_ms=block_ms, crossfade_ms=crossfade_ms, crossfade=crossfade, gate_db=None)
    out = _stream_random_chunks(stream, voice, lambda w: w.copy(), np.random.default_rng(block_ms))
    lat = stream.latency_samples
    assert lat == ((crossfade_ms + SOLA_SEARCH_MS) * 16 if crossfade else 0)
    assert len(out) + stream.pending_samples == len(voice)
    assert not np.any(out[:lat])
    np.testing.assert_array_equal(out[lat:], voice[: len(out) - lat])


def test_samples_are_conserved_over_a_long_stream_with_block_changes(voice):
    rng = np.random.default_rng(7)
    x = np.tile(voice, 6)  # ~33 s
    stream = VoiceStream(block_ms=192, gate_db=-50.0)
    emitted, pushed, pos = 0, 0, 0
    while pos < len(x):
        n = int(rng.integers(1, 60)) * FRAME
        chunk = x[pos : pos + n]
        stream.push(chunk)
        pushed += len(chunk)
        pos += n
        if rng.random() < 0.05:
            stream.set_block_ms(int(rng.choice([80, 120, 192, 288, 480])))
        while (window := stream.next_window()) is not None:
            assert stream.in_flight == 1
            emitted += len(stream.complete(window, None if window.gated else window.samples * 0.5))
        assert emitted + stream.pending_samples == pushed
    assert pushed == len(x)


def test_block_size_change_applies_at_the_next_window():
    stream = VoiceStream(block_ms=100, gate_db=None)
    stream.push(np.full(3200, 0.1, dtype=np.float32))
    first = stream.next_window()
    stream.set_block_ms(50)
    second = stream.next_window()
    assert (first.block, second.block) == (1600, 800)
    assert second.tail == 800 + stream.latency_samples
    assert len(second.samples) == stream.context + stream.latency_samples + 800
    assert len(stream.complete(first, None)) == 1600
    assert len(stream.complete(second, None)) == 800


def test_windows_are_left_context_plus_hold_back_plus_block(voice):
    stream = VoiceStream(block_ms=100, context_ms=200, crossfade_ms=40, search_ms=10, gate_db=None)
    stream.push(voice[:8000])
    windows = [stream.next_window() for _ in range(5)]
    assert stream.next_window() is None and stream.pending_samples == 0
    hist = 3200 + 640 + 160
    padded = np.concatenate((np.zeros(hist, dtype=np.float32), voice[:8000]))
    for k, w in enumerate(windows):
        assert w.index == k and len(w.samples) == hist + 1600
        np.testing.assert_array_equal(w.samples, padded[k * 1600 : k * 1600 + hist + 1600])


def test_gate_turns_silence_into_exact_zeros(voice, world):
    rng = np.random.default_rng(3)
    hiss = (rng.standard_normal(16000) * 10 ** (-70 / 20)).astype(np.float32)  # -70 dBFS room noise
    x = np.concatenate((voice[:16000], hiss, np.zeros(16000, np.float32)))
    stream = VoiceStream(block_ms=100, gate_db=-50.0)
    params = VoiceParams(pitch_semitones=-4.0, formant_shift=0.9)
    out = stream.process(x, lambda w: world.convert(w, params))
    assert np.sqrt(np.mean(out[4000:16000] ** 2)) > 0.01  # speech is converted, not gated
    quiet = out[16000 + stream.latency_samples + 1600 :]  # one block after the noise starts: fade-out is done
    assert len(quiet) > 28000
    assert not np.any(quiet)


def test_gated_window_flag_and_level():
    stream = VoiceStream(block_ms=20, crossfade_ms=10, gate_db=-50.0)
    stream.push(np.concatenate((np.full(320, 1e-4, np.float32), np.full(320, 0.1, np.float32))))
    quiet, loud = stream.next_window(), stream.next_window()
    assert quiet.gated and quiet.level_db == pytest.approx(-80.0, abs=0.01)
    assert not loud.gated and loud.level_db == pytest.approx(-20.0, abs=0.01)


def test_naive_concatenation_clicks_and_sola_crossfade_does_not(voice, world):
    params = VoiceParams(pitch_semitones=4.0, formant_shift=1.0)
    for block_ms in (80, 192):
        scores = {}
        for crossfade in (False, True):
            stream = VoiceStream(block_ms=block_ms, crossfade=crossfade, gate_db=-50.0)
            out = stream.process(voice, lambda w: world.convert(w, params))
            block = stream.block_samples
            scores[crossfade] = click_score(out, block_boundaries(len(out), block))
            control = click_score(out, block_boundaries(len(out), block, offset=block // 2))
            assert control < CLICK_PASS  # away from boundaries the measure reads ≈ 1 either way
        assert scores[False] > CLICK_FAIL, f"naive concatenation should click at {block_ms} ms: {scores}"
        assert scores[True] < CLICK_PASS, f"SOLA + crossfade should not click at {block_ms} ms: {scores}"


def test_failed_calls_pass_through_without_clicks(voice, world):
    params = VoiceParams(pitch_semitones=-4.0, formant_shift=0.9)
    stream = VoiceStream(block_ms=120, gate_db=None)
    stream.push(voice)
    out, k = [], 0
    while (window := stream.next_window()) is not None:
        converted = None if k % 3 == 2 else world.convert(window.samples, params)  # every third call "fails"
        out.append(stream.complete(window, converted))
        k += 1
    joined = np.concatenate(out)
    assert click_score(joined, block_boundaries(len(joined), 1920)) < CLICK_PASS


def test_insane_converter_output_is_passed_through(voice):
    stream = VoiceStream(block_ms=100, gate_db=None, crossfade=False)
    stream.push(voice[16000:19200])
    window = stream.next_window()
    broken = np.full(len(window.samples), np.nan, dtype=np.float32)
    np.testing.assert_array_equal(stream.complete(window, broken), voice[16000:17600])


def test_converted_tail_only_is_accepted(voice):
    stream = VoiceStream(block_ms=100, gate_db=None)
    stream.push(voice[:3200])
    window = stream.next_window()
    out_tail = stream.complete(window, window.samples[-window.tail :] * 0.5)
    other = VoiceStream(block_ms=100, gate_db=None)
    other.push(voice[:3200])
    w2 = other.next_window()
    np.testing.assert_array_equal(out_tail, other.complete(w2, w2.samples * 0.5))


def test_sola_finds_a_known_shift():
    rng = np.random.default_rng(0)
    signal = rng.standard_normal(2000).astype(np.float32)
    saved = signal[500:1140]
    assert sola_offset(signal[500 - 37 : 500 - 37 + 800], saved) == 37
    assert sola_offset(np.zeros(800, np.float32), saved) == 0
    assert sola_offset(signal[:800], np.zeros(640, np.float32)) == 0


def test_misuse_is_refused(voice):
    with pytest.raises(VoiceStreamError, match="multiple of 160"):
        VoiceStream().push(np.zeros(100, np.float32))
    with pytest.raises(VoiceStreamError, match="mono"):
        VoiceStream().push(np.zeros((2, 160), np.float32))
    with pytest.raises(VoiceStreamError, match="float"):
        VoiceStream().push(np.zeros(160, np.int16))
    with pytest.raises(VoiceStreamError, match="shorter than the crossfade"):
        VoiceStream(block_ms=20, crossfade_ms=40)
    with pytest.raises(VoiceStreamError, match="whole number of samples"):
        VoiceStream(block_ms=192.03)
    stream = VoiceStream(block_ms=50, gate_db=None)
    stream.push(voice[:1600])
    first, second = stream.next_window(), stream.next_window()
    with pytest.raises(VoiceStreamError, match="in order"):
        stream.complete(second, None)
    with pytest.raises(VoiceStreamError, match="samples"):
        stream.complete(first, np.zeros(5, np.float32))
    assert len(stream.complete(first, None)) == 800  # a refused call changed nothing


def test_sola_realigns_a_converter_whose_timing_jitters(voice):
    """Each call delays its output by a different 0–10 ms: SOLA must still rebuild the input seamlessly."""
    rng = np.random.default_rng(11)
    x = voice + (1e-3 * rng.standard_normal(len(voice))).astype(np.float32)  # dither: no exact-silence ties
    stream = VoiceStream(block_ms=100, gate_db=None)
    delays = iter([0, *rng.integers(0, stream.search + 1, size=200).tolist()])

    def jittery(window: np.ndarray) -> np.ndarray:
        d = next(delays)
        return np.concatenate((np.zeros(d, np.float32), window[: len(window) - d]))

    out = stream.process(x, jittery)
    lat = stream.latency_samples
    np.testing.assert_allclose(out[lat:], x[: len(out) - lat], atol=1e-6)
