// Microphone capture in the audio thread: resample the context rate (44.1/48 kHz, or any) to 16 kHz with a
// windowed-sinc filter whose state carries across render quanta, convert to PCM16 and post chunks of exactly
// `chunk_ms` (a multiple of 10 ms) to the page together with the context time of each chunk's first sample.

const TARGET_RATE_HZ = 16000;
const SAMPLES_PER_10MS = TARGET_RATE_HZ / 100;
const MAX_CHUNK_MS = 1000;
const MIN_CHUNK_MS = 10;
const ZERO_CROSSINGS = 16; // per side, at the lower of the two rates
const PASSBAND = 0.92; // cutoff as a fraction of the output Nyquist frequency
const TABLE_STEPS_PER_SAMPLE = 512; // kernel table resolution, per input sample
const PCM16_MAX = 32767;
const RENDER_QUANTUM = 128;
const MAX_GAP_FILL_S = 2; // a longer pause in rendering re-anchors the clock instead of inserting silence

/** Blackman-windowed sinc low-pass sampled on a fine grid over [0, halfWidth] input samples. */
function buildKernel(cutoff, halfWidth) {
  const size = Math.ceil(halfWidth * TABLE_STEPS_PER_SAMPLE) + 2;
  const table = new Float32Array(size);
  for (let i = 0; i < size; i += 1) {
    const x = i / TABLE_STEPS_PER_SAMPLE;
    if (x >= halfWidth) break;
    const arg = Math.PI * cutoff * x;
    const sinc = x === 0 ? 1 : Math.sin(arg) / arg;
    const w = 0.42 + 0.5 * Math.cos((Math.PI * x) / halfWidth) + 0.08 * Math.cos((2 * Math.PI * x) / halfWidth);
    table[i] = cutoff * sinc * w;
  }
  return table;
}

/** Streaming sinc resampler: push input blocks, get every output sample that is fully determined so far. */
class SincResampler {
  constructor(inRate, outRate) {
    this.step = inRate / outRate; // input samples per output sample
    const cutoff = Math.min(1, outRate / inRate) * PASSBAND; // relative to the input Nyquist
    this.halfWidth = ZERO_CROSSINGS / cutoff;
    this.reach = Math.ceil(this.halfWidth);
    this.kernel = buildKernel(cutoff, this.halfWidth);
    // History primed with zeros so that output sample 0 sits exactly on input sample 0.
    this.buf = new Float32Array(8192);
    this.len = this.reach;
    this.pos = this.reach;
  }

  /** Append `input` and return the new output samples (Float32Array, may be empty). */
  push(input) {
    if (this.len + input.length > this.buf.length) {
      const grown = new Float32Array((this.len + input.length) * 2);
      grown.set(this.buf.subarray(0, this.len));
      this.buf = grown;
    }
    this.buf.set(input, this.len);
    this.len += input.length;
    const available = Math.max(0, Math.floor((this.len - 1 - this.reach - this.pos) / this.step) + 1);
    const out = new Float32Array(available);
    const { buf, kernel, halfWidth, step } = this;
    let pos = this.pos;
    for (let n = 0; n < available; n += 1) {
      const lo = Math.ceil(pos - halfWidth);
      const hi = Math.floor(pos + halfWidth);
      let acc = 0;
      for (let k = lo; k <= hi; k += 1) {
        const t = Math.abs(pos - k) * TABLE_STEPS_PER_SAMPLE;
        const i = Math.floor(t);
        const frac = t - i;
        acc += buf[k] * (kernel[i] + frac * (kernel[i + 1] - kernel[i]));
      }
      out[n] = acc;
      pos += step;
    }
    // Drop history no future output sample can reach.
    const keepFrom = Math.max(0, Math.floor(pos) - this.reach - 1);
    if (keepFrom > 0) {
      buf.copyWithin(0, keepFrom, this.len);
      this.len -= keepFrom;
      pos -= keepFrom;
    }
    this.pos = pos;
    return out;
  }
}

class MirageCaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = options.processorOptions ?? {};
    this.resampler = new SincResampler(sampleRate, TARGET_RATE_HZ);
    this.chunkSamples = MirageCaptureProcessor.chunkSamplesFor(opts.chunkMs ?? 192);
    this.stage = new Int16Array(2 * MAX_CHUNK_MS * (TARGET_RATE_HZ / 1000));
    this.fill = 0;
    this.sumSquares = 0;
    this.samplesOut = 0; // output samples emitted in chunks so far
    this.alignAt = null; // a sample position where a server block starts: chunk ends fall on block ends
    this.startTime = null; // context time of input sample 0
    this.running = true;
    this.port.onmessage = (event) => this.onControl(event.data);
  }

  static chunkSamplesFor(chunkMs) {
    const ms = Math.min(MAX_CHUNK_MS, Math.max(MIN_CHUNK_MS, Math.round(chunkMs / 10) * 10));
    return (ms / 10) * SAMPLES_PER_10MS;
  }

  onControl(msg) {
    if (msg?.type === "chunk_ms") {
      this.chunkSamples = MirageCaptureProcessor.chunkSamplesFor(msg.value);
      this.alignAt = Number.isInteger(msg.alignAt) ? msg.alignAt : null;
      this.flushFullChunks();
    } else if (msg?.type === "stop") {
      this.running = false;
    }
  }

  /**
   * Samples in the next chunk: a whole chunk, or after a block size change the whole 10 ms frames up to the next
   * block end (rounded up: a block off the 10 ms grid waits < 10 ms, never a whole chunk), so that the chunk
   * completing a block is sent as soon as the block is captured.
   */
  nextChunkSamples() {
    const size = this.chunkSamples;
    if (this.alignAt === null) return size;
    const toBoundary = (((this.alignAt - this.samplesOut) % size) + size) % size;
    return Math.ceil(toBoundary / SAMPLES_PER_10MS) * SAMPLES_PER_10MS || size;
  }

  flushFullChunks() {
    let n;
    while (this.fill >= (n = this.nextChunkSamples())) {
      const pcm = this.stage.slice(0, n);
      let sumSquares = 0;
      for (let i = 0; i < pcm.length; i += 1) sumSquares += (pcm[i] / 32768) ** 2;
      this.stage.copyWithin(0, n, this.fill);
      this.fill -= n;
      const firstSample = this.samplesOut;
      this.samplesOut += pcm.length;
      this.port.postMessage(
        {
          type: "chunk",
          pcm: pcm.buffer,
          samples: pcm.length,
          firstSample,
          contextTime: this.startTime + firstSample / TARGET_RATE_HZ,
          rms: Math.sqrt(sumSquares / pcm.length),
        },
        [pcm.buffer],
      );
    }
  }

  /**
   * Chromium may skip render quanta right after a node starts (measured: ~90 ms). Samples are stamped as
   * start + position, so a skipped stretch is filled with silence to keep positions on the context clock.
   */
  fillGap() {
    const missing = Math.round((currentTime - this.startTime) * sampleRate) - this.inputSamples;
    if (missing < RENDER_QUANTUM / 2) return;
    if (missing > MAX_GAP_FILL_S * sampleRate) {
      this.startTime = currentTime - this.inputSamples / sampleRate; // re-anchor (shifts later stamps only)
      return;
    }
    this.inputSamples += missing;
    this.emit(this.resampler.push(new Float32Array(missing)));
  }

  emit(resampled) {
    for (let i = 0; i < resampled.length; i += 1) {
      if (this.fill === this.stage.length) this.flushFullChunks(); // a chunk is at most half the stage
      const clamped = Math.max(-1, Math.min(1, resampled[i]));
      this.stage[this.fill] = Math.round(clamped * PCM16_MAX);
      this.fill += 1;
    }
    this.flushFullChunks();
  }

  process(inputs) {
    if (!this.running) return false;
    const input = inputs[0];
    const connected = input && input.length > 0;
    if (!connected && this.startTime === null) return true; // not connected yet
    if (this.startTime === null) {
      this.startTime = currentTime;
      this.inputSamples = 0;
    }
    this.fillGap();
    // While the source is swapped (another microphone) the input is empty: count silence, so that the chunks'
    // times (start + samples emitted) stay on the context clock.
    let mono = connected ? input[0] : new Float32Array(RENDER_QUANTUM);
    this.inputSamples += mono.length;
    if (connected && input.length > 1) {
      mono = new Float32Array(input[0].length);
      for (const channel of input) for (let i = 0; i < mono.length; i += 1) mono[i] += channel[i] / input.length;
    }
    this.emit(this.resampler.push(mono));
    return true;
  }
}

registerProcessor("mirage-capture", MirageCaptureProcessor);
