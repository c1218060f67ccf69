// The settings controls: they show the server's values (hello.settings, then every `settings` answer), go back to
// them after a refusal, clamp to the allowed ranges, offer the voices the server accepts and grey out what the
// server cannot do (no enhancer).

import { SETTING_LIMITS, VOICE_PRESETS } from "./protocol.js";

/** Setting name → control element id. */
export const CONTROL_IDS = Object.freeze({
  max_faces: "maxFaces",
  swap: "swap",
  enhance: "enhance",
  fidelity: "fidelity",
  pitch_semitones: "pitch",
  formant_shift: "formant",
  voice: "voice",
});

const LABEL_DIGITS = { fidelity: 2, pitch_semitones: 1, formant_shift: 2 };

function label(input, key, value) {
  const out = document.querySelector(`output[for="${input.id}"]`);
  if (!out) return;
  const digits = LABEL_DIGITS[key] ?? 0;
  out.value = typeof value === "number" ? String(Number(value.toFixed(digits))) : String(value);
}

/** Whether `hello.backends` reports a working face enhancer, and why not. */
export function enhancerAvailability(backends) {
  const info = backends?.enhancer;
  if (info === undefined || info === null) return { available: false, why: "the server did not report an enhancer" };
  if (typeof info === "string") {
    return info === "none" ? { available: false, why: "the server has no face enhancer" } : { available: true, why: "" };
  }
  if (info.ready === false) return { available: false, why: `the enhancer is not ready${info.error ? `: ${info.error}` : ""}` };
  if (info.fallback || info.name === "none") {
    return { available: false, why: `the server has no face enhancer${info.reason ? ` (${info.reason})` : ""}` };
  }
  return { available: true, why: "" };
}

export class SettingsControls {
  /** @param {(key: string, value: unknown) => void} onChange called with the (clamped) value the user chose */
  constructor(fieldset, onChange) {
    this.fieldset = fieldset;
    this.inputs = {};
    for (const [key, id] of Object.entries(CONTROL_IDS)) {
      const input = document.getElementById(id);
      this.inputs[key] = input;
      input.addEventListener("change", () => onChange(key, this.read(key)));
      if (input.type === "range") input.addEventListener("input", () => label(input, key, Number(input.value)));
    }
    this.enhancer = { available: true, why: "" };
    this.shown = {};
  }

  /** The value of one control, clamped to the allowed range (the control shows the clamped value). */
  read(key) {
    const input = this.inputs[key];
    if (input.type === "checkbox") return input.checked;
    if (input.tagName === "SELECT" || input.type === "text") return input.value.trim();
    let value = Number(input.value);
    const [lo, hi] = SETTING_LIMITS[key] ?? [-Infinity, Infinity];
    if (!Number.isFinite(value)) value = this.shown[key] ?? lo;
    if (key === "max_faces") value = Math.round(value);
    value = Math.min(hi, Math.max(lo, value));
    if (Number(input.value) !== value) input.value = String(value);
    label(input, key, value);
    return value;
  }

  /** Show the server's values (any subset of the settings fields). */
  show(settings) {
    for (const [key, input] of Object.entries(this.inputs)) {
      if (!settings || !(key in settings)) continue;
      const value = settings[key];
      this.shown[key] = value;
      if (input.type === "checkbox") input.checked = Boolean(value);
      else if (input.tagName === "SELECT") this.selectVoice(value);
      else input.value = String(value ?? "");
      label(input, key, value);
    }
  }

  /** Offer the presets and the server's model voices; keep the current value selectable even if unknown. */
  setVoices(models) {
    const select = this.inputs.voice;
    const group = (title, names) => {
      const g = document.createElement("optgroup");
      g.label = title;
      for (const name of names) g.append(new Option(name, name));
      return g;
    };
    const groups = [group("presets", VOICE_PRESETS)];
    const extra = (models ?? []).map(String).filter((v) => !VOICE_PRESETS.includes(v));
    if (extra.length) groups.push(group("voice models", extra));
    select.replaceChildren(...groups);
    if ("voice" in this.shown) this.selectVoice(this.shown.voice);
  }

  selectVoice(value) {
    const select = this.inputs.voice;
    const name = value === null || value === undefined ? "" : String(value);
    if (![...select.options].some((o) => o.value === name)) {
      select.append(new Option(name || "(none)", name)); // the server's current voice, even if not listed
    }
    select.value = name;
  }

  /** Grey out Enhance and Fidelity when the server has no enhancer, saying why. */
  setEnhancer(availability) {
    this.enhancer = availability;
    this.applyEnabled();
  }

  /** Controls are live only while connected (before that, the server's values are not known). */
  setConnected(connected) {
    this.connected = connected;
    this.applyEnabled();
  }

  applyEnabled() {
    this.fieldset.disabled = !this.connected;
    for (const key of ["enhance", "fidelity"]) {
      const input = this.inputs[key];
      input.disabled = !this.enhancer.available;
      input.title = this.enhancer.available ? "" : this.enhancer.why;
      input.closest("label")?.classList.toggle("unavailable", !this.enhancer.available);
      document.querySelector(`label[for="${input.id}"]`)?.classList.toggle("unavailable", !this.enhancer.available);
    }
    this.fieldset.querySelector(".enhancer-note").textContent = this.enhancer.available ? "" : this.enhancer.why;
  }

  /** What the controls show now, by setting name (for tests and the console). */
  values() {
    const out = {};
    for (const key of Object.keys(this.inputs)) {
      const input = this.inputs[key];
      out[key] = input.type === "checkbox" ? input.checked : input.tagName === "SELECT" ? input.value : Number(input.value);
    }
    return out;
  }
}
