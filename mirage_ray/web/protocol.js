// Mirage WebSocket protocol v1 (docs/protocol.md): the 16-byte binary header, control messages, close codes.
// Nothing else in the page slices bytes.

export const PROTOCOL_VERSION = 1;
export const SUBPROTOCOL = "mirage.v1";
export const BEARER_PREFIX = "bearer.";

export const HEADER_BYTES = 16;
export const Kind = Object.freeze({ VIDEO: 1, AUDIO: 2, REFERENCE: 3 });
export const FLAG_PASSTHROUGH = 0x01;

export const SAMPLE_RATE_HZ = 16000;
export const SAMPLES_PER_10MS = 160;
export const BYTES_PER_SAMPLE = 2;

const SEQ_MODULUS = 2 ** 32;
const HALF_SEQ_SPACE = 2 ** 31;

/** The next sequence number after `seq` (uint32, wraps). */
export function nextSeq(seq) {
  return (seq + 1) % SEQ_MODULUS;
}

/** True when uint32 `a` is at or after `b` in serial-number arithmetic (handles wrap-around). */
export function seqAtOrAfter(a, b) {
  return ((a - b + SEQ_MODULUS) % SEQ_MODULUS) < HALF_SEQ_SPACE;
}

/** Client wall clock in integer microseconds (BigInt), the protocol's capture-time unit. */
export function nowUs() {
  return perfMsToUs(performance.now());
}

/** A `performance.now()`-style timestamp (ms since timeOrigin) converted to wall-clock µs (BigInt). */
export function perfMsToUs(perfMs) {
  return BigInt(Math.round((performance.timeOrigin + perfMs) * 1000));
}

/** Wall-clock µs (BigInt) → `performance.now()`-style ms. */
export function usToPerfMs(us) {
  return Number(us) / 1000 - performance.timeOrigin;
}

/**
 * Pack one binary message: header + payload.
 * @param {number} kind 1 video, 2 audio, 3 reference
 * @param {number} seq uint32
 * @param {bigint} captureUs int64 µs
 * @param {ArrayBuffer|ArrayBufferView} payload
 * @param {number} [flags=0]
 * @returns {ArrayBuffer}
 */
export function packMessage(kind, seq, captureUs, payload, flags = 0) {
  const body = payload instanceof ArrayBuffer
    ? new Uint8Array(payload)
    : new Uint8Array(payload.buffer, payload.byteOffset, payload.byteLength);
  const out = new ArrayBuffer(HEADER_BYTES + body.byteLength);
  const view = new DataView(out);
  view.setUint8(0, kind);
  view.setUint8(1, flags);
  view.setUint16(2, 0, true);
  view.setUint32(4, seq >>> 0, true);
  view.setBigInt64(8, BigInt.asIntN(64, captureUs), true);
  new Uint8Array(out, HEADER_BYTES).set(body);
  return out;
}

export class ProtocolError extends Error {}

/**
 * Unpack one binary message.
 * @param {ArrayBuffer} buffer
 * @returns {{kind: number, flags: number, seq: number, captureUs: bigint, payload: Uint8Array}}
 */
export function unpackMessage(buffer) {
  if (!(buffer instanceof ArrayBuffer) || buffer.byteLength < HEADER_BYTES) {
    throw new ProtocolError(`binary message shorter than the ${HEADER_BYTES}-byte header`);
  }
  const view = new DataView(buffer);
  return {
    kind: view.getUint8(0),
    flags: view.getUint8(1),
    seq: view.getUint32(4, true),
    captureUs: view.getBigInt64(8, true),
    payload: new Uint8Array(buffer, HEADER_BYTES),
  };
}

/** PCM16 little-endian bytes → Float32 samples in [-1, 1). */
export function pcm16ToFloat32(bytes) {
  const count = Math.floor(bytes.byteLength / BYTES_PER_SAMPLE);
  const view = new DataView(bytes.buffer, bytes.byteOffset, count * BYTES_PER_SAMPLE);
  const out = new Float32Array(count);
  for (let i = 0; i < count; i += 1) out[i] = view.getInt16(i * BYTES_PER_SAMPLE, true) / 32768;
  return out;
}

/** JPEG or PNG by magic bytes, else null. */
export function imageMimeOf(bytes) {
  if (bytes.length >= 3 && bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff) return "image/jpeg";
  const png = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
  if (bytes.length >= png.length && png.every((b, i) => bytes[i] === b)) return "image/png";
  return null;
}

// --- connecting ----------------------------------------------------------------------------------------

/** The session WebSocket URL for a page served at `baseUrl` (`…/ws`, ws: or wss: to match the page). */
export function wsUrl(baseUrl) {
  const url = new URL("ws", baseUrl);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

/** The local auto-token (`GET v1/page-token`), or null when the server does not hand one out (404). */
export async function fetchPageToken(baseUrl) {
  const res = await fetch(new URL("v1/page-token", baseUrl), { cache: "no-store" });
  if (!res.ok) return null;
  const body = await res.json();
  return typeof body.token === "string" ? body.token : null;
}

// --- control messages (JSON text) --------------------------------------------------------------------

export const SETTINGS_FIELDS = Object.freeze(
  ["max_faces", "swap", "enhance", "fidelity", "pitch_semitones", "formant_shift", "voice"],
);

/** The server's allowed range for each numeric setting (docs/protocol.md); the page clamps its controls to it. */
export const SETTING_LIMITS = Object.freeze({
  max_faces: Object.freeze([1, 16]),
  fidelity: Object.freeze([0, 1]),
  pitch_semitones: Object.freeze([-24, 24]),
  formant_shift: Object.freeze([0.5, 2]),
});

/** Voice presets every server accepts as `voice` (mirage_ray/voice/presets.py); `backends.voices` adds models. */
export const VOICE_PRESETS = Object.freeze(["neutral", "deeper", "brighter", "much-deeper", "higher", "octave-down"]);

/** `error.code` values the page treats specially. */
export const ErrorCode = Object.freeze({ BAD_SETTING: "bad_setting", AUDIO_FAILURE: "audio_failure" });

/** A directive's or stats' `video` asks for no processed video (paused to keep audio in budget). */
export function videoPaused(video) {
  return Boolean(video && (video.paused === true || video.fps === 0));
}

/**
 * The audio chunk the page sends for the server's processing block `blockMs`. A block that is a whole number of
 * 10 ms frames is sent as one chunk (it completes exactly on arrival); otherwise (the seed's 192 ms) half a block,
 * rounded to 10 ms, so a block waits at most half a block for the chunk that completes it. Chunks stay large
 * enough that the server's backlog rule (more than 3 waiting chunks) covers several blocks of processing.
 */
export function sendChunkMs(blockMs) {
  if (!(blockMs > 0)) return 0;
  if (blockMs % 10 === 0) return blockMs;
  return Math.max(10, Math.round(blockMs / 20) * 10);
}

export function settingsMessage(fields) {
  const body = { type: "settings" };
  for (const [key, value] of Object.entries(fields)) {
    if (SETTINGS_FIELDS.includes(key)) body[key] = value;
  }
  return JSON.stringify(body);
}

export function pingMessage(t) {
  return JSON.stringify({ type: "ping", t });
}

/** Parse a text message; null when it is not a JSON object with a string `type`. */
export function parseControl(text) {
  try {
    const msg = JSON.parse(text);
    return msg && typeof msg === "object" && typeof msg.type === "string" ? msg : null;
  } catch {
    return null;
  }
}

// --- close codes ---------------------------------------------------------------------------------------

export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  ABNORMAL: 1006,
  AUTH_FAILED: 1008,
  TOO_BIG: 1009,
  INTERNAL: 1011,
  AT_CAPACITY: 1013,
  TOKEN_EXPIRED: 4001,
  PROTOCOL_ERROR: 4002,
  ABANDONED: 4003,
  RATE_LIMITED: 4029,
});

const CLOSE_WORDS = new Map([
  [1000, "closed normally"],
  [1001, "the server is going away (restart or redeploy)"],
  [1006, "connection lost or refused (server down, bad token, or origin not allowed)"],
  [1008, "authentication failed or origin not allowed — check the token"],
  [1009, "a message was larger than the server accepts"],
  [1011, "internal server error"],
  [1013, "the server is at capacity — try again later"],
  [4001, "the token expired during the session"],
  [4002, "protocol error (bad header or unparseable JSON)"],
  [4003, "abandoned: too many invalid frames"],
  [4029, "rate limited — too many messages or connections"],
]);

/** Human words for a WebSocket close code. */
export function describeClose(code) {
  return CLOSE_WORDS.get(code) ?? `closed with code ${code}`;
}

/** Close codes after which the page reconnects by itself, with backoff (4001 too, when the page fetches its token). */
export const AUTO_RECONNECT_CODES = new Set([1001, 1006, 1011, 1013]);
