"""Start a local Ray head, deploy a Serve config, wait until every deployment is RUNNING, stop cleanly.

Used by ``make run`` and by the integration tests (the same path a user takes)::

    python -m actors.launch run [--config serve_config.yaml] [--port 8000] [--set key=value ...]

Without ``--config`` it picks serve_config.yaml (A10G profile: GPU fractions) when a GPU is visible, else
serve_config.cpu.yaml. SIGINT / SIGTERM drain the application first (Serve deletes it; every ingress replica closes
its sessions with 1001 after answering the audio it received; at most DRAIN_TIMEOUT_S), then stop the Ray head it
started.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger("mirage.launch")

REPO_ROOT = Path(__file__).resolve().parent.parent
GPU_CONFIG = REPO_ROOT / "serve_config.yaml"
CPU_CONFIG = REPO_ROOT / "serve_config.cpu.yaml"
READY_TIMEOUT_S = 300.0
POLL_INTERVAL_S = 1.0
STOP_GRACE_S = 5.0
DRAIN_TIMEOUT_S = 30.0  # SIGTERM: the application's deletion (sessions closed with 1001), at most this long
LAUNCH_GRACE_S = 60.0  # beyond the ready timeout: Ray's own start, and the launcher's clean stop (drain included)
APP_NAME = "mirage"
FREE_PORT_RANGE = (20000, 32768)  # [start, stop): see free_port
_HANDED_OUT: set[int] = set()


def count_gpus() -> int:
    """Physical NVIDIA GPUs visible to this machine (0 without nvidia-smi)."""
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in listing.stdout.splitlines() if line.startswith("GPU "))


def free_port() -> int:
    """A free loopback port between Ray's worker ports (10002-19999) and the kernel's ephemeral range (32768+):
    a port the kernel hands out (bind to 0) can be taken by one of the processes Ray starts before Serve's proxy
    binds it (seen once: "Failed to bind to address")."""
    for port in random.sample(range(*FREE_PORT_RANGE), 200):
        if port in _HANDED_OUT:  # handed to a process that may not have bound it yet
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            _HANDED_OUT.add(port)
            return port
    raise OSError(f"no free port in {FREE_PORT_RANGE[0]}-{FREE_PORT_RANGE[1] - 1}")


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are parsed as YAML scalars/objects (so ``enhance=true`` is a bool)."""
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        parsed[key.strip()] = yaml.safe_load(value)
    return parsed


def write_config(source: Path, host: str, port: int, overrides: dict[str, Any], out_dir: Path) -> Path:
    """A copy of ``source`` with the HTTP address and the application args overridden."""
    config = yaml.safe_load(source.read_text())
    config.setdefault("http_options", {}).update({"host": host, "port": port})
    for app in config["applications"]:
        app.setdefault("args", {}).update({"host": host, "port": port, **overrides})
    target = out_dir / "serve_config.yaml"
    target.write_text(yaml.safe_dump(config, sort_keys=False))
    return target


def wait_running(address: str, timeout_s: float) -> dict[str, str]:
    """Block until every deployment of the application is RUNNING; returns their statuses."""
    import ray
    from ray import serve

    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    deadline = time.monotonic() + timeout_s
    statuses: dict[str, str] = {}
    try:
        while time.monotonic() < deadline:
            status = serve.status()
            app = status.applications.get(APP_NAME)
            if app is not None:
                statuses = {name: _deployment_state(d) for name, d in app.deployments.items()}
                if str(app.status.value) == "DEPLOY_FAILED":
                    details = {n: d.message for n, d in app.deployments.items() if d.message}
                    raise RuntimeError(f"deployment failed: {app.message} {details}")
                if (
                    statuses
                    and all(value == "RUNNING" for value in statuses.values())
                    and app.status.value == "RUNNING"
                ):
                    return statuses
                unhealthy = {n: d.message for n, d in app.deployments.items() if d.status.value == "UNHEALTHY"}
                if unhealthy:
                    raise RuntimeError(f"deployments unhealthy: {unhealthy}")
            time.sleep(POLL_INTERVAL_S)
        raise TimeoutError(f"deployments not all RUNNING after {timeout_s:.0f} s: {statuses}")
    finally:
        ray.shutdown()


def drain_application(address: str, timeout_s: float) -> bool:
    """Delete the application through Serve and wait until it is gone (at most ``timeout_s``); True if it went.

    Serve drains each replica before stopping it; the ingress replicas close their sessions with 1001 meanwhile
    (actors/ingress.py), while the proxy is still up to carry the close frames (``serve.shutdown`` would stop it too).
    """
    import ray
    from ray import serve

    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    try:
        serve.delete(APP_NAME, _blocking=False)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if APP_NAME not in serve.status().applications:
                return True
            time.sleep(POLL_INTERVAL_S / 4)
        return False
    finally:
        ray.shutdown()


def _deployment_state(deployment: Any) -> str:
    """RUNNING when the deployment is HEALTHY and every one of its replicas is RUNNING, else the Serve status."""
    replicas = {str(getattr(k, "value", k)): v for k, v in deployment.replica_states.items()}
    healthy = str(deployment.status.value) == "HEALTHY"
    if healthy and replicas and set(replicas) == {"RUNNING"}:
        return "RUNNING"
    return f"{deployment.status.value} {replicas}"


class LocalCluster:
    """A Ray head started for this run only, in its own temp dir, stopped at exit."""

    def __init__(self, num_cpus: int, num_gpus: int, metrics_port: int) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.temp_dir = Path(tempfile.mkdtemp(prefix="mirage-ray-"))
        self._num_cpus = num_cpus
        self._num_gpus = num_gpus
        self.metrics_port = metrics_port

    def start(self) -> None:
        command = [
            _tool("ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={self.port}",
            f"--num-cpus={self._num_cpus}", f"--num-gpus={self._num_gpus}", "--include-dashboard=false",
            "--disable-usage-stats", f"--metrics-export-port={self.metrics_port}", f"--temp-dir={self.temp_dir}",
        ]  # fmt: skip
        logger.info("starting Ray head: %d CPUs, %d GPUs (logical)", self._num_cpus, self._num_gpus)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=_ray_env())

    def stop(self) -> None:
        """End this cluster's processes only: those naming our temp dir, and all their descendants.

        (``ray stop`` would end every Ray instance of the user on the machine.)
        """
        stop_processes(self.temp_dir)


def stop_processes(temp_dir: Path) -> None:
    """SIGTERM, then after STOP_GRACE_S SIGKILL, every process of the cluster rooted at ``temp_dir``; remove it."""
    pids = _process_tree(str(temp_dir))
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.2)
    _signal_all([pid for pid in pids if _alive(pid)], signal.SIGKILL)
    shutil.rmtree(temp_dir, ignore_errors=True)


def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) from /proc."""
    table: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        table[int(entry.name)] = (parent, cmdline)
    return table


def _process_tree(marker: str) -> list[int]:
    """Processes whose command line contains ``marker``, plus all their descendants."""
    table = _process_table()
    found = {pid for pid, (_, cmdline) in table.items() if marker in cmdline and pid != os.getpid()}
    grew = True
    while grew:
        children = {pid for pid, (parent, _) in table.items() if parent in found and pid not in found}
        found |= children
        grew = bool(children)
    return sorted(found)


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _tool(name: str) -> str:
    """A console script of this interpreter's environment (works without an activated venv)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def pin_ray_auth_mode() -> None:
    """Say Ray's token-auth mode out loud (default ``disabled``: a loopback head started for this run only).

    With the mode unset, a ``~/.ray/auth_token`` left on the machine (e.g. by ``ray get-auth-token --generate``)
    turns token auth on in the head while drivers stay without a token, and nothing can connect. Set in this
    process's environment so that every driver it starts (tests' and benches' helpers too) agrees with the head.
    ``RAY_AUTH_MODE=token`` in the environment is kept.
    """
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def _ray_env() -> dict[str, str]:
    pin_ray_auth_mode()
    env = dict(os.environ)
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray starts its workers (every Serve replica, the proxy) at nice 15: on a shared machine a browser or any other
    # process at nice 0 then takes the CPU from the sessions being served. Serving is this machine's job.
    env.setdefault("RAY_worker_niceness", "0")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def deploy(config: Path, address: str) -> None:
    subprocess.run(
        [_tool("serve"), "run", "--non-blocking", f"--address={address}", str(config)],
        check=True,
        cwd=REPO_ROOT,
        env=_ray_env(),
        stdout=subprocess.DEVNULL,
    )


def check_config(config: Path) -> str | None:
    """What stops this configuration from starting (invalid settings or batching user_config, no JWT key off
    loopback), or None.

    The app builder and the replicas check the same on the cluster; checking here first gives a clear message before
    Ray starts.
    """
    from pydantic import ValidationError

    from mirage_ray.config import load_settings
    from mirage_ray.security import ConfigurationError, build_auth
    from mirage_ray.stage_api import BatchConfig

    for app in yaml.safe_load(config.read_text())["applications"]:
        try:
            settings = load_settings(**app.get("args", {}))
            build_auth(settings)
            for deployment in app.get("deployments", []):
                if "user_config" in deployment:
                    BatchConfig.from_user_config(deployment["user_config"], BatchConfig.from_settings(settings))
        except ValidationError as exc:
            return f"invalid setting in {app['name']}: {exc}"
        except ConfigurationError as exc:
            return str(exc)
        except ValueError as exc:  # a deployment's user_config
            return f"{app['name']}/{deployment['name']}: {exc}"
    return None


def run(args: argparse.Namespace) -> int:
    pin_ray_auth_mode()
    gpus = count_gpus() if args.num_gpus is None else args.num_gpus
    source = Path(args.config) if args.config else (GPU_CONFIG if gpus > 0 else CPU_CONFIG)
    cluster = LocalCluster(num_cpus=args.num_cpus or os.cpu_count() or 2, num_gpus=gpus, metrics_port=args.metrics_port)
    stop_requested = False

    def request_stop(signum: int, _frame: Any) -> None:
        nonlocal stop_requested
        stop_requested = True
        logger.info("signal %d: stopping", signum)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    work_dir = Path(tempfile.mkdtemp(prefix="mirage-config-"))
    deployed = False
    try:
        config = write_config(source, args.host, args.port, parse_sets(args.set), work_dir)
        problem = check_config(config)
        if problem:
            logger.error("refusing to start: %s", problem)
            return 2
        cluster.start()
        logger.info("deploying %s", source.name)
        deploy(config, cluster.address)
        statuses = wait_running(cluster.address, args.timeout)
        deployed = True
        signal.signal(signal.SIGTERM, request_stop)  # ray.init replaced our handlers with its own
        signal.signal(signal.SIGINT, request_stop)
        url = f"http://{args.host}:{args.port}/"
        ready = {
            "url": url,
            "ray_address": cluster.address,
            "metrics_port": cluster.metrics_port,
            "temp_dir": str(cluster.temp_dir),
            "deployments": statuses,
            "config": str(config),  # the config deployed: a lightweight update redeploys it with changed options
            "launcher_pid": os.getpid(),  # SIGTERM here drains and stops everything
        }
        if args.ready_file:
            Path(args.ready_file).write_text(json.dumps(ready))
        print(f"Mirage is up: every deployment RUNNING {sorted(statuses)}", flush=True)
        print(f"Open {url} in a browser (Ctrl-C stops everything).", flush=True)
        print(f"Ray drivers (docs/handles.md) attach with ray.init(address={cluster.address!r}).", flush=True)
        while not stop_requested:
            time.sleep(0.2)
        return 0
    except Exception as exc:
        logger.error("start failed: %s", exc)
        return 1
    finally:
        try:
            if deployed:
                started = time.monotonic()
                outcome = "drained" if drain_application(cluster.address, DRAIN_TIMEOUT_S) else "not drained"
                logger.info("application %s in %.1f s", outcome, time.monotonic() - started)
        except Exception as exc:
            logger.warning("drain failed (%s); stopping anyway", exc)
        finally:
            cluster.stop()
            shutil.rmtree(work_dir, ignore_errors=True)
            logger.info("stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m actors.launch", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="start Ray + Serve and block until Ctrl-C / SIGTERM")
    run_parser.add_argument("--config", help="Serve config YAML (default: by GPU presence)")
    run_parser.add_argument("--host", default="127.0.0.1")
    run_parser.add_argument("--port", type=int, default=8000)
    run_parser.add_argument("--num-cpus", type=int, default=None)
    run_parser.add_argument("--num-gpus", type=int, default=None, help="logical GPUs to declare (default: physical)")
    run_parser.add_argument("--metrics-port", type=int, default=8080)
    run_parser.add_argument("--timeout", type=float, default=READY_TIMEOUT_S)
    run_parser.add_argument("--ready-file", help="write the URL and deployment statuses here once RUNNING")
    run_parser.add_argument("--set", action="append", default=[], help="application arg key=value (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        return run(args)
    return 0


class LaunchError(RuntimeError):
    """The application did not come up; the message carries the tail of the launcher's log."""


@contextlib.contextmanager
def launched(
    config: Path,
    *,
    sets: Sequence[str] = (),
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = READY_TIMEOUT_S,
) -> Iterator[dict[str, Any]]:
    """Run ``python -m actors.launch run`` as a child on free loopback ports; yield its ready record (url,
    ray_address, metrics_port, temp_dir, deployments, config, launcher_pid) once every deployment is RUNNING;
    SIGTERM it at exit.

    The path tests and benchmarks share, the same one ``make run`` takes."""
    pin_ray_auth_mode()
    work = Path(tempfile.mkdtemp(prefix="mirage-launch-"))
    ready_file, log_path = work / "ready.json", work / "launch.log"
    command = [
        sys.executable, "-m", "actors.launch", "run", "--config", str(config), "--port", str(free_port()),
        "--metrics-port", str(free_port()), "--ready-file", str(ready_file), "--timeout", str(timeout_s),
    ]  # fmt: skip
    if num_cpus is not None:
        command += ["--num-cpus", str(num_cpus)]
    if num_gpus is not None:
        command += ["--num-gpus", str(num_gpus)]
    for item in sets:
        command += ["--set", item]
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=child_env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s + LAUNCH_GRACE_S
    try:
        while not ready_file.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise LaunchError(f"the app did not start (exit {process.poll()}):\n{log_path.read_text()[-4000:]}")
            time.sleep(POLL_INTERVAL_S / 2)
        yield json.loads(ready_file.read_text())
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=LAUNCH_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            if ready_file.exists():  # end that run's cluster only (other Ray instances may share the machine)
                stop_processes(Path(json.loads(ready_file.read_text())["temp_dir"]))
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
