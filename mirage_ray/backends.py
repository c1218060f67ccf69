"""Backend selection: production when its verified files are present, else the embedded default; or explicit.

An explicit choice whose files are missing fails at start with :class:`ModelMissingError` (file, where it was
looked for, the fetch command). Every choice is logged with its reason and reported in ``hello`` and ``/readyz``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from mirage_ray.config import MirageSettings
from mirage_ray.models import ModelRegistry
from mirage_ray.vision.base import Detector, Enhancer, Swapper
from mirage_ray.voice.base import VoiceConverter

logger = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
TENSORRT_PROVIDER = "TensorrtExecutionProvider"
MIB = 1024 * 1024
WORLD_FALLBACK_FRAME_MS = 20.0


@dataclass(frozen=True)
class Choice:
    """Which backend a stage runs and why."""

    stage: str
    name: str
    reason: str
    fallback: bool  # True when the embedded default or a no-op stands in for the production backend

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "reason": self.reason, "fallback": self.fallback}


def onnx_providers(settings: MirageSettings) -> list[Any]:
    """onnxruntime providers: configured ones, else CUDA (with a memory cap) when available, then CPU."""
    import onnxruntime

    available = set(onnxruntime.get_available_providers())
    wanted = list(settings.onnx_providers) or [TENSORRT_PROVIDER, CUDA_PROVIDER, CPU_PROVIDER]
    if not settings.onnx_providers:
        wanted.remove(TENSORRT_PROVIDER)  # TensorRT only when asked for: engine builds take minutes
    providers: list[Any] = []
    for name in wanted:
        if name not in available:
            continue
        if name == CUDA_PROVIDER:
            options = {"gpu_mem_limit": settings.gpu_mem_limit_mb * MIB, "arena_extend_strategy": "kSameAsRequested"}
            providers.append((name, options))
        else:
            providers.append(name)
    return providers or [CPU_PROVIDER]


def _log(choice: Choice) -> Choice:
    logger.info("%s backend: %s (%s)", choice.stage, choice.name, choice.reason)
    return choice


def _auto_or_explicit(stage: str, setting: str, production: str, registry: ModelRegistry) -> tuple[bool, str]:
    """(use production?, reason). Explicit production with missing files raises ModelMissingError.

    The files a backend needs are the registry's (``ModelRegistry.backend_files``)."""
    if setting == production:
        registry.require_backend(production)
        return True, f"{stage}={production} (explicit)"
    if setting != "auto":
        return False, f"{stage}={setting} (explicit)"
    missing = [str(registry.path(name)) for name in registry.backend_files(production) if not registry.is_present(name)]
    if missing:
        return False, f"auto: {', '.join(missing)} not present, embedded default"
    return True, "auto: verified production files present"


def build_detector(settings: MirageSettings, registry: ModelRegistry) -> tuple[Detector, Choice]:
    use_production, reason = _auto_or_explicit("detector", settings.detector, "scrfd", registry)
    if use_production:
        from mirage_ray.vision.detect_scrfd import ScrfdDetector

        detector: Detector = ScrfdDetector(
            registry.require("scrfd"),
            det_size=settings.det_size,
            providers=onnx_providers(settings),
            threads=settings.onnx_threads or None,
            score_threshold=settings.det_threshold,
        )
    else:
        from mirage_ray.vision.detect_retinaface import RetinaFaceDetector

        detector = RetinaFaceDetector(
            det_size=settings.embedded_det_size,
            providers=onnx_providers(settings),
            threads=settings.onnx_threads or None,
            score_threshold=settings.det_threshold,
        )
    return detector, _log(Choice("detector", detector.name, reason, not use_production))


def build_swapper(settings: MirageSettings, registry: ModelRegistry) -> tuple[Swapper, Choice]:
    if settings.swapper == "passthrough":
        from mirage_ray.vision.swap_passthrough import PassthroughSwapper

        swapper: Swapper = PassthroughSwapper()
        return swapper, _log(Choice("swapper", swapper.name, "swapper=passthrough (explicit)", True))
    model, arcface = registry.backend_files("inswapper")  # the swapper file follows inswapper_precision
    use_production, reason = _auto_or_explicit("swapper", settings.swapper, "inswapper", registry)
    if use_production:
        from mirage_ray.vision.swap_inswapper import InSwapper

        fallback_path = registry.path("inswapper") if model == "inswapper_fp16" else None
        swapper = InSwapper(
            registry.require(model),
            registry.require(arcface),
            providers=onnx_providers(settings),
            precision=settings.inswapper_precision,
            fp32_fallback_path=fallback_path if fallback_path and fallback_path.exists() else None,
        )
    else:
        from mirage_ray.vision.swap_classical import ClassicalSwapper

        swapper = ClassicalSwapper()
    return swapper, _log(Choice("swapper", swapper.name, reason, not use_production))


def build_enhancer(settings: MirageSettings, registry: ModelRegistry) -> tuple[Enhancer, Choice]:
    from mirage_ray.vision.enhance_none import NoEnhancer

    if settings.enhancer == "none":
        return NoEnhancer(), _log(Choice("enhancer", "none", "enhancer=none (explicit)", True))
    use_production, reason = _auto_or_explicit("enhancer", settings.enhancer, "codeformer", registry)
    if not use_production:
        return NoEnhancer(), _log(Choice("enhancer", "none", reason + ": enhancement unavailable", True))
    from mirage_ray.vision.enhance_codeformer import CodeFormerEnhancer

    device = "cuda" if _torch_cuda() else "cpu"
    enhancer = CodeFormerEnhancer(registry.require("codeformer"), device=device)
    return enhancer, _log(Choice("enhancer", enhancer.name, f"{reason} on {device}", False))


def build_converters(
    settings: MirageSettings, registry: ModelRegistry
) -> tuple[VoiceConverter, VoiceConverter, Choice]:
    """(primary, fallback for audio failure, choice). The fallback is the next cheaper converter."""
    from mirage_ray.voice.convert_passthrough import PassthroughConverter
    from mirage_ray.voice.convert_world import WorldConverter

    if settings.voice == "passthrough":
        converter = PassthroughConverter()
        logger.warning("voice=passthrough is for diagnostics only: the speaker's real voice is sent unchanged")
        return converter, converter, _log(Choice("voice", converter.name, "voice=passthrough (explicit)", True))
    use_production, reason = _auto_or_explicit("voice", settings.voice, "rvc", registry)
    voices = sorted(registry.voices_dir().glob("*.onnx")) if registry.voices_dir().is_dir() else []
    if use_production and not voices:
        if settings.voice == "rvc":
            raise FileNotFoundError(
                f"voice=rvc needs at least one generator *.onnx in {registry.voices_dir()}; "
                "copy a voice there (see docs/models.md)"
            )
        use_production, reason = False, f"auto: no voice *.onnx in {registry.voices_dir()}, embedded default"
    if use_production:
        from mirage_ray.voice.convert_rvc import RvcConverter

        primary: VoiceConverter = RvcConverter(
            registry.require("contentvec"),
            registry.require("rmvpe"),
            registry.voices_dir(),
            providers=onnx_providers(settings),
            fp16=settings.voice_fp16,
        )
        return primary, WorldConverter(), _log(Choice("voice", primary.name, reason, False))
    world = WorldConverter()
    # on audio failure: WORLD at half the analysis frame rate (~25% cheaper), still a disguised voice;
    # never the passthrough, which would send the speaker's real voice
    fast = WorldConverter(frame_period_ms=WORLD_FALLBACK_FRAME_MS, name="world-fast")
    return world, fast, _log(Choice("voice", world.name, reason, True))


def _torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())
