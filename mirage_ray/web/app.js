// The Mirage page: one WebSocket session that streams camera + microphone and plays back what returns.
// Wire format in protocol.js, media plumbing in media.js, overlay and log helpers in ui.js.

import * as P from "./protocol.js";
import { AudioCapture, AudioPlayer, FrameGrabber, MEDIA_CONSTRAINTS } from "./media.js";
import { collectElements, LogView, overlayRows, RateMeter, readControl, renderRows } from "./ui.js";

const PING_INTERVAL_MS = 2000;
const MAX_UNANSWERED_FRAMES = 2; // back-pressure: hold frames back while more than this many await a reply
const UNANSWERED_EXPIRY_MS = 2000; // a frame unanswered this long was dropped by the server
const MAX_WS_BUFFERED_BYTES = 1_000_000;
const RECONNECT_BASE_MS = 1000;
const RECONNECT_MAX_MS = 30_000;
const OVERLAY_REFRESH_MS = 250;
const LATENCY_SMOOTHING = 0.2;
const DEFAULT_VIDEO = Object.freeze({ width: 512, height: 512, fps: 20, jpeg_quality: 85 });
const DEFAULT_CHUNK_MS = 192;

const BASE_URL = new URL("../", import.meta.url); // this file lives at <base>/web/app.js
const el = collectElements();
const log = new LogView(el.log);

/** Test hook and live counters: read by people (overlay) and by automated tests. */
const mirage = {
  state: "idle", hello: null, closeCode: null, closeReason: "",
  framesSent: 0, framesReceived: 0, framesSkipped: 0, passthrough: null,
  audioChunksSent: 0, audioSamplesSent: 0, audioChunksReceived: 0, audioSamplesReceived: 0,
  audioUnderruns: 0, audioDropped: 0, audioAheadMs: 0, sentAudioRms: 0, sentAudioPeakRms: 0,
  fpsSent: 0, fpsReceived: 0, latencyMs: null, rttMs: null,
  lastStats: null, lastReference: null, errors: [], directives: [], settingsSent: {},
  video: { ...DEFAULT_VIDEO }, audioChunkMs: DEFAULT_CHUNK_MS,
};
window.mirage = mirage;

let stream = null; // camera + microphone, kept across reconnects
let audioCtx = null;
let capture = null;
let player = null;
let grabber = null;
let ws = null;
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
let lastDrawnSeq = null;
let lastReferenceBytes = null; // the last reference the server accepted: re-sent after a reconnect
let pendingReferenceBytes = null; // chosen, not answered yet
const unanswered = new Map(); // video seq → performance.now() when sent
const sentRate = new RateMeter();
const receivedRate = new RateMeter();

function setState(state, detail = "") {
  mirage.state = state;
  el.status.textContent = detail ? `${state} — ${detail}` : state;
  el.status.dataset.state = state;
  el.start.disabled = state !== "idle" && state !== "stopped";
  el.stop.disabled = state === "idle" || state === "stopped";
  el.reconnect.disabled = !["closed", "reconnecting", "need-token"].includes(state);
}

function isStreaming() {
  return mirage.state === "streaming" && ws?.readyState === WebSocket.OPEN;
}

// --- start / stop ----------------------------------------------------------------------------------------

async function start() {
  userStopped = false;
  setState("starting", "asking for camera and microphone");
  try {
    if (!navigator.mediaDevices?.getUserMedia) throw new Error("the camera needs https or localhost");
    stream = await navigator.mediaDevices.getUserMedia(MEDIA_CONSTRAINTS);
    el.camera.srcObject = stream;
    await el.camera.play().catch(() => {});
    grabber = new FrameGrabber(el.camera);
    audioCtx = new AudioContext({ latencyHint: "interactive" });
    await audioCtx.resume();
    player = new AudioPlayer(audioCtx, Number(el.jitter.value));
    player.setVolume(Number(el.volume.value));
    capture = await AudioCapture.create(audioCtx, stream, mirage.audioChunkMs, onAudioChunk);
  } catch (err) {
    log.add("error", `camera/microphone set-up failed: ${err.name}: ${err.message}`);
    stop();
    setState("stopped", `camera/microphone unavailable: ${err.message}`);
    return;
  }
  log.add("info", `audio context at ${audioCtx.sampleRate} Hz, resampling to ${P.SAMPLE_RATE_HZ} Hz`);
  await connect();
}

function stop() {
  userStopped = true;
  clearTimeout(reconnectTimer);
  if (ws && ws.readyState <= WebSocket.OPEN) ws.close(P.CloseCode.NORMAL, "user stopped");
  endSessionLoops();
  capture?.stop();
  player?.close();
  audioCtx?.close();
  for (const track of stream?.getTracks() ?? []) track.stop();
  stream = audioCtx = capture = player = grabber = null;
  setState("stopped");
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

async function connect() {
  clearTimeout(reconnectTimer);
  setState("connecting");
  const resolved = await resolveToken();
  if (!resolved) {
    el.tokenRow.hidden = false;
    setState("need-token", "enter an access token");
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
  socket.binaryType = "arraybuffer";
  socket.onmessage = (event) => (typeof event.data === "string" ? onText(event.data) : onBinary(event.data));
  socket.onclose = (event) => onClose(socket, event);
  socket.onerror = () => log.add("warn", "WebSocket error");
  socket.onopen = () => setState("open", "waiting for hello");
  ws = socket;
}

function onClose(socket, event) {
  if (socket !== ws) return;
  endSessionLoops();
  mirage.closeCode = event.code;
  mirage.closeReason = P.describeClose(event.code);
  const words = `${event.code}: ${mirage.closeReason}${event.reason ? ` (${event.reason})` : ""}`;
  log.add(event.code === P.CloseCode.NORMAL ? "info" : "error", `connection closed ${words}`);
  if (userStopped) return;
  const retry = P.AUTO_RECONNECT_CODES.has(event.code)
    || (event.code === P.CloseCode.TOKEN_EXPIRED && tokenSource === "auto");
  if (!retry) {
    if (event.code === P.CloseCode.AUTH_FAILED || event.code === P.CloseCode.TOKEN_EXPIRED) el.tokenRow.hidden = false;
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
}

// --- control messages ------------------------------------------------------------------------------------

function onText(text) {
  const msg = P.parseControl(text);
  if (!msg) {
    log.add("warn", "unparseable text message from the server");
    return;
  }
  switch (msg.type) {
    case "hello": return onHello(msg);
    case "directive": return onDirective(msg);
    case "stats": mirage.lastStats = msg; el.statsRaw.textContent = JSON.stringify(msg, null, 1); return undefined;
    case "pong": if (typeof msg.t === "number") mirage.rttMs = performance.now() - msg.t; return undefined;
    case "reference": return onReference(msg);
    case "error":
      mirage.errors.push(msg);
      log.add("error", `server: ${msg.code ?? "error"}: ${msg.message ?? ""}`);
      return undefined;
    default: return undefined; // unknown types are ignored (protocol)
  }
}

function onHello(msg) {
  mirage.hello = msg;
  reconnectAttempt = 0;
  videoSeq = audioSeq = referenceSeq = 0;
  lastDrawnSeq = null;
  applyMediaConfig(msg.video, msg.audio?.chunk_ms);
  el.backends.textContent = JSON.stringify(msg.backends ?? {}, null, 1);
  el.session.textContent = msg.session_id ?? "";
  const voices = msg.voices ?? msg.backends?.voices;
  if (Array.isArray(voices)) {
    const options = voices.map((v) => Object.assign(document.createElement("option"), { value: String(v) }));
    el.voices.replaceChildren(...options);
  }
  log.add("info", `hello: session ${msg.session_id}, protocol ${msg.protocol}`);
  setState("streaming");
  if (Object.keys(mirage.settingsSent).length) ws.send(P.settingsMessage(mirage.settingsSent));
  const reference = pendingReferenceBytes ?? lastReferenceBytes;
  if (reference) sendReference(reference, "sending the reference photo for this session");
  pingTimer = setInterval(() => isStreaming() && ws.send(P.pingMessage(performance.now())), PING_INTERVAL_MS);
  nextFrameAt = performance.now();
  scheduleFrame();
}

function onDirective(msg) {
  mirage.directives.push(msg);
  applyMediaConfig(msg.video, msg.audio_chunk_ms);
  log.add("info", `directive${msg.reason ? ` (${msg.reason})` : ""}: ${JSON.stringify(msg)}`);
}

function applyMediaConfig(video, chunkMs) {
  for (const key of Object.keys(DEFAULT_VIDEO)) {
    if (typeof video?.[key] === "number" && video[key] > 0) mirage.video[key] = video[key];
  }
  el.camera.style.aspectRatio = `${mirage.video.width} / ${mirage.video.height}`;
  if (typeof chunkMs === "number" && chunkMs > 0 && chunkMs !== mirage.audioChunkMs) {
    mirage.audioChunkMs = chunkMs;
    capture?.setChunkMs(chunkMs);
  }
}

function onReference(msg) {
  mirage.lastReference = msg;
  if (msg.ok && pendingReferenceBytes) lastReferenceBytes = pendingReferenceBytes;
  pendingReferenceBytes = null;
  const text = msg.ok
    ? `ok — ${msg.faces ?? "?"} face${msg.faces === 1 ? "" : "s"} found`
    : `error: ${msg.error ?? "reference rejected"}`;
  el.referenceStatus.textContent = text;
  el.referenceStatus.dataset.ok = String(Boolean(msg.ok));
  log.add(msg.ok ? "info" : "error", `reference: ${text}`);
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
  const latency = Number(P.nowUs() - msg.captureUs) / 1000;
  const previous = mirage.latencyMs ?? latency;
  mirage.latencyMs = previous + LATENCY_SMOOTHING * (latency - previous);
  const passthrough = Boolean(msg.flags & P.FLAG_PASSTHROUGH);
  createImageBitmap(new Blob([msg.payload], { type: "image/jpeg" })).then((bitmap) => {
    if (lastDrawnSeq !== null && !P.seqAtOrAfter(msg.seq, lastDrawnSeq)) return bitmap.close();
    lastDrawnSeq = msg.seq;
    const canvas = el.output;
    if (canvas.width !== bitmap.width) canvas.width = bitmap.width;
    if (canvas.height !== bitmap.height) canvas.height = bitmap.height;
    canvas.getContext("2d").drawImage(bitmap, 0, 0);
    bitmap.close();
    mirage.passthrough = passthrough;
    el.badge.hidden = !passthrough;
    return undefined;
  }, (err) => log.add("warn", `returned frame ${msg.seq} did not decode: ${err.message}`));
}

function onAudioReply(msg) {
  const samples = P.pcm16ToFloat32(msg.payload);
  mirage.audioChunksReceived += 1;
  mirage.audioSamplesReceived += samples.length;
  if (!player) return;
  player.play(samples);
  mirage.audioUnderruns = player.underruns;
  mirage.audioDropped = player.dropped;
}

// --- sending ---------------------------------------------------------------------------------------------

function scheduleFrame() {
  const interval = 1000 / mirage.video.fps;
  const now = performance.now();
  nextFrameAt = Math.max(nextFrameAt + interval, now);
  frameTimer = setTimeout(sendFrame, nextFrameAt - now);
}

async function sendFrame() {
  if (!isStreaming()) return;
  scheduleFrame();
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
    if (!isStreaming()) return;
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
  if (!isStreaming()) return;
  ws.send(P.packMessage(P.Kind.AUDIO, audioSeq, P.perfMsToUs(perfMs), pcm));
  audioSeq = P.nextSeq(audioSeq);
  mirage.audioChunksSent += 1;
  mirage.audioSamplesSent += pcm.length;
}

function sendReference(bytes, why) {
  pendingReferenceBytes = bytes; // until the server answers; sent with the next session if this one ends first
  if (!isStreaming()) {
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
  sendReference(bytes, `reference photo ${file.name} (${bytes.byteLength} bytes)`);
}

function onSettingChanged(event) {
  const input = event.target;
  const key = input.dataset.setting;
  const value = readControl(input);
  mirage.settingsSent[key] = value;
  if (isStreaming()) ws.send(P.settingsMessage({ [key]: value }));
}

// --- wiring ----------------------------------------------------------------------------------------------

function refreshOverlay() {
  mirage.fpsSent = sentRate.rate();
  mirage.fpsReceived = receivedRate.rate();
  mirage.audioAheadMs = player ? player.aheadS * 1000 : 0;
  renderRows(el.overlayRows, overlayRows(mirage));
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
  el.tokenConnect.addEventListener("click", () => { fragmentToken = null; if (stream) connect(); else start(); });
  el.reference.addEventListener("change", onReferenceChosen);
  for (const input of document.querySelectorAll("[data-setting]")) input.addEventListener("change", onSettingChanged);
  el.jitter.addEventListener("change", () => player?.setJitterMs(Number(el.jitter.value)));
  el.volume.addEventListener("input", () => player?.setVolume(Number(el.volume.value)));
  el.overlayToggle.addEventListener("click", () => {
    el.overlay.hidden = !el.overlay.hidden;
    el.overlayToggle.setAttribute("aria-pressed", String(!el.overlay.hidden));
  });
  setInterval(refreshOverlay, OVERLAY_REFRESH_MS);
  setState("idle");
}

init();
