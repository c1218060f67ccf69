"""The browser page against a protocol server, in a real headless chromium with a fake camera and microphone.

Waits are bounded (so a broken page fails instead of hanging). The timing figures come from the page's own
measurements (``window.mirage.timing``): lip-sync skew at playout and mouth-to-ear latency; they are printed
(``pytest -s``) and bounded.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.conftest import Media
from tests.e2e.echo_server import DIRECTIVE, HEADER, PAUSED_DIRECTIVE, EchoOptions, EchoServer, make_token

pytestmark = pytest.mark.e2e

WAIT_MS = 30_000
SETTLE_MS = 120_000  # timing figures need a few seconds of speech and frames; the real app on 2 CPUs is slow
PCM16_FULL_SCALE = 32768
MIN_SPEECH_RMS = 0.01  # -40 dBFS: the espeak-ng WAV is speech, a missing fake-audio file would give zeros
MAX_AV_SKEW_P99_MS = 150  # the goal: picture within 150 ms of its sound at playout (p99)
# Mouth-to-ear (capture of a block's first sample -> that sample, converted, heard). The goal is 200 ms: the
# server's block (80 ms with the embedded defaults) + the wait for the completing chunk (0: one chunk per block, lined
# up with the blocks) + conversion and transport + the converter's hold-back (crossfade 10 + SOLA search 3 ms) + the
# playout queue (20 ms margin + arrival jitter) + the output latency (~41 ms in headless Chromium; 11.6 ms with the
# opt-in low-latency output) + the lip-sync hold when the picture is slower than the voice.
# Against the echo server (its directed block: 80 ms like the real server's, returned at once, no hold-back) what is
# left is the page's own share. On the shared 2-CPU machine (load 3-29) eleven runs gave mouth-to-ear p50 157-951 ms
# and queue wait p50 69-633 ms: the spread is the machine (Chromium's picture path slows to 400-750 ms and the voice
# is held for lip sync), not the page; the best run (157 / 69 ms) is the page on a quiet moment. The bounds are what
# held in every run (docs/client.md).
ECHO_MAX_MOUTH_TO_EAR_MS = 1000
ECHO_MAX_QUEUE_WAIT_MS = 700
# The real app on the same machine: conversion through Serve takes 70-150 ms p50 at load 15-27 and the server grows
# its block; these bounds only catch a runaway queue (docs/benchmarks.md has the budget component by component).
MAX_MOUTH_TO_EAR_MS = 1500
MAX_QUEUE_WAIT_MS = 400
MIN_SKEW_SAMPLES = 100
MIN_DELAY_SAMPLES = 30
VOICE_PRESETS = ["neutral", "deeper", "brighter", "much-deeper", "higher", "octave-down"]
OLD_SESSION_GONE_S = 30  # a replaced session must be gone from /v1/stats within this (a leak never goes)
# what each control holds, per setting, and how close it must be to the server's value (a range input's step)
CONTROLS = {
    "max_faces": ("#maxFaces", 0),
    "swap": ("#swap", None),
    "enhance": ("#enhance", None),
    "fidelity": ("#fidelity", 0.005),
    "pitch_semitones": ("#pitch", 0.05),
    "formant_shift": ("#formant", 0.005),
    "voice": ("#voice", None),
}
SCREENSHOT_DIR = os.environ.get("MIRAGE_SCREENSHOT_DIR")  # set to docs/screenshots to refresh the README's pictures
LIVE = "(m.state === 'streaming' || m.state === 'degraded')"


@pytest.fixture
def blank_page(chromium_browser: object) -> Iterator[object]:
    context = chromium_browser.new_context(viewport={"width": 1280, "height": 860})
    yield context.new_page()
    context.close()


@pytest.fixture
def page(blank_page: object, mirage_base_url: str, token_fragment: str) -> object:
    blank_page.goto(mirage_base_url + token_fragment)
    return blank_page


@pytest.fixture
def echo_page(blank_page: object) -> Iterator[object]:
    """The page from an echo server of its own: for tests of the page's own code, which need no real server."""
    server = EchoServer().start()
    blank_page.goto(server.base_url)
    yield blank_page
    server.stop()


def _mirage(page: object) -> dict:
    return page.evaluate("() => window.mirage")


def _wait_js(page: object, condition: str, timeout_ms: int = WAIT_MS) -> None:
    page.wait_for_function(f"() => {{ const m = window.mirage; return {condition}; }}", timeout=timeout_ms)


def _wait_until(page: object, predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_MS / 1000) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        page.wait_for_timeout(100)


def _change(page: object, selector: str, value: str) -> None:
    page.fill(selector, value)
    page.dispatch_event(selector, "change")


def _controls(page: object) -> dict[str, object]:
    """What the settings controls show, read from the DOM (what a person sees)."""
    return page.evaluate(
        """(ids) => Object.fromEntries(Object.entries(ids).map(([key, sel]) => {
            const input = document.querySelector(sel);
            const value = input.type === 'checkbox' ? input.checked
                : input.tagName === 'SELECT' ? input.value : Number(input.value);
            return [key, value];
        }))""",
        {key: sel for key, (sel, _) in CONTROLS.items()},
    )


def _assert_controls_show(page: object, settings: dict[str, object]) -> None:
    shown = _controls(page)
    for key, (_, tolerance) in CONTROLS.items():
        if key not in settings:
            continue
        want = settings[key]
        if tolerance is None or not isinstance(want, int | float) or isinstance(want, bool):
            assert shown[key] == (want if want is not None else ""), f"{key}: control {shown[key]!r}, server {want!r}"
        else:
            assert abs(shown[key] - want) <= tolerance, f"{key}: control {shown[key]!r}, server {want!r}"


def _server_sessions(base_url: str) -> int:
    with urllib.request.urlopen(base_url + "v1/stats", timeout=10) as res:
        return int(json.loads(res.read())["sessions"])


def _save_screenshot(page: object, name: str, tmp_path: Path) -> Path:
    folder = Path(SCREENSHOT_DIR) if SCREENSHOT_DIR else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    return path


def _percentile(values: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(values, np.float64), p))


def test_page_streams_in_sync_and_follows_the_server(
    page: object,
    e2e_media: Media,
    echo_server: EchoServer | None,
    mirage_base_url: str,
    new_token: Callable[[str], str],
    tmp_path: Path,
) -> None:
    assert page.is_checked("#echoCancel")  # echo cancellation is on by default, with the headphone hint
    assert "headphones" in page.inner_text("#devicesHint")
    page.click("#start")
    _wait_js(page, f"{LIVE} && m.hello !== null")
    m = _mirage(page)
    hello = m["hello"]
    assert hello["protocol"] == 1
    assert m["audioChunkMs"] == hello["audio"]["chunk_ms"]

    # The controls show the server's starting settings, offer its voices, and grey out a missing enhancer.
    assert set(hello["settings"]) >= set(CONTROLS)
    _assert_controls_show(page, hello["settings"])
    voices = page.eval_on_selector_all("#voice option", "els => els.map(e => e.value)")
    assert set(VOICE_PRESETS + list(hello["backends"].get("voices", []))) <= set(voices)
    enhancer = hello["backends"]["enhancer"]
    has_enhancer = enhancer.get("ready", True) and not enhancer.get("fallback", False) and enhancer["name"] != "none"
    assert page.is_disabled("#enhance") is not has_enhancer and page.is_disabled("#fidelity") is not has_enhancer
    # The echo cancellation the page asked for is what the microphone track runs with.
    assert (
        page.evaluate(
            "() => document.getElementById('camera').srcObject.getAudioTracks()[0].getSettings().echoCancellation"
        )
        is True
    )
    assert len(page.eval_on_selector_all("#micSelect option", "els => els")) > 1  # devices listed once allowed

    # Media flows both ways; the fake microphone's speech reaches the wire.
    _wait_js(page, "m.framesReceived >= 10 && m.audioSamplesReceived > 0 && m.lastStats !== null")
    m = _mirage(page)
    assert m["framesSent"] >= m["framesReceived"] >= 10
    assert m["audioSamplesSent"] % 160 == 0 and m["audioSamplesSent"] >= m["audioSamplesReceived"] > 0
    assert m["sentAudioPeakRms"] > MIN_SPEECH_RMS
    # No reference yet: video comes back unswapped, flagged, and the page shows the badge.
    _wait_js(page, "m.passthrough === true")
    assert page.is_visible("#badge")

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
    _wait_js(page, "m.rttMs !== null && m.timing.mouthToEarP50 !== null")
    page.wait_for_timeout(3000)  # a few swapped frames and figures on screen
    _save_screenshot(page, "page-streaming.png", tmp_path)
    page.set_input_files("#reference", str(e2e_media.broken_jpeg))
    _wait_js(page, "m.lastReference.ok === false")
    assert page.text_content("#referenceStatus").startswith("error")

    _check_settings_round_trips(page)
    hold_back = _check_timing(page, echo_server)
    if echo_server is not None:
        assert hold_back < 5  # the echo server returns the voice as sent: the measured hold-back is 0

    if echo_server is not None:
        _check_echo_server_view(page, echo_server)
    _check_one_session_on_connect(page, mirage_base_url, new_token)

    # No raw JSON in the log: every line is a sentence.
    assert "{" not in page.inner_text("#log")

    page.click("#stop")
    _wait_js(page, "m.state === 'stopped' && m.closeCode === 1000")
    _check_cleared_after_stop(page)


def _check_settings_round_trips(page: object) -> None:
    """Changes go out, the server's answers land in the controls; a refused value puts the server's value back."""
    before = len(_mirage(page)["settings"])
    assert before
    _change(page, "#pitch", "3")
    _wait_js(page, "m.settings.pitch_semitones === 3")
    _assert_controls_show(page, _mirage(page)["settings"])

    # A preset sets pitch and formant on the server; the sliders follow its answer.
    page.select_option("#voice", "brighter")
    _wait_js(page, "m.settings.voice === 'brighter'")
    settings = _mirage(page)["settings"]
    assert settings["pitch_semitones"] == 4 and abs(settings["formant_shift"] - 1.12) < 1e-6
    _assert_controls_show(page, settings)

    # The faces box is clamped to the server's range: 20 becomes 16, which the server applies.
    _change(page, "#maxFaces", "20")
    assert page.input_value("#maxFaces") == "16"
    _wait_js(page, "m.settingsSent.max_faces === 16 && m.settings.max_faces === 16")

    # A value the server refuses (a voice it does not know): error, and the control shows the server's value again.
    errors_before = len(_mirage(page)["errors"])
    page.evaluate("() => document.getElementById('voice').append(new Option('no-such-voice', 'no-such-voice'))")
    page.select_option("#voice", "no-such-voice")
    _wait_js(page, f"m.errors.length > {errors_before}")
    error = _mirage(page)["errors"][-1]
    assert error["code"] == "bad_setting"
    _wait_js(page, "document.getElementById('voice').value === 'brighter'")
    _assert_controls_show(page, _mirage(page)["settings"])
    assert "refused" in page.inner_text("#log")


def _check_timing(page: object, echo_server: EchoServer | None) -> float:
    """Lip sync at playout and mouth-to-ear latency, from the page's own measurements."""
    _wait_js(
        page,
        f"m.timing.avSkewMs.length >= {MIN_SKEW_SAMPLES} && m.timing.audioDelayMs.length >= {MIN_DELAY_SAMPLES}"
        " && m.timing.holdBackMs !== null",
        SETTLE_MS,
    )
    page.wait_for_timeout(5000)  # a few more seconds of steady state
    m = _mirage(page)
    t = m["timing"]
    skew = t["avSkewMs"]
    hold = t["holdBackMs"]
    mouth_to_ear = [d + hold for d in t["audioDelayMs"][-MIN_DELAY_SAMPLES:]]
    queue_wait = t["queueWaitMs"][-MIN_DELAY_SAMPLES:]
    figures = {
        "av_skew_p50_ms": _percentile(skew, 50),
        "av_skew_abs_p99_ms": _percentile(np.abs(skew).tolist(), 99),
        "mouth_to_ear_p50_ms": _percentile(mouth_to_ear, 50),
        "mouth_to_ear_p95_ms": _percentile(mouth_to_ear, 95),
        "queue_wait_p50_ms": _percentile(queue_wait, 50),
        "queue_wait_p5_ms": _percentile(queue_wait, 5),
        "margin_ms": float(page.input_value("#jitter")),
        "hold_back_ms": hold,
        "lip_sync_hold_ms": t["lipSyncMs"],
        "server_block_ms": m["audioChunkMs"],
        "sent_chunk_ms": m["audioSendChunkMs"],
        "picture_shown_p50_ms": t["videoShownP50"],
        "audio_queued_ms": m["audioAheadMs"],
        "trimmed_ms": m["audioTrimmedMs"],
        "underruns": m["audioUnderruns"],
        "skew_samples": len(skew),
        "frames_shown": t["framesShown"],
        "frames_late": t["framesLate"],
    }
    print("page timing:", json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in figures.items()}))
    assert figures["av_skew_abs_p99_ms"] <= MAX_AV_SKEW_P99_MS, figures
    echo = echo_server is not None
    assert figures["mouth_to_ear_p50_ms"] <= (ECHO_MAX_MOUTH_TO_EAR_MS if echo else MAX_MOUTH_TO_EAR_MS), figures
    assert figures["queue_wait_p50_ms"] <= (ECHO_MAX_QUEUE_WAIT_MS if echo else MAX_QUEUE_WAIT_MS), figures
    assert t["framesLate"] < t["framesShown"] / 4, figures  # sync is not bought by skipping the picture
    # The page shows the figures it measured.
    assert page.text_content("#m2e").endswith("ms") and page.text_content("#avSkew").endswith(")")
    return hold


def _check_one_session_on_connect(page: object, base_url: str, new_token: Callable[[str], str]) -> None:
    """Connect while streaming never leaves two sessions: same token = nothing to do; a new token replaces it."""
    opened = _mirage(page)["socketsOpened"]
    session = _mirage(page)["hello"]["session_id"]
    assert _server_sessions(base_url) == 1
    if not page.is_visible("#tokenConnect"):  # local page-token mode hides the field; a pasted token still works
        page.evaluate("() => { document.getElementById('tokenRow').hidden = false; }")
    page.click("#tokenConnect")
    page.wait_for_timeout(1000)
    assert _mirage(page)["socketsOpened"] == opened and _server_sessions(base_url) == 1

    page.fill("#token", new_token("e2e-second"))
    page.click("#tokenConnect")
    _wait_js(page, f"{LIVE} && m.hello.session_id !== '{session}'")
    assert _mirage(page)["socketsOpened"] == opened + 1
    # the old session ends when its close reaches the replica through Serve's proxy (0.04 s here on a quiet run); a
    # leaked session would stay until the process ends (it did, before transport._cancel_until_done)
    replaced_at = time.monotonic()
    try:
        _wait_until(page, lambda: _server_sessions(base_url) == 1, "one session on the server", OLD_SESSION_GONE_S)
    except AssertionError as exc:
        with urllib.request.urlopen(base_url + "v1/stats", timeout=10) as res:
            stats = json.loads(res.read())
        raise AssertionError(f"{exc}: sessions {stats['sessions']}, ids {sorted(stats['per_session'])}") from None
    print(f"the replaced session ended {time.monotonic() - replaced_at:.2f} s after the new session's hello")
    page.wait_for_timeout(1000)
    assert _server_sessions(base_url) == 1
    # The new session gets the settings the user changed, and the controls show the server's answer.
    _wait_js(page, "m.settings.voice === 'brighter' && m.settings.max_faces === 16")
    _assert_controls_show(page, _mirage(page)["settings"])


def _check_cleared_after_stop(page: object) -> None:
    blank = page.evaluate(
        """() => { const c = document.getElementById('output');
                   const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                   return d.every((v) => v === 0); }"""
    )
    assert blank
    m = _mirage(page)
    assert m["lastStats"] is None and m["timing"]["audioDelayMs"] == [] and m["latencyMs"] is None
    assert page.evaluate("() => document.getElementById('level').value") == 0
    assert page.text_content("#m2e") == "–" and page.text_content("#statsRaw") == ""
    assert not page.is_visible("#badge") and not page.is_visible("#degraded")


def _check_echo_server_view(page: object, server: EchoServer) -> None:
    """What only the echo server can tell: frame sizes, chunk lengths, settings received, directive applied."""
    record = server.record
    _wait_until(page, lambda: record.settings.get("max_faces") == 16, "the max_faces setting at the server")
    assert record.frame_sizes[0] == (512, 512)
    assert record.audio_chunk_lengths[0] == 100 * 16  # hello's chunk_ms, a whole number of 10 ms frames
    assert record.audio_peak > MIN_SPEECH_RMS * PCM16_FULL_SCALE
    seqs = record.video_seqs[:50]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # +1 per frame
    assert record.seq_problems == []  # every kind, every message: +1 (docs/protocol.md, the seq rule)
    # Capture times are wall-clock µs: same machine, so arrival − capture is small and never negative by much.
    assert all(-50_000 < skew < 5_000_000 for skew in record.clock_skews_us)

    # After the directive the page sends what it was told, and says it is degraded.
    _wait_js(page, "m.directives.length > 0")
    video = DIRECTIVE["video"]
    want_size = (video["width"], video["height"])
    want_chunk = DIRECTIVE["audio_chunk_ms"] * 16
    _wait_until(page, lambda: record.frame_sizes[-1] == want_size, "frames at the directed size")
    _wait_until(page, lambda: record.audio_chunk_lengths[-1] == want_chunk, "audio chunks at the directed size")
    # at most one shorter chunk between the two sizes: the one that lines chunk ends up with the new block's ends
    odd = [n for n in record.audio_chunk_lengths if n not in (100 * 16, want_chunk)]
    assert len(odd) <= 1 and all(n % 160 == 0 and n < want_chunk for n in odd), odd
    assert {k: _mirage(page)["video"][k] for k in video} == video
    _wait_js(page, "m.state === 'degraded'")
    assert "video reduced to 256×256" in page.inner_text("#degraded")


def test_page_shows_degraded_state(
    page: object, e2e_media: Media, echo_server: EchoServer | None, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A slowed swapper (real app) or the echo server's directive: the page says 'degraded' and why, in words."""
    page.click("#start")
    _wait_js(page, f"{LIVE} && m.hello !== null")
    page.set_input_files("#reference", str(e2e_media.reference_jpeg))
    _wait_js(page, "m.passthrough === false")
    slow = None
    if echo_server is None:
        from tests.integration.client import set_stage_delay

        app = request.getfixturevalue("serve_app")
        slow = lambda ms: set_stage_delay(app, "Swapper", ms)  # noqa: E731
        slow(250.0)
    try:
        _wait_js(page, "m.state === 'degraded' && m.degradedReasons.some((r) => r.startsWith('video reduced'))", 90_000)
        page.wait_for_timeout(1500)
        status = page.text_content("#status")
        assert status.startswith("degraded — ") and page.is_visible("#degraded")
        assert "full: 512×512" in page.inner_text("#degraded")
        assert "video level now / full" in page.inner_text("#overlay")
        _save_screenshot(page, "page-degraded.png", tmp_path)
    finally:
        if slow is not None:
            slow(0.0)
    page.click("#stop")
    _wait_js(page, "m.state === 'stopped'")


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


@pytest.mark.parametrize(
    "variant_server",
    [EchoOptions(reject_first=1, reject_code=1013), EchoOptions(reject_first=1, reject_code=4001)],
    indirect=True,
    ids=["capacity", "token-expired"],
)
def test_page_reconnects_with_a_fresh_token(blank_page: object, variant_server: EchoServer) -> None:
    page = blank_page
    page.goto(variant_server.base_url)
    page.click("#start")
    _wait_js(page, f"{LIVE} && m.hello.session_id === 'echo-2'")
    code = _mirage(page)["closeCode"]
    assert code in (1013, 4001)
    assert ("at capacity" if code == 1013 else "token expired") in page.inner_text("#log")
    assert variant_server.record.page_tokens == 2  # each attempt fetched its own page token
    _wait_js(page, "m.framesReceived > 0")


@pytest.mark.parametrize("variant_server", [EchoOptions(page_token=False)], indirect=True)
def test_page_asks_for_a_token_when_the_server_hands_none_out(blank_page: object, variant_server: EchoServer) -> None:
    page = blank_page
    page.goto(variant_server.base_url)
    assert not page.is_visible("#token")
    page.click("#start")
    _wait_js(page, "m.state === 'need-token'")
    assert page.is_visible("#token")
    assert "mirage-ray token --sub" in page.inner_text("#tokenHelp")  # says how to get one
    page.fill("#token", make_token())
    page.click("#tokenConnect")
    _wait_js(page, f"{LIVE} && m.framesReceived > 0")
    page.click("#tokenConnect")  # the same token again while streaming: still one session
    page.wait_for_timeout(500)
    assert variant_server.record.live_sessions == 1 and _mirage(page)["socketsOpened"] == 1


@pytest.mark.parametrize("variant_server", [EchoOptions(directive=PAUSED_DIRECTIVE)], indirect=True)
def test_page_shows_paused_video(blank_page: object, variant_server: EchoServer) -> None:
    """The server's last rung (video.fps 0, paused): the page stops sending frames and says why."""
    page = blank_page
    page.goto(variant_server.base_url)
    page.click("#start")
    _wait_js(page, "m.video.paused === true && m.degradedReasons.some((r) => r.startsWith('video paused'))")
    assert "video paused to keep the voice in time" in page.text_content("#status")  # the first reason shown
    page.wait_for_timeout(300)
    sent = _mirage(page)["framesSent"]
    page.wait_for_timeout(1500)
    m = _mirage(page)
    assert m["framesSent"] == sent and m["audioChunksReceived"] > 0  # no video sent; the voice goes on
    assert "paused" in page.inner_text("#log")


@pytest.mark.parametrize("variant_server", [EchoOptions()], indirect=True)
def test_page_switches_devices_and_toggles_within_the_session(blank_page: object, variant_server: EchoServer) -> None:
    """Another microphone, echo cancellation off, voice bypass: the session goes on, the voice keeps flowing."""
    page = blank_page
    page.goto(variant_server.base_url)
    page.click("#start")
    _wait_js(page, f"{LIVE} && m.audioChunksReceived > 3")
    session = _mirage(page)["hello"]["session_id"]
    mics = page.eval_on_selector_all("#micSelect option", "els => els.map(e => e.value)")
    assert len(mics) > 1
    track = "document.getElementById('camera').srcObject.getAudioTracks()[0]"
    page.select_option("#micSelect", mics[-1])
    _wait_js(page, f"{track}.getSettings().deviceId === '{mics[-1]}'")
    page.uncheck("#echoCancel")
    _wait_js(page, f"{track}.getSettings().echoCancellation === false")
    page.check("#bypass")
    chunks = _mirage(page)["audioChunksSent"]
    delays = len(_mirage(page)["timing"]["audioDelayMs"])
    _wait_js(page, f"m.audioChunksSent > {chunks + 5} && m.timing.audioDelayMs.length > {delays + 5}")
    m = _mirage(page)
    assert m["hello"]["session_id"] == session and m["socketsOpened"] == 1
    assert m["sentAudioPeakRms"] > MIN_SPEECH_RMS
    assert "voice bypass on" in page.inner_text("#log")
    assert "could not switch" not in page.inner_text("#log")


@pytest.mark.parametrize("context_rate", [48000, 44100])
def test_worklet_resamples_to_16k_without_aliasing(echo_page: object, context_rate: int) -> None:
    """The capture worklet in an offline context: a 1 kHz tone keeps its shape, a 10 kHz tone is filtered out."""
    page = echo_page
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


def test_protocol_js_header_matches_python_struct(echo_page: object) -> None:
    """protocol.js packs and unpacks the 16-byte little-endian header exactly like the server's struct layout."""
    page = echo_page
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
