"""CodeFormer enhancer cost per 512x512 crop, with random weights (same compute as the real file).

Prints ms per crop for batch sizes 1 and 2 at fidelity 0 (no fuse blocks) and at the configured fidelity, plus
the activation-memory peak per forward (CPU: process max-RSS growth; CUDA: torch's allocator peak), which is what
``CodeFormerEnhancer(max_batch=...)`` bounds. Ratios are to batch 1, fidelity 0, from the same run.

    python -m bench.bench_enhance [--device cpu|cuda] [--fp16] [--repeats 1] [--fidelity 0.75]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time

import numpy as np
import torch

from mirage_ray.vision.codeformer_arch import CodeFormer
from mirage_ray.vision.enhance_codeformer import CodeFormerEnhancer
from mirage_ray.vision.enhance_none import NoEnhancer

CROP_PX = 512
KIB_PER_MIB = 1024
BATCH_SIZES = (1, 2)


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB_PER_MIB  # Linux reports KiB


def _time_ms(fn, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--fp16", action="store_true")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--fidelity", type=float, default=0.75)
    args = parser.parse_args()

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    enhancer = CodeFormerEnhancer({"params_ema": CodeFormer().state_dict()}, device=args.device, fp16=args.fp16)
    cuda = enhancer.device.type == "cuda"
    sys.stdout.write(
        f"device={args.device} fp16={args.fp16} torch threads={torch.get_num_threads()} repeats={args.repeats}\n"
    )

    crops = rng.integers(0, 256, size=(max(BATCH_SIZES), CROP_PX, CROP_PX, 3), dtype=np.uint8)
    passthrough = NoEnhancer()
    none_ms = _time_ms(lambda: passthrough.restore(crops[:1], 0.5), 10)
    sys.stdout.write(f"none enhancer: {none_ms:.3f} ms per crop (copy)\n")

    # Memory first, at the fidelity that runs the fuse blocks (the larger working set), smallest batch first so
    # each max-RSS growth is visible; timings after, each call already warm.
    memory = {}
    for batch in BATCH_SIZES:
        enhancer.max_batch = batch
        rss_before = _max_rss_mib()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(enhancer.device)
        enhancer.restore(crops[:batch], args.fidelity)
        if cuda:
            torch.cuda.synchronize()
            memory[batch] = f"cuda peak allocated {torch.cuda.max_memory_allocated(enhancer.device) / 2**20:.0f} MiB"
        else:
            memory[batch] = f"max-RSS growth {_max_rss_mib() - rss_before:.0f} MiB"
        sys.stdout.write(
            f"fidelity={args.fidelity:.2f} batch={batch}: {memory[batch]} (weights ~360 MiB excluded on CPU)\n"
        )

    baseline = None
    for fidelity in (0.0, args.fidelity):
        for batch in BATCH_SIZES:
            enhancer.max_batch = batch
            per_crop = _time_ms(lambda b=batch, f=fidelity: enhancer.restore(crops[:b], f), args.repeats) / batch
            baseline = baseline or per_crop
            sys.stdout.write(
                f"fidelity={fidelity:.2f} batch={batch}: {per_crop:.0f} ms per crop "
                f"(x{per_crop / baseline:.2f} of batch 1 at fidelity 0)\n"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
