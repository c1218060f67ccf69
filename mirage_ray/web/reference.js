// The reference photo: chosen in the page, sent to the server (now, or when the next session starts), its answer
// shown under it; the last photo the server accepted is sent again after a reconnect.

import { HEADER_BYTES, imageMimeOf } from "./protocol.js";

export class ReferencePhoto {
  /**
   * @param {{input: HTMLInputElement, preview: HTMLImageElement, status: HTMLElement}} els
   * @param {(bytes: Uint8Array) => boolean} send  sends the photo when a session is live; false otherwise
   * @param {() => number|undefined} maxBytes  the server's `limits.max_frame_bytes`, when known
   * @param {(level: string, text: string) => void} log
   */
  constructor(els, send, maxBytes, log) {
    this.els = els;
    this.send = send;
    this.maxBytes = maxBytes;
    this.log = log;
    this.accepted = null; // the last photo the server accepted
    this.pending = null; // chosen, not answered yet
    els.input.addEventListener("change", () => this.chosen());
  }

  async chosen() {
    const file = this.els.input.files?.[0];
    if (!file) return;
    const bytes = new Uint8Array(await file.arrayBuffer());
    const mime = imageMimeOf(bytes);
    if (!mime) {
      this.status("error: choose a JPEG or PNG image", false);
      return;
    }
    URL.revokeObjectURL(this.els.preview.src);
    this.els.preview.src = URL.createObjectURL(new Blob([bytes], { type: mime }));
    this.offer(bytes, `reference photo ${file.name} (${Math.round(bytes.byteLength / 1024)} kB) sent`);
  }

  /** A session started: the photo waiting for an answer, else the last accepted one, goes to it. */
  sessionStarted() {
    const bytes = this.pending ?? this.accepted;
    if (bytes) this.offer(bytes, "sending the reference photo again for this session");
  }

  offer(bytes, why) {
    this.pending = bytes; // until the server answers; sent with the next session if this one ends first
    const limit = this.maxBytes();
    if (limit && bytes.byteLength + HEADER_BYTES > limit) {
      this.status(`error: file is ${bytes.byteLength} bytes, the server accepts ${limit}`, false);
      this.pending = null;
      return;
    }
    if (!this.send(bytes)) {
      this.status("will be sent when connected", null);
      return;
    }
    this.status("uploaded, waiting for the server…", null);
    this.log("info", why);
  }

  /** The server's `reference` answer. */
  answered(msg) {
    if (msg.ok && this.pending) this.accepted = this.pending;
    this.pending = null;
    const text = msg.ok
      ? `ok — ${msg.faces ?? "?"} face${msg.faces === 1 ? "" : "s"} found`
      : `error: ${msg.error ?? "reference rejected"}`;
    this.status(text, Boolean(msg.ok));
    this.log(msg.ok ? "info" : "error", `reference photo: ${text}`);
  }

  status(text, ok) {
    this.els.status.textContent = text;
    this.els.status.dataset.ok = ok === null ? "" : String(ok);
  }
}
