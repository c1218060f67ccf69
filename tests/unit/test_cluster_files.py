"""cluster/ stays in step with serve_config.yaml, and each file passes its own tool's checks: the launcher YAML Ray's
cluster-config schema (ray/autoscaler/ray-schema.json, with Ray's own validation), the RayService KubeRay's field
names (no Kubernetes here: the names are written out below from KubeRay's ray.io/v1 API, v1.3-v1.4)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray.autoscaler
import yaml

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = ROOT / "cluster" / "aws-g5.yaml"
RAYSERVICE = ROOT / "cluster" / "kuberay-rayservice.yaml"

# KubeRay ray.io/v1 (v1.3-v1.4: ray-operator/apis/ray/v1/rayservice_types.go, raycluster_types.go). A nested dict
# names the fields of a nested object; None accepts any value. gcsFaultToleranceOptions replaced the older
# ``ray.io/ft-enabled`` annotation + RAY_REDIS_ADDRESS in v1.3.
CREDENTIAL = {"value": None, "valueFrom": None}
POD_TEMPLATE = {
    "metadata": None,
    "spec": {
        "containers": None,
        "initContainers": None,
        "volumes": None,
        "nodeSelector": None,
        "tolerations": None,
        "affinity": None,
        "serviceAccountName": None,
        "imagePullSecrets": None,
        "securityContext": None,
        "priorityClassName": None,
        "restartPolicy": None,
        "terminationGracePeriodSeconds": None,
    },
}
RAY_CLUSTER_SPEC = {
    "rayVersion": None,
    "enableInTreeAutoscaling": None,
    "autoscalerOptions": {
        "upscalingMode": None,
        "idleTimeoutSeconds": None,
        "resources": None,
        "image": None,
        "imagePullPolicy": None,
        "securityContext": None,
        "env": None,
        "envFrom": None,
        "volumeMounts": None,
        "version": None,
    },
    "gcsFaultToleranceOptions": {
        "redisAddress": None,
        "redisUsername": CREDENTIAL,
        "redisPassword": CREDENTIAL,
        "externalStorageNamespace": None,
    },
    "headGroupSpec": {
        "rayStartParams": None,
        "template": POD_TEMPLATE,
        "serviceType": None,
        "headService": None,
        "enableIngress": None,
    },
    "workerGroupSpecs": {
        "groupName": None,
        "replicas": None,
        "minReplicas": None,
        "maxReplicas": None,
        "idleTimeoutSeconds": None,
        "rayStartParams": None,
        "template": POD_TEMPLATE,
        "scaleStrategy": None,
        "numOfHosts": None,
        "suspend": None,
    },
    "headServiceAnnotations": None,
    "suspend": None,
    "managedBy": None,
}
RAYSERVICE_FIELDS = {
    "apiVersion": None,
    "kind": None,
    "metadata": None,
    "spec": {
        "serveConfigV2": None,
        "rayClusterConfig": RAY_CLUSTER_SPEC,
        "upgradeStrategy": {"type": None},
        "serveService": None,
        "excludeHeadPodFromServeSvc": None,
        "serviceUnhealthySecondThreshold": None,
        "deploymentUnhealthySecondThreshold": None,
    },
}
CONTAINER_FIELDS = {"name", "image", "imagePullPolicy", "command", "args", "env", "envFrom", "ports", "resources"}
CONTAINER_FIELDS |= {"volumeMounts", "lifecycle", "livenessProbe", "readinessProbe", "securityContext", "workingDir"}


def unknown_fields(value: Any, fields: dict[str, Any] | None, path: str = "") -> list[str]:
    """Paths of keys that the field tree does not name (lists are checked item by item)."""
    if fields is None:
        return []
    if isinstance(value, list):
        return [bad for i, item in enumerate(value) for bad in unknown_fields(item, fields, f"{path}[{i}]")]
    if not isinstance(value, dict):
        return [f"{path} (expected an object)"]
    found = []
    for key, item in value.items():
        if key not in fields:
            found.append(f"{path}.{key}")
        else:
            found += unknown_fields(item, fields[key], f"{path}.{key}")
    return found


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def app_deployments() -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    (app,) = load(ROOT / "serve_config.yaml")["applications"]
    return app["args"], {d["name"]: d for d in app["deployments"]}


def test_kuberay_serve_config_is_serve_config_yaml() -> None:
    manifest = load(RAYSERVICE)
    assert manifest["kind"] == "RayService"
    embedded = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    assert embedded == load(ROOT / "serve_config.yaml")
    assert embedded["applications"] == load(ROOT / "serve_config.yaml")["applications"]


def test_rayservice_uses_kuberay_v1_field_names() -> None:
    manifest = load(RAYSERVICE)
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayService")
    assert unknown_fields(manifest, RAYSERVICE_FIELDS) == []
    cluster = manifest["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())  # map[string]string in the CRD
        for container in group["template"]["spec"]["containers"]:
            assert set(container) <= CONTAINER_FIELDS, set(container) - CONTAINER_FIELDS
    assert manifest["spec"]["upgradeStrategy"]["type"] in {"NewCluster", "None"}
    assert cluster["autoscalerOptions"]["upscalingMode"] in {"Default", "Aggressive", "Conservative"}


def test_rayservice_has_gcs_fault_tolerance_a_gpu_group_and_room_for_one_replica_set() -> None:
    cluster = load(RAYSERVICE)["spec"]["rayClusterConfig"]
    assert cluster["gcsFaultToleranceOptions"]["redisAddress"]
    assert "secretKeyRef" in cluster["gcsFaultToleranceOptions"]["redisPassword"]["valueFrom"]
    assert cluster["enableInTreeAutoscaling"] is True  # replicas that do not fit bring another worker pod
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no replicas on the head
    (gpu_group,) = cluster["workerGroupSpecs"]
    limits = gpu_group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == gpu_group["rayStartParams"]["num-gpus"] == "1"
    _, deployments = app_deployments()
    assert gpu_group["maxReplicas"] == deployments["Ingress"]["autoscaling_config"]["max_replicas"]
    options = [d["ray_actor_options"] for d in deployments.values()]
    assert sum(o.get("num_gpus", 0) for o in options) <= 1
    assert sum(o.get("num_cpus", 1) for o in options) <= float(limits["cpu"])


def test_launcher_yaml_passes_rays_schema_and_validation() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    launcher = load(LAUNCHER)
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(launcher, schema)  # the file as written
    validate_config(prepare_config(launcher))  # as `ray up` fills and checks it


def test_launcher_schema_check_catches_a_typo() -> None:
    launcher = load(LAUNCHER)
    launcher["max_worker"] = launcher.pop("max_workers")
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(launcher, schema)


def test_launcher_workers_offer_what_the_gpu_profile_needs() -> None:
    launcher = load(LAUNCHER)
    worker = launcher["available_node_types"]["a10g"]["resources"]
    args, deployments = app_deployments()
    options = [d["ray_actor_options"] for d in deployments.values()]
    # one ingress replica (one per node) and one replica of each model deployment on each worker
    assert sum(o.get("num_gpus", 0) for o in options) <= worker["GPU"]
    assert sum(o.get("num_cpus", 1) for o in options) <= worker["CPU"]
    assert launcher["available_node_types"]["head"]["resources"]["CPU"] == 0
    assert any("--num-cpus=0" in c for c in launcher["head_start_ray_commands"])
    ingress = deployments["Ingress"]["autoscaling_config"]
    assert launcher["available_node_types"]["a10g"]["max_workers"] == ingress["max_replicas"]
    assert args["max_sessions"] == ingress["max_replicas"] * args["sessions_per_replica"]
