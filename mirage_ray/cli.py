"""``mirage-ray``: run the server, the desktop client and the benchmarks; model files, tokens and settings.

mirage-ray serve [--port 8000] [--host 127.0.0.1] [--config FILE] [--set key=value ...]
mirage-ray client [--url ws://127.0.0.1:8000/ws] [--token JWT] [--reference PHOTO] [--input FILE --output FILE]
mirage-ray bench list | run NAME [ARGS ...]
mirage-ray models list | fetch [NAME ...] [--all] | verify [NAME ...] [--pin]
mirage-ray token --sub NAME [--ttl 3600]
mirage-ray settings            (every setting with its current value)

Expected errors print one line that says what went wrong and what to do, and exit with status 2 (1: the work ran
but did not complete, e.g. a client run that timed out).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from pydantic import ValidationError

from mirage_ray.config import MirageSettings, field_range, load_settings
from mirage_ray.models_cli import cmd_models_fetch, cmd_models_list, cmd_models_verify
from mirage_ray.security import ConfigurationError, TokenIssuer
from mirage_ray.voice.presets import PRESETS

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO_ROOT / "bench"
DEFAULT_URL = "ws://127.0.0.1:8000/ws"
USAGE_ERROR = 2
VOICE_PRESETS = tuple(PRESETS)
RANGES = {
    name: field_range(field)
    for name, field in (("pitch", "pitch_semitones"), ("formant", "formant_shift"), ("faces", "max_faces"))
}


def fail(message: str) -> int:
    """One clear line on stderr; the exit status of an expected error."""
    print(f"mirage-ray: {message}", file=sys.stderr)
    return USAGE_ERROR


def cmd_token(settings: MirageSettings, subject: str, ttl_s: int) -> int:
    """Print a token signed with the configured HMAC secret (MIRAGE_JWT_SECRET)."""
    if not settings.jwt_secret:
        print(
            "mirage-ray token needs MIRAGE_JWT_SECRET (the server's HMAC key). For a local `make run` without a "
            "secret, the page at / fetches its own token.",
            file=sys.stderr,
        )
        return 2
    try:
        issuer = TokenIssuer(settings.jwt_secret, settings.jwt_algorithm, settings.jwt_audience, settings.jwt_issuer)
    except ConfigurationError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    print(issuer.issue(subject, ttl_s))
    return 0


# --- serve ---------------------------------------------------------------------------------------------------------
def serve_command(args: argparse.Namespace) -> list[str]:
    """The launcher command line ``make run`` uses (``python -m actors.launch run ...``) for these options."""
    command = [sys.executable, "-m", "actors.launch", "run", "--host", args.host, "--port", str(args.port)]
    if args.config:
        command += ["--config", str(args.config)]
    if args.num_cpus is not None:
        command += ["--num-cpus", str(args.num_cpus)]
    if args.num_gpus is not None:
        command += ["--num-gpus", str(args.num_gpus)]
    if args.metrics_port is not None:
        command += ["--metrics-port", str(args.metrics_port)]
    for item in args.set:
        command += ["--set", item]
    return command


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the launcher as a child (the core library never imports ray); Ctrl-C reaches it too and it stops cleanly."""
    if importlib.util.find_spec("ray") is None:
        return fail("serve needs Ray Serve: install the serve extra (pip install -e '.[serve,cpu]') or run `make run`")
    if importlib.util.find_spec("actors") is None:
        return fail("serve needs the actors package of the source checkout: run it from the repository (make run)")
    if args.config and not Path(args.config).is_file():
        return fail(f"--config {args.config}: no such file (serve_config.yaml or serve_config.cpu.yaml)")
    try:
        return subprocess.run(serve_command(args), check=False).returncode
    except KeyboardInterrupt:  # the launcher got the same Ctrl-C and drains; the wait was interrupted
        return 0


# --- bench ---------------------------------------------------------------------------------------------------------
def list_benchmarks(bench_dir: Path = BENCH_DIR) -> dict[str, str]:
    """Benchmark name (``voice`` for bench_voice.py) -> the first line of its docstring."""
    import ast

    found = {}
    for path in sorted(bench_dir.glob("bench_*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        found[path.stem.removeprefix("bench_")] = doc.splitlines()[0] if doc else ""
    return found


def cmd_bench(args: argparse.Namespace) -> int:
    if not BENCH_DIR.is_dir():
        return fail(f"no benchmarks at {BENCH_DIR}: they live in the source checkout's bench/ folder")
    benches = list_benchmarks()
    if args.action == "list":
        width = max(map(len, benches), default=0)
        for name, line in benches.items():
            print(f"{name:<{width}}  {line}")
        return 0
    if args.name not in benches:
        return fail(f"no benchmark {args.name!r}; `mirage-ray bench list` shows: {', '.join(benches)}")
    command = [sys.executable, str(BENCH_DIR / f"bench_{args.name}.py"), *args.args]
    try:
        return subprocess.run(command, cwd=REPO_ROOT, check=False).returncode
    except KeyboardInterrupt:
        return 130


# --- client --------------------------------------------------------------------------------------------------------
def client_settings(args: argparse.Namespace) -> dict[str, object]:
    """The ``settings`` message fields the flags ask for (none given: the server's defaults stay)."""
    fields = {
        "voice": args.voice,
        "pitch_semitones": args.pitch,
        "formant_shift": args.formant,
        "max_faces": args.max_faces,
        "enhance": args.enhance,
        "swap": False if args.no_swap else None,
    }
    return {name: value for name, value in fields.items() if value is not None}


def cmd_client(args: argparse.Namespace) -> int:
    from mirage_ray.client.app import ClientOptions, main
    from mirage_ray.client.devices import LiveOptions
    from mirage_ray.client.extras import ClientError
    from mirage_ray.client.files import FileRunOptions

    if (args.input is None) != (args.output is None):
        return fail("file mode needs both --input FILE and --output FILE (without them the client uses the camera)")
    file_options = None
    if args.input is not None:
        file_options = FileRunOptions(
            input=args.input,
            output=args.output,
            audio=args.audio,
            fps=args.fps,
            pace=args.pace,
            window=args.window,
            end_timeout_s=args.timeout,
        )
    live = LiveOptions(
        camera=None if args.no_camera else args.camera,
        microphone=args.microphone,
        speaker=args.speaker,
        virtual_camera=args.virtual_camera,
        preview=not args.no_preview,
        audio=not args.no_audio,
    )
    settings = client_settings(args)
    options = ClientOptions(args.url, args.token, args.reference, settings, file_options, live, args.report)
    try:
        return main(options)
    except ClientError as exc:
        return fail(str(exc))


def device(value: str) -> int | str:
    """A sounddevice device: its index, or (part of) its name."""
    return int(value) if value.isdigit() else value


def add_client_parser(sub: argparse._SubParsersAction) -> None:
    client = sub.add_parser(
        "client",
        help="the desktop client: camera and microphone live, or a file through the server",
        description=(
            "Connect to a running server (mirage-ray serve) over protocol v1. Live (default): the camera (OpenCV) "
            "and microphone go up; the swapped video goes to a preview window and/or a virtual camera "
            "(--virtual-camera, pyvirtualcam) and the converted voice to a speaker or virtual audio cable "
            "(--speaker). File mode (--input/--output): a video with its audio, or a folder of frames + --audio "
            "WAV, is sent at its timestamps, flushed, and written back as a video + the converted WAV beside it. "
            "Devices, PyAV and soundfile come with the client extra: pip install 'mirage-ray[client]'."
        ),
    )
    client.add_argument("--url", default=DEFAULT_URL, help=f"the server's WebSocket (default {DEFAULT_URL})")
    client.add_argument(
        "--token", help="a JWT (mirage-ray token --sub NAME); default: the server's page token on loopback"
    )
    client.add_argument("--reference", type=Path, help="the photo whose face becomes your face (JPEG or PNG)")
    files = client.add_argument_group("file mode")
    files.add_argument("--input", type=Path, help="a video file (with its audio), a folder of frames, or a WAV")
    files.add_argument("--output", type=Path, help="a video (.mp4/.avi/...), a folder of frames, or a .wav")
    files.add_argument("--audio", type=Path, help="a WAV that supplies (or replaces) the input's audio")
    files.add_argument("--fps", type=float, help="frame rate of a folder of frames (default 20)")
    files.add_argument(
        "--pace", choices=("realtime", "fast"), default="realtime", help="at the timestamps, or as answered"
    )
    files.add_argument("--window", type=int, default=1, help="frames sent before a reply is needed (default 1)")
    files.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the last replies (default 60)")
    files.add_argument("--report", type=Path, help="write what was sent and returned as JSON here")
    live = client.add_argument_group("live mode")
    live.add_argument("--camera", type=int, default=0, help="OpenCV camera index (default 0)")
    live.add_argument("--no-camera", action="store_true", help="audio only")
    live.add_argument("--microphone", type=device, help="sounddevice input (index or name; default: system default)")
    live.add_argument("--speaker", type=device, help="sounddevice output: a speaker or a virtual cable for calls")
    live.add_argument("--no-audio", action="store_true", help="video only")
    live.add_argument("--virtual-camera", action="store_true", help="send the result to a virtual camera")
    live.add_argument("--no-preview", action="store_true", help="no preview window")
    settings = client.add_argument_group("settings (default: the server's)")
    settings.add_argument("--voice", help=f"a preset ({', '.join(VOICE_PRESETS)}) or a voice model name")
    settings.add_argument("--pitch", type=float, help="pitch shift in semitones ({:g}..{:g})".format(*RANGES["pitch"]))
    settings.add_argument(
        "--formant", type=float, help="formant shift ({:g}..{:g}; < 1 deeper)".format(*RANGES["formant"])
    )
    settings.add_argument(
        "--max-faces", type=int, help="faces to swap, largest first ({:g}..{:g})".format(*RANGES["faces"])
    )
    settings.add_argument("--enhance", action=argparse.BooleanOptionalAction, default=None, help="face restorer")
    settings.add_argument("--no-swap", action="store_true", help="pass video through unswapped")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mirage-ray",
        description="Mirage on Ray: real-time face swap and voice conversion. Run the server, the desktop client, "
        "the benchmarks; manage model files and tokens.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="start a local Ray head + the Serve app (what `make run` does); Ctrl-C stops everything",
        description="Start a local Ray head and the Mirage Serve application, wait until every deployment is "
        "RUNNING, print the URL; Ctrl-C or SIGTERM drains the sessions and stops Ray. Without --config it uses "
        "serve_config.yaml when an NVIDIA GPU is visible, else serve_config.cpu.yaml. Needs the serve extra "
        "(ray[serve]); `make run` installs everything first.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: local token mode)")
    serve.add_argument("--port", type=int, default=8000, help="HTTP/WebSocket port (default 8000)")
    serve.add_argument("--config", type=Path, help="Serve config YAML (default: by GPU presence)")
    serve.add_argument("--num-cpus", type=int, help="CPUs for the Ray head (default: all)")
    serve.add_argument("--num-gpus", type=int, help="logical GPUs to declare (default: physical)")
    serve.add_argument("--metrics-port", type=int, help="Prometheus metrics port (default 8080)")
    serve.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="application arg override (repeatable)"
    )
    add_client_parser(sub)
    bench = sub.add_parser(
        "bench",
        help="list or run the benchmarks in bench/ (they print numbers; results in docs/benchmarks.md)",
        description="Benchmarks print numbers and assert nothing. `list` names them; `run NAME [ARGS]` runs "
        "bench/bench_NAME.py from the repository root (ARGS go to it; `run NAME -- --help` shows its options).",
    )
    bench_sub = bench.add_subparsers(dest="action", required=True)
    bench_sub.add_parser("list", help="every benchmark with what it measures")
    bench_run = bench_sub.add_parser("run", help="run one benchmark")
    bench_run.add_argument("name", help="e.g. voice for bench/bench_voice.py")
    bench_run.add_argument("args", nargs=argparse.REMAINDER, help="passed to the benchmark")
    models = sub.add_parser(
        "models",
        help="list, fetch or verify the production model files",
        description="The production backends' files (SCRFD, ArcFace, InSwapper, CodeFormer, RVC's RMVPE and "
        "ContentVec) live in MIRAGE_MODEL_DIR. Nothing downloads on its own: `fetch` does, with progress, resume, "
        "a lock, sha256 and atomic rename; `verify` rehashes. Without them the embedded defaults run.",
    )
    models_sub = models.add_subparsers(dest="action", required=True)
    models_sub.add_parser("list", help="every file: where it lives, present/verified, size, licence")
    fetch = models_sub.add_parser("fetch", help="download with progress, resume, lock, sha256 and atomic rename")
    fetch.add_argument("names", nargs="*")
    fetch.add_argument("--all", action="store_true", dest="all_")
    verify = models_sub.add_parser("verify", help="rehash files against their published sha256")
    verify.add_argument("names", nargs="*")
    verify.add_argument("--pin", action="store_true", help="record the hash of files that have no published one")
    token = sub.add_parser(
        "token",
        help="print a JWT for the configured MIRAGE_JWT_SECRET",
        description="Print a token for a WebSocket client (the page's Access token field, `mirage-ray client "
        "--token`), signed with the server's HMAC key: set MIRAGE_JWT_SECRET (and MIRAGE_JWT_ISSUER if the server "
        "checks one) to the server's values. A local server without a key makes its own tokens.",
    )
    token.add_argument("--sub", required=True, help="the subject (user id) the token is for")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")
    sub.add_parser(
        "settings",
        help="print every setting with its current value (env MIRAGE_*)",
        description="Print every server setting as JSON with the value the environment gives it (MIRAGE_* "
        "variables; the JWT secret is never printed). An invalid value is refused with its allowed range. "
        "docs/configuration.md describes each one.",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return cmd_serve(args)
    if args.command == "client":
        return cmd_client(args)
    if args.command == "bench":
        return cmd_bench(args)
    try:
        settings = load_settings()
    except ValidationError as exc:
        print(f"invalid MIRAGE_* setting:\n{exc}", file=sys.stderr)
        return 2
    if args.command == "token":
        return cmd_token(settings, args.sub, args.ttl)
    if args.command == "settings":
        print(json.dumps(settings.model_dump(mode="json", exclude={"jwt_secret"}), indent=2))
        return 0
    if args.action == "list":
        return cmd_models_list(settings)
    if args.action == "fetch":
        return cmd_models_fetch(settings, args.names, args.all_)
    return cmd_models_verify(settings, args.names, args.pin)


if __name__ == "__main__":
    sys.exit(main())
