"""Per-session voice streaming: block the microphone PCM, build context windows, join converted blocks with SOLA.

Pure state machine (no asyncio, no I/O). The conversion itself happens elsewhere (a remote, stateless converter), so
the API has two halves::

    stream.push(pcm)                       # any length that is a multiple of 10 ms
    while (window := stream.next_window()) is not None:
        converted = None if window.gated else converter(window.samples)   # remote call; None on failure
        out = stream.complete(window, converted)                          # exactly one block of output

Window layout (no right context, which would only add delay)::

    | left context | crossfade | SOLA search | new block |
                   \\______________ tail ______________/

``complete`` takes the converted window's tail, finds the offset (within the search span) whose head best matches the
tail saved from the previous block (normalised cross-correlation), crossfades the saved tail into it with a sin² ramp,
emits exactly ``block`` samples and saves the next tail. With ``crossfade=False`` (the seed's "Overlap-Add: disabled")
the last ``block`` samples of each converted window are simply concatenated.

Latency is constant: output block k is ready right after input block k; the algorithmic delay is the crossfade +
search hold-back (``latency_samples``). Samples are conserved: every completed window yields exactly one block.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mirage_ray.protocol import AUDIO_FRAME_MS
from mirage_ray.voice.base import SAMPLE_RATE

if TYPE_CHECKING:
    from mirage_ray.config import MirageSettings

logger = logging.getLogger(__name__)

FRAME_MS = AUDIO_FRAME_MS  # the gate works in the wire's 10 ms frames
SOLA_SEARCH_MS = 5  # how far SOLA may slide the new output to match the saved tail (hold-back: pure delay)
SOLA_TIE_TOLERANCE = 1e-6  # prefer no shift when another offset is not clearly better (keeps identity exact)
GATE_FLOOR_DB = -200.0  # dB value reported for digital silence
CONVERTED_PEAK_LIMIT = 8.0  # |sample| above this from a converter is treated as a broken call


class VoiceStreamError(ValueError):
    """A VoiceStream was configured or driven incorrectly."""


@dataclass(frozen=True, eq=False)
class VoiceWindow:
    """One conversion job: ``samples`` = left context + crossfade + search + new block (float32, mono)."""

    index: int
    samples: np.ndarray
    block: int  # new samples in this window; complete() returns exactly this many
    tail: int  # samples at the end of the window that complete() uses (block + crossfade + search)
    gated: bool  # the block is quieter than the gate: skip the converter, output is silence
    level_db: float  # loudest 10 ms frame of the block, dBFS


def _ms_to_samples(ms: int, sample_rate: int, what: str) -> int:
    if ms < 0:
        raise VoiceStreamError(f"{what} must be >= 0 ms, got {ms}")
    samples = sample_rate * ms / 1000
    if samples != int(samples):
        raise VoiceStreamError(f"{what}={ms} ms is not a whole number of samples at {sample_rate} Hz")
    return int(samples)


def level_db(block: np.ndarray, frame: int) -> float:
    """Loudest ``frame``-sample RMS of ``block`` in dBFS (a trailing partial frame counts; GATE_FLOOR_DB if silent)."""
    power = np.asarray(block, dtype=np.float64) ** 2
    whole = len(power) - len(power) % frame
    means = [float(m) for m in power[:whole].reshape(-1, frame).mean(axis=1)] if whole else []
    if whole < len(power):
        means.append(float(power[whole:].mean()))
    rms = float(np.sqrt(max(means, default=0.0)))
    return 20.0 * np.log10(rms) if rms > 0 else GATE_FLOOR_DB


def sola_offset(head: np.ndarray, saved: np.ndarray) -> int:
    """Offset in ``[0, len(head) - len(saved)]`` where ``head`` best matches ``saved`` (normalised xcorr)."""
    head64 = np.asarray(head, dtype=np.float64)
    saved64 = np.asarray(saved, dtype=np.float64)
    n = len(saved64)
    numer = np.correlate(head64, saved64, mode="valid")
    energy = np.concatenate(([0.0], np.cumsum(head64**2)))
    seg_norm = np.sqrt(np.maximum(energy[n:] - energy[:-n], 0.0))
    scores = numer / (seg_norm * np.sqrt(float(saved64 @ saved64)) + 1e-12)
    best = int(np.argmax(scores))
    if scores[0] >= scores[best] - SOLA_TIE_TOLERANCE:
        return 0
    return best


def usable_output(window: VoiceWindow, converted: np.ndarray) -> bool:
    """Whether a converter's answer for ``window`` is sane audio of an accepted length (else: a failed call)."""
    out = np.asarray(converted)
    if out.ndim != 1 or len(out) not in (len(window.samples), window.tail):
        return False
    tail = out[-window.tail :]
    return bool(np.all(np.isfinite(tail))) and float(np.abs(tail).max(initial=0.0)) <= CONVERTED_PEAK_LIMIT


class VoiceStream:
    """Ring buffer, gate and SOLA join for one session's voice. Not thread-safe (one per session)."""

    def __init__(
        self,
        sample_rate: int = 16_000,
        block_ms: int = 192,
        context_ms: int = 384,
        crossfade_ms: int = 20,
        crossfade: bool = True,
        gate_db: float | None = -50.0,
        search_ms: int = SOLA_SEARCH_MS,
    ) -> None:
        if sample_rate <= 0 or sample_rate % (1000 // FRAME_MS):
            raise VoiceStreamError(f"sample_rate must be a positive multiple of 100 Hz, got {sample_rate}")
        self.sample_rate = sample_rate
        self.frame = sample_rate * FRAME_MS // 1000
        self.context = _ms_to_samples(context_ms, sample_rate, "context_ms")
        xfade = _ms_to_samples(crossfade_ms, sample_rate, "crossfade_ms")
        search = _ms_to_samples(search_ms, sample_rate, "search_ms")
        self.crossfade = bool(crossfade) and xfade > 0  # crossfade_ms=0 means plain concatenation too
        self.xfade = xfade if self.crossfade else 0
        self.search = search if self.crossfade else 0
        self.gate_db = gate_db
        self._block = self._check_block(block_ms)  # size of the next window's block
        # sin² fade-in; the fade-out is its complement, so identical signals cross-fade to themselves exactly
        ramp = np.sin(0.5 * np.pi * (np.arange(self.xfade) + 0.5) / max(self.xfade, 1)) ** 2
        self._fade_in = ramp.astype(np.float32)
        self._history = np.zeros(self.context + self.xfade + self.search, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)
        self._saved = np.zeros(self.xfade, dtype=np.float32)
        self._issued = 0
        self._completed = 0

    @classmethod
    def from_settings(cls, settings: MirageSettings, context_ms: int) -> VoiceStream:
        """A session's stream at the wire's rate: block, crossfade, SOLA search and gate from ``settings``;
        ``context_ms`` from the caller (the configured one, else what the converters need)."""
        return cls(
            sample_rate=SAMPLE_RATE,
            block_ms=settings.chunk_ms,
            context_ms=context_ms,
            crossfade_ms=settings.crossfade_ms,
            crossfade=settings.crossfade,
            gate_db=settings.gate_db,
            search_ms=settings.sola_search_ms,
        )

    # -- configuration -------------------------------------------------------------------------------------------
    def _check_block(self, block_ms: int) -> int:
        block = _ms_to_samples(block_ms, self.sample_rate, "block_ms")
        if block == 0:
            raise VoiceStreamError(f"block_ms must be > 0, got {block_ms}")
        if block < self.xfade:
            raise VoiceStreamError(f"block_ms={block_ms} is shorter than the crossfade ({self.xfade} samples)")
        return block

    def set_block_ms(self, block_ms: int) -> None:
        """Change the block size; takes effect at the next block boundary (the next window cut)."""
        self._block = self._check_block(block_ms)

    @property
    def block_samples(self) -> int:
        """Samples per block for the next window to be cut."""
        return self._block

    @property
    def latency_samples(self) -> int:
        """Algorithmic delay of output vs input: the crossfade + search hold-back (0 without crossfade)."""
        return self.xfade + self.search

    @property
    def pending_samples(self) -> int:
        """Pushed samples not yet cut into a window."""
        return len(self._pending)

    @property
    def in_flight(self) -> int:
        """Windows handed out by next_window() and not yet completed."""
        return self._issued - self._completed

    # -- input half ----------------------------------------------------------------------------------------------
    def push(self, samples: np.ndarray) -> None:
        """Append mono float PCM; the length must be a whole number of 10 ms frames."""
        pcm = np.asarray(samples)
        if pcm.ndim != 1:
            raise VoiceStreamError(f"expected mono 1-D samples, got shape {pcm.shape}")
        if len(pcm) % self.frame:
            raise VoiceStreamError(f"push length must be a multiple of {self.frame} samples (10 ms), got {len(pcm)}")
        if not np.issubdtype(pcm.dtype, np.floating):
            raise VoiceStreamError(f"expected float samples in [-1, 1], got dtype {pcm.dtype}")
        self._pending = np.concatenate((self._pending, pcm.astype(np.float32, copy=False)))

    def next_window(self) -> VoiceWindow | None:
        """Cut the next window when a whole block is pending, else None."""
        block = self._block
        if len(self._pending) < block:
            return None
        new = self._pending[:block]
        self._pending = self._pending[block:].copy()
        samples = np.concatenate((self._history, new))
        keep = len(self._history)
        self._history = samples[len(samples) - keep :].copy() if keep else self._history
        level = level_db(new, self.frame)
        gated = self.gate_db is not None and level < self.gate_db
        window = VoiceWindow(
            index=self._issued,
            samples=samples,
            block=block,
            tail=block + self.xfade + self.search,
            gated=gated,
            level_db=level,
        )
        self._issued += 1
        return window

    def flush_window(self) -> tuple[VoiceWindow, int] | None:
        """End of stream: the pending samples (less than a block) as a last window, padded with silence to a whole
        block for the converter; returns it with the number of real samples (keep that many of ``complete``'s
        output), or None when nothing is pending."""
        pending = len(self._pending)
        if pending == 0:
            return None
        padding = (-pending) % self._block
        self._pending = np.concatenate((self._pending, np.zeros(padding, dtype=np.float32)))
        window = self.next_window()
        assert window is not None  # a whole block is pending now
        return window, pending

    # -- output half ---------------------------------------------------------------------------------------------
    def _source_tail(self, window: VoiceWindow, converted: np.ndarray | None) -> np.ndarray:
        if window.gated:
            return np.zeros(window.tail, dtype=np.float32)
        if converted is None:
            return window.samples[-window.tail :]
        out = np.asarray(converted)
        if out.ndim != 1 or len(out) not in (len(window.samples), window.tail):
            raise VoiceStreamError(
                f"converted audio must be 1-D with {len(window.samples)} (window) or {window.tail} (tail) samples,"
                f" got shape {out.shape}"
            )
        tail = out[-window.tail :].astype(np.float32)
        if not np.all(np.isfinite(tail)) or float(np.abs(tail).max(initial=0.0)) > CONVERTED_PEAK_LIMIT:
            logger.warning("window %d: converter output is not sane audio; passing the input through", window.index)
            return window.samples[-window.tail :]
        return tail

    def complete(self, window: VoiceWindow, converted: np.ndarray | None) -> np.ndarray:
        """Join one converted window (None = passthrough for this block) and return exactly ``window.block`` samples.

        Windows must be completed in the order they were cut. ``converted`` may be the whole window or only its
        ``tail``. A gated window always yields silence (faded out from the previous block).
        """
        if window.index != self._completed:
            raise VoiceStreamError(
                f"windows must be completed in order: expected {self._completed}, got {window.index}"
            )
        src = self._source_tail(window, converted)
        block = window.block
        if not self.crossfade:
            self._completed += 1
            return src[-block:].copy()
        offset = sola_offset(src[: self.xfade + self.search], self._saved)
        out = src[offset : offset + block].copy()
        head = out[: self.xfade]
        out[: self.xfade] = self._saved + self._fade_in * (head - self._saved)
        self._saved = src[offset + block : offset + block + self.xfade].copy()
        self._completed += 1
        return out

    # -- convenience ---------------------------------------------------------------------------------------------
    def process(self, samples: np.ndarray, convert_fn: Callable[[np.ndarray], np.ndarray | None]) -> np.ndarray:
        """Push ``samples``, convert every ready window synchronously, return the joined output (tests, bench)."""
        self.push(samples)
        outputs: list[np.ndarray] = []
        while (window := self.next_window()) is not None:
            converted = None if window.gated else convert_fn(window.samples)
            outputs.append(self.complete(window, converted))
        return np.concatenate(outputs) if outputs else np.zeros(0, dtype=np.float32)
