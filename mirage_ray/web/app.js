// The Mirage page: one WebSocket session that streams camera + microphone and plays back what returns, in sync.
// The socket and its retries in connection.js; what is sent in sender.js; what comes back and its timing in
// returnpath.js (playout on the audio clock in playout.js); capture in media.js; settings controls in
// controls.js; sentences and the degraded state in health.js; the wire format in protocol.js.

import * as P from "./protocol.js";
import { AudioCapture, FrameGrabber, mediaConstraints } from "./media.js";
import { AudioPlayout } from "./playout.js";
import { ReturnPath } from "./returnpath.js";
import { Connection } from "./connection.js";
import { Sender } from "./sender.js";
import { ReferencePhoto } from "./reference.js";
import { enhancerAvailability, SettingsControls } from "./controls.js";
import { DevicePicker, replaceTrack } from "./devices.js";
import {
  degradedReasons, directiveSentence, errorSentence, fmtNumber, ReasonLog, settingsSentence,
} from "./health.js";
import { backendsHtml, collectElements, LogView, overlayRows, RateMeter, renderRows } from "./ui.js";

const PING_INTERVAL_MS = 2000;
const OVERLAY_REFRESH_MS = 250;
const LATENCY_SMOOTHING = 0.2;
const DEFAULT_VIDEO = Object.freeze({ width: 512, height: 512, fps: 20, jpeg_quality: 85 });
const DEFAULT_CHUNK_MS = 80; // the server's starting block with the embedded defaults, until its hello says

const BASE_URL = new URL("../", import.meta.url); // this file lives at <base>/web/app.js
const el = collectElements();
const log = new LogView(el.log);

/** Test hook and live counters: read by people (overlay) and by automated tests. */
const mirage = {
  state: "idle", hello: null, closeCode: null, closeReason: "", socketsOpened: 0,
  framesSent: 0, framesReceived: 0, framesSkipped: 0, lipSyncMs: 0,
  passthrough: null, passthroughSince: 0, referenceSet: false, referenceSetAt: null,
  audioChunksSent: 0, audioSamplesSent: 0, audioChunksReceived: 0, audioSamplesReceived: 0,
  audioUnderruns: 0, audioDropped: 0, audioTrimmedMs: 0, audioAheadMs: 0, sentAudioRms: 0, sentAudioPeakRms: 0,
  audioUnconverted: 0, audioUnconvertedTimes: [], audioUnderrunTimes: [], audioFallback: null,
  fpsSent: 0, fpsReceived: 0, latencyMs: null, rttMs: null,
  lastStats: null, lastReference: null, errors: [], directives: [], settingsSent: {}, settings: {}, controls: {},
  video: { ...DEFAULT_VIDEO }, lastVideoReason: "", audioChunkMs: DEFAULT_CHUNK_MS,
  audioSendChunkMs: P.sendChunkMs(DEFAULT_CHUNK_MS), degradedReasons: [], timing: null,
};
window.mirage = mirage;

let stream = null; // camera + microphone, kept across reconnects
let audioCtx = null;
let capture = null;
let player = null;
let grabber = null;
let userStopped = false;
let fragmentToken = null;
let pingTimer = null;
let audioOrigin = null; // the worklet sample position of this session's audio stream position 0
let userSettings = {}; // settings the user changed and the server applied: re-sent after a reconnect
const receivedRate = new RateMeter();
const health = new ReasonLog();
const reference = new ReferencePhoto(
  { input: el.reference, preview: el.referencePreview, status: el.referenceStatus },
  (bytes) => isLive() && (sender.reference(bytes), true),
  () => mirage.hello?.limits?.max_frame_bytes,
  (level, text) => log.add(level, text),
);
const back = new ReturnPath(drawFrame);
mirage.timing = back.timing();
const controls = new SettingsControls(el.settings, onSettingChanged);
const devices = new DevicePicker({ camera: el.cameraSelect, mic: el.micSelect, speaker: el.speakerSelect }, onDevice);
const connection = new Connection(BASE_URL, {
  resolveToken,
  onState: (state, detail) => {
    if (state === "need-token") el.tokenRow.hidden = false;
    setState(state, detail);
  },
  onMessage: (data) => (typeof data === "string" ? onText(data) : onBinary(data)),
  onClosed,
  onReplacedClosed: (event) => {
    mirage.closeCode = event.code;
    mirage.closeReason = P.describeClose(event.code);
  },
  onError: () => log.add("warn", "the connection reported an error"),
});
const sender = new Sender(connection, mirage, isLive, (text) => log.add("warn", text));

function setState(state, detail = "") {
  mirage.state = state;
  el.status.textContent = detail ? `${state} — ${detail}` : state;
  el.status.dataset.state = state;
  el.start.disabled = state !== "idle" && state !== "stopped";
  el.stop.disabled = state === "idle" || state === "stopped";
  el.reconnect.disabled = !["closed", "reconnecting", "need-token"].includes(state);
  el.tokenHelp.hidden = state === "streaming" || state === "degraded"; // how to get a token, while one is needed
}

function isLive() {
  return (mirage.state === "streaming" || mirage.state === "degraded") && connection.isOpen;
}

// --- start / stop ----------------------------------------------------------------------------------------

async function openInputs() {
  return navigator.mediaDevices.getUserMedia(mediaConstraints({
    cameraId: devices.cameraId, micId: devices.micId, echoCancellation: el.echoCancel.checked,
  }));
}

async function start() {
  userStopped = false;
  setState("starting", "asking for camera and microphone");
  try {
    if (!navigator.mediaDevices?.getUserMedia) throw new Error("the camera needs https or localhost");
    stream = await openInputs();
    el.camera.srcObject = stream;
    await el.camera.play().catch(() => {});
    grabber = new FrameGrabber(el.camera);
    // low-latency output (opt-in): the smallest buffer the device allows (Chromium: 128 frames, a sample is heard
    // ~12 ms after it is rendered, against ~42 ms with "interactive"): 30 ms of the 200 ms mouth-to-ear budget, but
    // ~3x the audio thread's wake-ups, which cost lip sync on a starved 2-CPU machine (docs/client.md)
    audioCtx = new AudioContext({ latencyHint: el.lowLatency.checked ? 0 : "interactive" });
    await audioCtx.resume();
    if (devices.speakerId) await audioCtx.setSinkId(devices.speakerId);
    player = new AudioPlayout(audioCtx, Number(el.jitter.value));
    player.setVolume(Number(el.volume.value));
    player.setMonitor(el.monitor.checked);
    back.attach(player);
    capture = await AudioCapture.create(audioCtx, stream, mirage.audioSendChunkMs, onAudioChunk);
  } catch (err) {
    log.add("error", `camera/microphone set-up failed: ${err.name}: ${err.message}`);
    stop();
    setState("stopped", `camera/microphone unavailable: ${err.message}`);
    return;
  }
  log.add("info", `audio at ${audioCtx.sampleRate} Hz, resampled to ${P.SAMPLE_RATE_HZ / 1000} kHz for the server`);
  refreshDevices();
  await connect();
}

function stop() {
  userStopped = true;
  connection.stop("user stopped");
  endSession();
  capture?.stop();
  grabber?.stop();
  back.attach(null);
  player?.close();
  audioCtx?.close();
  for (const track of stream?.getTracks() ?? []) track.stop();
  stream = audioCtx = capture = player = grabber = null;
  el.camera.srcObject = null;
  clearLiveView();
  setState("stopped");
}

/** After Stop: no last frame, figures, stats or level left on screen. */
function clearLiveView() {
  const ctx = el.output.getContext("2d");
  ctx.clearRect(0, 0, el.output.width, el.output.height);
  el.level.value = 0;
  el.badge.hidden = true;
  el.session.textContent = "";
  el.statsRaw.textContent = "";
  el.degraded.hidden = true;
  controls.setConnected(false);
  Object.assign(mirage, {
    lastStats: null, latencyMs: null, rttMs: null, passthrough: null, sentAudioRms: 0, audioAheadMs: 0,
    degradedReasons: [], audioUnconvertedTimes: [], audioUnderrunTimes: [],
  });
  back.clearFigures();
  health.reset();
  refreshOverlay();
}

// --- devices, monitor, bypass ----------------------------------------------------------------------------

function refreshDevices() {
  const settingsOf = (kind) => stream?.getTracks().find((t) => t.kind === kind)?.getSettings?.() ?? {};
  devices.refresh({ cameraId: settingsOf("video").deviceId, micId: settingsOf("audio").deviceId });
}

/** Another camera or microphone (or echo cancellation switched): reopen that input, keep the session. */
async function reopen(kind) {
  if (!stream) return;
  const what = kind === "video" ? "camera" : "microphone";
  try {
    const constraints = mediaConstraints({
      cameraId: devices.cameraId, micId: devices.micId, echoCancellation: el.echoCancel.checked,
    });
    const label = await replaceTrack(stream, kind, constraints[kind]);
    if (kind === "audio") capture?.setStream(stream);
    log.add("info", `now using ${label || `the chosen ${what}`}`);
  } catch (err) {
    log.add("error", `could not switch the ${what}: ${err.message}`);
  }
  refreshDevices();
}

async function onDevice(kind) {
  if (kind === "camera") return reopen("video");
  if (kind === "mic") return reopen("audio");
  if (!audioCtx) return undefined;
  try {
    await audioCtx.setSinkId(devices.speakerId);
    log.add("info", `playing on ${el.speakerSelect.selectedOptions[0]?.text ?? "the default output"}`);
  } catch (err) {
    log.add("error", `could not switch the speaker: ${err.message}`);
  }
  return undefined;
}

// --- connection ------------------------------------------------------------------------------------------

async function resolveToken() {
  if (fragmentToken) return { token: fragmentToken, source: "manual" };
  const typed = el.token.value.trim();
  if (typed) return { token: typed, source: "manual" };
  try {
    const token = await P.fetchPageToken(BASE_URL);
    if (token) return { token, source: "auto" };
  } catch (err) {
    log.add("warn", `page-token request failed: ${err.message}`);
  }
  return null;
}

/** A new socket (the current one is closed first, and waited for): one session at a time. */
async function connect() {
  endSession();
  await connection.connect();
  mirage.socketsOpened = connection.opened;
  el.tokenRow.hidden = connection.tokenSource === "auto" && mirage.state !== "need-token";
}

function onClosed(event) {
  endSession();
  controls.setConnected(false);
  mirage.closeCode = event.code;
  mirage.closeReason = P.describeClose(event.code);
  const words = `${event.code}: ${mirage.closeReason}${event.reason ? ` (${event.reason})` : ""}`;
  log.add(event.code === P.CloseCode.NORMAL ? "info" : "error", `connection closed — ${words}`);
  if (userStopped) return;
  const expired = event.code === P.CloseCode.TOKEN_EXPIRED;
  if (expired && connection.tokenSource === "manual") {
    fragmentToken = null; // a typed or linked token cannot be renewed here: a page token, or ask for a new one
    el.token.value = "";
    log.add("warn", "the token expired; the page tries a fresh page token, else asks for a new one");
  }
  if (!P.AUTO_RECONNECT_CODES.has(event.code) && !expired) {
    if (event.code === P.CloseCode.AUTH_FAILED) el.tokenRow.hidden = false;
    setState("closed", words);
    return;
  }
  const delay = connection.retryLater();
  setState("reconnecting", `${words}; retrying in ${(delay / 1000).toFixed(1)} s`);
}

/** The session's loops stop and what it queued is dropped (the camera, microphone and audio context stay). */
function endSession() {
  clearInterval(pingTimer);
  pingTimer = null;
  sender.stop();
  back.newSession();
  audioOrigin = null;
}

// --- control messages ------------------------------------------------------------------------------------

function onText(text) {
  const msg = P.parseControl(text);
  if (!msg) {
    log.add("warn", "the server sent a text message the page cannot read");
    return;
  }
  switch (msg.type) {
    case "hello": return onHello(msg);
    case "directive": return onDirective(msg);
    case "settings": return onSettingsReply(msg);
    case "stats": mirage.lastStats = msg; el.statsRaw.textContent = JSON.stringify(msg, null, 1); return undefined;
    case "pong": if (typeof msg.t === "number") mirage.rttMs = performance.now() - msg.t; return undefined;
    case "reference": return onReference(msg);
    case "error": return onError(msg);
    default: return undefined; // unknown types are ignored (protocol)
  }
}

function onHello(msg) {
  mirage.hello = msg;
  connection.resetBackoff();
  Object.assign(mirage, { video: { ...DEFAULT_VIDEO }, audioFallback: null, lastVideoReason: "" });
  applyMediaConfig(msg.video, msg.audio?.chunk_ms);
  el.backends.innerHTML = backendsHtml(msg.backends ?? {});
  el.session.textContent = msg.session_id ?? "";
  mirage.settings = { ...(msg.settings ?? {}) };
  controls.setVoices(msg.backends?.voices ?? msg.voices);
  controls.setEnhancer(enhancerAvailability(msg.backends));
  controls.show(mirage.settings);
  controls.setConnected(true);
  mirage.controls = controls.values();
  log.add("info", `connected: session ${msg.session_id}${describeSettings(mirage.settings)}`);
  setState("streaming");
  if (Object.keys(userSettings).length) connection.send(P.settingsMessage(userSettings));
  reference.sessionStarted();
  pingTimer = setInterval(() => isLive() && connection.send(P.pingMessage(performance.now())), PING_INTERVAL_MS);
  sender.start(grabber);
}

function describeSettings(s) {
  if (!s || s.voice === undefined) return "";
  return `; voice ${s.voice ?? "none"}, pitch ${fmtNumber(s.pitch_semitones, 1)}, formant ${fmtNumber(s.formant_shift, 2)}`;
}

function onDirective(msg) {
  mirage.directives.push(msg);
  if (msg.video) mirage.lastVideoReason = msg.reason ?? "";
  // the new block starts right after the audio returned so far (the directive follows the block it applies after)
  applyMediaConfig(msg.video, msg.audio_chunk_ms, back.returnedPosition);
  log.add(P.videoPaused(msg.video) ? "warn" : "info", directiveSentence(msg));
}

function onSettingsReply(msg) {
  for (const key of P.SETTINGS_FIELDS) if (key in msg) mirage.settings[key] = msg[key];
  for (const key of msg.applied ?? []) if (key in msg) userSettings[key] = msg[key];
  controls.show(mirage.settings);
  mirage.controls = controls.values();
  log.add("info", settingsSentence(msg));
}

function onError(msg) {
  mirage.errors.push(msg);
  if (msg.code === P.ErrorCode.BAD_SETTING) {
    controls.show(mirage.settings); // the refused value is not kept: the control shows the server's value again
    mirage.controls = controls.values();
  }
  if (msg.code === P.ErrorCode.AUDIO_FAILURE) mirage.audioFallback = msg.message ?? "a cheaper converter";
  log.add("error", errorSentence(msg));
}

/** `blockStart`: the session stream position where a new block size starts (chunks are lined up with it). */
function applyMediaConfig(videoConfig, blockMs, blockStart = null) {
  if (videoConfig) {
    for (const key of ["width", "height", "jpeg_quality"]) {
      if (typeof videoConfig[key] === "number" && videoConfig[key] > 0) mirage.video[key] = videoConfig[key];
    }
    if (typeof videoConfig.fps === "number" && videoConfig.fps >= 0) mirage.video.fps = videoConfig.fps;
    mirage.video.paused = P.videoPaused(videoConfig);
  }
  el.camera.style.aspectRatio = `${mirage.video.width} / ${mirage.video.height}`;
  if (typeof blockMs === "number" && blockMs > 0) {
    mirage.audioChunkMs = blockMs;
    const sendMs = P.sendChunkMs(blockMs);
    if (sendMs !== mirage.audioSendChunkMs) {
      mirage.audioSendChunkMs = sendMs;
      const aligned = blockStart !== null && audioOrigin !== null && sendMs === blockMs;
      capture?.setChunkMs(sendMs, aligned ? audioOrigin + blockStart : null);
    }
  }
}

function onReference(msg) {
  mirage.lastReference = msg;
  if (msg.ok && !mirage.referenceSet) mirage.referenceSetAt = performance.now();
  if (msg.ok) mirage.referenceSet = true;
  reference.answered(msg);
}

// --- binary messages -------------------------------------------------------------------------------------

function onBinary(buffer) {
  let msg;
  try {
    msg = P.unpackMessage(buffer);
  } catch (err) {
    log.add("warn", err.message);
    return;
  }
  if (msg.kind === P.Kind.VIDEO) onVideoReply(msg);
  else if (msg.kind === P.Kind.AUDIO) onAudioReply(msg);
}

function onVideoReply(msg) {
  sender.answered(msg.seq);
  mirage.framesReceived += 1;
  receivedRate.mark();
  const captureMs = P.usToPerfMs(msg.captureUs);
  const latency = performance.now() - captureMs;
  const previous = mirage.latencyMs ?? latency;
  mirage.latencyMs = previous + LATENCY_SMOOTHING * (latency - previous);
  const session = mirage.hello;
  createImageBitmap(new Blob([msg.payload], { type: "image/jpeg" })).then((bitmap) => {
    if (session !== mirage.hello || !isLive()) return bitmap.close(); // the session ended meanwhile
    back.frame({ seq: msg.seq, captureMs, arrivedMs: performance.now(), flags: msg.flags, bitmap });
    return undefined;
  }, (err) => log.add("warn", `returned frame ${msg.seq} could not be decoded: ${err.message}`));
}

function drawFrame(frame) {
  const canvas = el.output;
  if (canvas.width !== frame.bitmap.width) canvas.width = frame.bitmap.width;
  if (canvas.height !== frame.bitmap.height) canvas.height = frame.bitmap.height;
  canvas.getContext("2d").drawImage(frame.bitmap, 0, 0);
  const passthrough = Boolean(frame.flags & P.FLAG_PASSTHROUGH);
  if (passthrough && !mirage.passthrough) mirage.passthroughSince = performance.now();
  mirage.passthrough = passthrough;
  el.badge.hidden = !passthrough;
}

function onAudioReply(msg) {
  const samples = P.pcm16ToFloat32(msg.payload);
  mirage.audioChunksReceived += 1;
  mirage.audioSamplesReceived += samples.length;
  const now = performance.now();
  if (msg.flags & P.FLAG_PASSTHROUGH) {
    mirage.audioUnconverted += 1;
    mirage.audioUnconvertedTimes.push(now);
  }
  back.bypass = el.bypass.checked;
  const result = back.audio(samples, now);
  if (!result) return;
  if (result.status === "underrun") mirage.audioUnderrunTimes.push(now);
  Object.assign(mirage, {
    audioUnderruns: player.underruns, audioDropped: player.dropped,
    audioTrimmedMs: player.trimmedMs, audioPaddedMs: player.paddedMs,
  });
}

// --- sending ---------------------------------------------------------------------------------------------

function onAudioChunk({ pcm, perfMs, rms, firstSample }) {
  if (!capture) return; // a chunk the worklet posted just before Stop
  mirage.sentAudioRms = rms;
  mirage.sentAudioPeakRms = Math.max(mirage.sentAudioPeakRms, rms);
  el.level.value = Math.min(1, rms * 4);
  if (!isLive()) return;
  if (audioOrigin === null) audioOrigin = firstSample; // this session's stream position 0
  sender.audio(pcm, perfMs);
  back.sent(pcm, perfMs);
}

function onSettingChanged(key, value) {
  mirage.settingsSent[key] = value;
  mirage.controls = controls.values();
  if (isLive()) connection.send(P.settingsMessage({ [key]: value }));
}

// --- live figures ----------------------------------------------------------------------------------------

function publishTiming(now) {
  back.adapt(now);
  const t = back.timing();
  mirage.timing = t;
  mirage.lipSyncMs = t.lipSyncMs;
  el.m2e.textContent = t.mouthToEarP50 === null ? "–" : `${fmtNumber(t.mouthToEarP50)} ms`;
  el.avSkew.textContent = t.avSkewP50 === null ? "–" : `${fmtNumber(t.avSkewP50)} ms (p99 ${fmtNumber(t.avSkewP99)})`;
  el.videoDelay.textContent = t.videoShownP50 === null ? "–" : `${fmtNumber(t.videoShownP50)} ms`;
}

function publishHealth(now) {
  if (!isLive()) return;
  const cutoff = now - 10_000;
  mirage.audioUnconvertedTimes = mirage.audioUnconvertedTimes.filter((t) => t > cutoff);
  mirage.audioUnderrunTimes = mirage.audioUnderrunTimes.filter((t) => t > cutoff);
  const reasons = degradedReasons(mirage, now);
  mirage.degradedReasons = reasons.map((r) => r.text);
  for (const [level, text] of health.changes(reasons)) log.add(level, text);
  el.degraded.hidden = !reasons.length;
  el.degradedReasons.replaceChildren(...reasons.map((r) => Object.assign(document.createElement("li"), { textContent: r.text })));
  setState(reasons.length ? "degraded" : "streaming", reasons[0]?.text ?? "");
}

function refreshOverlay() {
  const now = performance.now();
  mirage.fpsSent = sender.rate.rate();
  mirage.fpsReceived = receivedRate.rate();
  mirage.audioAheadMs = player ? player.aheadMs : 0;
  publishTiming(now);
  publishHealth(now);
  renderRows(el.overlayRows, overlayRows(mirage));
}

function playoutLoop() {
  back.tick(performance.now());
  requestAnimationFrame(playoutLoop);
}

// --- wiring ----------------------------------------------------------------------------------------------

function onTokenConnect() {
  const typed = el.token.value.trim();
  const busy = isLive() || mirage.state === "connecting" || mirage.state === "open";
  if (busy && (!typed || typed === connection.token)) {
    log.add("info", "already connected with this token");
    return;
  }
  fragmentToken = null;
  connection.resetBackoff();
  if (stream) connect(); // closes the current session first: one session at a time
  else start();
}

function init() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get("token")) {
    fragmentToken = fragment.get("token");
    history.replaceState(null, "", location.pathname + location.search); // keep the token out of history
  }
  el.start.addEventListener("click", start);
  el.stop.addEventListener("click", stop);
  el.reconnect.addEventListener("click", () => {
    connection.resetBackoff();
    connect();
  });
  el.tokenConnect.addEventListener("click", onTokenConnect);
  el.echoCancel.addEventListener("change", () => reopen("audio"));
  el.monitor.addEventListener("change", () => player?.setMonitor(el.monitor.checked));
  el.bypass.addEventListener("change", () => log.add("info", el.bypass.checked
    ? "voice bypass on: you hear your own voice, with the same delay" : "voice bypass off: you hear the converted voice"));
  el.jitter.addEventListener("change", () => player?.setMarginMs(Number(el.jitter.value)));
  el.volume.addEventListener("input", () => player?.setVolume(Number(el.volume.value)));
  el.overlayToggle.addEventListener("click", () => {
    el.overlay.hidden = !el.overlay.hidden;
    el.overlayToggle.setAttribute("aria-pressed", String(!el.overlay.hidden));
  });
  controls.setVoices([]);
  controls.setConnected(false);
  setInterval(refreshOverlay, OVERLAY_REFRESH_MS);
  requestAnimationFrame(playoutLoop);
  setState("idle");
}

init();
