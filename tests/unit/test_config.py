"""One typed settings object: env MIRAGE_*, overrides, refusals with the allowed range."""

import pytest
from pydantic import ValidationError

from mirage_ray.config import MirageSettings, load_settings


def test_env_prefix_and_seed_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIRAGE_MAX_FACES", "3")
    monkeypatch.setenv("MIRAGE_CODEFORMER_FIDELITY", "0.4")
    monkeypatch.setenv("MIRAGE_INSWAPPER_URL", "http://127.0.0.1:1/inswapper_128.onnx")
    settings = load_settings()
    assert settings.max_faces == 3
    assert settings.codeformer_fidelity == 0.4
    assert settings.inswapper_url.endswith("inswapper_128.onnx")


def test_overrides_win_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIRAGE_MAX_FACES", "3")
    assert load_settings(max_faces=2).max_faces == 2


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_faces", 0, "greater than or equal to 1"),
        ("codeformer_fidelity", 1.5, "less than or equal to 1"),
        ("chunk_ms", 600, "[min_chunk_ms, max_chunk_ms] = [80, 480]"),
        ("detector", "yolo", "'auto', 'scrfd' or 'retinaface'"),
        ("no_such_setting", 1, "Extra inputs are not permitted"),
        ("voice_preset", "squeaky", "must be one of neutral, deeper, brighter"),
    ],
)
def test_bad_values_are_refused_with_the_range(field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        MirageSettings(**{field: value})
    assert message in str(info.value)


def test_every_setting_is_documented() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    missing = [name for name in MirageSettings.model_fields if f"`MIRAGE_{name.upper()}`" not in doc]
    assert missing == []
