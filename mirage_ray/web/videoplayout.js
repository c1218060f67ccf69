// Returned video on the audio clock: frames wait until their sound is heard, late ones are skipped, every drawn
// frame's skew against its sound is measured, and the lip-sync hold asks the voice to wait for a slower picture.
// All times are on the performance.now() clock, in ms.

import { RollingSamples } from "./playout.js";

const MAX_VIDEO_WAIT_MS = 1500; // a frame never waits longer than this for its sound (a broken clock must not freeze)
const MAX_QUEUED_FRAMES = 60;
const LATE_DROP_MS = 120; // a frame whose sound was heard longer ago than this is not shown ...
const MAX_FREEZE_MS = 3000; // ... unless the picture has not changed for this long, or sync is given up
const SKEW_PENDING_MS = 4000; // a shown frame whose sound never plays (dropped, trimmed) is not measured
const LATE_TOLERANCE_MS = 20; // lip-sync hold: raised when the picture arrives later than its sound by more ...
const EARLY_MARGIN_MS = 80; // ... lowered when the picture arrives this much earlier than its sound
const MAX_LIP_SYNC_MS = 400; // the voice is never held back more than this for the picture
const LATENESS_WINDOW_MS = 3000;
const LATENESS_MIN_FRAMES = 10;

/**
 * Returned video frames wait until the audio clock reaches their capture time, then the newest due frame is drawn
 * (older due ones are skipped). A frame that arrives after its sound was heard is drawn at once, unless it is more
 * than LATE_DROP_MS late (then it is skipped, unless the picture has not changed for MAX_FREEZE_MS or sync is
 * given up: the voice already held back as far as it goes). Every drawn frame is checked later against when its
 * sound was actually heard: `skewMs` = shown − heard (positive: the picture is late).
 */
export class VideoPlayout {
  constructor(clock, draw) {
    this.clock = clock;
    this.draw = draw; // (frame) => void; the frame's bitmap is closed after drawing
    this.queue = [];
    this.pendingSkew = [];
    this.skewMs = new RollingSamples(2000);
    this.shownLatencyMs = new RollingSamples(200);
    this.skipped = 0;
    this.forced = 0;
    this.lateDropped = 0;
    this.shown = 0;
    this.syncLost = false; // the voice cannot be held back enough: late frames are shown, out of sync
    this.lastDrawnMs = performance.now();
    this.lateness = []; // {t, lateMs}: how much later than its sound each frame arrived
    this.lastShownCaptureMs = null;
  }

  /** A decoded frame: `{captureMs, arrivedMs, bitmap, ...}`. Frames older than the one on screen are discarded. */
  push(frame) {
    const due = this.clock.heardWhen(frame.captureMs); // null: its sound is not even scheduled yet (early)
    this.lateness.push({ t: frame.arrivedMs, lateMs: due === null ? -Infinity : frame.arrivedMs - due });
    if (this.lastShownCaptureMs !== null && frame.captureMs <= this.lastShownCaptureMs) {
      frame.bitmap.close();
      return;
    }
    let i = this.queue.length;
    while (i > 0 && this.queue[i - 1].captureMs > frame.captureMs) i -= 1;
    this.queue.splice(i, 0, frame);
    while (this.queue.length > MAX_QUEUED_FRAMES) this.discard(this.queue.shift());
  }

  get queued() {
    return this.queue.length;
  }

  /** Called once per display frame. */
  tick(now) {
    this.resolveSkew(now);
    if (!this.queue.length) return;
    const heard = this.clock.heardAt(now);
    let due = -1;
    let forced = false;
    for (let i = 0; i < this.queue.length; i += 1) {
      const f = this.queue[i];
      if (heard === null || f.captureMs <= heard) [due, forced] = [i, false];
      else if (now - f.arrivedMs > MAX_VIDEO_WAIT_MS) [due, forced] = [i, true];
    }
    if (due < 0) return;
    for (let i = 0; i < due; i += 1) this.discard(this.queue[i]);
    const frame = this.queue[due];
    this.queue = this.queue.slice(due + 1);
    const soundAt = heard === null ? null : this.clock.heardWhen(frame.captureMs);
    const tooLate = soundAt !== null && now - soundAt > LATE_DROP_MS;
    if (tooLate && !this.syncLost && now - this.lastDrawnMs < MAX_FREEZE_MS) {
      this.lateDropped += 1; // its sound was heard too long ago: out of sync, and a newer frame is near
      frame.bitmap.close();
      return;
    }
    if (forced) this.forced += 1;
    this.draw(frame);
    frame.bitmap.close();
    this.lastDrawnMs = now;
    this.shown += 1;
    this.lastShownCaptureMs = frame.captureMs;
    this.shownLatencyMs.push(now - frame.captureMs);
    if (heard !== null) this.pendingSkew.push({ captureMs: frame.captureMs, shownMs: now });
  }

  resolveSkew(now) {
    this.pendingSkew = this.pendingSkew.filter((p) => {
      const heard = this.clock.heardWhen(p.captureMs); // scheduled audio: its time is known before it plays
      if (heard !== null) {
        this.skewMs.push(p.shownMs - heard);
        return false;
      }
      return now - p.shownMs < SKEW_PENDING_MS;
    });
  }

  /** 90th percentile of how late recent frames arrived for their sound, or null with too few frames. */
  recentLatenessMs(now) {
    this.lateness = this.lateness.filter((l) => now - l.t < LATENESS_WINDOW_MS);
    if (this.lateness.length < LATENESS_MIN_FRAMES) return null;
    const sorted = this.lateness.map((l) => l.lateMs).sort((a, b) => a - b);
    return sorted[Math.floor(0.9 * (sorted.length - 1))];
  }

  discard(frame) {
    this.skipped += 1;
    frame.bitmap.close();
  }

  /** Drop everything queued (stop, new session). */
  clear() {
    for (const frame of this.queue) frame.bitmap.close();
    this.queue = [];
    this.pendingSkew = [];
    this.lateness = [];
    this.lastShownCaptureMs = null;
    this.lastDrawnMs = performance.now(); // a new session's first frame must be in sync too (or 3 s pass)
  }
}

/**
 * Lip sync when the picture is the slower stream: the voice is held back (up to MAX_LIP_SYNC_MS) until recent
 * frames (90th percentile) arrive no later than their sound is heard; the hold is released again as the picture
 * catches up. Only a picture slower than the voice costs voice latency.
 */
/** The picture is later than its sound even with the largest hold: sync is given up (frames shown late). */
export function lipSyncLost(holdMs, latenessMs) {
  return holdMs >= MAX_LIP_SYNC_MS && latenessMs !== null && latenessMs > LATE_TOLERANCE_MS;
}

export function nextLipSyncMs(currentMs, latenessMs) {
  if (latenessMs === null) return currentMs;
  if (latenessMs > LATE_TOLERANCE_MS) return Math.min(MAX_LIP_SYNC_MS, currentMs + latenessMs);
  if (latenessMs < -EARLY_MARGIN_MS) return Math.max(0, currentMs - Math.min(-latenessMs - EARLY_MARGIN_MS / 2, 100));
  return currentMs;
}
