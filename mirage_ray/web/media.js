// Media plumbing for the page: camera frames → JPEG, microphone → 16 kHz PCM16 chunks (via the worklet), and
// gap-free playback of returned PCM16 on a scheduled timeline. No protocol bytes here (see protocol.js).

import { SAMPLE_RATE_HZ } from "./protocol.js";

export const MEDIA_CONSTRAINTS = Object.freeze({
  video: { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 30 } },
  audio: {
    channelCount: 1,
    echoCancellation: false,
    noiseSuppression: false,
    autoGainControl: false,
  },
});

/**
 * Scales the camera picture to the directed size, cover-cropping (centre) when the aspect ratios differ,
 * and encodes it as JPEG.
 */
export class FrameGrabber {
  constructor(videoEl) {
    this.video = videoEl;
    this.canvas = typeof OffscreenCanvas === "function" ? new OffscreenCanvas(1, 1) : document.createElement("canvas");
    this.ctx = this.canvas.getContext("2d", { alpha: false });
  }

  /** True once the camera delivers pictures. */
  get ready() {
    return this.video.readyState >= 2 && this.video.videoWidth > 0;
  }

  /**
   * Draw the current camera picture at width×height and encode it.
   * @returns {Promise<{bytes: Uint8Array, perfMs: number}>} JPEG bytes and the draw time (performance.now()).
   */
  async grab(width, height, quality) {
    if (this.canvas.width !== width) this.canvas.width = width;
    if (this.canvas.height !== height) this.canvas.height = height;
    const { sx, sy, sw, sh } = coverCrop(this.video.videoWidth, this.video.videoHeight, width, height);
    this.ctx.drawImage(this.video, sx, sy, sw, sh, 0, 0, width, height);
    const perfMs = performance.now();
    const blob = await encodeJpeg(this.canvas, quality);
    return { bytes: new Uint8Array(await blob.arrayBuffer()), perfMs };
  }
}

/** Source rectangle that fills dstW×dstH without distortion (centre crop). */
export function coverCrop(srcW, srcH, dstW, dstH) {
  const scale = Math.max(dstW / srcW, dstH / srcH);
  const sw = dstW / scale;
  const sh = dstH / scale;
  return { sx: (srcW - sw) / 2, sy: (srcH - sh) / 2, sw, sh };
}

function encodeJpeg(canvas, quality) {
  if (typeof canvas.convertToBlob === "function") return canvas.convertToBlob({ type: "image/jpeg", quality });
  return new Promise((resolve, reject) => {
    canvas.toBlob((blob) => (blob ? resolve(blob) : reject(new Error("JPEG encoding failed"))), "image/jpeg", quality);
  });
}

/**
 * Microphone → worklet (resample to 16 kHz, PCM16, chunking). Calls onChunk({pcm: Int16Array, perfMs, rms}),
 * where perfMs is the capture time of the chunk's first sample on the performance.now() clock.
 */
export class AudioCapture {
  static async create(ctx, stream, chunkMs, onChunk) {
    await ctx.audioWorklet.addModule(new URL("./audio-worklet.js", import.meta.url));
    const source = ctx.createMediaStreamSource(stream);
    const node = new AudioWorkletNode(ctx, "mirage-capture", {
      numberOfInputs: 1,
      numberOfOutputs: 1,
      outputChannelCount: [1],
      channelCount: 1,
      channelCountMode: "explicit",
      processorOptions: { chunkMs },
    });
    // The node outputs silence; routing it to the destination through a muted gain keeps it rendered.
    const sink = ctx.createGain();
    sink.gain.value = 0;
    source.connect(node).connect(sink).connect(ctx.destination);
    return new AudioCapture(ctx, source, node, sink, onChunk);
  }

  constructor(ctx, source, node, sink, onChunk) {
    this.ctx = ctx;
    this.source = source;
    this.node = node;
    this.sink = sink;
    node.port.onmessage = (event) => {
      const msg = event.data;
      if (msg?.type !== "chunk") return;
      onChunk({ pcm: new Int16Array(msg.pcm), perfMs: this.contextToPerfMs(msg.contextTime), rms: msg.rms });
    };
  }

  /** Map an AudioContext time to the performance.now() clock. */
  contextToPerfMs(contextTime) {
    const stamp = this.ctx.getOutputTimestamp?.();
    if (stamp && stamp.performanceTime > 0) return stamp.performanceTime + (contextTime - stamp.contextTime) * 1000;
    return performance.now() - (this.ctx.currentTime - contextTime) * 1000;
  }

  setChunkMs(chunkMs) {
    this.node.port.postMessage({ type: "chunk_ms", value: chunkMs });
  }

  stop() {
    this.node.port.postMessage({ type: "stop" });
    this.source.disconnect();
    this.node.disconnect();
    this.sink.disconnect();
  }
}

const MAX_AHEAD_S = 0.5; // never let the playout queue grow past this: drop instead, to keep latency constant

/**
 * Plays 16 kHz mono chunks back to back. Each chunk starts at max(end of the previous one, now + jitter buffer);
 * when the previous one already ended, that is an underrun. Chunks that would push the queue past MAX_AHEAD_S
 * are dropped.
 */
export class AudioPlayer {
  constructor(ctx, jitterMs) {
    this.ctx = ctx;
    this.jitterS = jitterMs / 1000;
    this.nextTime = 0;
    this.started = false;
    this.underruns = 0;
    this.dropped = 0;
    this.gain = ctx.createGain();
    this.gain.connect(ctx.destination);
  }

  setJitterMs(jitterMs) {
    this.jitterS = Math.max(0, jitterMs) / 1000;
  }

  setVolume(volume) {
    this.gain.gain.value = volume;
  }

  /** Seconds of audio scheduled beyond now. */
  get aheadS() {
    return Math.max(0, this.nextTime - this.ctx.currentTime);
  }

  /** Schedule one chunk of Float32 samples at 16 kHz; returns "played", "underrun" or "dropped". */
  play(samples) {
    if (samples.length === 0) return "played";
    const now = this.ctx.currentTime;
    const duration = samples.length / SAMPLE_RATE_HZ;
    if (this.nextTime - now + duration > MAX_AHEAD_S) {
      this.dropped += 1;
      return "dropped";
    }
    const ranDry = this.started && this.nextTime < now;
    if (ranDry) this.underruns += 1;
    const buffer = this.ctx.createBuffer(1, samples.length, SAMPLE_RATE_HZ);
    buffer.copyToChannel(samples, 0);
    const node = this.ctx.createBufferSource();
    node.buffer = buffer;
    node.connect(this.gain);
    const at = Math.max(this.nextTime, now + this.jitterS);
    node.start(at);
    this.nextTime = at + duration;
    this.started = true;
    return ranDry ? "underrun" : "played";
  }

  /** Forget the timeline (after a reconnect) so the next chunk re-primes the jitter buffer. */
  reset() {
    this.nextTime = 0;
    this.started = false;
  }

  close() {
    this.gain.disconnect();
  }
}
