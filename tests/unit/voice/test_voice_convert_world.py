"""WorldConverter on real speech: measured pitch shift, formant shift, streaming vs whole-file distance."""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from mirage_ray.voice.base import VoiceConverter, VoiceParams
from mirage_ray.voice.convert_world import WorldConverter, WorldConverterError, warp_envelope
from mirage_ray.voice.presets import preset_params
from mirage_ray.voice.quality import log_spectral_distance
from mirage_ray.voice.stream import VoiceStream

SR = 16_000
CENTS_TOLERANCE = 25.0
STREAM_LSD_BOUND_DB = 6.0  # streamed WORLD output vs converting the whole file at once (band energies, speech frames)
STREAM_LSD_MARGIN_DB = 2.0  # ...and clearly closer to it than the unconverted input is

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    import pyworld


def _harvest(x: np.ndarray) -> np.ndarray:
    f0, _ = pyworld.harvest(x.astype(np.float64), SR, f0_floor=50.0, f0_ceil=900.0, frame_period=10.0)
    return f0


def _stream(x: np.ndarray, converter: WorldConverter, params: VoiceParams, block_ms: int = 192):
    stream = VoiceStream(block_ms=block_ms, gate_db=None)
    out = stream.process(x, lambda w: converter.convert(w, params))
    lat = stream.latency_samples
    return out[lat:], x[: len(out) - lat]


def test_implements_the_protocol_and_keeps_length(world, voice):
    assert isinstance(world, VoiceConverter) and world.name == "world"
    for n in (1600, 4800, 10016):
        y = world.convert(voice[8000 : 8000 + n], VoiceParams(pitch_semitones=3.0))
        assert y.shape == (n,) and y.dtype == np.float32 and np.all(np.isfinite(y))
    assert not np.any(world.convert(np.zeros(3200, np.float32), VoiceParams(pitch_semitones=5.0)))


@pytest.mark.parametrize("semitones", [-4.0, 4.0, 7.0])
def test_streamed_pitch_shift_measured_by_harvest(world, voice, semitones):
    out, ref = _stream(voice, world, VoiceParams(pitch_semitones=semitones))
    f0_in, f0_out = _harvest(ref), _harvest(out)
    n = min(len(f0_in), len(f0_out))
    both = (f0_in[:n] > 0) & (f0_out[:n] > 0)
    assert both.sum() > 150  # plenty of voiced frames were compared
    cents = 1200.0 * np.log2(f0_out[:n][both] / f0_in[:n][both])
    assert np.median(cents) == pytest.approx(100.0 * semitones, abs=CENTS_TOLERANCE)


def _spectral_centroid(x: np.ndarray) -> float:
    frames = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), 512)[::160]
    power = np.abs(np.fft.rfft(frames * np.hanning(512), axis=1)) ** 2
    loud = power.sum(axis=1) > 0.01 * power.sum(axis=1).max()
    freqs = np.fft.rfftfreq(512, 1 / SR)
    return float(np.median((power[loud] @ freqs) / power[loud].sum(axis=1)))


def test_formant_shift_moves_the_envelope_not_the_pitch(world, voice):
    x = voice[:48000]
    plain = world.convert(x, VoiceParams(formant_shift=1.0))
    up = world.convert(x, VoiceParams(formant_shift=1.25))
    down = world.convert(x, VoiceParams(formant_shift=0.8))
    c_plain, c_up, c_down = _spectral_centroid(plain), _spectral_centroid(up), _spectral_centroid(down)
    assert c_up > 1.1 * c_plain and c_down < c_plain / 1.1, (c_down, c_plain, c_up)
    f0_plain, f0_up = _harvest(plain), _harvest(up)
    both = (f0_plain > 0) & (f0_up > 0)
    assert abs(np.median(1200.0 * np.log2(f0_up[both] / f0_plain[both]))) < CENTS_TOLERANCE


def test_warp_envelope_moves_a_peak_by_the_factor():
    env = np.full((2, 513), 1e-6)
    env[:, 100] = 1.0
    warped = warp_envelope(env, 1.5)
    assert np.argmax(warped[0]) == 150
    assert warp_envelope(env, 1.0) is env


@pytest.mark.parametrize("block_ms", [80, 192, 480])
def test_streamed_output_is_close_to_whole_file_conversion(world, voice, block_ms):
    params = preset_params("deeper")
    whole = world.convert(voice, params)
    out, ref = _stream(voice, world, params, block_ms)
    stream_lsd = log_spectral_distance(out, whole[: len(out)])
    input_lsd = log_spectral_distance(ref, whole[: len(ref)])
    assert stream_lsd < STREAM_LSD_BOUND_DB
    assert stream_lsd < input_lsd - STREAM_LSD_MARGIN_DB


def test_harvest_method_and_concurrent_calls_are_deterministic(voice):
    converter = WorldConverter(f0_method="harvest", frame_period_ms=5.0)
    windows = [voice[k * 4000 : k * 4000 + 9600] for k in range(6)]
    params = VoiceParams(pitch_semitones=2.0, formant_shift=1.1)
    sequential = [converter.convert(w, params) for w in windows]
    with ThreadPoolExecutor(max_workers=3) as pool:
        concurrent = list(pool.map(lambda w: converter.convert(w, params), windows))
    for a, b in zip(sequential, concurrent, strict=True):
        np.testing.assert_array_equal(a, b)


def test_bad_arguments_are_refused(world):
    with pytest.raises(WorldConverterError, match="f0_method"):
        WorldConverter(f0_method="crepe")
    with pytest.raises(WorldConverterError, match="formant_shift"):
        world.convert(np.zeros(1600, np.float32), VoiceParams(formant_shift=3.0))
    with pytest.raises(WorldConverterError, match="pitch_semitones"):
        world.convert(np.zeros(1600, np.float32), VoiceParams(pitch_semitones=30.0))
    with pytest.raises(WorldConverterError, match="mono"):
        world.convert(np.zeros((2, 1600), np.float32), VoiceParams())
