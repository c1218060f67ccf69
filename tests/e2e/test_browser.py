"""The browser page against a protocol server, in a real headless chromium with a fake camera and microphone.

Waits are bounded (so a broken page fails instead of hanging) but nothing asserts on timing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.conftest import Media
from tests.e2e.echo_server import DIRECTIVE, HEADER, EchoOptions, EchoServer, make_token

pytestmark = pytest.mark.e2e

WAIT_MS = 30_000
PCM16_FULL_SCALE = 32768
MIN_SPEECH_RMS = 0.01  # -40 dBFS: the espeak-ng WAV is speech, a missing fake-audio file would give zeros


@pytest.fixture
def blank_page(chromium_browser: object) -> Iterator[object]:
    context = chromium_browser.new_context(viewport={"width": 1280, "height": 860})
    yield context.new_page()
    context.close()


@pytest.fixture
def page(blank_page: object, mirage_base_url: str, token_fragment: str) -> object:
    blank_page.goto(mirage_base_url + token_fragment)
    return blank_page


def _mirage(page: object) -> dict:
    return page.evaluate("() => window.mirage")


def _wait_js(page: object, condition: str) -> None:
    page.wait_for_function(f"() => {{ const m = window.mirage; return {condition}; }}", timeout=WAIT_MS)


def _wait_until(page: object, predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_MS / 1000
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        page.wait_for_timeout(100)


def _change(page: object, selector: str, value: str) -> None:
    page.fill(selector, value)
    page.dispatch_event(selector, "change")


def test_page_streams_echoes_and_controls(
    page: object, e2e_media: Media, echo_server: EchoServer | None, tmp_path: Path
) -> None:
    page.click("#start")
    _wait_js(page, "m.state === 'streaming' && m.hello !== null")
    hello = _mirage(page)["hello"]
    assert hello["protocol"] == 1
    assert _mirage(page)["audioChunkMs"] == hello["audio"]["chunk_ms"]

    # Media flows both ways; the fake microphone's speech reaches the wire.
    _wait_js(page, "m.framesReceived >= 10 && m.audioSamplesReceived > 0 && m.lastStats !== null")
    m = _mirage(page)
    assert m["framesSent"] >= m["framesReceived"] >= 10
    assert m["audioSamplesSent"] % 160 == 0 and m["audioSamplesSent"] >= m["audioSamplesReceived"] > 0
    assert m["sentAudioPeakRms"] > MIN_SPEECH_RMS
    assert m["latencyMs"] is not None and m["latencyMs"] >= 0
    # No reference yet: video comes back unswapped, flagged, and the page shows the badge.
    assert m["passthrough"] is True and page.is_visible("#badge")

    # The returned frame is drawn: the output canvas holds a real picture, not a blank.
    spread = page.evaluate(
        """() => { const c = document.getElementById('output');
                   const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                   let lo = 255, hi = 0;
                   for (let i = 0; i < d.length; i += 4) { lo = Math.min(lo, d[i]); hi = Math.max(hi, d[i]); }
                   return hi - lo; }"""
    )
    assert spread > 100

    # Reference upload: a real face photo is accepted; a truncated JPEG is refused and the page says so.
    page.set_input_files("#reference", str(e2e_media.reference_jpeg))
    _wait_js(page, "m.lastReference !== null")
    reference = _mirage(page)["lastReference"]
    assert reference["ok"] is True and reference["faces"] >= 1
    assert page.text_content("#referenceStatus").startswith("ok")
    _wait_js(page, "m.passthrough === false")  # frames now come back swapped (flag bit 0 clear)
    assert not page.is_visible("#badge")
    page.set_input_files("#reference", str(e2e_media.broken_jpeg))
    _wait_js(page, "m.lastReference.ok === false")
    assert page.text_content("#referenceStatus").startswith("error")

    # Settings: valid changes go out; an out-of-range value is answered by an error shown in the log.
    _change(page, "#maxFaces", "2")
    page.check("#enhance")
    _wait_js(page, "m.settingsSent.max_faces === 2 && m.settingsSent.enhance === true")
    errors_before = len(_mirage(page)["errors"])
    _change(page, "#maxFaces", "99")
    _wait_js(page, f"m.errors.length > {errors_before}")
    assert "error" in page.inner_text("#log")

    _wait_js(page, "m.rttMs !== null")
    shot = tmp_path / "mirage_page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    if echo_server is not None:
        _check_echo_server_view(page, echo_server)

    page.click("#stop")
    _wait_js(page, "m.state === 'stopped' && m.closeCode === 1000")


def _check_echo_server_view(page: object, server: EchoServer) -> None:
    """What only the echo server can tell: frame sizes, chunk lengths, settings received, directive applied."""
    record = server.record
    _wait_until(page, lambda: record.settings.get("max_faces") == 2, "the max_faces setting at the server")
    assert record.settings.get("enhance") is True
    assert record.frame_sizes[0] == (512, 512)
    assert record.audio_chunk_lengths[0] == 100 * 16  # hello's chunk_ms
    assert record.audio_peak > MIN_SPEECH_RMS * PCM16_FULL_SCALE
    seqs = record.video_seqs[:50]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # +1 per frame
    # Capture times are wall-clock µs: same machine, so arrival − capture is small and never negative by much.
    assert all(-50_000 < skew < 5_000_000 for skew in record.clock_skews_us)

    # After the directive the page sends what it was told.
    _wait_js(page, "m.directives.length > 0 && m.passthrough === false")
    video = DIRECTIVE["video"]
    want_size = (video["width"], video["height"])
    want_chunk = DIRECTIVE["audio_chunk_ms"] * 16
    _wait_until(page, lambda: record.frame_sizes[-1] == want_size, "frames at the directed size")
    _wait_until(page, lambda: record.audio_chunk_lengths[-1] == want_chunk, "audio chunks at the directed size")
    assert set(record.audio_chunk_lengths) <= {100 * 16, want_chunk}
    assert _mirage(page)["video"] == video


def test_page_reports_failed_authentication(blank_page: object, mirage_base_url: str) -> None:
    page = blank_page
    page.goto(mirage_base_url + "#token=not-a-valid-jwt")
    page.click("#start")
    # The echo server closes with 1008; a server that refuses the upgrade itself shows as 1006 in a browser.
    _wait_js(page, "m.closeCode === 1008 || m.closeCode === 1006")
    m = _mirage(page)
    assert m["hello"] is None and m["framesSent"] == 0
    assert "token" in page.text_content("#status")
    assert "token" not in page.url  # the page drops the token from the address bar


@pytest.fixture
def variant_server(request: pytest.FixtureRequest) -> Iterator[EchoServer]:
    """An echo server of its own with other behaviour (these page paths cannot be provoked on the real app)."""
    server = EchoServer(request.param).start()
    yield server
    server.stop()


@pytest.mark.parametrize("variant_server", [EchoOptions(reject_first=1, reject_code=1013)], indirect=True)
def test_page_reconnects_after_capacity_close(blank_page: object, variant_server: EchoServer) -> None:
    page = blank_page
    page.goto(variant_server.base_url)
    page.click("#start")
    _wait_js(page, "m.state === 'streaming' && m.hello.session_id === 'echo-2'")
    assert _mirage(page)["closeCode"] == 1013
    assert "at capacity" in page.inner_text("#log")
    _wait_js(page, "m.framesReceived > 0")


@pytest.mark.parametrize("variant_server", [EchoOptions(page_token=False)], indirect=True)
def test_page_asks_for_a_token_when_the_server_hands_none_out(blank_page: object, variant_server: EchoServer) -> None:
    page = blank_page
    page.goto(variant_server.base_url)
    assert not page.is_visible("#token")
    page.click("#start")
    _wait_js(page, "m.state === 'need-token'")
    assert page.is_visible("#token")
    page.fill("#token", make_token())
    page.click("#tokenConnect")
    _wait_js(page, "m.state === 'streaming' && m.framesReceived > 0")


@pytest.mark.parametrize("context_rate", [48000, 44100])
def test_worklet_resamples_to_16k_without_aliasing(page: object, context_rate: int) -> None:
    """The capture worklet in an offline context: a 1 kHz tone keeps its shape, a 10 kHz tone is filtered out."""
    script = """async ([rate, freq]) => {
        const ctx = new OfflineAudioContext(1, rate * 2, rate);
        await ctx.audioWorklet.addModule('./web/audio-worklet.js');
        const node = new AudioWorkletNode(ctx, 'mirage-capture', { processorOptions: { chunkMs: 100 } });
        const chunks = [];
        node.port.onmessage = (e) => chunks.push(e.data);
        const osc = ctx.createOscillator();
        osc.frequency.value = freq;
        const gain = ctx.createGain();
        gain.gain.value = 0.5;
        osc.connect(gain).connect(node).connect(ctx.destination);
        osc.start();
        await ctx.startRendering();
        await new Promise((r) => setTimeout(r, 300));
        return chunks.map((c) => ({ times: c.contextTime, samples: Array.from(new Int16Array(c.pcm)) }));
    }"""
    chunks = page.evaluate(script, [context_rate, 1000])
    assert len(chunks) >= 18  # 2 s at 16 kHz, 100 ms chunks, less the filter's reach
    assert all(len(c["samples"]) == 1600 for c in chunks)
    assert np.allclose(np.diff([c["times"] for c in chunks]), 0.1, atol=1e-9)
    signal = np.concatenate([np.asarray(c["samples"], np.float64) for c in chunks]) / PCM16_FULL_SCALE
    steady = signal[200:]  # skip the filter's warm-up from the primed zeros
    t = np.arange(200, 200 + len(steady)) / 16000
    basis = np.stack([np.sin(2 * np.pi * 1000 * t), np.cos(2 * np.pi * 1000 * t)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, steady, rcond=None)
    residual = steady - basis @ coef
    snr_db = 10 * np.log10(np.mean((basis @ coef) ** 2) / np.mean(residual**2))
    assert abs(np.hypot(*coef) - 0.5) < 0.01  # unity gain in the passband
    assert snr_db > 60  # no clicks at block or chunk boundaries, no distortion

    alias = page.evaluate(script, [context_rate, 10_000])
    leaked = np.concatenate([np.asarray(c["samples"], np.float64) for c in alias])[200:] / PCM16_FULL_SCALE
    assert np.sqrt(np.mean(leaked**2)) < 0.5 / np.sqrt(2) / 100  # 10 kHz > 8 kHz Nyquist: at least 40 dB down


def test_protocol_js_header_matches_python_struct(page: object) -> None:
    """protocol.js packs and unpacks the 16-byte little-endian header exactly like the server's struct layout."""
    result = page.evaluate(
        """async () => {
            const P = await import('./web/protocol.js');
            const payload = new Uint8Array([7, 8, 9]);
            const packed = P.packMessage(P.Kind.AUDIO, 0xFFFFFFFF, BigInt('1234567890123456'), payload, 1);
            const back = P.unpackMessage(packed);
            return {
                bytes: Array.from(new Uint8Array(packed)),
                back: { kind: back.kind, flags: back.flags, seq: back.seq, t: back.captureUs.toString(),
                        payload: Array.from(back.payload) },
                wrap: P.nextSeq(0xFFFFFFFF),
                after: [P.seqAtOrAfter(0, 0xFFFFFFFF), P.seqAtOrAfter(5, 10), P.seqAtOrAfter(10, 10)],
                close: [P.describeClose(1008), P.describeClose(4029), P.describeClose(4999)],
                tooShort: (() => {
                    try { P.unpackMessage(new ArrayBuffer(15)); return false; } catch { return true; }
                })(),
            };
        }"""
    )
    expected = HEADER.pack(2, 1, 0, 0xFFFFFFFF, 1234567890123456) + bytes([7, 8, 9])
    assert bytes(result["bytes"]) == expected
    assert result["back"] == {"kind": 2, "flags": 1, "seq": 0xFFFFFFFF, "t": "1234567890123456", "payload": [7, 8, 9]}
    assert result["wrap"] == 0
    assert result["after"] == [True, False, True]
    assert "authentication failed" in result["close"][0] and "rate limited" in result["close"][1]
    assert "4999" in result["close"][2]
    assert result["tooShort"] is True
