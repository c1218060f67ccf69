"""The Serve application builder named by serve_config.yaml (``import_path: actors.app:build_app``).

``args`` are MirageSettings fields (validated once here, then passed down). Deployment resources are the config
file's alone (serve_config.yaml: GPU fractions; serve_config.cpu.yaml: CPU fractions), written in one place. Each
model deployment gets its batching ``user_config`` from settings (a config file's per-deployment ``user_config``
overrides it, also on a live application: docs/configuration.md).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from ray import serve
from ray.serve import Application

from actors.deployments import DetectorDeployment, EnhancerDeployment, SwapperDeployment, VoiceDeployment
from actors.ingress import IngressDeployment
from mirage_ray.config import MirageSettings, load_settings
from mirage_ray.security import AUTO_SECRET_BYTES, HMAC_ALGORITHMS, build_auth
from mirage_ray.stage_api import BatchConfig

HTTP_HEADROOM_REQUESTS = 8  # health/stats requests an ingress replica takes beside its WebSocket sessions
BATCHES_IN_FLIGHT = 2  # a model replica holds one batch running and the next one filling
# deployment name -> class: the model stages, each its own deployment (handles: serve.get_deployment_handle(name))
MODEL_DEPLOYMENTS: dict[str, type] = {
    "Detector": DetectorDeployment,
    "Swapper": SwapperDeployment,
    "Enhancer": EnhancerDeployment,
    "Voice": VoiceDeployment,
}


def _auto_secret(settings: MirageSettings) -> str | None:
    """One random secret for every ingress replica when serving loopback without a configured key."""
    if settings.jwt_algorithm in HMAC_ALGORITHMS and not settings.jwt_secret and settings.is_loopback:
        return secrets.token_urlsafe(AUTO_SECRET_BYTES)
    return None


def build_app(args: dict[str, Any]) -> Application:
    return build_application(load_settings(**args))


def build_application(settings: MirageSettings, classes: Mapping[str, type] | None = None) -> Application:
    """The application over ``settings``; ``classes`` replaces deployment classes by name (tests' instrumented
    subclasses), keeping every name, option and binding."""
    classes = {**MODEL_DEPLOYMENTS, "Ingress": IngressDeployment, **(classes or {})}
    auto_secret = _auto_secret(settings)
    build_auth(settings, auto_secret=auto_secret)  # refuses to start on a public address without a key
    batching = BatchConfig.from_settings(settings)

    def bind(name: str) -> Application:
        return serve.deployment(
            classes[name],
            name=name,
            user_config=batching.model_dump(),
            max_ongoing_requests=BATCHES_IN_FLIGHT * batching.max_batch_size,
        ).bind(settings)

    detector, swapper, enhancer, voice = (bind(name) for name in MODEL_DEPLOYMENTS)
    ingress = serve.deployment(
        serve.ingress()(classes["Ingress"]),
        name="Ingress",
        max_ongoing_requests=settings.sessions_per_replica + HTTP_HEADROOM_REQUESTS,
    )
    return ingress.bind(settings, detector, swapper, enhancer, voice, auto_secret)
