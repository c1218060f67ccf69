"""Model registry: the weight files the production backends load, where they live and where they come from.

The cache root is ``settings.model_dir`` (``~/.insightface/models`` by default) in insightface's layout, so
``FaceAnalysis(name=<model_dir>/buffalo_l)`` and the swappers find the same files. Nothing here downloads or
touches the disk at import or construction; fetching is the explicit ``mirage-ray models fetch`` (see
``mirage_ray.models_cli``). Hashes and sizes are the ones published for these files (see docs/models.md); a file
without a published hash can be pinned locally with ``mirage-ray models verify --pin``.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import tempfile
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from mirage_ray.config import MirageSettings
from mirage_ray.fetch import sha256_file

logger = logging.getLogger(__name__)

Stage = Literal["detector", "swapper", "enhancer", "voice"]

FETCH_COMMAND = "mirage-ray models fetch {name}"
PIN_COMMAND = "mirage-ray models verify --pin"
PINS_FILENAME = "mirage-pins.json"  # user-pinned sha256 for files without a published hash
SIDECAR_SUFFIX = ".sha256"  # cached verification: {"sha256", "size", "mtime_ns"} of the file beside it
VOICES_DIRNAME = "voices"
SMALL_FILE_MODE = 0o644  # sidecars and pins: readable by other service users, like the weights

LICENCE_INSIGHTFACE = "non-commercial research only (insightface)"
LICENCE_CODEFORMER = "NTU S-Lab License 1.0 (non-commercial)"
LICENCE_MIT = "MIT"

# Deep-Live-Cam's Hugging Face mirror, pinned to a commit whose files match the published hashes below.
_DEEP_LIVE_CAM = "https://huggingface.co/hacksider/deep-live-cam/resolve/581e70b61240b7928404c17900437f47cfe94133"


@dataclass(frozen=True)
class ModelFile:
    """One weight file: where it goes under the cache root, where it comes from, and how to check it."""

    name: str
    filename: str  # relative to settings.model_dir, insightface-compatible layout
    url: str  # default public source
    sha256: str | None  # published digest; None when no public source gives one
    size: int | None  # bytes
    licence: str
    stage: Stage
    url_setting: str | None  # MirageSettings field that overrides ``url``
    description: str = ""
    derive_from: str | None = None  # name of the file whose URL override this one follows (fp16 sibling)


MODEL_FILES: tuple[ModelFile, ...] = (
    ModelFile(
        "scrfd",
        "buffalo_l/det_10g.onnx",
        f"{_DEEP_LIVE_CAM}/buffalo_l/buffalo_l/det_10g.onnx",
        "5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91",
        16_923_827,
        LICENCE_INSIGHTFACE,
        "detector",
        "scrfd_url",
        "SCRFD-10G face detector with 5 keypoints (insightface buffalo_l)",
    ),
    ModelFile(
        "arcface",
        "buffalo_l/w600k_r50.onnx",
        f"{_DEEP_LIVE_CAM}/buffalo_l/buffalo_l/w600k_r50.onnx",
        "4c06341c33c2ca1f86781dab0e829f88ad5b64be9fba56e56bc9ebdefc619e43",
        174_383_860,
        LICENCE_INSIGHTFACE,
        "swapper",
        "arcface_url",
        "ArcFace R50 identity embedding (insightface buffalo_l); the only embedding InSwapper accepts",
    ),
    ModelFile(
        "inswapper",
        "inswapper_128.onnx",
        f"{_DEEP_LIVE_CAM}/inswapper_128.onnx",
        "e4a3f08c753cb72d04e10aa0f7dbe3deebbf39567d4ead6dce08e98aa49e16af",
        554_253_681,
        LICENCE_INSIGHTFACE,
        "swapper",
        "inswapper_url",
        "InSwapper 128 face swapper, fp32",
    ),
    ModelFile(
        "inswapper_fp16",
        "inswapper_128_fp16.onnx",
        f"{_DEEP_LIVE_CAM}/inswapper_128_fp16.onnx",
        "6d51a9278a1f650cffefc18ba53f38bf2769bf4bbff89267822cf72945f8a38b",
        277_680_638,
        LICENCE_INSIGHTFACE,
        "swapper",
        "inswapper_url",
        "InSwapper 128 face swapper, fp16 (known to break on some onnxruntime providers)",
        derive_from="inswapper",
    ),
    ModelFile(
        "codeformer",
        "codeformer/codeformer.pth",
        "https://github.com/sczhou/CodeFormer/releases/download/v0.1.0/codeformer.pth",
        "1009e537e0c2a07d4cabce6355f53cb66767cd4b4297ec7a4a64ca4b8a5684b7",
        376_637_898,
        LICENCE_CODEFORMER,
        "enhancer",
        "codeformer_url",
        "CodeFormer face restoration weights (release v0.1.0)",
    ),
    ModelFile(
        "rmvpe",
        "rvc/rmvpe.onnx",
        "https://huggingface.co/lj1995/VoiceConversionWebUI/resolve/main/rmvpe.onnx",
        "5370e71ac80af8b4b7c793d27efd51fd8bf962de3a7ede0766dac0befa3660fd",
        361_688_443,
        LICENCE_MIT,
        "voice",
        "rmvpe_url",
        "RMVPE pitch estimator, ONNX export published by the RVC project",
    ),
    ModelFile(
        "contentvec",
        "rvc/vec-768-layer-12.onnx",
        "https://huggingface.co/NaruseMioShirakana/MoeSS-SUBModel/resolve/main/vec-768-layer-12.onnx",
        None,
        None,
        LICENCE_MIT,
        "voice",
        "contentvec_url",
        "ContentVec content encoder, layer 12, 768-d (RVC v2); no published hash",
    ),
)

# The registry files each production backend needs, by the backend names of config.py: the one list backends.py
# selects and loads by. InSwapper also needs ArcFace (its swapper file first; fp16 swaps it, see backend_files).
BACKEND_FILES: dict[str, tuple[str, ...]] = {
    "scrfd": ("scrfd",),
    "inswapper": ("inswapper", "arcface"),
    "codeformer": ("codeformer",),
    "rvc": ("rmvpe", "contentvec"),
}


class ModelState(enum.Enum):
    """What is known about a registry file on disk."""

    MISSING = "missing"
    VERIFIED = "verified"  # matches the published sha256
    PINNED = "pinned"  # matches a locally pinned sha256 (no published one)
    UNVERIFIED = "present, no published hash"
    MISMATCH = "corrupt (size or sha256 mismatch)"

    @property
    def usable(self) -> bool:
        return self in (ModelState.VERIFIED, ModelState.PINNED, ModelState.UNVERIFIED)


class UnknownModelError(LookupError):
    """A model name the registry does not know."""


class ModelMissingError(FileNotFoundError):
    """A required model file is absent or fails verification; the message says where and how to fetch it."""

    def __init__(self, name: str, filename: str, path: Path, state: ModelState) -> None:
        self.name = name
        self.path = path
        self.state = state
        problem = "was not found" if state is ModelState.MISSING else "is present but fails verification"
        super().__init__(
            f"model file {filename!r} ({name}) {problem}: looked for {path}. "
            f"Fetch it with `{FETCH_COMMAND.format(name=name)}` (cache root: settings.model_dir / MIRAGE_MODEL_DIR)"
        )


class ModelRegistry:
    """The model files, resolved against one settings object (cache root and URL overrides)."""

    def __init__(self, settings: MirageSettings, files: Sequence[ModelFile] = MODEL_FILES) -> None:
        self._settings = settings
        self._files = {f.name: f for f in files}
        if len(self._files) != len(files):
            raise ValueError("model names must be unique")

    @property
    def root(self) -> Path:
        return Path(self._settings.model_dir).expanduser()

    def files(self) -> list[ModelFile]:
        return list(self._files.values())

    def names(self) -> list[str]:
        return list(self._files)

    def get(self, name: str) -> ModelFile:
        try:
            return self._files[name]
        except KeyError:
            raise UnknownModelError(f"unknown model {name!r}; known: {', '.join(self._files)}") from None

    def path(self, name: str) -> Path:
        return self.root / self.get(name).filename

    def voices_dir(self) -> Path:
        """Where per-voice RVC generator .onnx files live (user supplied, not in the registry)."""
        return self.root / VOICES_DIRNAME

    def url(self, name: str) -> str:
        """The source URL: the settings override when set, else the default."""
        entry = self.get(name)
        override = getattr(self._settings, entry.url_setting) if entry.url_setting else None
        if not override:
            return entry.url
        if entry.derive_from is None:
            return override
        # A sibling (fp16) follows its primary's override when the override names the primary's file: same mirror.
        primary = PurePosixPath(self.get(entry.derive_from).filename).name
        parts = urllib.parse.urlsplit(override)
        if parts.path.endswith("/" + primary):
            sibling = PurePosixPath(entry.filename).name
            return urllib.parse.urlunsplit(parts._replace(path=parts.path[: -len(primary)] + sibling))
        return entry.url

    def expected_sha256(self, name: str) -> str | None:
        """The published sha256, else one pinned with ``mirage-ray models verify --pin``, else None."""
        entry = self.get(name)
        return entry.sha256 or self._read_pins().get(name)

    def state(self, name: str, rehash: bool = False) -> ModelState:
        """Check the file on disk; a hash verified before (sidecar with the same size and mtime) is not redone."""
        entry = self.get(name)
        path = self.path(name)
        try:
            stat = path.stat()
        except FileNotFoundError:
            return ModelState.MISSING
        if entry.size is not None and stat.st_size != entry.size:
            return ModelState.MISMATCH
        expected = self.expected_sha256(name)
        if expected is None:
            return ModelState.UNVERIFIED
        digest = None if rehash else _read_sidecar(path, stat)
        if digest is None:
            logger.info("hashing %s (%d bytes)", path, stat.st_size)
            digest = sha256_file(path)
            record_digest(path, digest)
        if digest != expected.lower():
            return ModelState.MISMATCH
        return ModelState.VERIFIED if entry.sha256 else ModelState.PINNED

    def is_present(self, name: str) -> bool:
        """Present and, when a hash is known, matching it."""
        return self.state(name).usable

    def require(self, name: str) -> Path:
        """The file's path, or ModelMissingError naming the file, where it looked and the fetch command."""
        state = self.state(name)
        if not state.usable:
            raise ModelMissingError(name, self.get(name).filename, self.path(name), state)
        if state is ModelState.UNVERIFIED:
            logger.warning("%s has no published sha256; pin it with `%s`", self.path(name), PIN_COMMAND)
        return self.path(name)

    def backend_files(self, backend: str, precision: Literal["fp32", "fp16"] | None = None) -> tuple[str, ...]:
        """Registry names a production backend needs; InSwapper's file follows the precision setting."""
        if backend not in BACKEND_FILES:
            raise UnknownModelError(f"unknown backend {backend!r}; known: {', '.join(BACKEND_FILES)}")
        precision = precision or self._settings.inswapper_precision
        names = BACKEND_FILES[backend]
        if backend == "inswapper" and precision == "fp16":
            names = tuple("inswapper_fp16" if n == "inswapper" else n for n in names)
        return names

    def backend_ready(self, backend: str) -> bool:
        """Every file the backend needs is present and verified (what ``auto`` selection asks)."""
        return all(self.is_present(n) for n in self.backend_files(backend))

    def require_backend(self, backend: str) -> dict[str, Path]:
        """Paths of every file the backend needs, or ModelMissingError for the first one missing."""
        return {n: self.require(n) for n in self.backend_files(backend)}

    def pin(self, name: str) -> str:
        """Record the present file's sha256 as its expected hash (only for files without a published one)."""
        entry = self.get(name)
        if entry.sha256:
            raise ValueError(f"{name} has a published sha256; it cannot be pinned")
        path = self.path(name)
        digest = sha256_file(path)
        pins = self._read_pins()
        pins[name] = digest
        _write_json(self.root / PINS_FILENAME, pins)
        record_digest(path, digest)
        logger.info("pinned %s: sha256 %s", name, digest)
        return digest

    def status(self, names: Iterable[str] | None = None, rehash: bool = False) -> list[dict[str, object]]:
        """One row per file for ``models list`` / ``verify``: name, file, path, state, size, licence, stage, url."""
        rows: list[dict[str, object]] = []
        for name in names or self.names():
            entry = self.get(name)
            path = self.path(name)
            state = self.state(name, rehash=rehash)
            rows.append(
                {
                    "name": name,
                    "file": entry.filename,
                    "path": str(path),
                    "state": state.value,
                    "usable": state.usable,
                    "size": path.stat().st_size if state is not ModelState.MISSING else entry.size,
                    "licence": entry.licence,
                    "stage": entry.stage,
                    "url": self.url(name),
                    "sha256": self.expected_sha256(name),
                }
            )
        return rows

    def _read_pins(self) -> dict[str, str]:
        path = self.root / PINS_FILENAME
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable pin file %s: %s", path, exc)
            return {}
        return {str(k): str(v).lower() for k, v in data.items()} if isinstance(data, dict) else {}


def sidecar_path(path: Path) -> Path:
    """``<file>.sha256``: the cached verification beside a model file."""
    return path.with_name(path.name + SIDECAR_SUFFIX)


def record_digest(path: Path, digest: str) -> None:
    """Cache a computed sha256 with the file's size and mtime, so start-up does not rehash it."""
    try:
        stat = path.stat()
        _write_json(sidecar_path(path), {"sha256": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    except OSError as exc:  # a read-only cache still works, it just rehashes
        logger.warning("cannot write %s: %s", sidecar_path(path), exc)


def _read_sidecar(path: Path, stat: os.stat_result) -> str | None:
    """The cached digest when the sidecar describes this exact file (size and mtime), else None."""
    try:
        data = json.loads(sidecar_path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("size") != stat.st_size or data.get("mtime_ns") != stat.st_mtime_ns:
        return None
    digest = data.get("sha256")
    return digest.lower() if isinstance(digest, str) else None


def _write_json(path: Path, data: object) -> None:
    """Write JSON atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as fh:
        fh.write(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.chmod(fh.name, SMALL_FILE_MODE)
    os.replace(fh.name, path)
