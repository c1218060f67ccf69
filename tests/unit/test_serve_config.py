"""The two Serve configs describe the same application; the A10G profile carries ARCHITECTURE.md's GPU fractions."""

from pathlib import Path

import yaml

from mirage_ray.config import MirageSettings

ROOT = Path(__file__).resolve().parents[2]
A10G_FRACTIONS = {"Detector": 0.1, "Swapper": 0.4, "Enhancer": 0.3, "Voice": 0.2}


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def deployments(config: dict) -> dict[str, dict]:
    (app,) = config["applications"]
    return {d["name"]: d for d in app["deployments"]}


def test_gpu_profile_fractions_fit_one_gpu() -> None:
    gpu = deployments(load("serve_config.yaml"))
    fractions = {name: d["ray_actor_options"].get("num_gpus", 0) for name, d in gpu.items()}
    assert fractions == {"Ingress": 0, **A10G_FRACTIONS}
    assert sum(fractions.values()) <= 1.0
    assert all("num_cpus" in d["ray_actor_options"] for d in gpu.values())  # else Serve reserves 1 CPU each


def test_cpu_profile_is_the_same_application_without_gpus() -> None:
    gpu, cpu = load("serve_config.yaml"), load("serve_config.cpu.yaml")
    (gpu_app,), (cpu_app,) = gpu["applications"], cpu["applications"]
    assert gpu_app["import_path"] == cpu_app["import_path"] == "actors.app:build_app"
    cpu_args = dict(cpu_app["args"])
    assert set(cpu_args.pop("stage_budget_ms")) == {"video.detect", "video.swap", "video.enhance"}
    assert (cpu_args.pop("onnx_threads"), cpu_args.pop("batch_wait_s")) == (1, 0.0)  # tuned for few shared cores
    # cheap embedded stages: no hop (docs/benchmarks.md); both profiles start the voice at the default 80 ms blocks
    assert cpu_args.pop("local_stages") == ["detect", "swap", "voice"]
    assert cpu_args.pop("embedded_det_size") < 512
    assert "chunk_ms" not in cpu_args and "context_ms" not in cpu_args
    gpu_args = dict(gpu_app["args"])
    assert "local_stages" not in gpu_args  # the A10G profile keeps every model stage a GPU-fractional deployment
    for measured in ("max_sessions", "sessions_per_replica"):  # capacity is measured per profile
        assert isinstance(cpu_args.pop(measured), int) and isinstance(gpu_args.pop(measured), int)
    assert gpu_args == cpu_args
    assert set(deployments(gpu)) == set(deployments(cpu))
    assert all("num_gpus" not in d["ray_actor_options"] for d in deployments(cpu).values())
    assert sum(d["ray_actor_options"]["num_cpus"] for d in deployments(cpu).values()) <= 2.0


def test_app_args_are_valid_settings() -> None:
    for name in ("serve_config.yaml", "serve_config.cpu.yaml"):
        (app,) = load(name)["applications"]
        MirageSettings(**app["args"])
