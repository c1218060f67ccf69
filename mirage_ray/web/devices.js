// Camera, microphone and speaker choice: three selects filled from enumerateDevices (labels appear once the page
// has camera/microphone permission), refreshed when devices come and go; a chosen input replaces its track.

import { canChooseSpeaker, listDevices } from "./media.js";

function fill(select, devices, activeId) {
  const keep = select.value || activeId || "";
  const options = [new Option("default", "")];
  for (const d of devices) options.push(new Option(d.label, d.id));
  select.replaceChildren(...options);
  select.value = devices.some((d) => d.id === keep) ? keep : "";
}

export class DevicePicker {
  /** @param {{camera: HTMLSelectElement, mic: HTMLSelectElement, speaker: HTMLSelectElement}} selects */
  constructor(selects, onChange) {
    this.selects = selects;
    this.speakerChoosable = canChooseSpeaker();
    if (!this.speakerChoosable) {
      selects.speaker.disabled = true;
      selects.speaker.title = "this browser plays on its default output only";
    }
    for (const [kind, select] of Object.entries(selects)) select.addEventListener("change", () => onChange(kind));
    navigator.mediaDevices?.addEventListener?.("devicechange", () => this.refresh());
  }

  /** Re-read the device lists; `active` holds the ids of the tracks in use (shown when nothing was chosen). */
  async refresh(active = {}) {
    let found;
    try {
      found = await listDevices();
    } catch {
      return;
    }
    fill(this.selects.camera, found.videoinput, active.cameraId);
    fill(this.selects.mic, found.audioinput, active.micId);
    if (this.speakerChoosable) fill(this.selects.speaker, found.audiooutput, "");
  }

  get cameraId() {
    return this.selects.camera.value;
  }

  get micId() {
    return this.selects.mic.value;
  }

  get speakerId() {
    return this.speakerChoosable ? this.selects.speaker.value : "";
  }
}

/**
 * Replace `stream`'s track of `kind` ("audio" | "video") with a fresh one opened with `constraints`, in the same
 * stream object (the preview keeps playing; whoever holds the stream sees the change). Returns the new label.
 */
export async function replaceTrack(stream, kind, constraints) {
  const fresh = await navigator.mediaDevices.getUserMedia({ [kind]: constraints });
  for (const t of stream.getTracks()) {
    if (t.kind !== kind) continue;
    stream.removeTrack(t);
    t.stop();
  }
  for (const t of fresh.getTracks()) stream.addTrack(t);
  return fresh.getTracks()[0]?.label ?? "";
}
