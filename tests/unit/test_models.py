"""Model registry and the `mirage-ray models` commands, on small real files (no internet, file:// sources)."""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path

import pytest

from mirage_ray import models as models_mod
from mirage_ray.config import MirageSettings
from mirage_ray.models import (
    MODEL_FILES,
    ModelFile,
    ModelMissingError,
    ModelRegistry,
    ModelState,
    UnknownModelError,
    sidecar_path,
)
from mirage_ray.models_cli import cmd_models_fetch, cmd_models_list, cmd_models_verify

BLOB = bytes(range(256)) * 64  # 16 KiB stand-in for a weight file
BLOB_SHA = hashlib.sha256(BLOB).hexdigest()
PIN_HINT = "no published hash: pin one with `mirage-ray models verify --pin`"


def _settings(root: Path, **overrides: object) -> MirageSettings:
    return MirageSettings(model_dir=root, **overrides)


def _tiny_catalogue(sha256: str | None = BLOB_SHA, size: int | None = len(BLOB)) -> tuple[ModelFile, ...]:
    return (ModelFile("tiny", "pack/tiny.onnx", "file:///nowhere/tiny.onnx", sha256, size, "MIT", "voice", None),)


class _CountingHash:
    """Wraps the real sha256_file to count how often a file is actually hashed."""

    def __init__(self) -> None:
        self.calls = 0
        self._real = models_mod.sha256_file

    def __call__(self, path: Path) -> str:
        self.calls += 1
        return self._real(path)


def test_catalogue_layout_settings_and_licences() -> None:
    by_name = {f.name: f for f in MODEL_FILES}
    assert {name: f.filename for name, f in by_name.items()} == {
        "scrfd": "buffalo_l/det_10g.onnx",
        "arcface": "buffalo_l/w600k_r50.onnx",
        "inswapper": "inswapper_128.onnx",
        "inswapper_fp16": "inswapper_128_fp16.onnx",
        "codeformer": "codeformer/codeformer.pth",
        "rmvpe": "rvc/rmvpe.onnx",
        "contentvec": "rvc/vec-768-layer-12.onnx",
    }
    for entry in MODEL_FILES:
        assert entry.url_setting in MirageSettings.model_fields, entry.name
        assert entry.url.startswith("https://"), entry.name
        assert entry.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", entry.sha256), entry.name
        noncommercial = entry.stage != "voice"
        assert ("non-commercial" in entry.licence) == noncommercial, entry.name
        assert entry.licence == "MIT" or noncommercial, entry.name
    assert by_name["inswapper"].size == 554_253_681


def test_no_io_until_asked(tmp_path: Path) -> None:
    root = tmp_path / "never-created"
    registry = ModelRegistry(_settings(root))
    assert registry.path("scrfd") == root / "buffalo_l" / "det_10g.onnx"
    assert registry.voices_dir() == root / "voices"
    assert [row["state"] for row in registry.status()] == ["missing"] * len(MODEL_FILES)
    assert not root.exists()


def test_url_overrides_from_settings(tmp_path: Path) -> None:
    mirror = "https://mirror.example/weights/inswapper_128.onnx?download=1"
    registry = ModelRegistry(_settings(tmp_path, inswapper_url=mirror, scrfd_url="https://m.example/det.onnx"))
    assert registry.url("inswapper") == mirror
    assert registry.url("inswapper_fp16") == "https://mirror.example/weights/inswapper_128_fp16.onnx?download=1"
    assert registry.url("scrfd") == "https://m.example/det.onnx"
    assert registry.url("codeformer") == next(f.url for f in MODEL_FILES if f.name == "codeformer")

    elsewhere = ModelRegistry(_settings(tmp_path, inswapper_url="https://x.example/my_swapper.onnx"))
    assert elsewhere.url("inswapper") == "https://x.example/my_swapper.onnx"
    assert elsewhere.url("inswapper_fp16") == next(f.url for f in MODEL_FILES if f.name == "inswapper_fp16")


def test_unknown_name_lists_known_ones(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError, match="unknown model 'gfpgan'; known: scrfd, arcface"):
        ModelRegistry(_settings(tmp_path)).get("gfpgan")


def test_require_missing_names_file_path_and_command(tmp_path: Path) -> None:
    registry = ModelRegistry(_settings(tmp_path))
    with pytest.raises(ModelMissingError) as info:
        registry.require("inswapper")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "'inswapper_128.onnx'" in message
    assert str(tmp_path / "inswapper_128.onnx") in message
    assert "`mirage-ray models fetch inswapper`" in message
    assert info.value.state is ModelState.MISSING


def test_require_rejects_a_wrong_size_file(tmp_path: Path) -> None:
    registry = ModelRegistry(_settings(tmp_path))
    path = registry.path("scrfd")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"truncated download")
    assert registry.state("scrfd") is ModelState.MISMATCH
    with pytest.raises(ModelMissingError, match=r"present but fails verification.*mirage-ray models fetch scrfd"):
        registry.require("scrfd")


def test_verification_is_cached_in_a_sidecar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counter = _CountingHash()
    monkeypatch.setattr(models_mod, "sha256_file", counter)
    registry = ModelRegistry(_settings(tmp_path), files=_tiny_catalogue())
    path = registry.path("tiny")
    path.parent.mkdir(parents=True)
    path.write_bytes(BLOB)

    assert registry.is_present("tiny")
    assert counter.calls == 1
    assert sidecar_path(path).exists()
    assert registry.is_present("tiny")
    assert ModelRegistry(_settings(tmp_path), files=_tiny_catalogue()).require("tiny") == path
    assert counter.calls == 1  # start-up after the first check does not rehash

    assert registry.state("tiny", rehash=True) is ModelState.VERIFIED  # `verify` always rehashes
    assert counter.calls == 2

    path.write_bytes(BLOB[::-1])  # same size, different bytes, new mtime
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert registry.state("tiny") is ModelState.MISMATCH
    assert counter.calls == 3


def test_unpublished_hash_can_be_pinned(tmp_path: Path) -> None:
    registry = ModelRegistry(_settings(tmp_path), files=_tiny_catalogue(sha256=None, size=None))
    path = registry.path("tiny")
    path.parent.mkdir(parents=True)
    path.write_bytes(BLOB)
    assert registry.state("tiny") is ModelState.UNVERIFIED
    assert registry.require("tiny") == path  # usable, with a warning

    assert registry.pin("tiny") == BLOB_SHA
    assert registry.expected_sha256("tiny") == BLOB_SHA
    assert registry.state("tiny") is ModelState.PINNED
    path.write_bytes(b"replaced")
    assert registry.state("tiny") is ModelState.MISMATCH


def test_published_hash_cannot_be_pinned(tmp_path: Path) -> None:
    registry = ModelRegistry(_settings(tmp_path))
    with pytest.raises(ValueError, match="published sha256"):
        registry.pin("inswapper")


def test_backend_files_follow_precision(tmp_path: Path) -> None:
    assert ModelRegistry(_settings(tmp_path)).backend_files("inswapper") == ("inswapper", "arcface")
    fp16 = ModelRegistry(_settings(tmp_path, inswapper_precision="fp16"))
    assert fp16.backend_files("inswapper") == ("inswapper_fp16", "arcface")
    assert fp16.backend_files("rvc") == ("rmvpe", "contentvec")
    assert not fp16.backend_ready("inswapper")
    with pytest.raises(ModelMissingError, match=r"inswapper_128_fp16\.onnx"):
        fp16.require_backend("inswapper")


def test_cli_list_shows_every_file_and_the_fetch_command(tmp_path: Path) -> None:
    out = io.StringIO()
    assert cmd_models_list(_settings(tmp_path), out=out) == 0
    text = out.getvalue()
    assert text.splitlines()[0].split() == ["NAME", "FILE", "STATE", "SIZE", "LICENCE", "STAGE"]
    for entry in MODEL_FILES:
        assert re.search(rf"^{entry.name}\s+{re.escape(entry.filename)}\s+missing\s", text, re.M), entry.name
    assert "554.3 MB" in text
    assert f"cache root: {tmp_path}" in text
    assert "fetch with: mirage-ray models fetch scrfd arcface" in text


def test_cli_fetch_verify_and_pin_a_file_without_published_hash(tmp_path: Path, capsys) -> None:
    mirror = tmp_path / "mirror" / "vec-768-layer-12.onnx"
    mirror.parent.mkdir()
    mirror.write_bytes(BLOB)
    settings = _settings(tmp_path / "cache", contentvec_url=mirror.as_uri())
    target = tmp_path / "cache" / "rvc" / "vec-768-layer-12.onnx"

    assert cmd_models_fetch(settings, ["contentvec"], all_=False, progress=False) == 0
    assert target.read_bytes() == BLOB
    assert PIN_HINT in capsys.readouterr().out

    assert cmd_models_fetch(settings, ["contentvec"], all_=False, progress=False) == 0
    assert "already present" in capsys.readouterr().out

    assert cmd_models_verify(settings, ["contentvec"], pin=False) == 0
    assert PIN_HINT in capsys.readouterr().out
    assert cmd_models_verify(settings, ["contentvec"], pin=True) == 0
    assert f"pinned sha256 {BLOB_SHA}" in capsys.readouterr().out

    target.write_bytes(b"tampered")
    assert cmd_models_verify(settings, ["contentvec"], pin=False) == 1
    assert "corrupt" in capsys.readouterr().out


def test_cli_fetch_refuses_a_wrong_file_from_an_override(tmp_path: Path, capsys) -> None:
    wrong = tmp_path / "mirror" / "inswapper_128.onnx"
    wrong.parent.mkdir()
    wrong.write_bytes(BLOB)
    settings = _settings(tmp_path / "cache", inswapper_url=wrong.as_uri())
    assert cmd_models_fetch(settings, ["inswapper"], all_=False, progress=False) == 1
    assert f"gave {len(BLOB)} bytes, expected 554253681" in capsys.readouterr().err
    assert not (tmp_path / "cache" / "inswapper_128.onnx").exists()


def test_cli_usage_errors(tmp_path: Path, capsys) -> None:
    settings = _settings(tmp_path)
    assert cmd_models_fetch(settings, [], all_=False) == 2
    assert "pass --all" in capsys.readouterr().err
    assert cmd_models_fetch(settings, ["nope"], all_=False) == 2
    assert "unknown model(s): nope" in capsys.readouterr().err
    assert cmd_models_verify(settings, ["scrfd"], pin=False) == 1  # named and missing
    assert "mirage-ray models fetch scrfd" in capsys.readouterr().out
    assert cmd_models_verify(settings, [], pin=False) == 0  # nothing present, nothing wrong
