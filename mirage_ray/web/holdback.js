// The voice converter's hold-back, measured: the converted sound at stream position i is the voice captured at
// position i − hold-back (the server's crossfade and SOLA search keep a little of each block back). It is found by
// cross-correlating the loudness envelopes of what was sent and what came back, both indexed by stream position,
// so it needs speech, not a model of the server. The echo server and a passthrough converter measure 0.

const FRAME_SAMPLES = 80; // 5 ms at 16 kHz: envelope resolution
const FRAME_MS = 5;
const FLOOR_DB = -60; // quieter frames count as this (the server gates silence to zeros)
const HISTORY_FRAMES = 2400; // 12 s of envelope kept per direction
const WINDOW_FRAMES = 800; // 4 s compared per estimate
const MAX_LAG_FRAMES = 60; // hold-backs up to 300 ms are looked for
const MIN_CORRELATION = 0.6; // a weaker peak (music, noise, little speech) is not trusted
const MIN_SPREAD_DB = 6; // the window must hold speech: envelope standard deviation at least this
const ESTIMATES_KEPT = 5; // the reported figure is the median of the last few estimates

class Envelope {
  constructor() {
    this.db = new Float32Array(HISTORY_FRAMES);
    this.frames = 0; // whole frames since the session started (stream position / FRAME_SAMPLES)
    this.sum = 0; // the frame being filled: returned blocks (3072 samples for 192 ms) end mid-frame
    this.count = 0;
  }

  /** Append samples (numbers in [-1, 1] after `scale`), any length: frames continue across calls. */
  add(samples, scale = 1) {
    for (let i = 0; i < samples.length; i += 1) {
      this.sum += (samples[i] * scale) ** 2;
      this.count += 1;
      if (this.count < FRAME_SAMPLES) continue;
      const rms = Math.sqrt(this.sum / FRAME_SAMPLES);
      this.db[this.frames % HISTORY_FRAMES] = rms > 0 ? Math.max(FLOOR_DB, 20 * Math.log10(rms)) : FLOOR_DB;
      this.frames += 1;
      this.sum = 0;
      this.count = 0;
    }
  }

  at(frame) {
    return this.db[frame % HISTORY_FRAMES];
  }
}

function correlation(sent, back, end, lag) {
  let sx = 0;
  let sy = 0;
  for (let j = end - WINDOW_FRAMES; j < end; j += 1) {
    sx += back.at(j);
    sy += sent.at(j - lag);
  }
  const mx = sx / WINDOW_FRAMES;
  const my = sy / WINDOW_FRAMES;
  let sxy = 0;
  let sxx = 0;
  let syy = 0;
  for (let j = end - WINDOW_FRAMES; j < end; j += 1) {
    const x = back.at(j) - mx;
    const y = sent.at(j - lag) - my;
    sxy += x * y;
    sxx += x * x;
    syy += y * y;
  }
  return { r: sxx > 0 && syy > 0 ? sxy / Math.sqrt(sxx * syy) : 0, spreadDb: Math.sqrt(sxx / WINDOW_FRAMES) };
}

export class HoldBackEstimator {
  constructor() {
    this.reset();
  }

  /** A new session: stream positions start again at 0 (`keepEstimate`: the same server, so the figure holds). */
  reset(keepEstimate = false) {
    this.sent = new Envelope();
    this.back = new Envelope();
    this.estimates = [];
    if (!keepEstimate) {
      this.holdBackMs = null;
      this.correlation = null;
    }
  }

  /** PCM16 samples as sent (Int16Array). */
  addSent(pcm) {
    this.sent.add(pcm, 1 / 32768);
  }

  /** Returned samples (Float32Array), in stream order. */
  addReturned(samples) {
    this.back.add(samples);
  }

  /** One estimate from the latest window; updates `holdBackMs` when the peak is clear. */
  update() {
    const end = Math.min(this.sent.frames, this.back.frames);
    if (end < WINDOW_FRAMES + MAX_LAG_FRAMES || this.sent.frames - end > HISTORY_FRAMES - WINDOW_FRAMES - MAX_LAG_FRAMES) {
      return this.holdBackMs;
    }
    const scores = [];
    for (let lag = 0; lag <= MAX_LAG_FRAMES; lag += 1) scores.push(correlation(this.sent, this.back, end, lag));
    let best = 0;
    for (let lag = 1; lag <= MAX_LAG_FRAMES; lag += 1) if (scores[lag].r > scores[best].r) best = lag;
    if (scores[best].r < MIN_CORRELATION || scores[best].spreadDb < MIN_SPREAD_DB) return this.holdBackMs;
    let offset = 0; // parabolic refinement between frames
    if (best > 0 && best < MAX_LAG_FRAMES) {
      const [a, b, c] = [scores[best - 1].r, scores[best].r, scores[best + 1].r];
      const curve = a - 2 * b + c;
      if (curve < 0) offset = Math.max(-0.5, Math.min(0.5, (0.5 * (a - c)) / curve));
    }
    this.correlation = scores[best].r;
    this.estimates.push((best + offset) * FRAME_MS);
    if (this.estimates.length > ESTIMATES_KEPT) this.estimates.shift();
    const sorted = [...this.estimates].sort((x, y) => x - y);
    this.holdBackMs = sorted[Math.floor(sorted.length / 2)];
    return this.holdBackMs;
  }
}
