// Page helpers: element lookup, the log area and the overlay of live numbers.

const LOG_LINES = 200;

/** Every element with an id, by id. */
export function collectElements() {
  const els = {};
  for (const el of document.querySelectorAll("[id]")) els[el.id] = el;
  return els;
}

export class LogView {
  constructor(listEl) {
    this.list = listEl;
  }

  add(level, text) {
    const item = document.createElement("li");
    item.className = `log-${level}`;
    const stamp = new Date().toLocaleTimeString();
    item.textContent = `${stamp}  ${text}`;
    this.list.prepend(item);
    while (this.list.childElementCount > LOG_LINES) this.list.lastElementChild.remove();
  }
}

/** Look up the first of `names` in `obj` or in its nested objects (one level), else undefined. */
export function pick(obj, ...names) {
  if (!obj || typeof obj !== "object") return undefined;
  for (const name of names) if (obj[name] !== undefined) return obj[name];
  for (const value of Object.values(obj)) {
    if (value && typeof value === "object" && !Array.isArray(value)) {
      for (const name of names) if (value[name] !== undefined) return value[name];
    }
  }
  return undefined;
}

/** A number, or the sum of an object's numeric values (e.g. drops by reason), else undefined. */
function total(value) {
  if (typeof value === "number") return value;
  if (value && typeof value === "object") {
    return Object.values(value).reduce((sum, v) => sum + (typeof v === "number" ? v : 0), 0);
  }
  return undefined;
}

function fmt(value, digits = 0) {
  if (value === undefined || value === null || Number.isNaN(value)) return "–";
  if (typeof value === "number") return value.toFixed(digits);
  return String(value);
}

function level(video) {
  if (!video) return "–";
  if (video.paused || video.fps === 0) return "paused";
  return `${video.width}×${video.height} ${fmt(video.fps, video.fps % 1 ? 1 : 0)} fps q${video.jpeg_quality}`;
}

/** Overlay rows from the client's own counters plus the last server `stats`. */
export function overlayRows(m) {
  const s = m.lastStats ?? {};
  const t = m.timing;
  const serverFpsIn = pick(s, "fps_in", "input_fps");
  const serverFpsOut = pick(s, "fps_out", "output_fps");
  return [
    ["fps sent / returned", `${fmt(m.fpsSent, 1)} / ${fmt(m.fpsReceived, 1)}`],
    ["server fps in / out", `${fmt(serverFpsIn, 1)} / ${fmt(serverFpsOut, 1)}`],
    ["video level now / full", `${level(s.video ?? m.video)} / ${level(m.hello?.video)}`],
    ["picture delay (shown)", `${fmt(t.videoShownP50)} ms (arrives after ${fmt(m.latencyMs)} ms)`],
    ["voice delay mouth→ear", `${fmt(t.mouthToEarP50)} / p95 ${fmt(t.mouthToEarP95)} ms`],
    ["lip sync skew p50 / p99", `${fmt(t.avSkewP50)} / ${fmt(t.avSkewP99)} ms`],
    ["converter hold-back", `${fmt(t.holdBackMs)} ms`],
    ["voice held for the picture", `${fmt(t.lipSyncMs)} ms`],
    ["ping RTT", `${fmt(m.rttMs)} ms`],
    ["frames dropped (server)", fmt(total(pick(s, "frames_dropped", "dropped", "drops")))],
    ["frames held back / skipped / late", `${fmt(m.framesSkipped)} / ${fmt(t.framesSkipped)} / ${fmt(t.framesLate)}`],
    ["degrade level", fmt(pick(s, "degrade_level", "degrade"))],
    ["voice runtime / real", fmt(pick(s, "runtime_ratio", "voice_runtime_ratio", "audio_runtime_ratio", "rtf"), 2)],
    ["audio chunks sent / back", `${fmt(m.audioChunksSent)} / ${fmt(m.audioChunksReceived)}`],
    ["audio gaps / dropped / trimmed", `${fmt(m.audioUnderruns)} / ${fmt(m.audioDropped)} / ${fmt(m.audioTrimmedMs)} ms`],
    ["audio queued now / wait p50", `${fmt(m.audioAheadMs)} / ${fmt(t.queueWaitP50)} ms`],
    ["sending", `${level(m.video)}, ${m.audioSendChunkMs} ms chunks (server block ${m.audioChunkMs} ms)`],
  ];
}

/** `hello.backends` as list items: each stage's backend, whether it is a model or the embedded default, and why. */
export function backendsHtml(backends) {
  const rows = [];
  for (const [stage, info] of Object.entries(backends)) {
    if (stage === "voices") continue;
    if (info && typeof info === "object") {
      const kind = info.ready === false ? "not ready" : info.fallback ? "embedded default" : "model";
      const why = info.reason ? `<br><small>${escapeHtml(info.reason)}</small>` : "";
      rows.push(`<li><b>${escapeHtml(stage)}</b>: ${escapeHtml(info.name ?? "?")} (${kind})${why}</li>`);
    } else {
      rows.push(`<li><b>${escapeHtml(stage)}</b>: ${escapeHtml(String(info))}</li>`);
    }
  }
  const voices = backends.voices;
  if (Array.isArray(voices) && voices.length) rows.push(`<li><b>voice models</b>: ${escapeHtml(voices.join(", "))}</li>`);
  return rows.join("");
}

export function renderRows(tableBody, rows) {
  const html = rows.map(([k, v]) => `<tr><th>${escapeHtml(k)}</th><td>${escapeHtml(v)}</td></tr>`).join("");
  if (tableBody.innerHTML !== html) tableBody.innerHTML = html;
}

export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** Counts events per second over a sliding one-second window. */
export class RateMeter {
  constructor() {
    this.times = [];
  }

  mark(now = performance.now()) {
    this.times.push(now);
  }

  rate(now = performance.now()) {
    while (this.times.length && now - this.times[0] > 1000) this.times.shift();
    return this.times.length;
  }
}
