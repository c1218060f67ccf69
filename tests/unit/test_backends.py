"""Backend selection: auto picks production when its verified files are present, else the embedded default;
an explicit choice with a missing file fails naming the file, the path and the fetch command."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from mirage_ray.backends import build_converters, build_detector, build_enhancer, build_swapper, onnx_providers
from mirage_ray.config import MirageSettings
from mirage_ray.models import MODEL_FILES, ModelMissingError, ModelRegistry
from tests.synthetic import rvc_onnx, swap_onnx
from tests.synthetic.scrfd_onnx import build_scrfd_onnx


def registry_with(root: Path, files: dict[str, bytes]) -> tuple[MirageSettings, ModelRegistry]:
    """Write synthetic model files into the cache layout and pin the registry's hashes to them."""
    settings = MirageSettings(model_dir=root)
    entries = []
    for entry in MODEL_FILES:
        if entry.name in files:
            data = files[entry.name]
            (root / entry.filename).parent.mkdir(parents=True, exist_ok=True)
            (root / entry.filename).write_bytes(data)
            entry = dataclasses.replace(entry, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
        entries.append(entry)
    return settings, ModelRegistry(settings, files=entries)


def test_auto_on_a_bare_machine_gives_the_embedded_defaults(tmp_path: Path) -> None:
    settings, registry = registry_with(tmp_path, {})
    detector, choice = build_detector(settings, registry)
    assert (detector.name, choice.fallback) == ("retinaface-mnet025", True)
    assert "det_10g.onnx not present" in choice.reason
    assert build_swapper(settings, registry)[0].name == "classical-dlib68"
    enhancer, choice = build_enhancer(settings, registry)
    assert enhancer.name == "none" and "enhancement unavailable" in choice.reason
    primary, fallback, choice = build_converters(settings, registry)
    assert (primary.name, fallback.name, choice.fallback) == ("world", "world-fast", True)  # never the real voice


@pytest.mark.parametrize(
    ("setting", "build", "filename"),
    [
        ({"detector": "scrfd"}, build_detector, "det_10g.onnx"),
        ({"swapper": "inswapper"}, build_swapper, "inswapper_128.onnx"),
        ({"enhancer": "codeformer"}, build_enhancer, "codeformer.pth"),
        ({"voice": "rvc"}, build_converters, "rmvpe.onnx"),
    ],
)
def test_explicit_choice_with_missing_files_names_file_path_and_fetch(
    tmp_path: Path, setting: dict, build, filename: str
) -> None:
    settings = MirageSettings(model_dir=tmp_path, **setting)
    with pytest.raises(ModelMissingError) as info:
        build(settings, ModelRegistry(settings))
    message = str(info.value)
    assert filename in message and str(tmp_path) in message and "mirage-ray models fetch" in message


def test_auto_picks_scrfd_when_its_verified_file_is_present(tmp_path: Path) -> None:
    settings, registry = registry_with(tmp_path, {"scrfd": build_scrfd_onnx()})
    detector, choice = build_detector(settings, registry)
    assert (detector.name, choice.fallback) == ("scrfd-10g", False)


def test_a_file_with_the_wrong_hash_is_not_used(tmp_path: Path) -> None:
    settings, registry = registry_with(tmp_path, {"scrfd": build_scrfd_onnx()})
    (tmp_path / "buffalo_l" / "det_10g.onnx").write_bytes(b"tampered")
    assert build_detector(settings, registry)[0].name == "retinaface-mnet025"


def test_auto_picks_inswapper_with_arcface(tmp_path: Path) -> None:
    files = {
        "inswapper": swap_onnx.inswapper_model().SerializeToString(),
        "arcface": swap_onnx.arcface_model().SerializeToString(),
    }
    settings, registry = registry_with(tmp_path, files)
    swapper, choice = build_swapper(settings, registry)
    assert (swapper.name, choice.fallback) == ("inswapper-128", False)


def test_auto_picks_rvc_when_models_and_a_voice_are_present(tmp_path: Path) -> None:
    files = {
        "rmvpe": rvc_onnx.rmvpe_model().SerializeToString(),
        "contentvec": rvc_onnx.content_model().SerializeToString(),
    }
    settings, registry = registry_with(tmp_path, files)
    assert build_converters(settings, registry)[0].name == "world"  # no voice yet: the embedded default
    registry.voices_dir().mkdir(parents=True)
    rvc_onnx.save(rvc_onnx.generator_model(), registry.voices_dir() / "alice.onnx")
    primary, fallback, choice = build_converters(settings, registry)
    assert (primary.name, fallback.name, choice.fallback) == ("rvc", "world", False)
    assert list(primary.voices) == ["alice"]


def test_providers_default_to_cpu_here_and_respect_configuration() -> None:
    assert onnx_providers(MirageSettings()) == ["CPUExecutionProvider"]
    assert onnx_providers(MirageSettings(onnx_providers=("CPUExecutionProvider",))) == ["CPUExecutionProvider"]


def test_explicit_passthrough_voice_warns_that_the_real_voice_goes_out(tmp_path: Path, caplog) -> None:
    settings = MirageSettings(model_dir=tmp_path, voice="passthrough")
    primary, fallback, choice = build_converters(settings, ModelRegistry(settings))
    assert primary.name == fallback.name == "passthrough" and choice.fallback
    assert "real voice" in caplog.text
