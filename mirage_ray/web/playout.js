// Playout on the audio master clock. Returned audio is scheduled back to back with a short, self-trimming queue;
// every scheduled piece is remembered as a segment (capture time of its first sample → when it is heard), so a
// returned video frame can be shown exactly when the sound captured at the same instant is heard (videoplayout.js).
// All times are on the performance.now() clock, in ms.

import { SAMPLE_RATE_HZ } from "./protocol.js";
import { contextToPerfMs } from "./media.js";

const MS_PER_SAMPLE = 1000 / SAMPLE_RATE_HZ;
// a chunk that would queue more than the target plus the larger of these is dropped (latency cannot creep up)
const MAX_AHEAD_MS = 500;
const AHEAD_CHUNKS = 3;
const PAD_MIN_MS = 10; // a lip-sync hold below the queue by more than this is added as a pause ...
const PAD_MAX_MS = 100; // ... of at most this much per chunk
const FRAME_SAMPLES = SAMPLE_RATE_HZ / 100; // the queue is shortened by leaving out whole 10 ms frames ...
const FRAME_MS = 10;
const QUIET_FRAME_DB = -40; // ... quieter than this (dBFS): pauses between words, gated silence ...
const RELATIVE_QUIET_DB = 25; // ... or this far below the chunk's loudest frame (gaps inside speech)
const TRIM_WINDOW_MS = 3000; // the queue is trimmed to the margin against its smallest slack over this window
const TRIM_MIN_SAMPLES = 4; // ... once this many chunks arrived in the window
const SEGMENT_HISTORY_MS = 10_000;
const AUDIO_STALE_MS = 600; // no audio heard for this long: video no longer waits for it

/** Last `limit` numbers, with percentiles. */
export class RollingSamples {
  constructor(limit = 1000) {
    this.limit = limit;
    this.values = [];
  }

  push(value) {
    this.values.push(value);
    if (this.values.length > this.limit) this.values.shift();
  }

  clear() {
    this.values = [];
  }

  get count() {
    return this.values.length;
  }

  get last() {
    return this.values.length ? this.values[this.values.length - 1] : null;
  }

  /** The p-th percentile (0–100, nearest rank) of all values or of the `last` few, or null when empty. */
  percentile(p, last = this.values.length) {
    if (!this.values.length) return null;
    const sorted = this.values.slice(-last).sort((a, b) => a - b);
    const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
    return sorted[rank];
  }
}

/**
 * Which 10 ms frames of `samples` to leave out to shorten it by about `cutMs`: the quietest frames, below
 * QUIET_FRAME_DB or RELATIVE_QUIET_DB under the chunk's loudest frame, at most half of them (all of a silent chunk
 * but one), never the last partial frame. Returns the kept runs `[{from, to}]` (sample offsets) or null.
 */
function quietCut(samples, cutMs) {
  const frames = Math.floor(samples.length / FRAME_SAMPLES);
  const levels = [];
  for (let f = 0; f < frames; f += 1) {
    let sum = 0;
    for (let i = f * FRAME_SAMPLES; i < (f + 1) * FRAME_SAMPLES; i += 1) sum += samples[i] * samples[i];
    levels.push({ f, db: 10 * Math.log10(sum / FRAME_SAMPLES + 1e-20) });
  }
  const loudest = Math.max(...levels.map((l) => l.db));
  const silent = loudest < QUIET_FRAME_DB;
  const limit = silent ? frames - 1 : Math.floor(frames / 2);
  const wanted = Math.min(Math.floor(cutMs / FRAME_MS), limit);
  if (wanted < 1) return null;
  const quiet = levels.filter((l) => l.db < QUIET_FRAME_DB || l.db < loudest - RELATIVE_QUIET_DB);
  if (!quiet.length) return null;
  quiet.sort((a, b) => a.db - b.db);
  const cut = new Set(quiet.slice(0, wanted).map((q) => q.f));
  const runs = [];
  let from = 0;
  for (let f = 0; f <= frames; f += 1) {
    if (f < frames && !cut.has(f)) continue;
    const to = f * FRAME_SAMPLES;
    if (to > from) runs.push({ from, to });
    from = to + FRAME_SAMPLES;
  }
  if (from < samples.length) runs.push({ from, to: samples.length });
  return runs;
}

/**
 * Schedules 16 kHz mono chunks back to back. A chunk starts where the previous one ends; when the previous one has
 * already ended (an underrun, an audible gap) or for the first chunk, it starts `margin` from now. The queue is
 * kept short: whenever the smallest slack over the last few seconds (what was still queued when a chunk arrived)
 * exceeds the margin, the excess is taken out of the next chunks by leaving out their quietest 10 ms frames
 * (pauses between words). A chunk that would queue far more (MAX_AHEAD_MS or AHEAD_CHUNKS chunks beyond the
 * target) is dropped.
 */
export class AudioPlayout {
  constructor(ctx, marginMs) {
    this.ctx = ctx;
    this.marginS = marginMs / 1000;
    this.lipSyncS = 0; // extra hold so that the sound waits for a slower picture (see LipSync)
    this.volume = ctx.createGain();
    this.monitor = ctx.createGain();
    this.volume.connect(this.monitor).connect(ctx.destination);
    this.reset();
    this.underruns = 0;
    this.dropped = 0;
    this.trimmedMs = 0;
    this.paddedMs = 0;
  }

  setMarginMs(marginMs) {
    this.marginS = Math.max(0, marginMs) / 1000;
  }

  /** Hold the voice back this much more than the margin (lip sync with a slower picture). */
  setLipSyncMs(ms) {
    this.lipSyncS = Math.max(0, ms) / 1000;
  }

  get targetS() {
    return this.marginS + this.lipSyncS;
  }

  setVolume(volume) {
    this.volume.gain.value = volume;
  }

  /** Monitor off: nothing is heard, but the timeline (and every measurement) runs on. */
  setMonitor(on) {
    this.monitor.gain.value = on ? 1 : 0;
  }

  /** Ms of audio scheduled beyond now. */
  get aheadMs() {
    return Math.max(0, this.nextTime - this.ctx.currentTime) * 1000;
  }

  /**
   * Schedule one chunk of Float32 samples at 16 kHz.
   * @returns {{status: "played"|"underrun"|"dropped", pieces?: {offsetMs: number, startMs: number,
   *   durationMs: number}[], slackMs?: number|null}} pieces: what is played, as runs of the chunk (offsetMs into
   *   it) and when each is heard (performance clock); more than one when quiet frames were left out.
   */
  play(samples) {
    if (samples.length === 0) return { status: "played", pieces: [] };
    const now = this.ctx.currentTime;
    const ranDry = this.started && this.nextTime <= now;
    let at = this.started && !ranDry ? this.nextTime : now + this.targetS;
    let runs = [{ from: 0, to: samples.length }];
    let slackMs = null;
    if (ranDry) {
      this.underruns += 1;
      this.slacks = [];
    } else if (this.started) {
      slackMs = (this.nextTime - now) * 1000;
      const padMs = this.pad(slackMs);
      at += padMs / 1000;
      if (!padMs) runs = this.trim(samples) ?? runs;
    }
    const chunkMs = samples.length * MS_PER_SAMPLE;
    const limitMs = Math.max(MAX_AHEAD_MS, AHEAD_CHUNKS * chunkMs) + this.targetS * 1000;
    if ((at - now) * 1000 + chunkMs > limitMs) {
      this.dropped += 1;
      return { status: "dropped" };
    }
    const kept = runs.reduce((n, r) => n + r.to - r.from, 0);
    const played = new Float32Array(kept);
    const startMs = contextToPerfMs(this.ctx, at);
    const pieces = [];
    let offset = 0;
    for (const r of runs) {
      played.set(samples.subarray(r.from, r.to), offset);
      pieces.push({ offsetMs: r.from * MS_PER_SAMPLE, startMs: startMs + offset * MS_PER_SAMPLE,
        durationMs: (r.to - r.from) * MS_PER_SAMPLE });
      offset += r.to - r.from;
    }
    const buffer = this.ctx.createBuffer(1, kept, SAMPLE_RATE_HZ);
    buffer.copyToChannel(played, 0);
    const node = this.ctx.createBufferSource();
    node.buffer = buffer;
    node.connect(this.volume);
    node.start(at);
    this.nextTime = at + kept / SAMPLE_RATE_HZ;
    this.started = true;
    return { status: ranDry ? "underrun" : "played", pieces, slackMs };
  }

  /** Smallest slack over the window (with this chunk's), or null while the window holds too few chunks. */
  minSlackMs(slackMs) {
    const t = performance.now();
    this.slacks.push({ t, slackMs });
    while (this.slacks.length && t - this.slacks[0].t > TRIM_WINDOW_MS) this.slacks.shift();
    return this.slacks.length < TRIM_MIN_SAMPLES ? null : Math.min(...this.slacks.map((s) => s.slackMs));
  }

  /** A pause (ms) before this chunk when a lip-sync hold asks for a longer queue than there is, else 0. */
  pad(slackMs) {
    const least = this.minSlackMs(slackMs);
    if (this.lipSyncS === 0 || least === null) return 0;
    const deficitMs = this.targetS * 1000 - least;
    if (deficitMs < PAD_MIN_MS) return 0;
    const padMs = Math.min(deficitMs, PAD_MAX_MS);
    for (const s of this.slacks) s.slackMs += padMs;
    this.paddedMs += padMs;
    return padMs;
  }

  /** Kept runs of the chunk when the queue is longer than its target and the chunk has quiet frames, else null. */
  trim(samples) {
    const least = this.slacks.length < TRIM_MIN_SAMPLES ? null : Math.min(...this.slacks.map((s) => s.slackMs));
    if (least === null) return null;
    const excessMs = least - this.targetS * 1000;
    const runs = quietCut(samples, excessMs);
    if (!runs) return null;
    const cutMs = (samples.length - runs.reduce((n, r) => n + r.to - r.from, 0)) * MS_PER_SAMPLE;
    for (const s of this.slacks) s.slackMs -= cutMs; // the queue is that much shorter from now on
    this.trimmedMs += cutMs;
    return runs;
  }

  /** Forget the timeline (a new session): the next chunk starts `margin` from now. */
  reset() {
    this.nextTime = 0;
    this.started = false;
    this.slacks = [];
  }

  close() {
    this.monitor.disconnect();
    this.volume.disconnect();
  }
}

/**
 * The audio master clock: which captured instant is heard when. Segments are the pieces of returned audio as
 * scheduled: `captureMs` of their first sample (at the same stream position as sent), when that sample is heard
 * (`startMs`) and how long they play. The converter's hold-back (`holdBackMs`: the converted sound at stream
 * position i is the voice captured at position i − hold-back) is added to every mapping.
 */
export class AudioClock {
  constructor() {
    this.segments = [];
    this.holdBackMs = 0;
  }

  add(captureMs, startMs, durationMs) {
    if (!(durationMs > 0) || startMs === null) return;
    this.segments.push({ captureMs, startMs, durationMs });
    const horizon = startMs - SEGMENT_HISTORY_MS;
    while (this.segments.length > 1 && this.segments[0].startMs + this.segments[0].durationMs < horizon) {
      this.segments.shift();
    }
  }

  clear() {
    this.segments = [];
  }

  /**
   * The capture instant whose sound is heard at `now` (during a gap: the end of the last piece heard, so video
   * holds too), or null when no audio has been heard for AUDIO_STALE_MS (video then shows on arrival).
   */
  heardAt(now) {
    const segs = this.segments;
    if (!segs.length) return null;
    let ref = null;
    for (let i = segs.length - 1; i >= 0; i -= 1) {
      if (segs[i].startMs <= now) {
        ref = segs[i];
        break;
      }
    }
    if (ref === null) return segs[0].captureMs - (segs[0].startMs - now) - this.holdBackMs; // nothing heard yet
    const intoMs = now - ref.startMs;
    if (intoMs - ref.durationMs > AUDIO_STALE_MS && ref === segs[segs.length - 1]) return null;
    return ref.captureMs + Math.min(intoMs, ref.durationMs) - this.holdBackMs;
  }

  /** When the sound captured at `captureMs` is heard, from the piece that plays it; null if none does (yet). */
  heardWhen(captureMs) {
    const position = captureMs + this.holdBackMs;
    for (let i = this.segments.length - 1; i >= 0; i -= 1) {
      const seg = this.segments[i];
      if (seg.captureMs <= position && position < seg.captureMs + seg.durationMs) {
        return seg.startMs + (position - seg.captureMs);
      }
    }
    return null;
  }
}
