"""The Serve application builder named by serve_config.yaml (``import_path: actors.app:build_app``).

``args`` are MirageSettings fields (validated once here, then passed down). Deployment resources are the config
file's alone (serve_config.yaml: GPU fractions; serve_config.cpu.yaml: CPU fractions), written in one place.
"""

from __future__ import annotations

import secrets
from typing import Any

from ray import serve
from ray.serve import Application

from actors.deployments import DetectorDeployment, EnhancerDeployment, SwapperDeployment, VoiceDeployment
from actors.ingress import IngressDeployment
from mirage_ray.config import MirageSettings, load_settings
from mirage_ray.security import AUTO_SECRET_BYTES, HMAC_ALGORITHMS, build_auth

HTTP_HEADROOM_REQUESTS = 8  # health/stats requests an ingress replica takes beside its WebSocket sessions


def _auto_secret(settings: MirageSettings) -> str | None:
    """One random secret for every ingress replica when serving loopback without a configured key."""
    if settings.jwt_algorithm in HMAC_ALGORITHMS and not settings.jwt_secret and settings.is_loopback:
        return secrets.token_urlsafe(AUTO_SECRET_BYTES)
    return None


def build_app(args: dict[str, Any]) -> Application:
    settings = load_settings(**args)
    auto_secret = _auto_secret(settings)
    build_auth(settings, auto_secret=auto_secret)  # refuses to start on a public address without a key

    def bind(cls: type, name: str) -> Application:
        return serve.deployment(cls, name=name).bind(settings)

    detector = bind(DetectorDeployment, "Detector")
    swapper = bind(SwapperDeployment, "Swapper")
    enhancer = bind(EnhancerDeployment, "Enhancer")
    voice = bind(VoiceDeployment, "Voice")
    ingress = serve.deployment(
        serve.ingress()(IngressDeployment),
        name="Ingress",
        max_ongoing_requests=settings.sessions_per_replica + HTTP_HEADROOM_REQUESTS,
    )
    return ingress.bind(settings, detector, swapper, enhancer, voice, auto_secret)
