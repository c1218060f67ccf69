"""Shared fixtures: one real Ray + Serve application per test session (integration tests only)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
import yaml

from actors.launch import launched

REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_JWT_SECRET = "mirage-integration-tests-secret-0123456789"
START_TIMEOUT_S = 400
INSTRUMENTED_APP = "tests.integration.instrumented:build_app"


@dataclass(frozen=True)
class ServeApp:
    """A running Mirage application started by ``python -m actors.launch`` (the path ``make run`` takes)."""

    url: str
    ws_url: str
    ray_address: str
    metrics_port: int
    deployments: dict[str, str]
    config: Path  # the Serve config deployed (live while the app runs)

    @classmethod
    def from_ready(cls, ready: dict) -> ServeApp:
        """From the launcher's ready record (actors.launch.launched)."""
        return cls(
            url=ready["url"],
            ws_url=ready["url"].replace("http://", "ws://") + "ws",
            ray_address=ready["ray_address"],
            metrics_port=ready["metrics_port"],
            deployments=ready["deployments"],
            config=Path(ready["config"]),
        )

    def token(self, sub: str = "tester", ttl_s: float = 600, **claims: object) -> str:
        now = int(time.time())
        body = {"sub": sub, "aud": "mirage", "iat": now, "nbf": now, "exp": now + int(ttl_s), **claims}
        return jwt.encode(body, TEST_JWT_SECRET, algorithm="HS256")


def instrumented_config(source: Path, out_dir: Path) -> Path:
    """``source`` with its application built by tests/integration/instrumented.py: the production builder with
    model deployments a test can slow at run time (no test hooks in production code)."""
    config = yaml.safe_load(source.read_text())
    for app in config["applications"]:
        app["import_path"] = INSTRUMENTED_APP
    target = out_dir / source.name
    target.write_text(yaml.safe_dump(config, sort_keys=False))
    return target


@pytest.fixture(scope="session")
def serve_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeApp]:
    """Local Ray head with a declared logical GPU + serve_config.yaml (A10G profile, instrumented), torn down at the
    end."""
    sets = [
        # several tests degrade their session on purpose; with the live-load rule one of them would close the door
        # to the next test. Admission by capacity stays on (tests/integration/test_capacity.py); the live rule is
        # tested without Ray (tests/unit/test_admission.py, tests/unit/actors/test_actors_controller.py)
        "admission_live_load=false",
        # the A10G profile starts its voice block at 80 ms, sized for GPU deployments; here every stage is a CPU
        # deployment behind a handle hop on two shared cores (the CPU profile avoids the hop for its 80 ms blocks by
        # converting in the ingress), so the test app starts at the seed's 192 ms block
        "chunk_ms=192",
        # the CPU runs the models here: budgets the controller never calls saturated, so the slowed-stage test sees
        # the session's own ladder (the controller's global rules are unit-tested in test_controller_policy.py)
        'stage_budget_ms={"video.detect": 100000, "video.swap": 100000, "video.enhance": 100000}',
    ]
    config = instrumented_config(REPO_ROOT / "serve_config.yaml", tmp_path_factory.mktemp("serve-config"))
    env = {"MIRAGE_JWT_SECRET": TEST_JWT_SECRET}
    with launched(config, sets=sets, num_cpus=2, num_gpus=1, env=env, timeout_s=START_TIMEOUT_S) as ready:
        yield ServeApp.from_ready(ready)
