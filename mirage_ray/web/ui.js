// Page helpers: element lookup, the log area, the status line, and the overlay of live numbers.

const LOG_LINES = 200;

/** Every element with an id, by id. */
export function collectElements() {
  const els = {};
  for (const el of document.querySelectorAll("[id]")) els[el.id] = el;
  return els;
}

/** A settings control's value (bool, number or trimmed text); also updates its <output> label. */
export function readControl(input) {
  const out = document.querySelector(`output[for="${input.id}"]`);
  if (out) out.value = input.value;
  if (input.type === "checkbox") return input.checked;
  if (input.type === "number" || input.type === "range") return Number(input.value);
  return input.value.trim();
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

/** Overlay rows from the client's own counters plus the last server `stats`. */
export function overlayRows(m) {
  const s = m.lastStats ?? {};
  const serverFpsIn = pick(s, "fps_in", "input_fps");
  const serverFpsOut = pick(s, "fps_out", "output_fps");
  return [
    ["fps sent / returned", `${fmt(m.fpsSent, 1)} / ${fmt(m.fpsReceived, 1)}`],
    ["server fps in / out", `${fmt(serverFpsIn, 1)} / ${fmt(serverFpsOut, 1)}`],
    ["video latency", `${fmt(m.latencyMs)} ms`],
    ["ping RTT", `${fmt(m.rttMs)} ms`],
    ["frames dropped (server)", fmt(total(pick(s, "frames_dropped", "dropped", "drops")))],
    ["frames held back (client)", fmt(m.framesSkipped)],
    ["degrade level", fmt(pick(s, "degrade_level", "degrade"))],
    ["voice runtime / real", fmt(pick(s, "runtime_ratio", "voice_runtime_ratio", "audio_runtime_ratio", "rtf"), 2)],
    ["audio chunks sent / back", `${fmt(m.audioChunksSent)} / ${fmt(m.audioChunksReceived)}`],
    ["audio underruns / dropped", `${fmt(m.audioUnderruns)} / ${fmt(m.audioDropped)}`],
    ["audio queued", `${fmt(m.audioAheadMs)} ms`],
    ["sending", `${m.video.width}×${m.video.height} @ ${fmt(m.video.fps, 0)} fps q${m.video.jpeg_quality}, ` +
      `${m.audioChunkMs} ms chunks`],
  ];
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
