"""Voice path benchmark: prints numbers, asserts nothing.

- WORLD runtime/real per chunk at 80/120/192/288/480 ms blocks (context 384 ms, crossfade 40 ms, SOLA search 10 ms),
  on one thread, over real espeak-ng speech; plus the same at context 100 ms (WORLD needs little context).
- VoiceStream overhead per block (next_window + complete with SOLA) against the block's duration.
- Click score at block boundaries, crossfade on vs off (≈1 = no click; see mirage_ray/voice/quality.py).
- RVC host-side cost on synthetic signature models (log-mel for RMVPE, resampling): plumbing only, not model speed.

Run from the repository root: ``python bench/bench_voice.py [--repeat N]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CHUNKS_MS = (80, 120, 192, 288, 480)
CONTEXT_MS = 384


def _ms(seconds: float) -> float:
    return 1000.0 * seconds


def _windows(stream_cls, x: np.ndarray, block_ms: int, context_ms: int) -> tuple[list, object]:
    stream = stream_cls(block_ms=block_ms, context_ms=context_ms, gate_db=None)
    stream.push(x)
    windows = []
    while (w := stream.next_window()) is not None:
        windows.append(w)
    return windows, stream


def bench_world(x: np.ndarray, repeat: int) -> None:
    from mirage_ray.voice.convert_world import WorldConverter
    from mirage_ray.voice.presets import preset_params
    from mirage_ray.voice.stream import VoiceStream

    world = WorldConverter()
    params = preset_params("deeper")
    print("\n== WORLD (DIO+StoneMask, CheapTrick, D4C, synth; 10 ms frames), one thread, preset 'deeper'")
    print("   (wall time suffers when other processes share the cores: compare the cpu columns then)")
    print(
        f"{'chunk ms':>8} {'context ms':>10} {'window ms':>9} {'median ms':>9} {'p90 ms':>7} {'cpu ms':>7}"
        f" {'runtime/real':>12} {'cpu/real':>8}"
    )
    for context_ms in (CONTEXT_MS, 100):
        for block_ms in CHUNKS_MS:
            windows, _ = _windows(VoiceStream, x, block_ms, context_ms)
            times, cpu = [], []
            for _ in range(repeat):
                for w in windows:
                    t0, c0 = time.perf_counter(), time.process_time()
                    world.convert(w.samples, params)
                    times.append(time.perf_counter() - t0)
                    cpu.append(time.process_time() - c0)
            med, p90, cpu_med = statistics.median(times), float(np.percentile(times, 90)), statistics.median(cpu)
            window_ms = 1000 * len(windows[0].samples) / 16000
            block_s = block_ms / 1000
            print(
                f"{block_ms:>8} {context_ms:>10} {window_ms:>9.0f} {_ms(med):>9.2f} {_ms(p90):>7.2f}"
                f" {_ms(cpu_med):>7.2f} {med / block_s:>12.3f} {cpu_med / block_s:>8.3f}"
            )


def bench_sola(x: np.ndarray, repeat: int) -> None:
    from mirage_ray.voice.stream import VoiceStream

    print("\n== VoiceStream overhead per block (identity converter)")
    print(f"{'chunk ms':>8} {'crossfade':>9} {'cut us':>7} {'join us':>8} {'overhead/real':>13}")
    for block_ms in CHUNKS_MS:
        for crossfade in (True, False):
            cut, join = [], []
            for _ in range(repeat):
                stream = VoiceStream(block_ms=block_ms, crossfade=crossfade, gate_db=-50.0)
                stream.push(x)
                while True:
                    t0 = time.perf_counter()
                    w = stream.next_window()
                    t1 = time.perf_counter()
                    if w is None:
                        break
                    stream.complete(w, w.samples)
                    t2 = time.perf_counter()
                    cut.append(t1 - t0)
                    join.append(t2 - t1)
            c, j = statistics.median(cut), statistics.median(join)
            print(
                f"{block_ms:>8} {crossfade!s:>9} {1e6 * c:>7.1f} {1e6 * j:>8.1f} {(c + j) / (block_ms / 1000):>13.5f}"
            )


def bench_clicks(x: np.ndarray) -> None:
    from mirage_ray.voice.convert_world import WorldConverter
    from mirage_ray.voice.presets import preset_params
    from mirage_ray.voice.quality import block_boundaries, click_score
    from mirage_ray.voice.stream import VoiceStream

    world = WorldConverter()
    print("\n== Click score at block boundaries (mean jump / local mean step; ≈1 = clean), WORLD")
    print(f"{'chunk ms':>8} {'preset':>9} {'crossfade on':>12} {'crossfade off':>13} {'mid-block control':>17}")
    for block_ms in CHUNKS_MS:
        for name in ("deeper", "brighter"):
            params = preset_params(name)
            row = {}
            for crossfade in (True, False):
                stream = VoiceStream(block_ms=block_ms, crossfade=crossfade, gate_db=-50.0)
                out = stream.process(x, lambda w, p=params: world.convert(w, p))
                block = stream.block_samples
                row[crossfade] = click_score(out, block_boundaries(len(out), block))
                row["control"] = click_score(out, block_boundaries(len(out), block, offset=block // 2))
            print(f"{block_ms:>8} {name:>9} {row[True]:>12.2f} {row[False]:>13.2f} {row['control']:>17.2f}")


def bench_rvc_plumbing(x: np.ndarray, repeat: int) -> None:
    from mirage_ray.voice.base import VoiceParams
    from mirage_ray.voice.convert_rvc import RvcConverter
    from mirage_ray.voice.pitch_rmvpe import log_mel
    from tests.synthetic import rvc_onnx as syn

    print("\n== RVC host-side work on synthetic signature models (plumbing, not real model speed)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        syn.save(syn.content_model(768), root / "vec.onnx")
        syn.save(syn.rmvpe_model(), root / "rmvpe.onnx")
        syn.save(syn.generator_model(768, 40_000), root / "voices" / "v.onnx")
        rvc = RvcConverter(root / "vec.onnx", root / "rmvpe.onnx", root / "voices")
        window = x[:10_016]  # 192 ms block + 384 ms context + 50 ms hold-back
        mel_t, conv_t = [], []
        for _ in range(max(repeat * 20, 20)):
            t0 = time.perf_counter()
            log_mel(window)
            t1 = time.perf_counter()
            rvc.convert(window, VoiceParams(pitch_semitones=3.0))
            t2 = time.perf_counter()
            mel_t.append(t1 - t0)
            conv_t.append(t2 - t1)
        print(f"log-mel (RMVPE input) on a 626 ms window: {_ms(statistics.median(mel_t)):.2f} ms")
        print(f"whole RvcConverter.convert with synthetic models: {_ms(statistics.median(conv_t)):.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="passes over the speech per measurement")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.speech import speech

    x = speech()
    print(f"speech: {len(x) / 16000:.2f} s of espeak-ng at 16 kHz")
    bench_world(x, args.repeat)
    bench_sola(x, args.repeat)
    bench_clicks(x)
    bench_rvc_plumbing(x, args.repeat)


if __name__ == "__main__":
    main()
