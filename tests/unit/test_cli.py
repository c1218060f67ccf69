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


# --- serve, client, bench ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["serve", "client", "bench", "models", "token", "settings"])
def test_every_command_explains_itself(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    assert len(capsys.readouterr().out) > 200


def test_serve_runs_the_launcher_that_make_run_runs() -> None:
    from mirage_ray.cli import build_parser, serve_command

    args = build_parser().parse_args(["serve", "--port", "9000", "--set", "max_faces=2", "--num-gpus", "0"])
    command = serve_command(args)
    assert command[1:5] == ["-m", "actors.launch", "run", "--host"]
    assert command[command.index("--port") + 1] == "9000"
    assert command[command.index("--set") + 1] == "max_faces=2" and "--num-gpus" in command
    assert "--config" not in command  # the launcher picks the profile by GPU presence


def test_serve_without_ray_says_what_to_install(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import mirage_ray.cli as cli

    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name: None)
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "[serve" in err and "Traceback" not in err


def test_serve_with_a_missing_config_is_one_line(capsys) -> None:
    assert main(["serve", "--config", "/no/such.yaml"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_the_core_cli_does_not_import_ray() -> None:
    import subprocess
    import sys

    code = "import sys, mirage_ray.cli, mirage_ray.client.app; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_bench_lists_every_benchmark_and_refuses_unknown_names(capsys) -> None:
    assert main(["bench", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("voice", "capacity", "pipeline", "swap"):
        assert any(line.startswith(name + " ") for line in out.splitlines())
    assert main(["bench", "run", "no-such"]) == 2
    assert "mirage-ray bench list" in capsys.readouterr().err


def test_client_flags_become_settings() -> None:
    from mirage_ray.cli import build_parser, client_settings

    args = build_parser().parse_args(["client", "--voice", "higher", "--pitch", "3", "--no-swap", "--no-enhance"])
    assert client_settings(args) == {"voice": "higher", "pitch_semitones": 3.0, "enhance": False, "swap": False}
    assert client_settings(build_parser().parse_args(["client"])) == {}  # the server's defaults stay


def test_client_file_mode_needs_input_and_output(capsys) -> None:
    assert main(["client", "--input", "in.mp4"]) == 2
    assert "--output" in capsys.readouterr().err


def test_client_without_a_server_is_one_clear_line(tmp_path, capsys) -> None:
    (tmp_path / "frames").mkdir()
    argv = ["client", "--url", "ws://127.0.0.1:1/ws", "--input", str(tmp_path / "frames")]
    assert main([*argv, "--output", str(tmp_path / "out.avi")]) == 2  # no token: the page token is unreachable
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "mirage-ray serve" in err and "Traceback" not in err
    assert main(["client", "--token", "t", "--input", str(tmp_path / "nope"), "--output", "o.avi"]) == 2
    assert "input not found" in capsys.readouterr().err
