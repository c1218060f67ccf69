// The Mirage page: one WebSocket session that streams camera + microphone and plays back what returns, in sync.
// Wire format in protocol.js; capture in media.js; playout on the audio clock in playout.js; settings controls in
// controls.js; sentences and the degraded state in health.js; overlay and log helpers in ui.js.

import * as P from "./protocol.js";
import { AudioCapture, FrameGrabber, mediaConstraints } from "./media.js";
import { AudioClock, AudioPlayout, RollingSamples, VideoPlayout } from "./playout.js";
import { HoldBackEstimator } from "./holdback.js";
import { enhancerAvailability, SettingsControls } from "./controls.js";
import { DevicePicker } from "./devices.js";
import { degradedReasons, directiveSentence, errorSentence, fmtNumber, settingsSentence } from "./health.js";
import { collectElements, escapeHtml, LogView, overlayRows, RateMeter, renderRows } from "./ui.js";

const PING_INTERVAL_MS = 2000;
const MAX_UNANSWERED_FRAMES = 2; // back-pressure: hold frames back while more than this many await a reply
const UNANSWERED_EXPIRY_MS = 2000; // a frame unanswered this long was dropped by the server
const MAX_WS_BUFFERED_BYTES = 1_000_000;
const PAUSED_POLL_MS = 250; // while video is paused without probe frames, look again this often
const RECONNECT_BASE_MS = 1000;
const RECONNECT_MAX_MS = 30_000;
const CLOSE_WAIT_MS = 2000; // a replaced socket gets this long to close before the next one opens
const OVERLAY_REFRESH_MS = 250;
const HOLD_BACK_EVERY_MS = 2000;
const LATENCY_SMOOTHING = 0.2;
const SENT_HISTORY_MS = 10_000; // sent audio kept for timing (stream position → capture time) and the bypass
const DEFAULT_VIDEO = Object.freeze({ width: 512, height: 512, fps: 20, jpeg_quality: 85 });
const DEFAULT_CHUNK_MS = 192;
const MS_PER_SAMPLE = 1000 / P.SAMPLE_RATE_HZ;

const BASE_URL = new URL("../", import.meta.url); // this file lives at <base>/web/app.js
const el = collectElements();
const log = new LogView(el.log);

function emptyTiming() {
  return {
    holdBackMs: null, audioDelayMs: [], avSkewMs: [], videoShownMs: [],
    mouthToEarP50: null, mouthToEarP95: null, avSkewP50: null, avSkewP99: null, videoShownP50: null,
  };
}

/** Test hook and live counters: read by people (overlay) and by automated tests. */
const mirage = {
  state: "idle", hello: null, closeCode: null, closeReason: "", socketsOpened: 0,
  framesSent: 0, framesReceived: 0, framesSkipped: 0, framesSkippedAtPlayout: 0,
  passthrough: null, passthroughSince: 0, referenceSet: false,
  audioChunksSent: 0, audioSamplesSent: 0, audioChunksReceived: 0, audioSamplesReceived: 0,
  audioUnderruns: 0, audioDropped: 0, audioTrimmedMs: 0, audioAheadMs: 0, sentAudioRms: 0, sentAudioPeakRms: 0,
  audioUnconverted: 0, audioUnconvertedTimes: [], audioUnderrunTimes: [], audioFallback: null,
  fpsSent: 0, fpsReceived: 0, latencyMs: null, rttMs: null,
  lastStats: null, lastReference: null, errors: [], directives: [], settingsSent: {}, settings: {}, controls: {},
  video: { ...DEFAULT_VIDEO }, lastVideoReason: "", audioChunkMs: DEFAULT_CHUNK_MS,
  audioSendChunkMs: P.sendChunkMs(DEFAULT_CHUNK_MS), degradedReasons: [], timing: emptyTiming(),
};
window.mirage = mirage;

let stream = null; // camera + microphone, kept across reconnects
let audioCtx = null;
let capture = null;
let player = null;
let grabber = null;
let ws = null;
let currentToken = null;
let connectGeneration = 0; // bumped by every connect/stop: an older connect() in flight gives up
let userStopped = false;
let tokenSource = null; // "auto" | "manual"
let fragmentToken = null;
let reconnectAttempt = 0;
let reconnectTimer = null;
let pingTimer = null;
let frameTimer = null;
let nextFrameAt = 0;
let grabbing = false;
let videoSeq = 0;
let audioSeq = 0;
let referenceSeq = 0;
let lastReferenceBytes = null; // the last reference the server accepted: re-sent after a reconnect
let pendingReferenceBytes = null; // chosen, not answered yet
let userSettings = {}; // settings the user changed and the server applied: re-sent after a reconnect
let sentLog = []; // {first, captureMs, pcm}: sent audio by stream position
let sentPosition = 0; // samples sent this session
let returnedPosition = 0; // samples returned this session
let lastReasonKinds = "";
let lastHoldBackAt = 0;
const unanswered = new Map(); // video seq → performance.now() when sent
const sentRate = new RateMeter();
const receivedRate = new RateMeter();
const clock = new AudioClock();
const audioDelay = new RollingSamples(1000); // capture → heard at the same stream position, per returned chunk
const holdBack = new HoldBackEstimator();
const video = new VideoPlayout(clock, drawFrame);
const controls = new SettingsControls(el.settings, onSettingChanged);
const devices = new DevicePicker({ camera: el.cameraSelect, mic: el.micSelect, speaker: el.speakerSelect }, onDevice);

function setState(state, detail = "") {
  mirage.state = state;
  el.status.textContent = detail ? `${state} — ${detail}` : state;
  el.status.dataset.state = state;
  el.start.disabled = state !== "idle" && state !== "stopped";
  el.stop.disabled = state === "idle" || state === "stopped";
  el.reconnect.disabled = !["closed", "reconnecting", "need-token"].includes(state);
}

function isLive() {
  return (mirage.state === "streaming" || mirage.state === "degraded") && ws?.readyState === WebSocket.OPEN;
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
    audioCtx = new AudioContext({ latencyHint: "interactive" });
    await audioCtx.resume();
    if (devices.speakerId) await audioCtx.setSinkId(devices.speakerId);
    player = new AudioPlayout(audioCtx, Number(el.jitter.value));
    player.setVolume(Number(el.volume.value));
    player.setMonitor(el.monitor.checked);
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
  connectGeneration += 1;
  clearTimeout(reconnectTimer);
  closeSocket("user stopped");
  endSessionLoops();
  capture?.stop();
  grabber?.stop();
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
    degradedReasons: [], timing: emptyTiming(), audioUnconvertedTimes: [], audioUnderrunTimes: [],
  });
  audioDelay.clear();
  video.skewMs.clear();
  video.shownLatencyMs.clear();
  lastReasonKinds = "";
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
  const constraints = mediaConstraints({
    cameraId: devices.cameraId, micId: devices.micId, echoCancellation: el.echoCancel.checked,
  });
  try {
    const fresh = await navigator.mediaDevices.getUserMedia({ [kind]: constraints[kind] });
    const keep = stream.getTracks().filter((t) => t.kind !== kind);
    for (const t of stream.getTracks()) if (t.kind === kind) t.stop();
    stream = new MediaStream([...keep, ...fresh.getTracks()]);
    if (kind === "video") el.camera.srcObject = stream;
    else capture?.setStream(stream);
    log.add("info", `now using ${fresh.getTracks()[0]?.label || `the chosen ${kind === "video" ? "camera" : "microphone"}`}`);
  } catch (err) {
    log.add("error", `could not switch the ${kind === "video" ? "camera" : "microphone"}: ${err.message}`);
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

/** Close the current socket (if any) and wait for it to be closed, so that two never overlap. */
function closeSocket(why) {
  const old = ws;
  ws = null;
  endSessionLoops();
  if (!old || old.readyState === WebSocket.CLOSED) return Promise.resolve();
  return new Promise((resolve) => {
    const done = (event) => {
      if (event?.code) {
        mirage.closeCode = event.code;
        mirage.closeReason = P.describeClose(event.code);
      }
      resolve();
    };
    old.addEventListener("close", done, { once: true });
    setTimeout(done, CLOSE_WAIT_MS);
    if (old.readyState <= WebSocket.OPEN) old.close(P.CloseCode.NORMAL, why);
  });
}

async function connect() {
  const generation = ++connectGeneration;
  clearTimeout(reconnectTimer);
  await closeSocket("reconnecting");
  if (generation !== connectGeneration || userStopped) return;
  setState("connecting");
  const resolved = await resolveToken();
  if (generation !== connectGeneration || userStopped) return;
  if (!resolved) {
    el.tokenRow.hidden = false;
    setState("need-token", "enter an access token (see the help under the field)");
    return;
  }
  tokenSource = resolved.source;
  el.tokenRow.hidden = tokenSource === "auto";
  let socket;
  try {
    socket = new WebSocket(P.wsUrl(BASE_URL), [P.SUBPROTOCOL, P.BEARER_PREFIX + resolved.token]);
  } catch (err) {
    setState("need-token", `cannot connect: ${err.message}`);
    return;
  }
  mirage.socketsOpened += 1;
  currentToken = resolved.token;
  socket.binaryType = "arraybuffer";
  socket.onmessage = (event) => (typeof event.data === "string" ? onText(event.data) : onBinary(event.data));
  socket.onclose = (event) => onClose(socket, event);
  socket.onerror = () => log.add("warn", "the connection reported an error");
  socket.onopen = () => socket === ws && setState("open", "waiting for the server's hello");
  ws = socket;
}

function onClose(socket, event) {
  if (socket !== ws) return; // a socket this page replaced or stopped
  ws = null;
  endSessionLoops();
  controls.setConnected(false);
  mirage.closeCode = event.code;
  mirage.closeReason = P.describeClose(event.code);
  const words = `${event.code}: ${mirage.closeReason}${event.reason ? ` (${event.reason})` : ""}`;
  log.add(event.code === P.CloseCode.NORMAL ? "info" : "error", `connection closed — ${words}`);
  if (userStopped) return;
  const expired = event.code === P.CloseCode.TOKEN_EXPIRED;
  if (expired && tokenSource === "manual") {
    fragmentToken = null; // a typed or linked token cannot be renewed here: a page token, or ask for a new one
    el.token.value = "";
    log.add("warn", "the token expired; the page tries a fresh page token, else asks for a new one");
  }
  if (!P.AUTO_RECONNECT_CODES.has(event.code) && !expired) {
    if (event.code === P.CloseCode.AUTH_FAILED) el.tokenRow.hidden = false;
    setState("closed", words);
    return;
  }
  const delay = Math.min(RECONNECT_MAX_MS, RECONNECT_BASE_MS * 2 ** reconnectAttempt) * (0.5 + Math.random() / 2);
  reconnectAttempt += 1;
  setState("reconnecting", `${words}; retrying in ${(delay / 1000).toFixed(1)} s`);
  reconnectTimer = setTimeout(connect, delay);
}

function endSessionLoops() {
  clearInterval(pingTimer);
  clearTimeout(frameTimer);
  pingTimer = frameTimer = null;
  unanswered.clear();
  player?.reset();
  clock.clear();
  video.clear();
  sentLog = [];
  sentPosition = returnedPosition = 0;
  holdBack.reset(true);
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
  reconnectAttempt = 0;
  videoSeq = audioSeq = referenceSeq = 0;
  Object.assign(mirage, { video: { ...DEFAULT_VIDEO }, audioFallback: null, lastVideoReason: "" });
  applyMediaConfig(msg.video, msg.audio?.chunk_ms);
  showBackends(msg.backends ?? {});
  el.session.textContent = msg.session_id ?? "";
  mirage.settings = { ...(msg.settings ?? {}) };
  controls.setVoices(msg.backends?.voices ?? msg.voices);
  controls.setEnhancer(enhancerAvailability(msg.backends));
  controls.show(mirage.settings);
  controls.setConnected(true);
  mirage.controls = controls.values();
  log.add("info", `connected: session ${msg.session_id}${describeSettings(mirage.settings)}`);
  setState("streaming");
  if (Object.keys(userSettings).length) ws.send(P.settingsMessage(userSettings));
  const reference = pendingReferenceBytes ?? lastReferenceBytes;
  if (reference) sendReference(reference, "sending the reference photo again for this session");
  pingTimer = setInterval(() => isLive() && ws.send(P.pingMessage(performance.now())), PING_INTERVAL_MS);
  nextFrameAt = performance.now();
  scheduleFrame();
}

function describeSettings(s) {
  if (!s || s.voice === undefined) return "";
  return `; voice ${s.voice ?? "none"}, pitch ${fmtNumber(s.pitch_semitones, 1)}, formant ${fmtNumber(s.formant_shift, 2)}`;
}

function showBackends(backends) {
  const rows = [];
  for (const [stage, info] of Object.entries(backends)) {
    if (stage === "voices") continue;
    if (info && typeof info === "object") {
      const state = info.ready === false ? "not ready" : info.fallback ? "embedded default" : "model";
      rows.push(`<li><b>${escapeHtml(stage)}</b>: ${escapeHtml(info.name ?? "?")} (${state})`
        + `${info.reason ? `<br><small>${escapeHtml(info.reason)}</small>` : ""}</li>`);
    } else {
      rows.push(`<li><b>${escapeHtml(stage)}</b>: ${escapeHtml(String(info))}</li>`);
    }
  }
  const voices = backends.voices;
  if (Array.isArray(voices) && voices.length) rows.push(`<li><b>voice models</b>: ${escapeHtml(voices.join(", "))}</li>`);
  el.backends.innerHTML = rows.join("");
}

function onDirective(msg) {
  mirage.directives.push(msg);
  if (msg.video) mirage.lastVideoReason = msg.reason ?? "";
  applyMediaConfig(msg.video, msg.audio_chunk_ms);
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

function applyMediaConfig(videoConfig, blockMs) {
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
      capture?.setChunkMs(sendMs);
    }
  }
}

function onReference(msg) {
  mirage.lastReference = msg;
  if (msg.ok && pendingReferenceBytes) lastReferenceBytes = pendingReferenceBytes;
  if (msg.ok) mirage.referenceSet = true;
  pendingReferenceBytes = null;
  const text = msg.ok
    ? `ok — ${msg.faces ?? "?"} face${msg.faces === 1 ? "" : "s"} found`
    : `error: ${msg.error ?? "reference rejected"}`;
  el.referenceStatus.textContent = text;
  el.referenceStatus.dataset.ok = String(Boolean(msg.ok));
  log.add(msg.ok ? "info" : "error", `reference photo: ${text}`);
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
  for (const seq of unanswered.keys()) if (P.seqAtOrAfter(msg.seq, seq)) unanswered.delete(seq);
  mirage.framesReceived += 1;
  receivedRate.mark();
  const captureMs = P.usToPerfMs(msg.captureUs);
  const latency = performance.now() - captureMs;
  const previous = mirage.latencyMs ?? latency;
  mirage.latencyMs = previous + LATENCY_SMOOTHING * (latency - previous);
  const socket = ws;
  createImageBitmap(new Blob([msg.payload], { type: "image/jpeg" })).then((bitmap) => {
    if (socket !== ws) return bitmap.close(); // the session ended meanwhile
    video.push({ seq: msg.seq, captureMs, arrivedMs: performance.now(), flags: msg.flags, bitmap });
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

/** Capture time (performance clock) of the sample sent at stream position `position`, or null. */
function captureAt(position) {
  for (let i = sentLog.length - 1; i >= 0; i -= 1) {
    const chunk = sentLog[i];
    if (chunk.first <= position && position < chunk.first + chunk.pcm.length) {
      return chunk.captureMs + (position - chunk.first) * MS_PER_SAMPLE;
    }
  }
  return null;
}

/** The voice as sent, `count` samples from stream position `from` (silence where none is kept). */
function ownVoice(from, count) {
  const out = new Float32Array(count);
  for (const chunk of sentLog) {
    const lo = Math.max(from, chunk.first);
    const hi = Math.min(from + count, chunk.first + chunk.pcm.length);
    for (let p = lo; p < hi; p += 1) out[p - from] = chunk.pcm[p - chunk.first] / 32768;
  }
  return out;
}

function onAudioReply(msg) {
  const samples = P.pcm16ToFloat32(msg.payload);
  const position = returnedPosition;
  returnedPosition += samples.length;
  mirage.audioChunksReceived += 1;
  mirage.audioSamplesReceived += samples.length;
  holdBack.addReturned(samples);
  const now = performance.now();
  if (msg.flags & P.FLAG_PASSTHROUGH) {
    mirage.audioUnconverted += 1;
    mirage.audioUnconvertedTimes.push(now);
  }
  if (!player) return;
  const captureMs = captureAt(position);
  const holdBackSamples = Math.round((holdBack.holdBackMs ?? 0) / MS_PER_SAMPLE);
  const heard = el.bypass.checked ? ownVoice(position - holdBackSamples, samples.length) : samples;
  const result = player.play(heard);
  if (result.status === "underrun") mirage.audioUnderrunTimes.push(now);
  mirage.audioUnderruns = player.underruns;
  mirage.audioDropped = player.dropped;
  mirage.audioTrimmedMs = player.trimmedMs;
  if (result.status === "dropped" || captureMs === null) return;
  for (const piece of result.pieces) clock.add(captureMs + piece.offsetMs, piece.startMs, piece.durationMs);
  const first = result.pieces[0];
  if (first) audioDelay.push(first.startMs - (captureMs + first.offsetMs));
}

// --- sending ---------------------------------------------------------------------------------------------

function scheduleFrame() {
  const fps = mirage.video.fps;
  const now = performance.now();
  if (!(fps > 0)) { // paused without probe frames: send nothing, look again soon
    frameTimer = setTimeout(sendFrame, PAUSED_POLL_MS);
    nextFrameAt = now;
    return;
  }
  nextFrameAt = Math.max(nextFrameAt + 1000 / fps, now);
  frameTimer = setTimeout(sendFrame, nextFrameAt - now);
}

async function sendFrame() {
  if (!isLive()) return;
  scheduleFrame();
  if (!(mirage.video.fps > 0)) return;
  const now = performance.now();
  for (const [seq, sentAt] of unanswered) if (now - sentAt > UNANSWERED_EXPIRY_MS) unanswered.delete(seq);
  if (grabbing || !grabber?.ready) return;
  if (unanswered.size > MAX_UNANSWERED_FRAMES || ws.bufferedAmount > MAX_WS_BUFFERED_BYTES) {
    mirage.framesSkipped += 1;
    return;
  }
  grabbing = true;
  try {
    const { width, height, jpeg_quality: quality } = mirage.video;
    const { bytes, perfMs } = await grabber.grab(width, height, quality / 100);
    if (!isLive()) return;
    ws.send(P.packMessage(P.Kind.VIDEO, videoSeq, P.perfMsToUs(perfMs), bytes));
    unanswered.set(videoSeq, performance.now());
    videoSeq = P.nextSeq(videoSeq);
    mirage.framesSent += 1;
    sentRate.mark();
  } catch (err) {
    log.add("warn", `frame capture failed: ${err.message}`);
  } finally {
    grabbing = false;
  }
}

function onAudioChunk({ pcm, perfMs, rms }) {
  mirage.sentAudioRms = rms;
  mirage.sentAudioPeakRms = Math.max(mirage.sentAudioPeakRms, rms);
  el.level.value = Math.min(1, rms * 4);
  if (!isLive()) return;
  ws.send(P.packMessage(P.Kind.AUDIO, audioSeq, P.perfMsToUs(perfMs), pcm));
  audioSeq = P.nextSeq(audioSeq);
  sentLog.push({ first: sentPosition, captureMs: perfMs, pcm });
  while (sentLog.length > 1 && perfMs - sentLog[0].captureMs > SENT_HISTORY_MS) sentLog.shift();
  sentPosition += pcm.length;
  holdBack.addSent(pcm);
  mirage.audioChunksSent += 1;
  mirage.audioSamplesSent += pcm.length;
}

function sendReference(bytes, why) {
  pendingReferenceBytes = bytes; // until the server answers; sent with the next session if this one ends first
  if (!isLive()) {
    el.referenceStatus.textContent = "will be sent when connected";
    return;
  }
  const limit = mirage.hello?.limits?.max_frame_bytes;
  if (limit && bytes.byteLength + P.HEADER_BYTES > limit) {
    el.referenceStatus.textContent = `error: file is ${bytes.byteLength} bytes, the server accepts ${limit}`;
    pendingReferenceBytes = null;
    return;
  }
  ws.send(P.packMessage(P.Kind.REFERENCE, referenceSeq, P.nowUs(), bytes));
  referenceSeq = P.nextSeq(referenceSeq);
  el.referenceStatus.textContent = "uploaded, waiting for the server…";
  el.referenceStatus.dataset.ok = "";
  log.add("info", why);
}

async function onReferenceChosen() {
  const file = el.reference.files?.[0];
  if (!file) return;
  const bytes = new Uint8Array(await file.arrayBuffer());
  const mime = P.imageMimeOf(bytes);
  if (!mime) {
    el.referenceStatus.textContent = "error: choose a JPEG or PNG image";
    return;
  }
  URL.revokeObjectURL(el.referencePreview.src);
  el.referencePreview.src = URL.createObjectURL(new Blob([bytes], { type: mime }));
  sendReference(bytes, `reference photo ${file.name} (${Math.round(bytes.byteLength / 1024)} kB) sent`);
}

function onSettingChanged(key, value) {
  mirage.settingsSent[key] = value;
  mirage.controls = controls.values();
  if (isLive()) ws.send(P.settingsMessage({ [key]: value }));
}

// --- live figures ----------------------------------------------------------------------------------------

function publishTiming(now) {
  if (now - lastHoldBackAt > HOLD_BACK_EVERY_MS) {
    lastHoldBackAt = now;
    holdBack.update();
  }
  const hold = holdBack.holdBackMs;
  clock.holdBackMs = hold ?? 0;
  const plusHold = (v) => (v === null ? null : v + (hold ?? 0));
  mirage.timing = {
    holdBackMs: hold,
    holdBackCorrelation: holdBack.correlation,
    audioDelayMs: [...audioDelay.values],
    avSkewMs: [...video.skewMs.values],
    videoShownMs: [...video.shownLatencyMs.values],
    mouthToEarP50: plusHold(audioDelay.percentile(50)),
    mouthToEarP95: plusHold(audioDelay.percentile(95)),
    avSkewP50: video.skewMs.percentile(50),
    avSkewP99: video.skewMs.percentile(99),
    videoShownP50: video.shownLatencyMs.percentile(50),
  };
  mirage.framesSkippedAtPlayout = video.skipped;
  const t = mirage.timing;
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
  const kinds = reasons.map((r) => r.kind).join(",");
  if (kinds !== lastReasonKinds) {
    if (reasons.length) log.add("warn", `degraded: ${mirage.degradedReasons.join("; ")}`);
    else if (lastReasonKinds) log.add("info", "back to full quality");
    lastReasonKinds = kinds;
  }
  el.degraded.hidden = !reasons.length;
  el.degradedReasons.replaceChildren(...reasons.map((r) => Object.assign(document.createElement("li"), { textContent: r.text })));
  setState(reasons.length ? "degraded" : "streaming", reasons[0]?.text ?? "");
}

function refreshOverlay() {
  const now = performance.now();
  mirage.fpsSent = sentRate.rate();
  mirage.fpsReceived = receivedRate.rate();
  mirage.audioAheadMs = player ? player.aheadMs : 0;
  publishTiming(now);
  publishHealth(now);
  renderRows(el.overlayRows, overlayRows(mirage));
}

function playoutLoop() {
  video.tick(performance.now());
  requestAnimationFrame(playoutLoop);
}

// --- wiring ----------------------------------------------------------------------------------------------

function onTokenConnect() {
  const typed = el.token.value.trim();
  if ((isLive() || mirage.state === "connecting" || mirage.state === "open") && (!typed || typed === currentToken)) {
    log.add("info", "already connected with this token");
    return;
  }
  fragmentToken = null;
  reconnectAttempt = 0;
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
  el.reconnect.addEventListener("click", () => { reconnectAttempt = 0; connect(); });
  el.tokenConnect.addEventListener("click", onTokenConnect);
  el.reference.addEventListener("change", onReferenceChosen);
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
