// What the page tells people about the session in words: the server's directives, settings answers and errors as
// sentences, and whether the session is degraded (with why). Pure functions of the page's state; no DOM here.

import { ErrorCode, videoPaused } from "./protocol.js";

const HIGH_VOICE_DELAY_MS = 500; // mouth-to-ear above this (median of recent chunks) is called out
const HIGH_VIDEO_DELAY_MS = 700; // capture → shown above this (median of recent frames) is called out
const MIN_DELAY_SAMPLES = 10; // ... once this many chunks were measured
const RECENT_MS = 10_000; // "recently" for unconverted voice blocks, unswapped frames and gaps
const GAPS_CALLED_OUT = 3; // this many playback gaps within RECENT_MS is called out
const UNSWAPPED_CALLED_OUT_MS = 3000; // unswapped frames this long after a reference was accepted are called out

// The server's directive reasons (the part before any ':'), in words.
const REASON_WORDS = new Map([
  ["overload", "the server cannot keep up with this video"],
  ["restore", "the server has room again"],
  ["controller", "the server is busy with other sessions"],
  ["request", "the voice needs the time, so video gives way"],
  ["grow", "the voice converter is close to its time budget"],
  ["shrink", "the voice converter has time to spare"],
  ["audio_failure", "the voice converter was too slow"],
  ["steady", "steady"],
]);

const SETTING_WORDS = {
  max_faces: (v) => `faces to swap ${v}`,
  swap: (v) => `face swap ${v ? "on" : "off"}`,
  enhance: (v) => `enhance ${v ? "on" : "off"}`,
  fidelity: (v) => `fidelity ${fmtNumber(v, 2)}`,
  pitch_semitones: (v) => `pitch ${fmtSigned(v)} semitones`,
  formant_shift: (v) => `formant ${fmtNumber(v, 2)}`,
  voice: (v) => `voice ${v ?? "none"}`,
};

export function fmtNumber(value, digits = 0) {
  return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : "–";
}

function fmtSigned(value) {
  if (typeof value !== "number") return "–";
  const text = Number.isInteger(value) ? String(Math.abs(value)) : Math.abs(value).toFixed(1);
  return value < 0 ? `−${text}` : value > 0 ? `+${text}` : "0";
}

/** A directive reason in words: known keywords translated, the server's own words kept. */
export function reasonWords(reason) {
  if (!reason) return "";
  const text = String(reason);
  const cut = text.indexOf(":");
  const key = (cut < 0 ? text : text.slice(0, cut)).trim();
  const rest = cut < 0 ? "" : text.slice(cut + 1).trim();
  const known = REASON_WORDS.get(key);
  if (!known) return text;
  return rest && key !== "request" ? `${known}: ${rest}` : known;
}

/** "512×512, 20 fps, JPEG quality 85" (or "paused"). */
export function videoWords(video) {
  if (!video) return "–";
  if (videoPaused(video)) return `paused (${video.fps > 0 ? `a probe frame at ${fmtNumber(video.fps, 0)} fps` : "no frames"})`;
  return `${video.width}×${video.height}, ${fmtNumber(video.fps, video.fps % 1 ? 1 : 0)} fps, JPEG quality ${video.jpeg_quality}`;
}

/** A directive as one sentence for the log. */
export function directiveSentence(msg) {
  const why = reasonWords(msg.reason);
  const parts = [];
  if (msg.video) {
    parts.push(videoPaused(msg.video) ? "the server paused video" : `the server asks for video at ${videoWords(msg.video)}`);
  }
  if (typeof msg.audio_chunk_ms === "number") parts.push(`voice blocks of ${msg.audio_chunk_ms} ms`);
  if (!parts.length) return `the server sent a directive${why ? ` (${why})` : ""}`;
  return `${parts.join(" and ")}${why ? ` — ${why}` : ""}`;
}

/** The server's `settings` answer as one sentence. */
export function settingsSentence(msg) {
  const applied = Array.isArray(msg.applied) ? msg.applied : [];
  const words = applied.filter((k) => SETTING_WORDS[k]).map((k) => SETTING_WORDS[k](msg[k]));
  return words.length ? `the server applied ${words.join(", ")}` : "the server kept its settings";
}

/** A server `error` as one sentence. */
export function errorSentence(msg) {
  const text = msg.message ? String(msg.message) : "";
  if (msg.code === ErrorCode.BAD_SETTING) return `the server refused a setting (${text}); the control shows its value again`;
  if (msg.code === ErrorCode.AUDIO_FAILURE) return `the voice converter fell behind and the server switched to a cheaper one (${text})`;
  return `the server reported ${msg.code ?? "an error"}${text ? `: ${text}` : ""}`;
}

function smaller(video, base) {
  return video.width < base.width || video.height < base.height || video.fps < base.fps
    || video.jpeg_quality < base.jpeg_quality;
}

function recent(times, now) {
  return times.filter((t) => now - t < RECENT_MS).length;
}

/**
 * Why the session is degraded right now: `[{kind, text}]` (empty: full quality). `kind` names the cause (stable
 * while its numbers change); `text` is the sentence shown. `m` is window.mirage; `now` is performance.now().
 */
export function degradedReasons(m, now) {
  const reasons = [];
  const add = (kind, text) => reasons.push({ kind, text });
  const base = m.hello?.video;
  const video = m.lastStats?.video ?? m.video;
  const why = reasonWords(m.lastVideoReason);
  if (videoPaused(m.video) || videoPaused(m.lastStats?.video)) {
    add("video-paused", `video paused to keep the voice in time${why && why !== "steady" ? ` (${why})` : ""}`);
  } else if (base && video && smaller(video, base)) {
    add("video-reduced", `video reduced to ${videoWords(video)} (full: ${videoWords(base)})${why ? ` — ${why}` : ""}`);
  }
  if (m.audioFallback) add("voice-fallback", `voice on the fallback converter (${m.audioFallback})`);
  const helloChunk = m.hello?.audio?.chunk_ms;
  if (typeof helloChunk === "number" && m.audioChunkMs > helloChunk) {
    add("voice-blocks", `voice blocks lengthened to ${m.audioChunkMs} ms (from ${helloChunk} ms)`);
  }
  const unconverted = recent(m.audioUnconvertedTimes, now);
  if (unconverted) {
    add("voice-unconverted", `${unconverted} voice block${unconverted === 1 ? "" : "s"} came back not converted normally`);
  }
  const unswappedSince = Math.max(m.passthroughSince, m.referenceSetAt ?? Infinity); // frames after the reference
  if (m.settings?.swap !== false && m.passthrough && now - unswappedSince > UNSWAPPED_CALLED_OUT_MS) {
    add("not-swapped", "faces are not being swapped (no face in view, or the swapper failed)");
  }
  const gaps = recent(m.audioUnderrunTimes, now);
  if (gaps >= GAPS_CALLED_OUT) add("voice-gaps", `the returned voice had ${gaps} gaps in the last ${RECENT_MS / 1000} s`);
  if (m.timing?.lipSyncLost) {
    add("out-of-sync", `picture out of sync: it arrives later than the voice even with the voice held ${m.timing.lipSyncMs} ms`);
  }
  const voiceDelay = m.timing?.mouthToEarP50;
  const videoDelay = m.timing?.videoShownP50;
  const measured = (m.timing?.audioDelayMs?.length ?? 0) >= MIN_DELAY_SAMPLES;
  if (measured && (voiceDelay > HIGH_VOICE_DELAY_MS || videoDelay > HIGH_VIDEO_DELAY_MS)) {
    add("long-delay", `long delay: voice ${fmtNumber(voiceDelay)} ms, picture ${fmtNumber(videoDelay)} ms`);
  }
  return reasons;
}

/** Log lines for changes in the degraded reasons: one when a cause appears, one when it goes. */
export class ReasonLog {
  constructor() {
    this.reset();
  }

  reset() {
    this.kinds = new Set();
  }

  /** `[level, sentence]` pairs for what changed since the last call. */
  changes(reasons) {
    const now = new Map(reasons.map((r) => [r.kind, r.text]));
    const lines = [];
    for (const [kind, text] of now) if (!this.kinds.has(kind)) lines.push(["warn", `degraded: ${text}`]);
    for (const kind of this.kinds) if (!now.has(kind)) lines.push(["info", `recovered: ${kind.replaceAll("-", " ")}`]);
    if (this.kinds.size && !now.size) lines.push(["info", "back to full quality"]);
    this.kinds = new Set(now.keys());
    return lines;
  }
}
