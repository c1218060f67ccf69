// What comes back, played in sync: returned audio onto the playout queue (or the user's own voice, in bypass),
// returned frames onto the audio clock, and the figures that prove it — mouth-to-ear latency, queue wait, lip-sync
// skew at playout, the converter's hold-back. Sent audio is remembered by stream position, which is how a returned
// sample finds the capture time of the voice it carries (samples are conserved and in order, protocol.md).

import { SAMPLE_RATE_HZ } from "./protocol.js";
import { AudioClock, RollingSamples } from "./playout.js";
import { lipSyncLost, nextLipSyncMs, VideoPlayout } from "./videoplayout.js";
import { HoldBackEstimator } from "./holdback.js";

const MS_PER_SAMPLE = 1000 / SAMPLE_RATE_HZ;
const SENT_HISTORY_MS = 10_000; // sent audio kept for timing (stream position → capture time) and the bypass
const HOLD_BACK_EVERY_MS = 2000;
const LIP_SYNC_EVERY_MS = 2000;
const RECENT_SAMPLES = 100; // the figures on screen are over the last this many chunks / frames

export class ReturnPath {
  /** @param {(frame: {bitmap: ImageBitmap, flags: number}) => void} draw */
  constructor(draw) {
    this.clock = new AudioClock();
    this.video = new VideoPlayout(this.clock, draw);
    this.holdBack = new HoldBackEstimator();
    this.audioDelay = new RollingSamples(1000); // capture → heard at the same stream position, per chunk
    this.queueWait = new RollingSamples(1000); // arrival → heard (queue + output latency), per chunk
    this.player = null;
    this.lipSyncMs = 0;
    this.bypass = false; // play the voice as sent instead of the converted one (same delay)
    this.lastHoldBackAt = 0;
    this.lastLipSyncAt = 0;
    this.newSession();
  }

  /** The playout queue of the running audio context (null when stopped). */
  attach(player) {
    this.player = player;
    player?.setLipSyncMs(this.lipSyncMs);
  }

  /** A new session: stream positions start again at 0; nothing queued is kept. */
  newSession() {
    this.player?.reset();
    this.clock.clear();
    this.video.clear();
    this.sentLog = []; // {first, captureMs, pcm}
    this.sentPosition = 0;
    this.returnedPosition = 0;
    this.holdBack.reset(true);
  }

  /** Forget the figures (after Stop). */
  clearFigures() {
    for (const samples of [this.audioDelay, this.queueWait, this.video.skewMs, this.video.shownLatencyMs]) {
      samples.clear();
    }
  }

  /** A chunk as sent: Int16Array PCM whose first sample was captured at `captureMs`. */
  sent(pcm, captureMs) {
    this.sentLog.push({ first: this.sentPosition, captureMs, pcm });
    while (this.sentLog.length > 1 && captureMs - this.sentLog[0].captureMs > SENT_HISTORY_MS) this.sentLog.shift();
    this.sentPosition += pcm.length;
    this.holdBack.addSent(pcm);
  }

  /** Capture time (performance clock) of the sample sent at stream position `position`, or null. */
  captureAt(position) {
    for (let i = this.sentLog.length - 1; i >= 0; i -= 1) {
      const chunk = this.sentLog[i];
      if (chunk.first <= position && position < chunk.first + chunk.pcm.length) {
        return chunk.captureMs + (position - chunk.first) * MS_PER_SAMPLE;
      }
    }
    return null;
  }

  /** The voice as sent, `count` samples from stream position `from` (silence where none is kept). */
  ownVoice(from, count) {
    const out = new Float32Array(count);
    for (const chunk of this.sentLog) {
      const lo = Math.max(from, chunk.first);
      const hi = Math.min(from + count, chunk.first + chunk.pcm.length);
      for (let p = lo; p < hi; p += 1) out[p - from] = chunk.pcm[p - chunk.first] / 32768;
    }
    return out;
  }

  /** Returned samples (Float32Array, in stream order): queued for playout. Returns the queue's verdict. */
  audio(samples, now) {
    const position = this.returnedPosition;
    this.returnedPosition += samples.length;
    this.holdBack.addReturned(samples);
    if (!this.player) return null;
    const captureMs = this.captureAt(position);
    const holdSamples = Math.round((this.holdBack.holdBackMs ?? 0) / MS_PER_SAMPLE);
    const heard = this.bypass ? this.ownVoice(position - holdSamples, samples.length) : samples;
    const result = this.player.play(heard);
    if (result.status === "dropped" || captureMs === null) return result;
    for (const p of result.pieces) this.clock.add(captureMs + p.offsetMs, p.startMs, p.durationMs);
    const first = result.pieces[0];
    if (first) {
      this.audioDelay.push(first.startMs - (captureMs + first.offsetMs));
      this.queueWait.push(first.startMs - first.offsetMs - now);
    }
    return result;
  }

  /** A decoded returned frame `{captureMs, arrivedMs, flags, bitmap}`: it waits for its sound. */
  frame(frame) {
    this.video.push(frame);
  }

  /** Once per display frame. */
  tick(now) {
    this.video.tick(now);
  }

  /** Every few seconds: re-measure the hold-back; hold the voice for a slower picture, or release it. */
  adapt(now) {
    if (now - this.lastHoldBackAt > HOLD_BACK_EVERY_MS) {
      this.lastHoldBackAt = now;
      this.holdBack.update();
      this.clock.holdBackMs = this.holdBack.holdBackMs ?? 0;
    }
    if (this.player && now - this.lastLipSyncAt > LIP_SYNC_EVERY_MS) {
      this.lastLipSyncAt = now;
      const lateness = this.video.recentLatenessMs(now);
      const next = nextLipSyncMs(this.lipSyncMs, lateness);
      this.video.syncLost = lipSyncLost(next, lateness);
      if (next !== this.lipSyncMs) {
        this.lipSyncMs = next;
        this.player.setLipSyncMs(next);
        this.video.lateness = []; // judge the new hold on frames that arrive under it
      }
    }
  }

  /** The figures for window.mirage.timing: raw samples (for tests) and recent percentiles (for people). */
  timing() {
    const hold = this.holdBack.holdBackMs;
    const plusHold = (v) => (v === null ? null : v + (hold ?? 0));
    const { audioDelay, queueWait, video } = this;
    return {
      holdBackMs: hold,
      holdBackCorrelation: this.holdBack.correlation,
      lipSyncMs: this.lipSyncMs,
      lipSyncLost: this.video.syncLost,
      audioDelayMs: [...audioDelay.values],
      queueWaitMs: [...queueWait.values],
      avSkewMs: [...video.skewMs.values],
      videoShownMs: [...video.shownLatencyMs.values],
      mouthToEarP50: plusHold(audioDelay.percentile(50, RECENT_SAMPLES)),
      mouthToEarP95: plusHold(audioDelay.percentile(95, RECENT_SAMPLES)),
      queueWaitP50: queueWait.percentile(50, RECENT_SAMPLES),
      avSkewP50: video.skewMs.percentile(50, RECENT_SAMPLES),
      avSkewP99: video.skewMs.percentile(99, RECENT_SAMPLES),
      videoShownP50: video.shownLatencyMs.percentile(50, RECENT_SAMPLES),
      framesShown: video.shown,
      framesSkipped: video.skipped,
      framesLate: video.lateDropped,
      framesForced: video.forced,
    };
  }
}
