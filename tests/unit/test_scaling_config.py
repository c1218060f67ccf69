"""Autoscaling in both Serve profiles (docs/scaling.md): every deployment scales, Serve accepts the configs, the
ingress scales ahead of its measured capacity, and admission's ceiling is what the ingress replicas can reach."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.config import AutoscalingConfig
from ray.serve.schema import ServeDeploySchema

from mirage_ray.config import MirageSettings

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ("serve_config.yaml", "serve_config.cpu.yaml")
SCALE_AHEAD = 0.9  # ingress target = this x sessions_per_replica


def application(name: str) -> tuple[dict, dict[str, dict]]:
    config = yaml.safe_load((ROOT / name).read_text())
    ServeDeploySchema.model_validate(config)  # Serve's own check of the file
    (app,) = config["applications"]
    return app["args"], {d["name"]: d for d in app["deployments"]}


@pytest.mark.parametrize("profile", PROFILES)
def test_every_deployment_autoscales_within_serves_rules(profile: str) -> None:
    _, deployments = application(profile)
    for name, deployment in deployments.items():
        assert "num_replicas" not in deployment, name
        scaling = AutoscalingConfig(**deployment["autoscaling_config"])
        assert 1 <= scaling.min_replicas <= scaling.max_replicas, name
        if name != "Ingress":  # the CPU profile's ingress: one machine's measured capacity (max_sessions)
            assert scaling.min_replicas < scaling.max_replicas, name
        assert scaling.upscale_delay_s < scaling.downscale_delay_s, name  # quick up, slow down: no flapping


@pytest.mark.parametrize("profile", PROFILES)
def test_ingress_scales_ahead_of_its_measured_sessions_and_bounds_admission(profile: str) -> None:
    args, deployments = application(profile)
    settings = MirageSettings(**args)
    ingress = deployments["Ingress"]
    scaling = ingress["autoscaling_config"]
    # the next replica starts when the running ones fill, not after (admission would keep them exactly full)
    assert scaling["target_ongoing_requests"] == pytest.approx(SCALE_AHEAD * settings.sessions_per_replica)
    assert settings.max_sessions == scaling["max_replicas"] * settings.sessions_per_replica
    assert ingress["max_replicas_per_node"] == 1  # one node's sessions per ingress replica
    assert ingress["graceful_shutdown_timeout_s"] >= 300  # a downscaled replica's sessions end on their own


@pytest.mark.parametrize("profile", PROFILES)
def test_model_deployments_follow_their_queues(profile: str) -> None:
    args, deployments = application(profile)
    batch = MirageSettings(**args).batch_max_size
    for name in ("Detector", "Swapper", "Enhancer"):
        assert deployments[name]["autoscaling_config"]["target_ongoing_requests"] == batch  # one full batch
    assert deployments["Voice"]["autoscaling_config"]["target_ongoing_requests"] < batch  # audio never waits
