// The one WebSocket: opening it with a token offered as a subprotocol, never two at a time (a new one waits for the
// old one to be closed), and retries with exponential backoff and jitter. What a close means for the page is the
// page's business (app.js); this file only opens, closes and waits.

import * as P from "./protocol.js";

const RECONNECT_BASE_MS = 1000;
const RECONNECT_MAX_MS = 30_000;
const CLOSE_WAIT_MS = 2000; // a replaced socket gets this long to close before the next one opens

export class Connection {
  /**
   * @param {object} hooks
   * @param {() => Promise<{token: string, source: "auto"|"manual"}|null>} hooks.resolveToken
   * @param {(state: string, detail?: string) => void} hooks.onState
   * @param {(data: string|ArrayBuffer) => void} hooks.onMessage
   * @param {(event: CloseEvent) => void} hooks.onClosed  the current socket closed (not one this page replaced)
   * @param {(event: CloseEvent) => void} hooks.onReplacedClosed  a socket this page closed on purpose is closed
   * @param {() => void} hooks.onError
   */
  constructor(baseUrl, hooks) {
    this.url = P.wsUrl(baseUrl);
    this.hooks = hooks;
    this.ws = null;
    this.token = null;
    this.tokenSource = null;
    this.generation = 0; // bumped by every connect/stop: an older connect() in flight gives up
    this.attempt = 0;
    this.timer = null;
    this.opened = 0; // sockets opened so far (one session each)
  }

  get isOpen() {
    return this.ws?.readyState === WebSocket.OPEN;
  }

  send(data) {
    this.ws.send(data);
  }

  get bufferedAmount() {
    return this.ws?.bufferedAmount ?? 0;
  }

  /** Close the current socket (if any) and wait until it is closed, so that two sessions never overlap. */
  close(why) {
    const old = this.ws;
    this.ws = null;
    if (!old || old.readyState === WebSocket.CLOSED) return Promise.resolve();
    return new Promise((resolve) => {
      const done = (event) => {
        if (event?.code) this.hooks.onReplacedClosed(event);
        resolve();
      };
      old.addEventListener("close", done, { once: true });
      setTimeout(done, CLOSE_WAIT_MS);
      if (old.readyState <= WebSocket.OPEN) old.close(P.CloseCode.NORMAL, why);
    });
  }

  /** No more (re)connecting; the current socket is closed. */
  stop(why) {
    this.generation += 1;
    clearTimeout(this.timer);
    return this.close(why);
  }

  /** Open a new socket, closing the current one first. */
  async connect() {
    const generation = ++this.generation;
    clearTimeout(this.timer);
    await this.close("reconnecting");
    if (generation !== this.generation) return;
    this.hooks.onState("connecting");
    const resolved = await this.hooks.resolveToken();
    if (generation !== this.generation) return;
    if (!resolved) {
      this.hooks.onState("need-token", "enter an access token (see the help under the field)");
      return;
    }
    let socket;
    try {
      socket = new WebSocket(this.url, [P.SUBPROTOCOL, P.BEARER_PREFIX + resolved.token]);
    } catch (err) {
      this.hooks.onState("need-token", `cannot connect: ${err.message}`);
      return;
    }
    this.opened += 1;
    this.token = resolved.token;
    this.tokenSource = resolved.source;
    socket.binaryType = "arraybuffer";
    socket.onmessage = (event) => socket === this.ws && this.hooks.onMessage(event.data);
    socket.onclose = (event) => {
      if (socket !== this.ws) return; // a socket this page replaced or stopped
      this.ws = null;
      this.hooks.onClosed(event);
    };
    socket.onerror = () => socket === this.ws && this.hooks.onError();
    socket.onopen = () => socket === this.ws && this.hooks.onState("open", "waiting for the server's hello");
    this.ws = socket;
  }

  /** Try again after a backoff (1 s, 2 s, 4 s … 30 s, each ×0.5–1 at random); returns the delay in ms. */
  retryLater() {
    const delay = Math.min(RECONNECT_MAX_MS, RECONNECT_BASE_MS * 2 ** this.attempt) * (0.5 + Math.random() / 2);
    this.attempt += 1;
    this.timer = setTimeout(() => this.connect(), delay);
    return delay;
  }

  /** A session started (or the user asked): the next retry waits the shortest time again. */
  resetBackoff() {
    this.attempt = 0;
  }
}
