"""The launcher refuses a bad configuration before starting Ray, with a message that says what to set."""

from pathlib import Path

import pytest
import yaml

from actors.launch import CPU_CONFIG, check_config, parse_sets, write_config


@pytest.fixture(autouse=True)
def no_configured_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIRAGE_JWT_SECRET", raising=False)
    monkeypatch.delenv("MIRAGE_JWT_PUBLIC_KEY", raising=False)


def test_loopback_without_a_key_is_fine(tmp_path: Path) -> None:
    assert check_config(write_config(CPU_CONFIG, "127.0.0.1", 8000, {}, tmp_path)) is None


def test_public_address_without_a_key_is_refused(tmp_path: Path) -> None:
    problem = check_config(write_config(CPU_CONFIG, "0.0.0.0", 8000, {}, tmp_path))
    assert problem is not None and "MIRAGE_JWT_SECRET" in problem


def test_public_address_with_a_key_is_fine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIRAGE_JWT_SECRET", "a-configured-secret-0123456789abcdef")
    assert check_config(write_config(CPU_CONFIG, "0.0.0.0", 8000, {}, tmp_path)) is None


def test_invalid_setting_is_refused_with_its_range(tmp_path: Path) -> None:
    problem = check_config(write_config(CPU_CONFIG, "127.0.0.1", 8000, parse_sets(["max_faces=99"]), tmp_path))
    assert problem is not None and "less than or equal to 16" in problem


def test_sets_are_parsed_as_yaml_values() -> None:
    assert parse_sets(["enhance=true", "max_faces=2", 'stage_budget_ms={"video.swap": 40}']) == {
        "enhance": True,
        "max_faces": 2,
        "stage_budget_ms": {"video.swap": 40},
    }


def test_a_deployment_user_config_out_of_range_is_refused_with_the_range(tmp_path: Path) -> None:
    config = yaml.safe_load(CPU_CONFIG.read_text())
    (app,) = config["applications"]
    next(d for d in app["deployments"] if d["name"] == "Swapper")["user_config"] = {"max_batch_size": 100}
    source = tmp_path / "source.yaml"
    source.write_text(yaml.safe_dump(config))
    problem = check_config(write_config(source, "127.0.0.1", 8000, {}, tmp_path))
    assert problem is not None and problem.startswith("mirage/Swapper:") and "max_batch_size 1..64" in problem
