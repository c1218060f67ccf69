"""cluster/ stays in step with serve_config.yaml."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_kuberay_serve_config_is_serve_config_yaml() -> None:
    manifest = yaml.safe_load((ROOT / "cluster" / "kuberay-rayservice.yaml").read_text())
    assert manifest["kind"] == "RayService"
    embedded = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    assert embedded == yaml.safe_load((ROOT / "serve_config.yaml").read_text())


def test_launcher_workers_offer_what_the_gpu_profile_needs() -> None:
    launcher = yaml.safe_load((ROOT / "cluster" / "aws-g5.yaml").read_text())
    worker = launcher["available_node_types"]["a10g"]["resources"]
    serve = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    (app,) = serve["applications"]
    gpus = sum(d["ray_actor_options"].get("num_gpus", 0) for d in app["deployments"])
    cpus = sum(d["ray_actor_options"].get("num_cpus", 0) for d in app["deployments"] if d["name"] != "Ingress")
    assert gpus <= worker["GPU"] and cpus <= worker["CPU"]
