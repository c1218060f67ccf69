"""``mirage-ray models list|fetch|verify``: the command bodies (argparse lives in cli.py).

Each returns a process exit code: 0 success, 1 a file failed (download, size or hash), 2 a usage error (unknown
name, nothing named). Tables go to ``out`` (stdout by default), problems to stderr.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

from mirage_ray.config import MirageSettings
from mirage_ray.fetch import FetchError, fetch
from mirage_ray.models import FETCH_COMMAND, PIN_COMMAND, ModelRegistry, ModelState, record_digest

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
LIST_COLUMNS = ("name", "file", "state", "size", "licence", "stage")


def cmd_models_list(settings: MirageSettings, out: TextIO | None = None) -> int:
    """Print every registry file with its state (verification cached in sidecars), size, licence and stage."""
    out = out or sys.stdout
    registry = ModelRegistry(settings)
    rows = registry.status()
    _print_table(out, LIST_COLUMNS, [{**row, "size": _human_size(row["size"])} for row in rows])
    print(f"\ncache root: {registry.root}", file=out)
    voices = registry.voices_dir()
    count = len(list(voices.glob("*.onnx"))) if voices.is_dir() else 0
    print(f"voices:     {voices} ({count} .onnx)", file=out)
    missing = [str(row["name"]) for row in rows if row["state"] == ModelState.MISSING.value]
    if missing:
        print(f"fetch with: {FETCH_COMMAND.format(name=' '.join(missing))}  (or --all)", file=out)
    return EXIT_OK


def cmd_models_fetch(
    settings: MirageSettings, names: Sequence[str], all_: bool, out: TextIO | None = None, progress: bool = True
) -> int:
    """Download the named files (or all) that are not already present and verified."""
    out = out or sys.stdout
    registry = ModelRegistry(settings)
    targets = registry.names() if all_ else list(dict.fromkeys(names))
    if not targets:
        print(f"name at least one model or pass --all; known: {', '.join(registry.names())}", file=sys.stderr)
        return EXIT_USAGE
    if not _known(registry, targets):
        return EXIT_USAGE
    failures = 0
    for name in targets:
        path = registry.path(name)
        state = registry.state(name)
        if state.usable:
            print(f"{name}: already present ({state.value}): {path}", file=out)
            continue
        expected = registry.expected_sha256(name)
        try:
            digest = fetch(registry.url(name), path, expected, registry.get(name).size, progress)
        except FetchError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            failures += 1
            continue
        record_digest(path, digest)
        note = "sha256 verified" if expected else f"no published hash: pin one with `{PIN_COMMAND}`"
        print(f"{name}: fetched {path} ({_human_size(path.stat().st_size)}, {note})", file=out)
    return EXIT_FAILED if failures else EXIT_OK


def cmd_models_verify(settings: MirageSettings, names: Sequence[str], pin: bool, out: TextIO | None = None) -> int:
    """Rehash the named files (or all present ones) against their published or pinned sha256.

    ``pin`` records the current sha256 of files that have no published hash. Fails (1) on a mismatch, or when a
    file named explicitly is missing.
    """
    out = out or sys.stdout
    registry = ModelRegistry(settings)
    targets = list(dict.fromkeys(names)) or registry.names()
    if not _known(registry, targets):
        return EXIT_USAGE
    failures = 0
    rows = []
    for name in targets:
        state = registry.state(name, rehash=True)
        unpublished = registry.get(name).sha256 is None
        if pin and unpublished and state in (ModelState.UNVERIFIED, ModelState.MISMATCH):
            note = f"pinned sha256 {registry.pin(name)}"
            state = ModelState.PINNED
        elif state is ModelState.UNVERIFIED:
            note = f"no published hash: pin one with `{PIN_COMMAND}`"
        elif state is ModelState.MISSING:
            note = f"fetch with `{FETCH_COMMAND.format(name=name)}`"
            failures += bool(names)
        elif state is ModelState.MISMATCH:
            again = f"fetch again with `{FETCH_COMMAND.format(name=name)}`"
            note = f"{again}, or re-pin with `{PIN_COMMAND}`" if unpublished else again
            failures += 1
        else:
            note = "sha256 ok"
        size = registry.path(name).stat().st_size if state is not ModelState.MISSING else None
        rows.append({"name": name, "file": registry.get(name).filename, "state": state.value,
                     "size": _human_size(size), "note": note})  # fmt: skip
    _print_table(out, ("name", "file", "state", "size", "note"), rows)
    return EXIT_FAILED if failures else EXIT_OK


def _known(registry: ModelRegistry, names: Sequence[str]) -> bool:
    unknown = [n for n in names if n not in registry.names()]
    if unknown:
        print(f"unknown model(s): {', '.join(unknown)}; known: {', '.join(registry.names())}", file=sys.stderr)
    return not unknown


def _human_size(size: object) -> str:
    if not isinstance(size, int):
        return "?"
    value = float(size)
    for unit in ("B", "kB", "MB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.2f} GB"


def _print_table(out: TextIO, columns: Sequence[str], rows: Sequence[dict[str, object]]) -> None:
    cells = [[str(row[c]) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip(), file=out)
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip(), file=out)
