"""`mirage-ray`: token, settings and models list through the real entry point."""

import json

import pytest

from mirage_ray.cli import main
from mirage_ray.security import TokenVerifier

SECRET = "cli-test-secret-0123456789abcdefghijkl"


def test_token_is_signed_for_the_configured_key(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("MIRAGE_JWT_SECRET", SECRET)
    assert main(["token", "--sub", "alice", "--ttl", "120"]) == 0
    token = capsys.readouterr().out.strip()
    principal = TokenVerifier(SECRET, "HS256", "mirage", issuer=None).verify(token)
    assert principal.subject == "alice"


def test_token_without_a_secret_says_what_to_set(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.delenv("MIRAGE_JWT_SECRET", raising=False)
    assert main(["token", "--sub", "alice"]) == 2
    assert "MIRAGE_JWT_SECRET" in capsys.readouterr().err


def test_settings_never_print_the_secret(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("MIRAGE_JWT_SECRET", SECRET)
    monkeypatch.setenv("MIRAGE_MAX_FACES", "2")
    assert main(["settings"]) == 0
    out = capsys.readouterr().out
    assert SECRET not in out
    assert json.loads(out)["max_faces"] == 2


def test_invalid_setting_is_refused_with_the_range(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("MIRAGE_MAX_FACES", "99")
    assert main(["settings"]) == 2
    assert "less than or equal to 16" in capsys.readouterr().err


def test_models_list_names_every_file(monkeypatch: pytest.MonkeyPatch, tmp_path, capsys) -> None:
    monkeypatch.setenv("MIRAGE_MODEL_DIR", str(tmp_path))
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("scrfd", "arcface", "inswapper", "codeformer", "rmvpe", "contentvec"):
        assert name in out
