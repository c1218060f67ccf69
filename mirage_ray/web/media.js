// Media capture for the page: device choice, camera frames → JPEG, microphone → 16 kHz PCM16 chunks (via the
// worklet), and the context → performance clock mapping. Playback lives in playout.js; protocol bytes in protocol.js.

const CAMERA_CONSTRAINTS = Object.freeze({ width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 30 } });
const CAPTURE_TIME_MAX_AGE_MS = 1000; // a camera frame's own capture time older than this is not trusted

/**
 * getUserMedia constraints. Echo cancellation is a choice (on by default: without headphones the speakers feed the
 * returned voice back into the microphone); noise suppression and automatic gain control stay off so that the
 * voice converter gets the voice as it is.
 */
export function mediaConstraints({ cameraId = "", micId = "", echoCancellation = true } = {}) {
  return {
    video: { ...CAMERA_CONSTRAINTS, ...(cameraId ? { deviceId: { exact: cameraId } } : {}) },
    audio: {
      channelCount: 1,
      echoCancellation,
      noiseSuppression: false,
      autoGainControl: false,
      ...(micId ? { deviceId: { exact: micId } } : {}),
    },
  };
}

/** Cameras, microphones and speakers: `{videoinput: [{id, label}], audioinput: [...], audiooutput: [...]}`. */
export async function listDevices() {
  const found = { videoinput: [], audioinput: [], audiooutput: [] };
  const devices = (await navigator.mediaDevices?.enumerateDevices?.()) ?? [];
  for (const device of devices) {
    const list = found[device.kind];
    if (!list || !device.deviceId) continue; // no id: the browser hides devices until permission is given
    list.push({ id: device.deviceId, label: device.label || `${device.kind} ${list.length + 1}` });
  }
  return found;
}

/** True when this browser can route an AudioContext to a chosen output device. */
export function canChooseSpeaker() {
  return typeof AudioContext === "function" && typeof AudioContext.prototype.setSinkId === "function";
}

/**
 * Scales the camera picture to the directed size, cover-cropping (centre) when the aspect ratios differ,
 * and encodes it as JPEG.
 */
export class FrameGrabber {
  constructor(videoEl) {
    this.video = videoEl;
    this.canvas = typeof OffscreenCanvas === "function" ? new OffscreenCanvas(1, 1) : document.createElement("canvas");
    this.ctx = this.canvas.getContext("2d", { alpha: false });
    this.frameCaptureMs = null; // the camera's own capture time of the frame on screen (performance clock)
    this.watching = typeof videoEl.requestVideoFrameCallback === "function";
    if (this.watching) this.watchFrames();
  }

  watchFrames() {
    this.video.requestVideoFrameCallback((_now, meta) => {
      this.frameCaptureMs = typeof meta.captureTime === "number" && meta.captureTime > 0 ? meta.captureTime : null;
      if (this.watching) this.watchFrames();
    });
  }

  stop() {
    this.watching = false;
  }

  /** When the picture now on screen was captured: the camera's timestamp when it has one, else now. */
  captureMs(now) {
    const t = this.frameCaptureMs;
    return t !== null && t <= now && now - t < CAPTURE_TIME_MAX_AGE_MS ? t : now;
  }

  /** True once the camera delivers pictures. */
  get ready() {
    return this.video.readyState >= 2 && this.video.videoWidth > 0;
  }

  /**
   * Draw the current camera picture at width×height and encode it.
   * @returns {Promise<{bytes: Uint8Array, perfMs: number}>} JPEG bytes and the picture's capture time
   *   (performance clock: the camera's timestamp where the browser gives one, else the draw time).
   */
  async grab(width, height, quality) {
    if (this.canvas.width !== width) this.canvas.width = width;
    if (this.canvas.height !== height) this.canvas.height = height;
    const { sx, sy, sw, sh } = coverCrop(this.video.videoWidth, this.video.videoHeight, width, height);
    this.ctx.drawImage(this.video, sx, sy, sw, sh, 0, 0, width, height);
    const perfMs = this.captureMs(performance.now());
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
 * Microphone → worklet (resample to 16 kHz, PCM16, chunking). Calls onChunk({pcm: Int16Array, perfMs, rms,
 * firstSample}), where perfMs is the capture time of the chunk's first sample on the performance.now() clock and
 * firstSample its position in the worklet's output.
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
      const perfMs = this.contextToPerfMs(msg.contextTime);
      onChunk({ pcm: new Int16Array(msg.pcm), perfMs, rms: msg.rms, firstSample: msg.firstSample });
    };
  }

  /**
   * The performance-clock time at which the sample at `contextTime` entered the graph: when that context time is
   * heard (the output timestamp) less the output latency.
   */
  contextToPerfMs(contextTime) {
    return contextToPerfMs(this.ctx, contextTime) - (this.ctx.outputLatency ?? 0) * 1000;
  }

  /** Take the microphone from another stream (a device switch); the chunk clock runs on meanwhile. */
  setStream(stream) {
    this.source.disconnect();
    this.source = this.ctx.createMediaStreamSource(stream);
    this.source.connect(this.node);
  }

  /** New chunk length; `alignAt` (a worklet sample position where a server block starts) lines chunks up with blocks. */
  setChunkMs(chunkMs, alignAt = null) {
    this.node.port.postMessage({ type: "chunk_ms", value: chunkMs, alignAt });
  }

  stop() {
    this.node.port.onmessage = null;
    this.node.port.postMessage({ type: "stop" });
    this.source.disconnect();
    this.node.disconnect();
    this.sink.disconnect();
  }
}

/**
 * When the sample at `contextTime` is (or was) heard, on the performance.now() clock: the output timestamp maps
 * the context clock to the performance clock, output latency included.
 */
export function contextToPerfMs(ctx, contextTime) {
  const stamp = ctx.getOutputTimestamp?.();
  if (stamp && stamp.performanceTime > 0) return stamp.performanceTime + (contextTime - stamp.contextTime) * 1000;
  return performance.now() + (contextTime - ctx.currentTime + (ctx.outputLatency ?? 0)) * 1000;
}
