// What the page sends in a session: camera frames at the directed size and rate (with back-pressure), microphone
// chunks and the reference photo, each kind with its own seq (+1 per message, from 0 in every session).

import * as P from "./protocol.js";
import { RateMeter } from "./ui.js";

const MAX_UNANSWERED_FRAMES = 2; // back-pressure: hold frames back while more than this many await a reply
const UNANSWERED_EXPIRY_MS = 2000; // a frame unanswered this long was dropped by the server
const MAX_WS_BUFFERED_BYTES = 1_000_000;
const PAUSED_POLL_MS = 250; // while video is paused without probe frames, look again this often

export class Sender {
  /**
   * @param {import("./connection.js").Connection} connection
   * @param {object} mirage  window.mirage: the directed `video`, and the counters this updates
   * @param {() => boolean} live  whether the session is streaming
   * @param {(warning: string) => void} warn
   */
  constructor(connection, mirage, live, warn) {
    this.connection = connection;
    this.mirage = mirage;
    this.live = live;
    this.warn = warn;
    this.rate = new RateMeter();
    this.unanswered = new Map(); // video seq → performance.now() when sent
    this.timer = null;
    this.grabber = null;
    this.stop();
  }

  /** A session started: seqs from 0, frames from `grabber` at the directed rate. */
  start(grabber) {
    this.stop();
    this.grabber = grabber;
    this.nextFrameAt = performance.now();
    this.schedule();
  }

  stop() {
    clearTimeout(this.timer);
    this.timer = null;
    this.unanswered.clear();
    this.grabbing = false;
    this.seq = { video: 0, audio: 0, reference: 0 };
  }

  /** A returned frame: it and every earlier one are answered. */
  answered(seq) {
    for (const sent of this.unanswered.keys()) if (P.seqAtOrAfter(seq, sent)) this.unanswered.delete(sent);
  }

  schedule() {
    const fps = this.mirage.video.fps;
    const now = performance.now();
    if (!(fps > 0)) { // paused without probe frames: send nothing, look again soon
      this.nextFrameAt = now;
      this.timer = setTimeout(() => this.frame(), PAUSED_POLL_MS);
      return;
    }
    this.nextFrameAt = Math.max(this.nextFrameAt + 1000 / fps, now);
    this.timer = setTimeout(() => this.frame(), this.nextFrameAt - now);
  }

  async frame() {
    if (!this.live()) return;
    this.schedule();
    const m = this.mirage;
    if (!(m.video.fps > 0)) return;
    const now = performance.now();
    for (const [seq, at] of this.unanswered) if (now - at > UNANSWERED_EXPIRY_MS) this.unanswered.delete(seq);
    if (this.grabbing || !this.grabber?.ready) return;
    if (this.unanswered.size > MAX_UNANSWERED_FRAMES || this.connection.bufferedAmount > MAX_WS_BUFFERED_BYTES) {
      m.framesSkipped += 1;
      return;
    }
    this.grabbing = true;
    try {
      const { width, height, jpeg_quality: quality } = m.video;
      const { bytes, perfMs } = await this.grabber.grab(width, height, quality / 100);
      if (!this.live()) return;
      const seq = this.seq.video;
      this.connection.send(P.packMessage(P.Kind.VIDEO, seq, P.perfMsToUs(perfMs), bytes));
      this.unanswered.set(seq, performance.now());
      this.seq.video = P.nextSeq(seq);
      m.framesSent += 1;
      this.rate.mark();
    } catch (err) {
      this.warn(`frame capture failed: ${err.message}`);
    } finally {
      this.grabbing = false;
    }
  }

  /** One microphone chunk (Int16Array) whose first sample was captured at `perfMs`. */
  audio(pcm, perfMs) {
    this.connection.send(P.packMessage(P.Kind.AUDIO, this.seq.audio, P.perfMsToUs(perfMs), pcm));
    this.seq.audio = P.nextSeq(this.seq.audio);
    this.mirage.audioChunksSent += 1;
    this.mirage.audioSamplesSent += pcm.length;
  }

  reference(bytes) {
    this.connection.send(P.packMessage(P.Kind.REFERENCE, this.seq.reference, P.nowUs(), bytes));
    this.seq.reference = P.nextSeq(this.seq.reference);
  }
}
